package store

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/keymux/keymux/policy"
)

// Config is one complete, validated configuration: what a source hands to
// Store.Apply. Maps are keyed by document id.
type Config struct {
	Settings policy.Settings
	Keys     map[string]*policy.Key
	Rules    map[string]*policy.Rule
	Clients  map[string]*policy.Client

	// built marks the output of Builder.Build, which passes checkConfig by
	// construction (change such a Config only through the Builder).
	built bool
}

// Refusal is a document that was not accepted, and why. It never contains a
// secret.
type Refusal struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// SourceInfo describes where the configuration comes from and how fresh it is.
type SourceInfo struct {
	Source string `json:"source"`
	// Version is the source's own version of the configuration applied
	// (Consul: the KV index of the prefix), equal on every instance that
	// follows the same source; 0 when the source has none.
	Version    uint64    `json:"version,omitzero"`
	LastSync   time.Time `json:"last_sync"`
	Stale      bool      `json:"stale"`
	StaleSince time.Time `json:"stale_since,omitzero"`
	Refused    []Refusal `json:"refused"`
}

// Status is the store's state for /status.
type Status struct {
	Source        string    `json:"source"`
	SourceVersion uint64    `json:"source_version,omitzero"` // see SourceInfo.Version
	Generation    uint64    `json:"generation"`
	LastSync      time.Time `json:"last_sync"`
	Stale         bool      `json:"stale"`
	StaleSince    time.Time `json:"stale_since,omitzero"`
	Refused       []Refusal `json:"refused"`
	Keys          int       `json:"keys"`
	Rules         int       `json:"rules"`
	Clients       int       `json:"clients"`
}

// Entry is a key as the hot path sees it: the immutable key and its Runtime,
// which is shared by every generation containing the same key id.
type Entry struct {
	Key *policy.Key
	RT  *Runtime

	fleet *Fleet // the store's (nil in entries built by hand)
}

// Pool is the set of enabled keys that can serve one model, in key id order.
// Seq is the pool's selection counter; it survives configuration changes.
type Pool struct {
	Model   string
	Entries []*Entry
	Seq     *atomic.Uint64
	// Selection holds what the request path derives from Entries and the
	// keys' states between requests (extproc's eligible set). A full
	// apply's pools start without; ApplyDelta keeps the pools whose keys
	// did not change, with their Selection, and rebuilds every pool when
	// the settings change or a key that lists no model changes.
	Selection atomic.Value
	// Ring is the consistent-hash ring of Entries (the affinity strategy's),
	// built by the request path on first use and dropped with the pool.
	Ring atomic.Pointer[policy.Ring]
}

// Options configures a Store.
type Options struct {
	Logger *slog.Logger
}

// Store is the in-memory mirror of the configuration (go-memdb). Every
// configuration change is one write transaction; readers take a Snapshot.
// Apply builds each configuration in a fresh database and swaps it in:
// clearing the tables of the previous one costs more than filling new ones,
// and the previous generation is left whole to the readers that still hold
// it, then to the garbage collector.
type Store struct {
	db     atomic.Pointer[memdb.MemDB]
	snap   atomic.Pointer[Snapshot] // the current state's shared Snapshot (publish)
	logger *slog.Logger
	ready  atomic.Bool

	mu      sync.Mutex    // serialises writers and guards changed
	changed chan struct{} // closed after every commit

	fleet Fleet // membership view and state observer (fleet.go)
}

// ErrInvalidConfig wraps the reasons Apply refuses a Config.
var ErrInvalidConfig = errors.New("invalid config")

// New creates an empty store (not Ready until the first Apply).
func New(opts Options) (*Store, error) {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return nil, fmt.Errorf("store schema: %w", err)
	}
	s := &Store{changed: make(chan struct{})}
	s.publish(db)
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s.logger = logger
	return s, nil
}

// Ready reports whether a configuration has been applied.
func (s *Store) Ready() bool { return s.ready.Load() }

// Changed returns a channel closed at the next commit (Apply or
// SetSourceInfo). Take it before the action you wait for.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Apply replaces the whole configuration in one write transaction and
// returns the new generation. Runtime state is carried over by key id, pool
// counters by model.
func (s *Store) Apply(cfg *Config, src SourceInfo) (uint64, error) {
	return s.ApplyContext(context.Background(), cfg, src)
}

// ApplyContext is Apply that gives up, leaving the store unchanged, once
// ctx ends (a stop during the apply of a large configuration); the error
// then wraps ctx.Err().
func (s *Store) ApplyContext(ctx context.Context, cfg *Config, src SourceInfo) (uint64, error) {
	if err := checkConfig(cfg); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	s.logger.Debug("applying configuration", "source", src.Source, "keys", len(cfg.Keys), "rules", len(cfg.Rules), "clients", len(cfg.Clients))
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return 0, fmt.Errorf("store schema: %w", err)
	}
	txn := db.Txn(true)
	defer txn.Abort()
	gen, err := applyTxn(ctx, s.db.Load().Txn(false), txn, cfg, src, &s.fleet)
	if err != nil {
		return 0, err
	}
	txn.Commit()
	s.publish(db)
	s.ready.Store(true)
	s.notifyLocked()
	s.logger.Info("config applied", "generation", gen, "source", src.Source,
		"keys", len(cfg.Keys), "rules", len(cfg.Rules), "clients", len(cfg.Clients), "refused", len(src.Refused))
	return gen, nil
}

// checkStop returns nil while ctx lasts, then an error that wraps ctx.Err():
// the check of the loops that apply a configuration, so that a stop is
// honoured during a large one.
func checkStop(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("configuration apply stopped: %w", err)
	}
	return nil
}

// checkConfig verifies the invariants the hot path relies on; Builder.Build
// output always passes.
func checkConfig(cfg *Config) error {
	if cfg == nil {
		return fmt.Errorf("%w: nil", ErrInvalidConfig)
	}
	if cfg.built {
		return nil // the Builder checked the same, document by document
	}
	for id, k := range cfg.Keys {
		if k == nil || k.ID != id {
			return fmt.Errorf("%w: keys/%s: missing or id mismatch", ErrInvalidConfig, id)
		}
	}
	// In map order first; a fault is looked for again in id order, so that
	// its message does not depend on the map's order.
	if checkRules(cfg, maps.All(cfg.Rules)) != nil {
		sorted := func(yield func(string, *policy.Rule) bool) {
			for _, id := range slices.Sorted(maps.Keys(cfg.Rules)) {
				if !yield(id, cfg.Rules[id]) {
					return
				}
			}
		}
		if err := checkRules(cfg, sorted); err != nil {
			return err
		}
	}
	seenTok := map[[32]byte]string{}
	for _, id := range slices.Sorted(maps.Keys(cfg.Clients)) {
		c := cfg.Clients[id]
		if c == nil || c.ID != id {
			return fmt.Errorf("%w: clients/%s: missing or id mismatch", ErrInvalidConfig, id)
		}
		if other, dup := seenTok[c.TokenSHA256]; dup {
			return fmt.Errorf("%w: clients/%s: same token_sha256 as clients/%s", ErrInvalidConfig, id, other)
		}
		seenTok[c.TokenSHA256] = id
	}
	return nil
}

// checkRules checks cfg's rules, taken in the order of rules.
func checkRules(cfg *Config, rules iter.Seq2[string, *policy.Rule]) error {
	seenRule := make(map[[2]string]string, len(cfg.Rules))
	for id, r := range rules {
		if r == nil || r.ID != id || r.From == "" || r.KeyID == "" {
			return fmt.Errorf("%w: rules/%s: missing, incomplete or id mismatch", ErrInvalidConfig, id)
		}
		if r.KeyID != policy.AnyKey && cfg.Keys[r.KeyID] == nil {
			return fmt.Errorf("%w: rules/%s: unknown key %q", ErrInvalidConfig, id, r.KeyID)
		}
		if r.Enabled {
			k := [2]string{r.KeyID, r.From}
			if other, dup := seenRule[k]; dup {
				return fmt.Errorf("%w: rules/%s: same key and from as rules/%s", ErrInvalidConfig, id, other)
			}
			seenRule[k] = id
		}
	}
	return nil
}

// applyTxn fills the empty database of txn with cfg, carrying over from
// the previous generation (read through prevTxn) what survives it: one
// helper per table, in dependency order (pools need the keys and rules).
func applyTxn(ctx context.Context, prevTxn, txn *memdb.Txn, cfg *Config, src SourceInfo, fleet *Fleet) (uint64, error) {
	prev, err := readCarryOver(prevTxn)
	if err != nil {
		return 0, err
	}
	enabled, err := insertKeys(ctx, txn, cfg.Keys, prev.runtimes, fleet)
	if err != nil {
		return 0, err
	}
	rules, ruleList, err := indexRules(ctx, cfg.Rules)
	if err != nil {
		return 0, err
	}
	if err := insertClients(ctx, txn, cfg.Clients); err != nil {
		return 0, err
	}
	settings := cfg.Settings
	if err := txn.Insert(tableSettings, &settingsRow{ID: singletonID, Settings: &settings}); err != nil {
		return 0, fmt.Errorf("insert settings: %w", err)
	}
	counts := keyModels(cfg.Keys)
	pools, models, err := buildPools(ctx, poolModels(counts, rules), enabled, rules, prev.seqs)
	if err != nil {
		return 0, err
	}
	gen := prev.gen + 1
	src.Refused = slices.Clone(src.Refused)
	meta := &metaRow{ID: singletonID, Generation: gen, Source: src, RuleIndex: rules, RuleList: ruleList, Pools: pools, Models: models, Named: namedModels(cfg), KeyModels: counts,
		Keys: len(cfg.Keys), Rules: len(cfg.Rules), Clients: len(cfg.Clients)}
	if err := txn.Insert(tableMeta, meta); err != nil {
		return 0, fmt.Errorf("insert meta: %w", err)
	}
	return gen, nil
}

// carryOver is what survives from the previous generation: its number, each
// key's Runtime and each pool's selection counter.
type carryOver struct {
	gen      uint64
	runtimes map[string]*Runtime
	seqs     map[string]*atomic.Uint64
}

func readCarryOver(txn *memdb.Txn) (carryOver, error) {
	c := carryOver{runtimes: map[string]*Runtime{}, seqs: map[string]*atomic.Uint64{}}
	raw, err := txn.First(tableMeta, indexID, singletonID)
	if err != nil {
		return c, err
	}
	if m, ok := raw.(*metaRow); ok {
		c.gen = m.Generation
	}
	it, err := txn.Get(tableKeys, indexID)
	if err != nil {
		return c, err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*keyRow)
		c.runtimes[r.ID] = r.Entry.RT
	}
	if m, ok := raw.(*metaRow); ok {
		for model, p := range m.Pools {
			c.seqs[model] = p.Seq
		}
	}
	return c, nil
}

// insertKeys inserts the keys, each with its previous Runtime (or a new
// one), and returns the enabled ones in id order (through the conditional
// index).
func insertKeys(ctx context.Context, txn *memdb.Txn, keys map[string]*policy.Key, runtimes map[string]*Runtime, fleet *Fleet) ([]*Entry, error) {
	for _, id := range slices.Sorted(maps.Keys(keys)) {
		if err := checkStop(ctx); err != nil {
			return nil, err
		}
		k := keys[id]
		rt := runtimes[id]
		if rt == nil {
			rt = NewRuntime()
		}
		e := &Entry{Key: k, RT: rt, fleet: fleet}
		if err := txn.Insert(tableKeys, &keyRow{ID: id, Enabled: k.Enabled, Entry: e}); err != nil {
			return nil, fmt.Errorf("insert keys/%s: %w", id, err)
		}
	}
	var enabled []*Entry
	it, err := txn.Get(tableKeys, indexEnabled, true)
	if err != nil {
		return nil, err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		enabled = append(enabled, raw.(*keyRow).Entry)
	}
	return enabled, nil
}

// ruleKey finds the enabled rule of a key (or policy.AnyKey) for a model.
type ruleKey struct{ key, from string }

// indexRules returns the enabled rules by (key, from) and every rule in id
// order. Rules live on the generation's meta row rather than in a memdb
// table: at 100k rules the radix trees of their two indexes cost more
// memory and apply time than everything else.
func indexRules(ctx context.Context, rules map[string]*policy.Rule) (*ruleIndex, []*policy.Rule, error) {
	enabled := writeRules(nil)
	list := slices.SortedFunc(maps.Values(rules), func(a, b *policy.Rule) int { return strings.Compare(a.ID, b.ID) })
	for _, r := range list {
		if err := checkStop(ctx); err != nil {
			return nil, nil, err
		}
		if r.Enabled {
			enabled.set(ruleKey{r.KeyID, r.From}, r)
		}
	}
	return enabled.x, list, nil
}

func insertClients(ctx context.Context, txn *memdb.Txn, clients map[string]*policy.Client) error {
	for _, id := range slices.Sorted(maps.Keys(clients)) {
		if err := checkStop(ctx); err != nil {
			return err
		}
		if err := txn.Insert(tableClients, &clientRow{ID: id, Client: clients[id]}); err != nil {
			return fmt.Errorf("insert clients/%s: %w", id, err)
		}
	}
	return nil
}

// poolModels lists, sorted, the models that get a pool: every model a key
// lists and every model an enabled rule rewrites.
func poolModels(keyModels map[string]int, rules *ruleIndex) []string {
	listed := make(map[string]bool, len(keyModels))
	for rk := range rules.all() {
		listed[rk.from] = true
	}
	for m := range keyModels {
		listed[m] = true
	}
	return slices.Sorted(maps.Keys(listed))
}

// keyModels counts, for each model, the keys that list it.
func keyModels(keys map[string]*policy.Key) map[string]int {
	counts := map[string]int{}
	for _, k := range keys {
		countModels(counts, k, 1)
	}
	return counts
}

// countModels adds delta to the count of each model k lists (once per
// model), dropping the counts that reach 0.
func countModels(counts map[string]int, k *policy.Key, delta int) {
	for i, m := range k.Models {
		if slices.Contains(k.Models[:i], m) {
			continue
		}
		if counts[m] += delta; counts[m] <= 0 {
			delete(counts, m)
		}
	}
}

// poolIndex answers, for one model, which enabled keys serve it after their
// rule, from the rules and the keys' model lists: the work is proportional
// to the keys that list the model's target or have their own rule for it
// (plus the keys that list no model), never to every key. Keys are
// positions in enabled (key id order).
type poolIndex struct {
	enabled  []*Entry
	listing  map[string][]int32   // model -> keys that list it, in order
	unlisted []int32              // keys that list no model (serve any)
	own      map[string][]ownRule // from -> keys with their own enabled rule
	anyTo    map[string]string    // from -> to of the enabled "*" rule
	stamp    []uint32             // per key: the pool call that last saw its own rule
	calls    uint32
	buf      []int32 // scratch for one pool
}

// ownRule is a key's own enabled rule for one model: the key and its target.
type ownRule struct {
	key int32
	to  string
}

func newPoolIndex(enabled []*Entry, rules *ruleIndex) *poolIndex {
	x := &poolIndex{enabled: enabled, listing: map[string][]int32{}, own: map[string][]ownRule{},
		anyTo: map[string]string{}, stamp: make([]uint32, len(enabled))}
	byID := make(map[string]int32, len(enabled))
	for i, e := range enabled {
		byID[e.Key.ID] = int32(i)
		if len(e.Key.Models) == 0 {
			x.unlisted = append(x.unlisted, int32(i))
		}
		for _, m := range e.Key.Models {
			if l := x.listing[m]; len(l) > 0 && l[len(l)-1] == int32(i) {
				continue // a model listed twice
			}
			x.listing[m] = append(x.listing[m], int32(i))
		}
	}
	for rk, r := range rules.all() {
		if rk.key == policy.AnyKey {
			x.anyTo[rk.from] = r.To
		}
		if i, ok := byID[rk.key]; ok { // an enabled key (even one named "*")
			x.own[rk.from] = append(x.own[rk.from], ownRule{i, r.To})
		}
	}
	return x
}

// pool returns the enabled keys that serve model once their rule (their own
// before policy.AnyKey's) has rewritten it, in key id order: the keys with
// their own rule whose target they serve, and the others if they serve the
// "*" rule's target (or model itself without one); nil when none does.
func (x *poolIndex) pool(model string) []*Entry {
	target := model
	if to, ok := x.anyTo[model]; ok {
		target = to
	}
	x.calls++
	out := x.buf[:0]
	for _, o := range x.own[model] {
		x.stamp[o.key] = x.calls
		if x.enabled[o.key].Key.ServesModel(o.to) {
			out = append(out, o.key)
		}
	}
	for _, list := range [][]int32{x.listing[target], x.unlisted} {
		for _, i := range list {
			if x.stamp[i] != x.calls {
				out = append(out, i)
			}
		}
	}
	x.buf = out
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	entries := make([]*Entry, len(out))
	for j, i := range out {
		entries[j] = x.enabled[i]
	}
	return entries
}

// buildPools builds the pool of every enabled key (""), of the keys that
// list no model (unlistedPool) and of each listed model; it also returns
// the listed models that some key serves. Pools keep their selection
// counter.
func buildPools(ctx context.Context, listed []string, enabled []*Entry, rules *ruleIndex, seqs map[string]*atomic.Uint64) (map[string]*Pool, []string, error) {
	pools := make(map[string]*Pool, len(listed)+2)
	insert := func(model string, entries []*Entry) {
		seq := seqs[model]
		if seq == nil {
			seq = new(atomic.Uint64)
		}
		pools[model] = &Pool{Model: model, Entries: entries, Seq: seq}
	}
	insert("", slices.Clip(enabled))
	x := newPoolIndex(enabled, rules)
	var unlisted []*Entry
	for _, i := range x.unlisted {
		unlisted = append(unlisted, enabled[i])
	}
	insert(unlistedPool, unlisted)
	var models []string
	for _, m := range listed {
		if err := checkStop(ctx); err != nil {
			return nil, nil, err
		}
		entries := x.pool(m)
		insert(m, entries)
		if len(entries) > 0 {
			models = append(models, m)
		}
	}
	return pools, models, nil
}

// SetSourceInfo records the source's freshness (and refusals) without
// changing the configuration or its generation.
func (s *Store) SetSourceInfo(src SourceInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	txn := s.db.Load().Txn(true)
	defer txn.Abort()
	meta := &metaRow{ID: singletonID}
	if raw, err := txn.First(tableMeta, indexID, singletonID); err == nil && raw != nil {
		cp := *raw.(*metaRow)
		meta = &cp
	}
	src.Refused = slices.Clone(src.Refused)
	if src.Version == 0 {
		src.Version = meta.Source.Version // freshness news does not change the version
	}
	meta.Source = src
	if err := txn.Insert(tableMeta, meta); err != nil {
		s.logger.Error("store: cannot record source info", "error", err)
		return
	}
	txn.Commit()
	s.publish(s.db.Load())
	s.notifyLocked()
}

// Status returns the store's state for /status.
func (s *Store) Status() Status {
	snap := s.Read()
	m := snap.meta()
	refused := slices.Clone(m.Source.Refused)
	if refused == nil {
		refused = []Refusal{}
	}
	return Status{
		Source:        m.Source.Source,
		SourceVersion: m.Source.Version,
		Generation:    m.Generation,
		LastSync:      m.Source.LastSync,
		Stale:         m.Source.Stale,
		StaleSince:    m.Source.StaleSince,
		Refused:       refused,
		Keys:          m.Keys,
		Rules:         m.Rules,
		Clients:       m.Clients,
	}
}

// Read returns a consistent, read-only view of the current configuration:
// one atomic load, no allocation (every reader shares the Snapshot taken
// at the last commit), and it never blocks writers.
func (s *Store) Read() *Snapshot { return s.snap.Load() }

// publish makes db, just committed, the current state: the database
// writers start from and the Snapshot readers share. Writers call it with
// s.mu held (New before the store is shared).
func (s *Store) publish(db *memdb.MemDB) {
	s.db.Store(db)
	s.snap.Store(newSnapshot(db.Txn(false)))
}

// Snapshot is one generation of the configuration. Objects it returns are
// shared and immutable: copy before changing.
// A Snapshot may be shared between goroutines (a memdb read transaction
// only reads its trees).
type Snapshot struct {
	txn      *memdb.Txn
	metaRow  atomic.Pointer[metaRow]
	settings atomic.Pointer[policy.Settings]
	byToken  map[[32]byte]*policy.Client // the enabled clients by token_sha256
}

// newSnapshot returns the Snapshot of the read transaction txn, with its
// enabled clients indexed by token hash: the request path looks a client
// up with one map read instead of a memdb index walk (which allocates).
func newSnapshot(txn *memdb.Txn) *Snapshot { return newSnapshotWith(txn, nil) }

// newSnapshotWith is newSnapshot with the index of the enabled clients
// given (an apply that changed no client keeps the previous one); nil
// builds it.
func newSnapshotWith(txn *memdb.Txn, byToken map[[32]byte]*policy.Client) *Snapshot {
	s := &Snapshot{txn: txn, byToken: byToken}
	if byToken != nil {
		return s
	}
	s.byToken = map[[32]byte]*policy.Client{}
	for _, c := range s.Clients() {
		if c.Enabled {
			s.byToken[c.TokenSHA256] = c
		}
	}
	return s
}

var (
	emptyMeta       = &metaRow{ID: singletonID}
	defaultSettings = DefaultSettings()
)

func (s *Snapshot) meta() *metaRow {
	if m := s.metaRow.Load(); m != nil {
		return m
	}
	m := emptyMeta
	if raw, err := s.txn.First(tableMeta, indexID, singletonID); err == nil && raw != nil {
		m = raw.(*metaRow)
	}
	s.metaRow.Store(m)
	return m
}

// Generation is the configuration generation (0 before the first Apply).
func (s *Snapshot) Generation() uint64 { return s.meta().Generation }

// Settings returns the settings (defaults before the first Apply).
func (s *Snapshot) Settings() *policy.Settings {
	if p := s.settings.Load(); p != nil {
		return p
	}
	p := &defaultSettings
	if raw, err := s.txn.First(tableSettings, indexID, singletonID); err == nil && raw != nil {
		p = raw.(*settingsRow).Settings
	}
	s.settings.Store(p)
	return p
}

// Pool returns the enabled keys that serve model after their rule, in key id
// order; "" returns every enabled key. Never nil.
func (s *Snapshot) Pool(model string) *Pool {
	pools := s.meta().Pools
	if p := pools[model]; p != nil {
		return p
	}
	if model != "" {
		if p := pools[unlistedPool]; p != nil {
			return p
		}
	}
	return &Pool{Model: model, Seq: new(atomic.Uint64)}
}

// Rule returns the enabled rule for requests of model sent with key keyID:
// the key's own rule first, then the "*" rule; nil when none applies.
func (s *Snapshot) Rule(keyID, model string) *policy.Rule {
	if r := s.rule(keyID, model); r != nil {
		return r
	}
	if keyID == policy.AnyKey {
		return nil
	}
	return s.rule(policy.AnyKey, model)
}

func (s *Snapshot) rule(keyID, model string) *policy.Rule {
	return s.meta().RuleIndex.get(ruleKey{keyID, model})
}

// ClientByTokenSHA256 returns the enabled client whose token hashes to sum,
// or nil (also for a disabled client).
func (s *Snapshot) ClientByTokenSHA256(sum [32]byte) *policy.Client {
	return s.byToken[sum]
}

// Client returns the client with id (enabled or not), or nil.
func (s *Snapshot) Client(id string) *policy.Client {
	raw, err := s.txn.First(tableClients, indexID, id)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*clientRow).Client
}

// Models returns the sorted model ids some enabled key serves by name (for
// GET /v1/models). Keys without a model list serve other models too.
func (s *Snapshot) Models() []string { return s.meta().Models }

// NamesModel reports whether the configuration names model: a key lists
// it or a rule maps from or to it, enabled or not. Telemetry admits only
// such names as metric labels.
func (s *Snapshot) NamesModel(model string) bool { return s.meta().Named[model] }

func namedModels(cfg *Config) map[string]bool {
	named := map[string]bool{}
	for _, k := range cfg.Keys {
		for _, m := range k.Models {
			named[m] = true
		}
	}
	for _, r := range cfg.Rules {
		named[r.From], named[r.To] = true, true
	}
	return named
}

// Keys returns every key, enabled or not, in id order.
func (s *Snapshot) Keys() []*Entry {
	return list(s, tableKeys, func(r *keyRow) *Entry { return r.Entry }, indexID)
}

// EnabledKeys returns the enabled keys in id order (the same entries as
// Pool("")).
func (s *Snapshot) EnabledKeys() []*Entry {
	return list(s, tableKeys, func(r *keyRow) *Entry { return r.Entry }, indexEnabled, true)
}

// Key returns the key with id, or nil.
func (s *Snapshot) Key(id string) *Entry {
	raw, err := s.txn.First(tableKeys, indexID, id)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*keyRow).Entry
}

// Rules returns every rule, enabled or not, in id order.
func (s *Snapshot) Rules() []*policy.Rule {
	if l := s.meta().RuleList; len(l) > 0 {
		return slices.Clone(l)
	}
	return nil
}

// Clients returns every client, enabled or not, in id order.
func (s *Snapshot) Clients() []*policy.Client {
	return list(s, tableClients, func(r *clientRow) *policy.Client { return r.Client }, indexID)
}

// list reads the rows of table through index (with its args) and converts
// each with f.
func list[R, T any](s *Snapshot, table string, f func(R) T, index string, args ...any) []T {
	it, err := s.txn.Get(table, index, args...)
	if err != nil {
		return nil
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, f(raw.(R)))
	}
	return out
}
