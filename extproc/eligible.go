package extproc

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// eligibleSet is what selection needs of a pool between two changes of
// its keys' states: the keys that may take a request, the best priority
// tier of them, and the strategy's index over that tier (policy.Index:
// a pick in O(log n)). It is built by a scan of the pool when a request
// finds the previous one stale — a key's state changed (store.StateEpoch:
// cooldown, disable, ejection, probe, a first per-model state), the
// earliest time-bound exclusion or slow start ended, or (for
// adjust_by_error_rate) a second turned while a key had errors in its
// window — and shared read-only by the requests that follow, so that a
// request no longer checks every key of its pool. Admission that depends
// on the request — a key's rpm/tpm, its per-model headroom (the request's
// token estimate decides), its slow start (the selection's number
// decides) — is checked on the key the index proposes (check), with a
// few more proposals when it refuses and a scan of the pool only when
// they all fail.
type eligibleSet struct {
	epoch uint64    // store.StateEpoch() before the scan
	until time.Time // when the earliest time-bound exclusion or slow start ends (zero: none)
	// errFrom is the unix second from which the index's error counts may
	// be too high (an error leaves the window): the set is rebuilt then.
	// 0: no key had errors.
	errFrom atomic.Int64
	check   bool // a key has limits, model state or is in slow start: admit each proposal
	entries []*store.Entry
	skipped []telemetry.Skip // the keys left out, and why (pool order)
	// The best priority tier of entries, in pool order: the candidates
	// (Key and the counters the strategy reads, as of the scan), their
	// entries and their indexes in the pool.
	tier        []policy.Candidate
	tierEntries []*store.Entry
	tierAt      []int
	strat       policy.Strategy
	index       *policy.Index // nil: a strategy without one (SelectTier over tier)
}

// valid reports whether the set still holds at now.
func (s *eligibleSet) valid(now time.Time) bool {
	if f := s.errFrom.Load(); f != 0 && now.Unix() >= f {
		return false
	}
	return s.epoch == store.StateEpoch() && (s.until.IsZero() || now.Before(s.until))
}

// sawErrors notes that the index holds an error count taken at now.
func (s *eligibleSet) sawErrors(now time.Time) {
	s.errFrom.CompareAndSwap(0, now.Unix()+1)
}

// selection is what an eligible set is built for: the strategy and the
// settings its scan reads.
type selection struct {
	strat       policy.Strategy
	slowStart   time.Duration // settings.ejection.slow_start
	errorWindow time.Duration // settings.ejection.error_window
}

// selectionOf is the selection of settings.
func selectionOf(set *policy.Settings) selection {
	strat, err := policy.StrategyFor(set.Strategy)
	if err != nil {
		strat = policy.RoundRobin{} // settings are validated; this is a safety net
	}
	return selection{strat: strat, slowStart: set.Ejection.SlowStart, errorWindow: set.Ejection.ErrorWindow}
}

// eligibleOf returns pool's eligible set at now for sel.
func eligibleOf(pool *store.Pool, now time.Time, sel selection) *eligibleSet {
	s, _ := pool.Selection.Load().(*eligibleSet)
	// Strategies compare by name (unique in the registry): one registered
	// from outside may be a value Go cannot compare.
	if s == nil || s.strat.Name() != sel.strat.Name() || !s.valid(now) {
		s = buildEligible(pool, store.StateEpoch(), now, sel)
		pool.Selection.Store(s)
	}
	return s
}

// buildEligible scans pool at now; epoch is the state epoch read before.
func buildEligible(pool *store.Pool, epoch uint64, now time.Time, sel selection) *eligibleSet {
	s := &eligibleSet{epoch: epoch, strat: sel.strat}
	ends := func(t time.Time) {
		if !t.IsZero() && (s.until.IsZero() || t.Before(s.until)) {
			s.until = t
		}
	}
	var cands []policy.Candidate
	var at []int
	for i, e := range pool.Entries {
		if l := e.Key.Limits; l.RPM > 0 || l.TPM > 0 {
			s.check = true
		}
		st := e.RT.State()
		ok, why := policy.Eligible(e.Key, st, now)
		if !ok {
			ends(why.Until)
			s.skipped = append(s.skipped, telemetry.Skip{KeyID: e.Key.ID, Reason: why.Reason, Until: why.Until})
			continue
		}
		if e.RT.HasModels() {
			s.check = true
		}
		if policy.SlowStartShare(st.SlowStartFrom, now, sel.slowStart) < 1 {
			s.check = true
			ends(st.SlowStartFrom.Add(sel.slowStart))
		}
		s.entries = append(s.entries, e)
		cands = append(cands, policy.Candidate{Key: e.Key})
		at = append(at, i)
	}
	needUsage, needErrors := policy.StrategyInputs(sel.strat)
	for _, i := range policy.BestTier(nil, cands) {
		c, e := cands[i], s.entries[i]
		if needUsage {
			c.Usage = e.RT.Requests()
		}
		if needErrors {
			if c.Errors = e.RT.ErrorsInWindow(now, sel.errorWindow); c.Errors > 0 {
				s.sawErrors(now)
			}
		}
		s.tier = append(s.tier, c)
		s.tierEntries = append(s.tierEntries, e)
		s.tierAt = append(s.tierAt, at[i])
	}
	switch {
	case !policy.UsesRing(sel.strat):
		s.index = policy.NewIndex(sel.strat, s.tier, nil, nil)
	case len(s.tier)*8 < len(pool.Entries):
		// A small tier of a large pool (e.g. the few keys of the first
		// priority): a ring of its own, rather than walks over the pool's
		// ring past the keys outside the tier.
		s.index = policy.NewIndex(sel.strat, s.tier, nil, nil)
	default:
		s.index = policy.NewIndex(sel.strat, s.tier, poolRing(pool), s.tierAt)
	}
	return s
}

// poolRing returns the affinity ring of pool's keys, built once per pool
// (store.Pool.Ring). A pool of a new configuration generation with the
// same keys and weights as a live pool of the same model takes that
// pool's ring (poolRings): a ring of 10,000 keys takes tens of
// milliseconds to build.
func poolRing(pool *store.Pool) *policy.Ring {
	if r := pool.Ring.Load(); r != nil {
		return r
	}
	var h maphash.Hash
	h.SetSeed(ringSeed)
	var w [8]byte
	for _, e := range pool.Entries {
		h.WriteString(e.Key.ID)
		binary.LittleEndian.PutUint64(w[:], math.Float64bits(e.Key.Weight))
		h.Write(w[:])
	}
	sum := h.Sum64()
	v, _ := poolRings.Load(pool.Model)
	pr, _ := v.(*pooledRing)
	built := pr == nil || pr.sum != sum
	if built {
		all := make([]policy.Candidate, len(pool.Entries))
		for i, e := range pool.Entries {
			all[i].Key = e.Key
		}
		pr = &pooledRing{model: pool.Model, sum: sum, ring: policy.NewRing(all)}
	}
	// Only the request that gives the pool its ring counts it and, for a
	// ring it built, publishes it: a ring built by two requests at once is
	// cached once, with its user.
	if pool.Ring.CompareAndSwap(nil, pr.ring) {
		pr.users.Add(1)
		runtime.AddCleanup(pool, releaseRing, pr)
		if built {
			poolRings.Store(pool.Model, pr)
		}
	}
	return pool.Ring.Load()
}

// poolRings holds, per model, the ring of the latest pool that built one,
// while a pool holding it is alive: models that are gone leave nothing.
var poolRings sync.Map // model → *pooledRing

type pooledRing struct {
	model string
	sum   uint64 // hash of the keys and weights the ring was built from
	ring  *policy.Ring
	users atomic.Int64 // live pools holding ring
}

// releaseRing runs when a pool holding pr's ring has been collected.
func releaseRing(pr *pooledRing) {
	if pr.users.Add(-1) == 0 {
		poolRings.CompareAndDelete(pr.model, pr)
	}
}

var ringSeed = maphash.MakeSeed()
