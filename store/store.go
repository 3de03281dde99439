package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
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
}

// Pool is the set of enabled keys that can serve one model, in key id order.
// Seq is the pool's selection counter; it survives configuration changes.
type Pool struct {
	Model   string
	Entries []*Entry
	Seq     *atomic.Uint64
}

// Options configures a Store.
type Options struct {
	Logger *slog.Logger
}

// Store is the in-memory mirror of the configuration (go-memdb). Every
// configuration change is one write transaction; readers take a Snapshot.
type Store struct {
	db     *memdb.MemDB
	logger *slog.Logger
	ready  atomic.Bool

	mu      sync.Mutex    // serialises writers and guards changed
	changed chan struct{} // closed after every commit
}

// ErrInvalidConfig wraps the reasons Apply refuses a Config.
var ErrInvalidConfig = errors.New("invalid config")

// New creates an empty store (not Ready until the first Apply).
func New(opts Options) (*Store, error) {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return nil, fmt.Errorf("store schema: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{db: db, logger: logger, changed: make(chan struct{})}, nil
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
	txn := s.db.Txn(true)
	defer txn.Abort()
	gen, err := applyTxn(ctx, txn, cfg, src)
	if err != nil {
		return 0, err
	}
	txn.Commit()
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
	for id, k := range cfg.Keys {
		if k == nil || k.ID != id {
			return fmt.Errorf("%w: keys/%s: missing or id mismatch", ErrInvalidConfig, id)
		}
	}
	seenRule := map[[2]string]string{}
	for _, id := range slices.Sorted(maps.Keys(cfg.Rules)) {
		r := cfg.Rules[id]
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

// applyTxn replaces every configuration table in txn with cfg: one helper
// per table, in dependency order (pools need the keys and rules).
func applyTxn(ctx context.Context, txn *memdb.Txn, cfg *Config, src SourceInfo) (uint64, error) {
	prev, err := readCarryOver(txn)
	if err != nil {
		return 0, err
	}
	for _, t := range []string{tableKeys, tableRules, tableClients, tableSettings, tablePools} {
		if _, err := txn.DeleteAll(t, indexID); err != nil {
			return 0, fmt.Errorf("clear %s: %w", t, err)
		}
	}
	enabled, err := insertKeys(ctx, txn, cfg.Keys, prev.runtimes)
	if err != nil {
		return 0, err
	}
	rules, err := insertRules(ctx, txn, cfg.Rules)
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
	models, err := insertPools(ctx, txn, poolModels(cfg.Keys, rules), enabled, rules, prev.seqs)
	if err != nil {
		return 0, err
	}
	gen := prev.gen + 1
	src.Refused = slices.Clone(src.Refused)
	meta := &metaRow{ID: singletonID, Generation: gen, Source: src, Models: models, Named: namedModels(cfg),
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
	if raw, err := txn.First(tableMeta, indexID, singletonID); err != nil {
		return c, err
	} else if m, ok := raw.(*metaRow); ok {
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
	if it, err = txn.Get(tablePools, indexID); err != nil {
		return c, err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*poolRow)
		c.seqs[r.Model] = r.Pool.Seq
	}
	return c, nil
}

// insertKeys inserts the keys, each with its previous Runtime (or a new
// one), and returns the enabled ones in id order (through the conditional
// index).
func insertKeys(ctx context.Context, txn *memdb.Txn, keys map[string]*policy.Key, runtimes map[string]*Runtime) ([]*Entry, error) {
	for _, id := range slices.Sorted(maps.Keys(keys)) {
		if err := checkStop(ctx); err != nil {
			return nil, err
		}
		k := keys[id]
		rt := runtimes[id]
		if rt == nil {
			rt = NewRuntime()
		}
		e := &Entry{Key: k, RT: rt}
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

// insertRules inserts the rules and returns the enabled ones by (key, from).
func insertRules(ctx context.Context, txn *memdb.Txn, rules map[string]*policy.Rule) (map[ruleKey]*policy.Rule, error) {
	enabled := map[ruleKey]*policy.Rule{}
	for _, id := range slices.Sorted(maps.Keys(rules)) {
		if err := checkStop(ctx); err != nil {
			return nil, err
		}
		r := rules[id]
		if err := txn.Insert(tableRules, &ruleRow{ID: id, KeyID: r.KeyID, From: r.From, Rule: r}); err != nil {
			return nil, fmt.Errorf("insert rules/%s: %w", id, err)
		}
		if r.Enabled {
			enabled[ruleKey{r.KeyID, r.From}] = r
		}
	}
	return enabled, nil
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
func poolModels(keys map[string]*policy.Key, rules map[ruleKey]*policy.Rule) []string {
	listed := map[string]bool{}
	for rk := range rules {
		listed[rk.from] = true
	}
	for _, k := range keys {
		for _, m := range k.Models {
			listed[m] = true
		}
	}
	return slices.Sorted(maps.Keys(listed))
}

// insertPools inserts the pool of every enabled key (""), of the keys that
// list no model (unlistedPool) and of each listed model; it returns the
// listed models that some key serves. Pools keep their selection counter.
func insertPools(ctx context.Context, txn *memdb.Txn, listed []string, enabled []*Entry, rules map[ruleKey]*policy.Rule, seqs map[string]*atomic.Uint64) ([]string, error) {
	insert := func(model string, entries []*Entry) error {
		seq := seqs[model]
		if seq == nil {
			seq = new(atomic.Uint64)
		}
		p := &Pool{Model: model, Entries: entries, Seq: seq}
		if err := txn.Insert(tablePools, &poolRow{Model: model, Pool: p}); err != nil {
			return fmt.Errorf("insert pool %q: %w", model, err)
		}
		return nil
	}
	if err := insert("", slices.Clip(enabled)); err != nil {
		return nil, err
	}
	var unlisted []*Entry
	for _, e := range enabled {
		if len(e.Key.Models) == 0 {
			unlisted = append(unlisted, e)
		}
	}
	if err := insert(unlistedPool, unlisted); err != nil {
		return nil, err
	}
	var models []string
	for _, m := range listed {
		if err := checkStop(ctx); err != nil {
			return nil, err
		}
		var entries []*Entry
		for _, e := range enabled {
			if servesAfterRule(e, m, rules) {
				entries = append(entries, e)
			}
		}
		if err := insert(m, entries); err != nil {
			return nil, err
		}
		if len(entries) > 0 {
			models = append(models, m)
		}
	}
	return models, nil
}

// servesAfterRule reports whether e serves a request for model once its
// rule (its own before policy.AnyKey's) has rewritten the model.
func servesAfterRule(e *Entry, model string, rules map[ruleKey]*policy.Rule) bool {
	to := model
	if r := rules[ruleKey{e.Key.ID, model}]; r != nil {
		to = r.To
	} else if r := rules[ruleKey{policy.AnyKey, model}]; r != nil {
		to = r.To
	}
	return e.Key.ServesModel(to)
}

// SetSourceInfo records the source's freshness (and refusals) without
// changing the configuration or its generation.
func (s *Store) SetSourceInfo(src SourceInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	txn := s.db.Txn(true)
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

// Read returns a consistent, read-only view of the current configuration.
// It is cheap (one memdb read transaction) and never blocks writers.
func (s *Store) Read() *Snapshot {
	return &Snapshot{txn: s.db.Txn(false)}
}

// Snapshot is one generation of the configuration. Objects it returns are
// shared and immutable: copy before changing.
// A Snapshot may be shared between goroutines.
type Snapshot struct {
	txn      *memdb.Txn
	metaRow  atomic.Pointer[metaRow]
	settings atomic.Pointer[policy.Settings]
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
	if raw, err := s.txn.First(tablePools, indexID, model); err == nil && raw != nil {
		return raw.(*poolRow).Pool
	}
	if model != "" {
		if raw, err := s.txn.First(tablePools, indexID, unlistedPool); err == nil && raw != nil {
			return raw.(*poolRow).Pool
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
	raw, err := s.txn.First(tableRules, indexKeyFrom, keyID, model)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*ruleRow).Rule
}

// ClientByTokenSHA256 returns the enabled client whose token hashes to sum,
// or nil (also for a disabled client).
func (s *Snapshot) ClientByTokenSHA256(sum [32]byte) *policy.Client {
	raw, err := s.txn.First(tableClients, indexTokenSHA256, sum[:])
	if err != nil || raw == nil {
		return nil
	}
	if c := raw.(*clientRow).Client; c.Enabled {
		return c
	}
	return nil
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
	return list(s, tableRules, func(r *ruleRow) *policy.Rule { return r.Rule }, indexID)
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
