package store

import (
	"context"
	"errors"
	"reflect"
	"slices"

	"github.com/keymux/keymux/policy"
)

// built is the result of a Builder's last build: the accepted documents
// and the cross-check refusals (by document).
type built struct {
	settings policy.Settings
	keys     map[string]*policy.Key
	rules    map[string]*policy.Rule
	clients  map[string]*policy.Client
	cross    map[docID]Refusal
}

// docGroups indexes the good rules and clients by what their cross-checks
// compare, so that BuildDelta checks again only the groups a change
// touches: rules by (key, from) and by key, clients by token. It also
// records what changed since the last build.
type docGroups struct {
	rules    map[ruleKey][]string // (key, from) → rule ids (slices: most groups hold one)
	ruleKeys map[string][]string  // key → rule ids (not for policy.AnyKey, never unknown)
	clients  map[[32]byte][]string

	dirty       map[docID]bool
	dirtyRules  map[ruleKey]bool
	dirtyTokens map[[32]byte]bool
}

func newDocGroups() docGroups {
	g := docGroups{rules: map[ruleKey][]string{}, ruleKeys: map[string][]string{},
		clients: map[[32]byte][]string{}}
	g.clearDirty()
	return g
}

func (g *docGroups) clearDirty() {
	g.dirty, g.dirtyRules, g.dirtyTokens = map[docID]bool{}, map[ruleKey]bool{}, map[[32]byte]bool{}
}

func addTo[K comparable](m map[K][]string, k K, id string) {
	if !slices.Contains(m[k], id) {
		m[k] = append(m[k], id)
	}
}

func removeFrom[K comparable](m map[K][]string, k K, id string) {
	ids := m[k]
	if i := slices.Index(ids, id); i >= 0 {
		ids = slices.Delete(ids, i, i+1)
	}
	if len(ids) == 0 {
		delete(m, k)
	} else {
		m[k] = ids
	}
}

// changed records that the good version of d went from prev to next
// (either nil). b.mu is held.
func (b *Builder) changed(d docID, prev, next *good) {
	if prev != nil && next != nil && reflect.ValueOf(prev.val).Kind() == reflect.Pointer && prev.val == next.val {
		return
	}
	g := &b.groups
	track := b.last != nil // before the first build, nothing is dirty: BuildContext takes all
	if track {
		g.dirty[d] = true
	}
	for _, v := range []*good{prev, next} {
		if v == nil {
			continue
		}
		switch x := v.val.(type) {
		case *policy.Rule:
			rk := ruleKey{x.KeyID, x.From}
			if track {
				g.dirtyRules[rk] = true
			}
			switch {
			case v == prev:
				removeFrom(g.rules, rk, d.id)
				removeFrom(g.ruleKeys, x.KeyID, d.id)
			case x.KeyID == policy.AnyKey:
				addTo(g.rules, rk, d.id)
			default:
				addTo(g.rules, rk, d.id)
				addTo(g.ruleKeys, x.KeyID, d.id)
			}
		case *policy.Client:
			if track {
				g.dirtyTokens[x.TokenSHA256] = true
			}
			if v == prev {
				removeFrom(g.clients, x.TokenSHA256, d.id)
			} else {
				addTo(g.clients, x.TokenSHA256, d.id)
			}
		}
	}
}

// errNoBuild is returned by BuildDelta before the first BuildContext.
var errNoBuild = errors.New("no previous build: build the whole configuration first")

// BuildDelta returns what changed in the configuration since the last
// build (BuildContext or BuildDelta), and all refusals, as BuildContext
// would: only the changed documents are looked at, and only the rules and
// clients whose cross-checks they touch are checked again (the result is
// the same as a full build's, delta_test.go). It fails before the first
// BuildContext.
func (b *Builder) BuildDelta(ctx context.Context) (*Delta, []Refusal, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		return nil, nil, errNoBuild
	}
	if err := checkStop(ctx); err != nil {
		return nil, nil, err
	}
	l, g := b.last, &b.groups
	d := &Delta{Keys: map[string]*policy.Key{}, Rules: map[string]*policy.Rule{}, Clients: map[string]*policy.Client{}}
	for doc := range g.dirty {
		switch doc.kind {
		case KindSettings:
			s := DefaultSettings()
			if gd := b.docs[doc]; gd != nil {
				s = gd.val.(policy.Settings)
			}
			if !reflect.DeepEqual(s, l.settings) {
				d.Settings, l.settings = &s, s
			}
		case KindKeys:
			var k *policy.Key
			if gd := b.docs[doc]; gd != nil {
				k = gd.val.(*policy.Key)
			}
			old := l.keys[doc.id]
			if k == old {
				continue
			}
			d.Keys[doc.id] = k
			if k == nil {
				delete(l.keys, doc.id)
			} else {
				l.keys[doc.id] = k
			}
			if (k == nil) != (old == nil) { // the key's rules are checked again
				for _, id := range g.ruleKeys[doc.id] {
					r := b.docs[docID{KindRules, id}].val.(*policy.Rule)
					g.dirtyRules[ruleKey{r.KeyID, r.From}] = true
				}
			}
		case KindRules:
			if b.docs[doc] == nil && l.rules[doc.id] != nil {
				d.Rules[doc.id] = nil
				delete(l.rules, doc.id)
			}
			delete(l.cross, doc)
		case KindClients:
			if b.docs[doc] == nil && l.clients[doc.id] != nil {
				d.Clients[doc.id] = nil
				delete(l.clients, doc.id)
			}
			delete(l.cross, doc)
		}
	}
	for rk := range g.dirtyRules {
		owner := map[ruleKey]string{}
		for _, gd := range b.group(KindRules, g.rules[rk]) {
			r := gd.val.(*policy.Rule)
			ref, ok := judgeRule(gd, l.keys, owner)
			settle(b, d.Rules, l.rules, KindRules, r.ID, r, ok, ref)
		}
	}
	for tok := range g.dirtyTokens {
		owner := map[[32]byte]string{}
		for _, gd := range b.group(KindClients, g.clients[tok]) {
			c := gd.val.(*policy.Client)
			ref, ok := judgeClient(gd, owner)
			settle(b, d.Clients, l.clients, KindClients, c.ID, c, ok, ref)
		}
	}
	g.clearDirty()
	return d, b.refusals(), nil
}

// group returns the good documents of kind with ids, oldest first.
func (b *Builder) group(kind Kind, ids []string) []*good {
	gs := make([]*good, 0, len(ids))
	for _, id := range ids {
		gs = append(gs, b.docs[docID{kind, id}])
	}
	sortByAge(gs)
	return gs
}

// settle records the verdict on document id (value v) in the last build
// (accepted in last, or refused with ref) and its change in delta.
func settle[V comparable](b *Builder, delta, last map[string]V, kind Kind, id string, v V, ok bool, ref Refusal) {
	var zero V
	doc := docID{kind, id}
	if ok {
		delete(b.last.cross, doc)
		if last[id] != v {
			delta[id], last[id] = v, v
		}
		return
	}
	b.last.cross[doc] = ref
	if _, had := last[id]; had {
		delta[id] = zero
		delete(last, id)
	}
}
