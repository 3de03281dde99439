package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
)

// Defaults of Config.
const (
	DefaultSessionTTL = 10 * time.Second // Consul's minimum
	DefaultQueueSize  = 1024
	// writeAttempts bounds the compare-and-set rounds of one record.
	writeAttempts = 3
)

// KV is what the fleet needs of Consul's KV API (*api.KV has it; tests
// use a fake).
type KV interface {
	Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
	CAS(p *api.KVPair, w *api.WriteOptions) (bool, *api.WriteMeta, error)
	DeleteCAS(p *api.KVPair, w *api.WriteOptions) (bool, *api.WriteMeta, error)
	Acquire(p *api.KVPair, w *api.WriteOptions) (bool, *api.WriteMeta, error)
}

// Config configures a Fleet.
type Config struct {
	// Store holds the keys (required): the fleet view and the state
	// observer are installed on Store.Fleet().
	Store *store.Store
	// Consul, when set, shares key states and registers this instance as
	// a member. nil: standalone (the whole limits, nothing shared).
	Consul *api.Client
	// KV overrides Consul.KV() (tests).
	KV KV
	// Prefix is the KV prefix (default consul.DefaultPrefix; "/" appended).
	Prefix string
	// ID names this member: unique per process (default
	// hostname-pid-random).
	ID string
	// Logger defaults to slog.Default(); Now to time.Now.
	Logger *slog.Logger
	Now    func() time.Time
	// SessionTTL of the membership session (default DefaultSessionTTL,
	// 10s–24h as Consul allows).
	SessionTTL time.Duration
	// LivenessTTL of the member's own check on the local Consul agent,
	// which the session depends on (default DefaultLivenessTTL; 1s up to
	// SessionTTL; negative: no check, the session TTL alone).
	LivenessTTL time.Duration
	// QueueSize bounds the observations waiting for the writer (default
	// DefaultQueueSize); more are dropped and counted.
	QueueSize int
	// RetryBase and RetryMax bound the backoff after a Consul error
	// (defaults 250ms, 10s).
	RetryBase, RetryMax time.Duration
}

// Fleet shares key states through Consul and keeps this instance's view of
// the live members. See the package doc.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	kv      KV
	view    *store.Fleet
	queue   chan observation
	deletes chan deletion
	over    atomic.Int64 // settings.share.cooldown_over, ns

	registered atomic.Bool
	abandon    atomic.Bool // test hook: on stop, leave the session to expire
	liveCheck  atomic.Bool // the member's session depends on its own check

	mu      sync.Mutex
	members []string // sorted, this instance included
	known   map[string]known
	refused map[string]store.Refusal
	changed chan struct{}

	writes, covered, conflicts, writeErrors, dropped atomic.Uint64
	applied, refusals, cleared, memberChanges        atomic.Uint64
}

// known is a valid state record read from KV.
type known struct {
	rec   Record
	index uint64
}

// deletion asks the writer to clear key id's record observed before at.
type deletion struct {
	id string
	at time.Time
}

// observation is a key state to write: the record and its key.
type observation struct {
	id  string
	rec Record
}

// New validates cfg and returns a Fleet; Run starts it.
func New(cfg Config) (*Fleet, error) {
	if cfg.Store == nil {
		return nil, errors.New("fleet: Store is required")
	}
	prefix, err := consul.NormalizePrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	cfg.Prefix = prefix
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ID == "" {
		cfg.ID = consul.InstanceID()
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if err := consul.CheckSessionTTL(cfg.SessionTTL); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if cfg.LivenessTTL == 0 {
		cfg.LivenessTTL = DefaultLivenessTTL
	}
	if cfg.LivenessTTL > 0 && (cfg.LivenessTTL < time.Second || cfg.LivenessTTL > cfg.SessionTTL) {
		return nil, fmt.Errorf("fleet: liveness TTL %s: want 1s up to the session TTL %s", cfg.LivenessTTL, cfg.SessionTTL)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	cfg.RetryBase, cfg.RetryMax = consul.RetryBounds(cfg.RetryBase, cfg.RetryMax)
	f := &Fleet{
		cfg: cfg, log: cfg.Logger.With("component", "fleet"), now: cfg.Now, kv: cfg.KV,
		view:    cfg.Store.Fleet(),
		queue:   make(chan observation, cfg.QueueSize),
		deletes: make(chan deletion, cfg.QueueSize),
		members: []string{cfg.ID},
		known:   map[string]known{},
		refused: map[string]store.Refusal{},
		changed: make(chan struct{}),
	}
	if f.kv == nil && cfg.Consul != nil {
		f.kv = cfg.Consul.KV()
	}
	f.over.Store(int64(policy.DefaultShareCooldownOver))
	f.view.SetView(1, 0)
	return f, nil
}

// ID names this member.
func (f *Fleet) ID() string { return f.cfg.ID }

// shared reports whether states are shared and members registered.
func (f *Fleet) shared() bool { return f.kv != nil }

// Changed returns a channel closed at the fleet's next change (members,
// a record applied or refused). Take it before checking.
func (f *Fleet) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *Fleet) notify() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Run shares states and keeps the membership until ctx ends, then leaves
// the fleet (its member entry is deleted with its session) and returns nil.
// Standalone it only waits for ctx.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.shared() {
		<-ctx.Done()
		return nil
	}
	f.view.SetObserver(f.observe)
	defer f.view.SetObserver(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	if f.cfg.Consul != nil {
		wg.Go(func() { f.register(ctx) })
	}
	f.writer(ctx)
	return nil
}

// observe is the store's StateObserver: on the request path, so it only
// decides (pure) and enqueues without blocking; a full queue drops.
func (f *Fleet) observe(keyID string, old, next policy.KeyState, now time.Time) {
	st, ok := policy.ShareWorthy(old, next, now, time.Duration(f.over.Load()))
	if !ok {
		return
	}
	select {
	case f.queue <- observation{keyID, Record{Reason: st.Reason, At: now, Until: st.Until, By: f.cfg.ID}}:
	default:
		f.dropped.Add(1)
	}
}

// ProbePassed tells the fleet that the health leader's probe of key keyID
// passed at at: the key's shared record, if older, is cleared from KV
// (every instance already re-admits the key through the probe's health
// record). It does not block.
func (f *Fleet) ProbePassed(keyID string, at time.Time) {
	if !f.shared() {
		return
	}
	f.mu.Lock()
	k, ok := f.known[keyID]
	f.mu.Unlock()
	if !ok || k.rec.At.After(at) {
		return
	}
	select {
	case f.deletes <- deletion{keyID, at}:
	default:
		f.dropped.Add(1)
	}
}

// writer writes the observed states, coalesced per key, until ctx ends.
func (f *Fleet) writer(ctx context.Context) {
	co := newCoalescer()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	f.refreshSettings()
	for {
		storeCh := f.cfg.Store.Changed()
		select {
		case <-ctx.Done():
			return
		case o := <-f.queue:
			co.add(o.id, o.rec)
		case d := <-f.deletes:
			f.clear(ctx, d)
		case <-storeCh:
			f.refreshSettings()
			f.reapply()
		case <-timer.C:
		}
		ready, next := co.due(f.now())
		for id, r := range ready {
			f.write(ctx, id, r)
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(next.Sub(f.now()), time.Millisecond))
		}
	}
}

// refreshSettings reads settings.share.cooldown_over for observe.
func (f *Fleet) refreshSettings() {
	f.over.Store(int64(f.cfg.Store.Read().Settings().Share.CooldownOver))
}

// probedAt is the key's latest probe here (zero when unknown).
func (f *Fleet) probedAt(id string) time.Time {
	if e := f.cfg.Store.Read().Key(id); e != nil {
		return e.RT.State().ProbedAt
	}
	return time.Time{}
}

// write puts r at state/<id> with a compare-and-set, unless the record KV
// holds already covers it; a lost race is retried on the new value.
func (f *Fleet) write(ctx context.Context, id string, r Record) {
	path := consul.StatePath(f.cfg.Prefix, id)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for range writeAttempts {
		pair, _, err := f.kv.Get(path, (&api.QueryOptions{RequireConsistent: true}).WithContext(wctx))
		if err != nil {
			f.writeFailed(id, err)
			return
		}
		var index uint64
		if pair != nil {
			index = pair.ModifyIndex
			if cur, err := ParseRecord(pair.Value, f.now()); err == nil && Covers(cur, r, f.probedAt(id)) {
				f.covered.Add(1)
				return
			}
		}
		ok, _, err := f.kv.CAS(&api.KVPair{Key: path, Value: r.Marshal(), ModifyIndex: index}, (&api.WriteOptions{}).WithContext(wctx))
		if err != nil {
			f.writeFailed(id, err)
			return
		}
		if ok {
			f.writes.Add(1)
			f.log.Info("key state shared with the fleet", "key", id, "reason", r.Reason, "until", r.Until)
			return
		}
		f.conflicts.Add(1) // another instance wrote first: look again
	}
	f.writeFailed(id, fmt.Errorf("%d compare-and-set conflicts in a row", writeAttempts))
}

func (f *Fleet) writeFailed(id string, err error) {
	f.writeErrors.Add(1)
	f.log.Warn("fleet: cannot share a key state", "path", consul.StatePath(f.cfg.Prefix, id), "error", err)
}

// clear deletes key d.id's record if it is still one observed before the
// passing probe (compare-and-set on its index).
func (f *Fleet) clear(ctx context.Context, d deletion) {
	path := consul.StatePath(f.cfg.Prefix, d.id)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pair, _, err := f.kv.Get(path, (&api.QueryOptions{RequireConsistent: true}).WithContext(wctx))
	if err != nil || pair == nil {
		return
	}
	if cur, err := ParseRecord(pair.Value, f.now()); err == nil && cur.At.After(d.at) {
		return // a newer observation: keep it
	}
	ok, _, err := f.kv.DeleteCAS(&api.KVPair{Key: path, ModifyIndex: pair.ModifyIndex}, (&api.WriteOptions{}).WithContext(wctx))
	switch {
	case err != nil:
		f.writeFailed(d.id, err)
	case ok:
		f.cleared.Add(1)
	default:
		f.conflicts.Add(1)
	}
}

// OnState applies a record read from <prefix>state/<keyID> (raw nil: the
// entry was deleted; the key's state is left as is). Wire it as
// store/consul Options.OnState. A bad record is refused, listed on /status
// with its path and reason, and changes nothing.
func (f *Fleet) OnState(keyID string, raw []byte, index uint64) {
	path := consul.StatePath(f.cfg.Prefix, keyID)
	f.mu.Lock()
	delete(f.refused, keyID)
	delete(f.known, keyID)
	var rec Record
	var err error
	if raw != nil {
		rec, err = ParseRecord(raw, f.now())
		if err != nil {
			f.refused[keyID] = store.Refusal{Path: path, Reason: err.Error()}
		} else {
			f.known[keyID] = known{rec, index}
		}
	}
	f.mu.Unlock()
	switch {
	case raw == nil:
	case err != nil:
		f.refusals.Add(1)
		f.log.Warn("fleet: refusing a shared key state", "path", path, "error", err)
	default:
		f.apply(keyID, rec)
	}
	f.notify()
}

// apply puts rec on the key's runtime state, counting a change.
func (f *Fleet) apply(keyID string, rec Record) {
	e := f.cfg.Store.Read().Key(keyID)
	if e == nil {
		return
	}
	before := e.RT.State()
	if after := e.RT.Update(rec.Apply); after != before {
		f.applied.Add(1)
		f.log.Info("key state applied from the fleet", "key", keyID, "reason", rec.Reason, "by", rec.By, "until", rec.Until)
	}
}

// reapply applies the known records again after a configuration change
// (a key added after its record arrived).
func (f *Fleet) reapply() {
	f.mu.Lock()
	recs := make(map[string]Record, len(f.known))
	for id, k := range f.known {
		recs[id] = k.rec
	}
	f.mu.Unlock()
	for id, r := range recs {
		f.apply(id, r)
	}
}

// OnMembers takes the live members read from <prefix>members/ (sorted
// ids): this instance counts itself in (also before its own entry shows)
// and enforces its share of every limit at its rank. Wire it as
// store/consul Options.OnMembers.
func (f *Fleet) OnMembers(ids []string) {
	all := slices.Clone(ids)
	if !slices.Contains(all, f.cfg.ID) {
		all = append(all, f.cfg.ID)
	}
	slices.Sort(all)
	rank := slices.Index(all, f.cfg.ID)
	f.mu.Lock()
	same := slices.Equal(all, f.members)
	f.members = all
	f.mu.Unlock()
	f.view.SetView(len(all), rank)
	if !same {
		f.memberChanges.Add(1)
		f.log.Info("fleet members changed: limits re-balanced", "members", len(all), "rank", rank)
	}
	f.notify()
}
