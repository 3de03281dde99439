package store

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"strconv"
	"sync"

	"github.com/keymux/keymux/policy"
)

// ErrUnknownKind is returned by Put for a kind that is not a document kind.
var ErrUnknownKind = fmt.Errorf("unknown document kind (want settings, keys, rules, clients)")

type docID struct {
	kind Kind
	id   string
}

// good is the last accepted version of a document.
type good struct {
	val  any // policy.Settings, *policy.Key, *policy.Rule or *policy.Client
	raw  []byte
	path string
	seq  uint64 // when this content was first accepted: older wins conflicts
}

// Builder keeps the last good version of every document and assembles them
// into a Config. A document that fails to parse is refused alone: its
// previous good version, if any, keeps serving. Both sources use it. It is
// safe for concurrent use.
type Builder struct {
	resolve SecretResolver
	scope   *Scope // nil: unlimited

	mu      sync.Mutex
	seq     uint64
	docs    map[docID]*good
	refused map[docID]Refusal
	groups  docGroups // the good rules and clients by what their cross-checks compare
	last    *built    // the last build's result, that BuildDelta changes (nil before the first)
}

// NewBuilder returns an empty Builder; resolve (nil = ResolveSecretRef)
// turns secret_ref values into secrets.
func NewBuilder(resolve SecretResolver) *Builder {
	if resolve == nil {
		resolve = ResolveSecretRef
	}
	return &Builder{resolve: resolve, docs: map[docID]*good{}, refused: map[docID]Refusal{}, groups: newDocGroups()}
}

// SetScope limits the key documents b accepts to sc (secret references
// and upstreams). Call it before the first Put.
func (b *Builder) SetScope(sc *Scope) {
	b.scope = sc
	b.resolve = sc.Resolver(b.resolve)
}

func (b *Builder) parse(kind Kind, id string, raw []byte) (any, error) {
	switch kind {
	case KindSettings:
		return ParseSettings(raw)
	case KindKeys:
		k, err := ParseKey(id, raw, b.resolve)
		if err == nil && b.scope != nil {
			if err := b.scope.CheckUpstream(k); err != nil {
				return nil, fieldErr(docName(KindKeys, id), "base_url", "%v", err)
			}
		}
		return k, err
	case KindRules:
		return ParseRule(id, raw)
	case KindClients:
		return ParseClient(id, raw)
	}
	return nil, fmt.Errorf("%s: %w", strconv.Quote(string(kind)), ErrUnknownKind)
}

// Put parses one document (id is ignored for settings). path names it in
// refusals ("keymux/keys/k1" for Consul, "keys/k1" for the file). On error
// the document is refused, its last good version kept, and the error
// returned.
func (b *Builder) Put(kind Kind, id string, raw []byte, path string) error {
	if kind == KindSettings {
		id = ""
	}
	d := docID{kind, id}
	if kind != KindKeys && b.unchanged(d, raw, path) {
		return nil // parsing is a function of the bytes: the last result stands
	}
	v, err := b.parse(kind, id, raw)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		if kind.Valid() {
			b.refused[d] = Refusal{Path: path, Reason: err.Error()}
		}
		return err
	}
	delete(b.refused, d)
	prev := b.docs[d]
	g := &good{val: v, raw: bytes.Clone(raw), path: path}
	if prev != nil && bytes.Equal(prev.raw, raw) {
		g.seq = prev.seq
		if kind == KindKeys && reflect.DeepEqual(prev.val, v) {
			// The same bytes and the same secret: the key has not
			// changed, and keeps the value the store holds.
			g.val = prev.val
		}
	} else {
		b.seq++
		g.seq = b.seq
	}
	b.docs[d] = g
	b.changed(d, prev, g)
	return nil
}

// unchanged reports whether the good version of d has exactly raw and path (and no
// refusal was recorded since). Keys are always parsed again: their secret
// references are resolved anew on every reload.
func (b *Builder) unchanged(d docID, raw []byte, path string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	prev := b.docs[d]
	_, refused := b.refused[d]
	return prev != nil && !refused && prev.path == path && bytes.Equal(prev.raw, raw)
}

// Delete forgets a document (and its refusal). Deleting the settings
// document brings the defaults back.
func (b *Builder) Delete(kind Kind, id string) {
	if kind == KindSettings {
		id = ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	d := docID{kind, id}
	b.changed(d, b.docs[d], nil)
	delete(b.docs, d)
	delete(b.refused, d)
}

// deleteMissing forgets the documents of kind (and their refusals) whose
// id is not present.
func (b *Builder) deleteMissing(kind Kind, present func(id string) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for d, g := range b.docs {
		if d.kind == kind && !present(d.id) {
			b.changed(d, g, nil)
			delete(b.docs, d)
		}
	}
	for d := range b.refused {
		if d.kind == kind && !present(d.id) {
			delete(b.refused, d)
		}
	}
}

// Build assembles the good documents into a Config and cross-checks them:
// a rule naming a key that does not exist is refused alone, as is a client
// whose token_sha256 another client already uses, or an enabled rule whose
// key and from another enabled rule already has (the older document wins).
// Refusals are sorted by path.
func (b *Builder) Build() (*Config, []Refusal) {
	cfg, refused, _ := b.BuildContext(context.Background())
	return cfg, refused
}

// BuildContext is Build that gives up once ctx ends, with an error that
// wraps ctx.Err(). The result is the base of the next BuildDelta.
func (b *Builder) BuildContext(ctx context.Context) (*Config, []Refusal, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cfg := &Config{
		Settings: DefaultSettings(),
		Keys:     map[string]*policy.Key{},
		Rules:    map[string]*policy.Rule{},
		Clients:  map[string]*policy.Client{},
	}
	cross := map[docID]Refusal{}
	var rules, clients []*good
	for d, g := range b.docs {
		if err := checkStop(ctx); err != nil {
			return nil, nil, err
		}
		switch d.kind {
		case KindSettings:
			cfg.Settings = g.val.(policy.Settings)
		case KindKeys:
			cfg.Keys[d.id] = g.val.(*policy.Key)
		case KindRules:
			rules = append(rules, g)
		case KindClients:
			clients = append(clients, g)
		}
	}
	sortByAge(rules)
	ruleOwner := map[ruleKey]string{}
	for _, g := range rules {
		if err := checkStop(ctx); err != nil {
			return nil, nil, err
		}
		r := g.val.(*policy.Rule)
		if ref, ok := judgeRule(g, cfg.Keys, ruleOwner); !ok {
			cross[docID{KindRules, r.ID}] = ref
			continue
		}
		cfg.Rules[r.ID] = r
	}
	sortByAge(clients)
	tokenOwner := map[[32]byte]string{}
	for _, g := range clients {
		c := g.val.(*policy.Client)
		if ref, ok := judgeClient(g, tokenOwner); !ok {
			cross[docID{KindClients, c.ID}] = ref
			continue
		}
		cfg.Clients[c.ID] = c
	}
	b.last = &built{settings: cfg.Settings, keys: maps.Clone(cfg.Keys), rules: maps.Clone(cfg.Rules),
		clients: maps.Clone(cfg.Clients), cross: cross}
	b.groups.clearDirty()
	return cfg, b.refusals(), nil
}

// refusals lists the parse refusals and the last build's cross-check
// refusals, sorted by path.
func (b *Builder) refusals() []Refusal {
	refused := make([]Refusal, 0, len(b.refused)+len(b.last.cross))
	for _, r := range b.refused {
		refused = append(refused, r)
	}
	for _, r := range b.last.cross {
		refused = append(refused, r)
	}
	sort.Slice(refused, func(i, j int) bool {
		if refused[i].Path != refused[j].Path {
			return refused[i].Path < refused[j].Path
		}
		return refused[i].Reason < refused[j].Reason
	})
	return refused
}

// sortByAge orders documents oldest first (then by id): the older wins a
// conflict.
func sortByAge(gs []*good) {
	id := func(g *good) string {
		switch v := g.val.(type) {
		case *policy.Rule:
			return v.ID
		case *policy.Client:
			return v.ID
		}
		return ""
	}
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].seq != gs[j].seq {
			return gs[i].seq < gs[j].seq
		}
		return id(gs[i]) < id(gs[j])
	})
}

// judgeRule cross-checks a rule (rules taken oldest first): it is refused
// when its key does not exist, or when it is enabled and an older enabled
// rule (owner) has the same key and from.
func judgeRule(g *good, keys map[string]*policy.Key, owner map[ruleKey]string) (Refusal, bool) {
	r := g.val.(*policy.Rule)
	doc := docName(KindRules, r.ID)
	if r.KeyID != policy.AnyKey && keys[r.KeyID] == nil {
		return Refusal{Path: g.path, Reason: fieldErr(doc, "key", "unknown key %q", r.KeyID).Error()}, false
	}
	if r.Enabled {
		k := ruleKey{r.KeyID, r.From}
		if other, dup := owner[k]; dup {
			return Refusal{Path: g.path, Reason: docErr(doc, "same key and from as rules/%s", other).Error()}, false
		}
		owner[k] = r.ID
	}
	return Refusal{}, true
}

// judgeClient cross-checks a client (clients taken oldest first): it is
// refused when an older client has its token.
func judgeClient(g *good, owner map[[32]byte]string) (Refusal, bool) {
	c := g.val.(*policy.Client)
	if other, dup := owner[c.TokenSHA256]; dup {
		return Refusal{Path: g.path,
			Reason: fieldErr(docName(KindClients, c.ID), "token_sha256", "same token as clients/%s", other).Error()}, false
	}
	owner[c.TokenSHA256] = c.ID
	return Refusal{}, true
}
