package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
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
	DefaultPrefix       = consul.DefaultPrefix
	DefaultRecoveryBase = 30 * time.Second // capped by the interval
	DefaultRecoveryMax  = 5 * time.Minute  // capped by the interval
	DefaultJitter       = 0.1
	DefaultConcurrency  = 8
	// maxTick bounds how long the scheduler sleeps without looking at the
	// keys' passive state (extproc changes it without telling health).
	maxTick = time.Second
)

// Config configures a Checker.
type Config struct {
	// Store holds the keys and their runtime state (required).
	Store *store.Store
	// HTTPClient sends the probes; nil: NewProbeClient (no proxy, no
	// redirects). Timeouts come from the settings (per probe).
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Now is the clock for probe times; nil = time.Now. Timers use real time.
	Now func() time.Time
	// Consul, when set, elects one prober per cluster with a session lock on
	// <Prefix>leader/health and shares results in <Prefix>health/<key id>.
	// nil = standalone: this instance probes for itself and writes no KV.
	Consul *api.Client
	// Prefix is the KV prefix (default DefaultPrefix; "/" appended).
	Prefix string
	// ID names this instance in the lock value and in records
	// (default hostname-pid-random, consul.InstanceID).
	ID string

	// Interval and Timeout override settings.health.interval/timeout
	// (tests); 0 = the settings.
	Interval, Timeout time.Duration
	// RecoveryBase and RecoveryMax bound the probes of keys out of
	// rotation: the n-th consecutive failed probe is followed by another
	// after min(RecoveryBase·2^(n-1), RecoveryMax). Defaults:
	// min(interval, 30s) and min(interval, 5m).
	RecoveryBase, RecoveryMax time.Duration
	// Jitter is the fraction of the interval by which a healthy key's next
	// probe comes early (uniform in [0, Jitter]); default 0.1. Negative = none.
	Jitter float64
	// Concurrency bounds probes in flight (default 8).
	Concurrency int
	// SessionTTL and LockDelay of the leader's Consul session
	// (defaults DefaultSessionTTL, DefaultLockDelay; Consul's minimum TTL
	// is 10s).
	SessionTTL, LockDelay time.Duration
	// RetryBase and RetryMax bound the backoff after a Consul error
	// (defaults 250ms, 10s).
	RetryBase, RetryMax time.Duration
	// OnLeaderPass, when set, hears of every passing probe the leader
	// wrote to KV (key id, checked_at): the fleet clears the key's shared
	// state (package fleet). It must not block.
	OnLeaderPass func(keyID string, at time.Time)
}

// Checker runs the active probes of one instance. See the package doc.
type Checker struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	client  *http.Client
	consul  *api.Client
	kv      *api.KV
	lockKey string
	healthP string // <prefix>health/

	leader  atomic.Bool
	abandon atomic.Bool // test hook: on stop, leave the session to expire
	kick    chan struct{}

	mu          sync.Mutex
	rnd         *rand.Rand
	keys        map[string]*keySched
	records     map[string]Record // latest record read from KV, by key id
	keysGen     uint64            // the store generation keysIn is of
	keysIn      map[string]bool   // every key of that generation, enabled or not
	ticks       uint64            // schedule calls so far (keySched.seenTick)
	changed     chan struct{}
	leaderSince time.Time

	probes, probeFailures, rateLimited, recoveryProbes  atomic.Uint64
	kvWrites, kvWriteErrors, recordsApplied, recordsBad atomic.Uint64
	terms, kvTxns                                       atomic.Uint64

	writes chan kvOp // the leader's KV writes, batched by Run
}

// keySched is the scheduler's memory of one key.
type keySched struct {
	outSince time.Time // when the key was first seen out of rotation (zero: in)
	first    time.Time // first probe of a never-probed key
	jitFor   time.Time // the ProbedAt jit was drawn for
	jit      float64   // in [0, 1)
	fails    int       // consecutive failed probes (shared through KV)
	inflight bool
	last     *Record // latest result known here (own probe or KV)
	probes   uint64  // probes this instance ran for the key
	seenTick uint64  // the last schedule call that saw the key enabled
}

// New validates cfg and returns a Checker; Run starts it.
func New(cfg Config) (*Checker, error) {
	if cfg.Store == nil {
		return nil, errors.New("health: Store is required")
	}
	prefix, err := consul.NormalizePrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
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
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = NewProbeClient()
	}
	switch {
	case cfg.Interval < 0, cfg.Timeout < 0, cfg.RecoveryBase < 0, cfg.RecoveryMax < 0:
		return nil, errors.New("health: durations must not be negative")
	case cfg.Jitter >= 1:
		return nil, fmt.Errorf("health: jitter %v must be below 1", cfg.Jitter)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = DefaultJitter
	}
	if cfg.Jitter < 0 {
		cfg.Jitter = 0
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if err := consul.CheckSessionTTL(cfg.SessionTTL); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	if cfg.LockDelay == 0 {
		cfg.LockDelay = DefaultLockDelay
	}
	if cfg.LockDelay < 0 || cfg.LockDelay > time.Minute {
		return nil, fmt.Errorf("health: lock delay %s outside 0–60s", cfg.LockDelay)
	}
	cfg.RetryBase, cfg.RetryMax = consul.RetryBounds(cfg.RetryBase, cfg.RetryMax)
	c := &Checker{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "health"),
		now:     cfg.Now,
		client:  cfg.HTTPClient,
		consul:  cfg.Consul,
		lockKey: cfg.Prefix + "leader/health",
		healthP: cfg.Prefix + "health/",
		kick:    make(chan struct{}, 1),
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		keys:    map[string]*keySched{},
		records: map[string]Record{},
		changed: make(chan struct{}),
		writes:  make(chan kvOp, MaxTxnOps),
	}
	if cfg.Consul != nil {
		c.kv = cfg.Consul.KV()
	}
	return c, nil
}

// LockKey is the KV key of the leader lock.
func (c *Checker) LockKey() string { return c.lockKey }

// HealthPrefix is the KV folder of the probe results.
func (c *Checker) HealthPrefix() string { return c.healthP }

// IsLeader reports whether this instance probes for the cluster (always
// true standalone once Run started).
func (c *Checker) IsLeader() bool { return c.leader.Load() }

func (c *Checker) setLeader(v bool) {
	if c.leader.Swap(v) == v {
		return
	}
	c.mu.Lock()
	if v {
		c.leaderSince = c.now()
	} else {
		c.leaderSince = time.Time{}
	}
	c.mu.Unlock()
	if !v && c.consul != nil {
		c.log.Info("health leader: stepped down", "lock", c.lockKey)
	}
	c.wake()
	c.notify()
}

// Changed returns a channel closed at the checker's next state change (a
// probe finished, a KV record applied, leadership changed). Take it before
// checking the condition you wait for.
func (c *Checker) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Checker) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *Checker) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Checker) rand() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rnd.Float64()
}

// Run probes until ctx ends, then returns nil once its probes have
// finished. With Consul it campaigns for the lock and probes only while
// holding it (and, as a fallback, keys that are out of rotation here but
// that no leader result has covered within their recovery delay; those
// results stay local).
func (c *Checker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if c.consul != nil {
		wg.Go(func() { c.elect(ctx) })
		wg.Go(func() {
			batches(ctx, c.writes, MaxTxnOps, writeLinger, func(b []kvOp) { c.flush(ctx, b) })
		})
	} else {
		c.setLeader(true)
		defer c.setLeader(false)
	}
	sem := make(chan struct{}, c.cfg.Concurrency)
	reapply := true
	for {
		storeCh := c.cfg.Store.Changed()
		if reapply {
			c.reapplyRecords()
			reapply = false
		}
		wait := c.schedule(ctx, sem, &wg)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-storeCh:
			reapply = true
		case <-c.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// settings returns the interval and timeout in force.
func (c *Checker) settings(snap *store.Snapshot) (interval, timeout time.Duration) {
	s := snap.Settings()
	interval, timeout = c.cfg.Interval, c.cfg.Timeout
	if interval <= 0 {
		interval = policy.DefaultHealthInterval
		if s != nil && s.Health.Interval > 0 {
			interval = s.Health.Interval
		}
	}
	if timeout <= 0 {
		timeout = policy.DefaultHealthTimeout
		if s != nil && s.Health.Timeout > 0 {
			timeout = s.Health.Timeout
		}
	}
	return interval, min(timeout, interval)
}

// recovery returns the recovery schedule's base and cap for interval.
func (c *Checker) recovery(interval time.Duration) (base, ceil time.Duration) {
	base, ceil = c.cfg.RecoveryBase, c.cfg.RecoveryMax
	if base <= 0 {
		base = DefaultRecoveryBase
	}
	if ceil <= 0 {
		ceil = DefaultRecoveryMax
	}
	base, ceil = min(base, interval), min(ceil, interval)
	return base, max(base, ceil)
}

// RecoveryDelay is the wait before the next probe of a key out of rotation
// after fails consecutive failed probes: min(base·2^(fails-1), ceil), base
// for fails ≤ 1.
func RecoveryDelay(base, ceil time.Duration, fails int) time.Duration {
	d := base
	for i := 1; i < fails && d < ceil; i++ {
		if d > ceil/2 {
			return ceil
		}
		d *= 2
	}
	return min(d, ceil)
}

// outOfRotation reports whether the key is out until something (a probe,
// or for an ejection its backoff) brings it back: disabled after
// auth/quota, the latest probe failed, or ejected. A 429 cooldown ends by
// itself and is not counted.
func outOfRotation(s policy.KeyState, now time.Time) bool {
	return s.Disabled || s.ProbeFailed || now.Before(s.EjectedUntil)
}

// schedule starts the probes that are due and returns how long to sleep.
func (c *Checker) schedule(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) time.Duration {
	snap := c.cfg.Store.Read()
	interval, timeout := c.settings(snap)
	base, ceil := c.recovery(interval)
	tick := min(max(base/4, 10*time.Millisecond), maxTick)
	now := c.now()
	leader := c.leader.Load()
	wait := tick

	type launch struct {
		e        *store.Entry
		recovery bool
	}
	// At most as many launches as free probe slots: with thousands of keys
	// out of rotation, most of them wait for a later tick anyway.
	var due []launch
	free, more := cap(sem)-len(sem), false
	c.mu.Lock()
	c.ticks++
	for _, e := range snap.Pool("").Entries { // the enabled keys, without a copy
		id := e.Key.ID
		s := c.keys[id]
		if s == nil {
			s = &keySched{}
			if r, ok := c.records[id]; ok {
				s.fails, s.last = r.Failures, &r
			}
			c.keys[id] = s
		}
		s.seenTick = c.ticks
		st := e.RT.State()
		out := outOfRotation(st, now)
		switch {
		case out && s.outSince.IsZero():
			s.outSince = now
		case !out:
			s.outSince = time.Time{}
		}
		if !out && leader && st.ProbedAt.IsZero() && s.first.IsZero() {
			spread := min(time.Duration(float64(interval)*c.cfg.Jitter), 30*time.Second)
			s.first = now.Add(time.Duration(c.rnd.Float64() * float64(spread)))
		}
		if !st.ProbedAt.IsZero() && !s.jitFor.Equal(st.ProbedAt) {
			s.jitFor, s.jit = st.ProbedAt, c.rnd.Float64()
		}
		next := c.due(s, st, out, leader, interval, base, ceil)
		if next.IsZero() || s.inflight {
			continue
		}
		if d := next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if len(due) == free {
			more = true
			continue
		}
		due = append(due, launch{e, out})
	}
	for id, s := range c.keys {
		if s.seenTick != c.ticks {
			delete(c.keys, id)
		}
	}
	removed := c.removedKeys(snap)
	c.mu.Unlock()
	if leader && c.consul != nil {
		for _, id := range removed {
			c.enqueue(ctx, kvOp{id: id})
		}
	}

	for _, l := range due {
		select {
		case sem <- struct{}{}:
		default:
			return tick // all slots busy; a finishing probe wakes the loop
		}
		c.mu.Lock()
		s := c.keys[l.e.Key.ID]
		s.inflight = true
		c.mu.Unlock()
		wg.Go(func() {
			defer func() { <-sem }()
			c.probeKey(ctx, l.e, timeout, l.recovery, leader)
		})
	}
	if more {
		return tick // more are due than slots were free; a finishing probe wakes the loop
	}
	return wait
}

// removedKeys returns the keys that the configuration had before snap's
// generation and no longer has (disabled keys stay). c.mu is held.
func (c *Checker) removedKeys(snap *store.Snapshot) []string {
	gen := snap.Generation()
	if gen == c.keysGen {
		return nil
	}
	now := map[string]bool{}
	for _, e := range snap.Keys() {
		now[e.Key.ID] = true
	}
	var removed []string
	for id := range c.keysIn {
		if !now[id] {
			removed = append(removed, id)
		}
	}
	c.keysGen, c.keysIn = gen, now
	return removed
}

// due returns when this instance should next probe a key with scheduler
// memory s and state st (zero: not this instance's job). It has no side
// effects; schedule draws s.first and s.jit beforehand.
func (c *Checker) due(s *keySched, st policy.KeyState, out, leader bool, interval, base, ceil time.Duration) time.Time {
	var next time.Time
	switch {
	case out && leader:
		next = later(st.ProbedAt, s.outSince).Add(RecoveryDelay(base, ceil, s.fails))
	case out:
		// Not the leader: wait for the leader's result first (one more
		// recovery delay); probe locally only if none came.
		next = later(st.ProbedAt, s.outSince).Add(RecoveryDelay(base, ceil, s.fails) + base)
	case !leader:
		return time.Time{} // in rotation: the leader's business
	case st.ProbedAt.IsZero():
		next = s.first
	default:
		next = st.ProbedAt.Add(interval - time.Duration(s.jit*c.cfg.Jitter*float64(interval)))
	}
	// A key cooling down after a 429 is not probed before the cooldown
	// ends: the probe would spend its rate limit and prove nothing new.
	return later(next, st.CooldownUntil)
}

// probeKey probes one key, applies the result here and, as leader with
// Consul, writes it to KV.
func (c *Checker) probeKey(ctx context.Context, e *store.Entry, timeout time.Duration, recovery, leader bool) {
	id := e.Key.ID
	res := Probe(ctx, c.client, e.Key, timeout, c.now)
	if ctx.Err() != nil {
		c.mu.Lock()
		if s := c.keys[id]; s != nil {
			s.inflight = false
		}
		c.mu.Unlock()
		return // shutting down: the result says nothing about the key
	}
	now := c.now()
	c.probes.Add(1)
	if recovery {
		c.recoveryProbes.Add(1)
	}
	if !res.OK {
		c.probeFailures.Add(1)
	}
	rec := Record{
		Healthy:   res.OK,
		CheckedAt: now.UTC().Round(0),
		LatencyMS: res.Latency.Milliseconds(),
		Error:     res.Error,
		Status:    res.Status,
		By:        c.cfg.ID,
	}
	if res.Kind == policy.OutcomeRateLimited {
		c.rateLimited.Add(1)
		until := res.RetryAt
		if until.IsZero() {
			if s := c.cfg.Store.Read().Settings(); s != nil && s.Ejection.Cooldown > 0 {
				until = now.Add(s.Ejection.Cooldown)
			} else {
				until = now.Add(policy.DefaultCooldown)
			}
		}
		rec.CooldownUntil = until.UTC().Round(0)
	}
	c.mu.Lock()
	s := c.keys[id]
	if s == nil {
		s = &keySched{}
		c.keys[id] = s
	}
	if res.OK {
		s.fails = 0
	} else {
		s.fails++
	}
	rec.Failures = s.fails
	s.last, s.inflight = &rec, false
	s.probes++
	c.mu.Unlock()

	e.RT.Update(rec.Apply)
	level := slog.LevelDebug
	if !res.OK {
		level = slog.LevelWarn
	}
	c.log.Log(ctx, level, "key probed", "key", id, "healthy", res.OK, "status", res.Status,
		"latency_ms", rec.LatencyMS, "error", rec.Error, "failures", rec.Failures, "recovery", recovery)

	if leader && c.consul != nil && c.leader.Load() {
		op := kvOp{id: id, value: rec.Marshal()}
		if rec.Healthy {
			op.passedAt = rec.CheckedAt
		}
		c.enqueue(ctx, op)
	}
	c.wake()
	c.notify()
}

// OnHealth applies a record read from <prefix>health/<keyID>; raw nil means
// the entry was deleted (the key's state is left as is). Wire it as
// store/consul Options.OnHealth. Safe for concurrent use; it does not block
// on I/O.
func (c *Checker) OnHealth(keyID string, raw []byte) {
	if raw == nil {
		c.mu.Lock()
		delete(c.records, keyID)
		c.mu.Unlock()
		return
	}
	rec, err := ParseRecord(raw, c.now())
	if err != nil {
		c.recordsBad.Add(1)
		c.log.Warn("health: ignoring a bad health record", "path", c.healthP+keyID, "error", err)
		return
	}
	c.mu.Lock()
	c.records[keyID] = rec
	if s := c.keys[keyID]; s != nil && (s.last == nil || !rec.CheckedAt.Before(s.last.CheckedAt)) {
		s.last, s.fails = &rec, rec.Failures
	}
	c.mu.Unlock()
	if e := c.cfg.Store.Read().Key(keyID); e != nil {
		before := e.RT.State().ProbedAt
		if after := e.RT.Update(rec.Apply).ProbedAt; !after.Equal(before) {
			c.recordsApplied.Add(1)
		}
	}
	c.wake()
	c.notify()
}

// reapplyRecords applies the known KV records again after a configuration
// change (a key added after its record arrived, a runtime replaced).
func (c *Checker) reapplyRecords() {
	c.mu.Lock()
	recs := make(map[string]Record, len(c.records))
	for id, r := range c.records {
		recs[id] = r
	}
	c.mu.Unlock()
	snap := c.cfg.Store.Read()
	for id, r := range recs {
		if e := snap.Key(id); e != nil {
			e.RT.Update(r.Apply)
		}
	}
}

// The KeyStatus.State values (telemetry.KeyHealth.State uses the same).
const (
	StateHealthy     = "healthy"
	StateCoolingDown = "cooling_down"
	StateEjected     = "ejected"
	StateHalfOpen    = "half_open"
	StateDisabled    = "disabled"
	StateProbeFailed = "probe_failed"
)

// KeyStatus is one key's health for /status, /stats and metrics. It never
// holds a secret.
type KeyStatus struct {
	ID     string    `json:"id"`
	State  string    `json:"state"`            // State* constants
	Reason string    `json:"reason,omitempty"` // policy.Ineligible reason when out (auth_failed, quota_exhausted, …)
	Until  time.Time `json:"until,omitzero"`   // end of a cooldown or ejection
	// The latest probe result known here (this instance's or the leader's).
	LastProbe   time.Time `json:"last_probe,omitzero"`
	LastHealthy bool      `json:"last_healthy"`
	LatencyMS   int64     `json:"latency_ms"`
	Error       string    `json:"error,omitempty"`
	// Failures counts consecutive failed probes.
	Failures int `json:"failures"`
	// NextProbe is when this instance will probe the key (zero: not this
	// instance's job, e.g. a healthy key on a follower).
	NextProbe time.Time `json:"next_probe,omitzero"`
	// Probes counts probes of the key run by this instance.
	Probes uint64 `json:"probes"`
	// Leader reports whether this instance is the prober (same on every row).
	Leader bool `json:"leader"`
	// Passive counters from the store's runtime.
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	Tokens   uint64 `json:"tokens"`
}

// StateOf names a key's health at now.
func StateOf(k *policy.Key, s policy.KeyState, now time.Time) (state string, reason policy.Ineligible) {
	ok, why := policy.Eligible(k, s, now)
	if ok {
		if s.HalfOpenAt(now) {
			return StateHalfOpen, why
		}
		return StateHealthy, why
	}
	switch why.Reason {
	case policy.ReasonProbeFailed:
		return StateProbeFailed, why
	case policy.ReasonCoolingDown:
		return StateCoolingDown, why
	case policy.ReasonEjected:
		return StateEjected, why
	}
	return StateDisabled, why
}

// Snapshot returns every key's health, in key id order.
func (c *Checker) Snapshot() []KeyStatus {
	snap := c.cfg.Store.Read()
	now := c.now()
	leader := c.leader.Load()
	interval, _ := c.settings(snap)
	base, ceil := c.recovery(interval)
	entries := snap.Keys()
	out := make([]KeyStatus, 0, len(entries))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		st := e.RT.State()
		state, why := StateOf(e.Key, st, now)
		ks := KeyStatus{
			ID: e.Key.ID, State: state, Until: why.Until, Leader: leader,
			LastProbe: st.ProbedAt, LastHealthy: !st.ProbedAt.IsZero() && !st.ProbeFailed,
			Error:    st.ProbeError,
			Requests: e.RT.Requests(), Errors: e.RT.Errors(), Tokens: e.RT.Usage(),
		}
		if state != StateHealthy && state != StateHalfOpen {
			ks.Reason = why.Reason
		}
		if s := c.keys[e.Key.ID]; s != nil && e.Key.Enabled {
			out := outOfRotation(st, now)
			sc := *s
			if out && sc.outSince.IsZero() {
				sc.outSince = now
			}
			ks.Failures, ks.NextProbe, ks.Probes = s.fails, c.due(&sc, st, out, leader, interval, base, ceil), s.probes
			if s.last != nil {
				ks.LatencyMS = s.last.LatencyMS
				if ks.Error == "" {
					ks.Error = s.last.Error // e.g. "rate limited (429)" on a passing probe
				}
			}
		}
		out = append(out, ks)
	}
	return out
}

// Stats are the checker's counters for /status and metrics.
type Stats struct {
	Mode           string    `json:"mode"` // "standalone" | "consul"
	Leader         bool      `json:"leader"`
	LeaderSince    time.Time `json:"leader_since,omitzero"`
	LeaderTerms    uint64    `json:"leader_terms"` // times this instance acquired the lock
	LockKey        string    `json:"lock_key,omitempty"`
	Probes         uint64    `json:"probes"`          // probes run by this instance
	ProbeFailures  uint64    `json:"probe_failures"`  // of which failed
	RateLimited    uint64    `json:"rate_limited"`    // of which answered 429
	RecoveryProbes uint64    `json:"recovery_probes"` // of keys out of rotation
	KVWrites       uint64    `json:"kv_writes"`
	KVWriteErrors  uint64    `json:"kv_write_errors"`
	KVTxns         uint64    `json:"kv_txns"`         // Consul transactions that carried the writes (at most MaxTxnOps each)
	RecordsApplied uint64    `json:"records_applied"` // KV results that changed a key here
	RecordsBad     uint64    `json:"records_bad"`     // KV values refused by ParseRecord
}

// Stats returns the counters.
func (c *Checker) Stats() Stats {
	c.mu.Lock()
	since := c.leaderSince
	c.mu.Unlock()
	st := Stats{
		Mode: "standalone", Leader: c.leader.Load(), LeaderSince: since, LeaderTerms: c.terms.Load(),
		Probes: c.probes.Load(), ProbeFailures: c.probeFailures.Load(), RateLimited: c.rateLimited.Load(),
		RecoveryProbes: c.recoveryProbes.Load(), KVWrites: c.kvWrites.Load(), KVWriteErrors: c.kvWriteErrors.Load(), KVTxns: c.kvTxns.Load(),
		RecordsApplied: c.recordsApplied.Load(), RecordsBad: c.recordsBad.Load(),
	}
	if c.consul != nil {
		st.Mode, st.LockKey = "consul", c.lockKey
	}
	return st
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
