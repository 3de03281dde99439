package consul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/internal/backoff"
	"github.com/keymux/keymux/store"
)

// DefaultPrefix is the KV prefix keymux reads when none is given.
const DefaultPrefix = "keymux/"

// Source names reported in store.SourceInfo.
const (
	SourceConsul   = "consul"
	SourceSnapshot = "snapshot"
)

// Defaults of Options.
const (
	// DefaultWaitTime is short enough that a snapshot restore, which lowers
	// the index without waking blocking queries, is noticed within a minute.
	DefaultWaitTime    = time.Minute
	DefaultRateLimit   = 20 // queries per second
	DefaultBurst       = 20
	DefaultBackoffBase = 250 * time.Millisecond
	DefaultBackoffMax  = 30 * time.Second
)

// Options configure a Source.
type Options struct {
	// Client talks to Consul. nil: NewClient(api.DefaultConfig()), which
	// reads CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, … . A
	// client made by NewClient reads large prefixes with less CPU.
	Client *api.Client
	// Prefix is the KV folder, default DefaultPrefix; a missing trailing
	// slash is added.
	Prefix string
	// Store receives every configuration (required).
	Store *store.Store
	// StateDir holds the last-good snapshot; "" disables it.
	StateDir string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Resolve turns secret_ref values into secrets; nil: store.ResolveSecretRef.
	Resolve store.SecretResolver
	// Scope limits the key documents accepted (nil: unlimited).
	Scope *store.Scope
	// OnHealth, when set, is called from Run's goroutine for every changed
	// health/<key id> entry; raw is nil when the entry was deleted.
	OnHealth func(keyID string, raw []byte)
	// OnState, when set, is called from Run's goroutine for every changed
	// state/<key id> entry (package fleet), with its ModifyIndex; raw is nil
	// when the entry was deleted.
	OnState func(keyID string, raw []byte, index uint64)
	// OnMembers, when set, is called from Run's goroutine with the sorted
	// ids of the members/<id> entries held by a session, on the first
	// answer and whenever they change.
	OnMembers func(ids []string)
	// WaitTime bounds one blocking query (default DefaultWaitTime).
	WaitTime time.Duration
	// RateLimit (queries per second) and Burst shape the query rate
	// (defaults DefaultRateLimit, DefaultBurst).
	RateLimit float64
	Burst     int
	// BackoffBase and BackoffMax bound the wait after an error (defaults
	// DefaultBackoffBase, DefaultBackoffMax).
	BackoffBase, BackoffMax time.Duration
}

// Source mirrors a Consul KV prefix into a store.Store.
type Source struct {
	opts    Options
	kv      *api.KV
	log     *slog.Logger
	builder *store.Builder

	// Owned by Run's goroutine.
	listing     *listing           // the prefix's entries, and what changed since the last answer processed
	capture     capture            // the body of the last answer (NewClient's clients)
	gen         uint64             // the store generation this source applied last (0: apply whole)
	memberSet   map[string]bool    // members/<id> entries held by a session
	docs        map[string]kvValue // path → last seen value (settings, keys, rules, clients)
	health      map[string]kvValue // key id → last seen value
	states      map[string]kvValue // key id → last seen state/<id> value
	members     []string           // last members handed to OnMembers
	membersSeen bool
	source      string    // SourceConsul or SourceSnapshot once something was applied
	lastContact time.Time // last successful answer from Consul
	stale       bool

	mu           sync.Mutex
	changed      chan struct{} // closed and replaced on every state change
	refused      []store.Refusal
	index        uint64
	refusedTotal atomic.Uint64
	failures     atomic.Uint64
}

type kvValue struct {
	modifyIndex uint64
	value       []byte
}

// NormalizePrefix checks a KV prefix and gives it its trailing slash; ""
// is DefaultPrefix.
func NormalizePrefix(prefix string) (string, error) {
	if prefix == "" {
		return DefaultPrefix, nil
	}
	if strings.HasPrefix(prefix, "/") {
		return "", fmt.Errorf("prefix %q must not start with /", prefix)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix, nil
}

// New validates opts and returns a Source; Run starts it.
func New(opts Options) (*Source, error) {
	if opts.Store == nil {
		return nil, errors.New("consul source: Store is required")
	}
	prefix, err := NormalizePrefix(opts.Prefix)
	if err != nil {
		return nil, fmt.Errorf("consul source: %w", err)
	}
	opts.Prefix = prefix
	if opts.Client == nil {
		c, err := NewClient(api.DefaultConfig())
		if err != nil {
			return nil, fmt.Errorf("consul source: client: %w", err)
		}
		opts.Client = c
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Resolve == nil {
		opts.Resolve = store.ResolveSecretRef
	}
	if opts.WaitTime <= 0 {
		opts.WaitTime = DefaultWaitTime
	}
	if opts.RateLimit <= 0 {
		opts.RateLimit = DefaultRateLimit
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = DefaultBackoffBase
	}
	if opts.BackoffMax < opts.BackoffBase {
		opts.BackoffMax = max(DefaultBackoffMax, opts.BackoffBase)
	}
	b := store.NewBuilder(opts.Resolve)
	if opts.Scope != nil {
		b.SetScope(opts.Scope)
	}
	return &Source{
		opts:      opts,
		kv:        opts.Client.KV(),
		log:       opts.Logger.With("source", "consul", "prefix", opts.Prefix),
		builder:   b,
		listing:   newListing(opts.Prefix),
		memberSet: map[string]bool{},
		docs:      map[string]kvValue{},
		health:    map[string]kvValue{},
		states:    map[string]kvValue{},
		changed:   make(chan struct{}),
	}, nil
}

// Prefix is the KV prefix the source reads.
func (s *Source) Prefix() string { return s.opts.Prefix }

// Refused lists the entries refused by the latest applied configuration.
func (s *Source) Refused() []store.Refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.refused)
}

// RefusedTotal counts refusals since start: every (path, reason) that was not
// refused in the previous configuration counts once.
func (s *Source) RefusedTotal() uint64 { return s.refusedTotal.Load() }

// Failures counts failed Consul queries since start.
func (s *Source) Failures() uint64 { return s.failures.Load() }

// Index is the Consul index of the last answer the source processed (0
// before the first).
func (s *Source) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// Changed returns a channel closed at the source's next state change: a
// configuration applied, a staleness change, a processed answer with a new
// index. Take the channel before checking the condition you wait for.
func (s *Source) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Wait blocks until cond returns true (checked now and after every state
// change) or ctx ends.
func (s *Source) Wait(ctx context.Context, cond func() bool) error {
	for {
		ch := s.Changed()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Source) notify(index uint64, refused []store.Refusal, setRefused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index != 0 {
		s.index = index
	}
	if setRefused {
		s.refused = refused
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Run mirrors the prefix until ctx ends, then returns nil. It never gives up
// on Consul: errors are logged and retried with backoff. See the package doc.
func (s *Source) Run(ctx context.Context) error {
	lim := newBucket(s.opts.RateLimit, s.opts.Burst)
	var (
		index      uint64 // wait index; 0 = a fresh non-blocking read
		consistent = true // the first read, and the first after an error
		failures   int
		triedSnap  bool
	)
	for {
		if err := lim.wait(ctx); err != nil {
			return nil
		}
		q := (&api.QueryOptions{
			WaitIndex:         index,
			WaitTime:          s.opts.WaitTime,
			RequireConsistent: consistent,
		}).WithContext(context.WithValue(ctx, captureKey{}, &s.capture))
		meta, err := s.list(q)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			s.failures.Add(1)
			if !triedSnap && s.source == "" {
				triedSnap = true
				s.loadSnapshot(ctx)
			}
			s.markStale()
			s.notify(0, nil, false)
			wait := backoff.Delay(failures, s.opts.BackoffBase, s.opts.BackoffMax, rand.Float64)
			s.log.Warn("consul read failed; retrying", "attempt", failures, "retry_in", wait.Round(time.Millisecond), "error", err)
			index, consistent = 0, true
			if !backoff.Sleep(ctx, wait) {
				return nil
			}
			continue
		}
		failures = 0
		consistent = false
		s.lastContact = time.Now()
		newIndex := meta.LastIndex
		if len(s.docs) > 0 && s.listing.docs == 0 {
			// The whole prefix vanished at once (a restarted dev agent, a
			// lost or wrongly restored cluster): keep serving the last
			// configuration, marked stale, instead of emptying every
			// sidecar. Documents deleted one by one still apply, and the
			// prefix coming back resumes at once.
			if !s.stale {
				s.log.Warn("consul prefix is empty; the last configuration keeps serving until entries return", "prefix", s.opts.Prefix, "index", newIndex)
			}
			s.markStale()
			s.notify(0, nil, false)
			index = max(newIndex, 1)
			continue
		}
		switch {
		case index != 0 && newIndex == index:
			// Unchanged index: the wait timed out, nothing to do.
			s.refreshSourceInfo()
			continue
		case newIndex < index:
			// Consul's index went backwards (restore, new cluster, restarted
			// dev agent): forget what we know and diff the full answer.
			s.log.Info("consul index went backwards; resynchronising", "from", index, "to", newIndex)
			s.forgetIndexes()
		}
		s.process(ctx, newIndex)
		index = max(newIndex, 1)
	}
}

// list runs one query on the prefix into s.listing: from the body
// captured by NewClient's transport when there is one, else from the
// Consul client's decoding.
func (s *Source) list(q *api.QueryOptions) (*api.QueryMeta, error) {
	s.capture.taken = false
	pairs, meta, err := s.kv.List(s.opts.Prefix, q)
	if err != nil {
		return nil, err
	}
	if !s.capture.taken {
		s.listing.pairs(pairs)
		return meta, nil
	}
	if err := s.listing.scan(s.capture.body); err != nil {
		return nil, err
	}
	return meta, nil
}

// forgetIndexes drops remembered ModifyIndexes so every entry is compared by
// value.
func (s *Source) forgetIndexes() {
	s.listing.reset()
	for p, v := range s.docs {
		v.modifyIndex = 0
		s.docs[p] = v
	}
	for id, v := range s.health {
		v.modifyIndex = 0
		s.health[id] = v
	}
	for id, v := range s.states {
		v.modifyIndex = 0
		s.states[id] = v
	}
}

// classify maps a KV path under the source's prefix to a document.
func (s *Source) classify(path string) (kind store.Kind, id string, health, ok bool) {
	return classify(s.opts.Prefix, path)
}

// process takes what changed in the prefix since the last processed
// answer (the listing's changes) and applies the result when a document
// changed. It stops, applying nothing, once ctx ends.
func (s *Source) process(ctx context.Context, index uint64) {
	changedPairs, removed, full := s.listing.take()
	changed := false
	type healthChange struct {
		id  string
		raw []byte
	}
	var healthChanges []healthChange
	scan := &fleetScan{}
	for _, p := range changedPairs {
		if ctx.Err() != nil {
			return
		}
		if s.fleetPair(scan, p) {
			continue
		}
		kind, id, isHealth, ok := s.classify(p.Key)
		if !ok {
			continue
		}
		if isHealth {
			old, had := s.health[id]
			if had && old.modifyIndex == p.ModifyIndex && bytes.Equal(old.value, p.Value) {
				continue
			}
			s.health[id] = kvValue{p.ModifyIndex, p.Value}
			if had && bytes.Equal(old.value, p.Value) {
				continue
			}
			healthChanges = append(healthChanges, healthChange{id, p.Value})
			continue
		}
		old, had := s.docs[p.Key]
		if had && bytes.Equal(old.value, p.Value) {
			if old.modifyIndex != p.ModifyIndex {
				s.docs[p.Key] = kvValue{p.ModifyIndex, p.Value}
			}
			continue
		}
		s.docs[p.Key] = kvValue{p.ModifyIndex, p.Value}
		changed = true
		if err := s.builder.Put(kind, id, p.Value, p.Key); err != nil {
			s.log.Warn("consul entry refused; its last good version keeps serving", "path", p.Key, "error", err)
		}
	}
	gone := func(path string) bool { _, ok := s.listing.entries[path]; return !ok }
	if full {
		// A whole answer (the first, or after a resynchronisation): what
		// the source knew from elsewhere (a snapshot) and the answer does
		// not have is gone too.
		for path := range s.docs {
			if gone(path) {
				removed = append(removed, &api.KVPair{Key: path})
			}
		}
	}
	for _, p := range removed {
		if s.fleetGone(scan, p) {
			continue
		}
		kind, id, isHealth, ok := s.classify(p.Key)
		switch {
		case !ok:
		case isHealth:
			if _, had := s.health[id]; had {
				delete(s.health, id)
				healthChanges = append(healthChanges, healthChange{id, nil})
			}
		default:
			if _, had := s.docs[p.Key]; had {
				s.builder.Delete(kind, id)
				delete(s.docs, p.Key)
				changed = true
			}
		}
	}

	switch {
	case changed || s.source != SourceConsul:
		s.apply(ctx, SourceConsul, index, time.Time{})
	default:
		s.refreshSourceInfo()
		s.notify(index, nil, false)
	}
	if s.opts.OnHealth != nil {
		for _, h := range healthChanges {
			s.opts.OnHealth(h.id, h.raw)
		}
	}
	s.fleetDone(scan)
}

// apply hands the configuration to the store: what changed since the
// source's last apply (Builder.BuildDelta, Store.ApplyDelta), or the whole
// of it the first time and whenever the store is not at the generation
// the source applied last. It gives up, the store unchanged, once ctx
// ends.
func (s *Source) apply(ctx context.Context, source string, index uint64, staleSince time.Time) {
	info := store.SourceInfo{Source: source, Version: index}
	if source == SourceSnapshot {
		info.Stale, info.StaleSince, info.LastSync = true, staleSince, staleSince
	} else {
		info.LastSync = s.lastContact
	}
	base := s.gen
	s.gen = 0 // until this apply succeeds: a failed one leaves the builder ahead of the store
	gen, refused, err := s.opts.Store.ApplyBuilt(ctx, s.builder, base, info)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		// The builder only hands out validated documents, so this is a
		// fault inside keymux; keep serving what the store has.
		s.log.Error("store refused the configuration", "error", err)
		return
	}
	s.gen = gen
	s.source, s.stale = source, info.Stale
	s.countRefusals(refused)
	for _, r := range refused {
		s.log.Warn("entry refused", "path", r.Path, "reason", r.Reason)
	}
	st := s.opts.Store.Status()
	s.log.Info("configuration applied", "from", source, "index", index, "generation", gen,
		"keys", st.Keys, "rules", st.Rules, "clients", st.Clients, "refused", len(refused))
	if source == SourceConsul && s.opts.StateDir != "" {
		if err := WriteSnapshot(s.opts.StateDir, s.snapshot(index)); err != nil {
			s.log.Error("cannot write the last-good snapshot", "dir", s.opts.StateDir, "error", err)
		}
	}
	s.notify(index, refused, true)
}

func (s *Source) countRefusals(now []store.Refusal) {
	prev := s.Refused()
	for _, r := range now {
		if !slices.Contains(prev, r) {
			s.refusedTotal.Add(1)
		}
	}
}

// refreshSourceInfo records a successful contact without a config change.
func (s *Source) refreshSourceInfo() {
	if s.source == "" {
		return
	}
	s.stale = false
	s.source = SourceConsul
	s.opts.Store.SetSourceInfo(store.SourceInfo{Source: SourceConsul, LastSync: s.lastContact, Refused: s.Refused()})
}

// markStale reports that Consul cannot be read, once per outage.
func (s *Source) markStale() {
	if s.source == "" || s.stale {
		return
	}
	s.stale = true
	since := s.lastContact
	if since.IsZero() {
		since = time.Now()
	}
	s.opts.Store.SetSourceInfo(store.SourceInfo{
		Source: s.source, LastSync: s.lastContact, Stale: true, StaleSince: since, Refused: s.Refused(),
	})
}

// snapshot returns the documents the source holds now.
func (s *Source) snapshot(index uint64) *Snapshot {
	snap := &Snapshot{Prefix: s.opts.Prefix, Index: index, ReadAt: s.lastContact}
	for path, v := range s.docs {
		snap.Entries = append(snap.Entries, Entry{Path: path, Value: v.value})
	}
	return snap
}

// loadSnapshot applies the last-good snapshot, if there is a usable one.
func (s *Source) loadSnapshot(ctx context.Context) {
	if s.opts.StateDir == "" {
		return
	}
	snap, err := LoadSnapshot(s.opts.StateDir)
	switch {
	case errors.Is(err, ErrNoSnapshot):
		s.log.Warn("consul unreachable and no snapshot in the state dir: not ready until Consul answers", "dir", s.opts.StateDir)
		return
	case err != nil:
		s.log.Error("consul unreachable and the snapshot cannot be used: not ready until Consul answers", "error", err)
		return
	case snap.Prefix != s.opts.Prefix:
		s.log.Error("consul unreachable and the snapshot is for another prefix: not ready until Consul answers",
			"snapshot_prefix", snap.Prefix)
		return
	}
	for _, e := range snap.Entries {
		kind, id, isHealth, ok := s.classify(e.Path)
		if !ok || isHealth {
			continue
		}
		s.docs[e.Path] = kvValue{0, e.Value}
		if err := s.builder.Put(kind, id, e.Value, e.Path); err != nil {
			s.log.Warn("snapshot entry refused", "path", e.Path, "error", err)
		}
	}
	s.log.Warn("consul unreachable: serving the last-good snapshot", "read_at", snap.ReadAt, "index", snap.Index)
	s.apply(ctx, SourceSnapshot, 0, snap.ReadAt)
}

// bucket is a token bucket: wait returns at once while tokens remain.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, burst int) *bucket {
	return &bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

func (b *bucket) wait(ctx context.Context) error {
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return nil
	}
	d := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
	if !backoff.Sleep(ctx, d) {
		return ctx.Err()
	}
	b.tokens, b.last = 0, time.Now()
	return nil
}
