package extproc

import (
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// eligibleSet is what selection needs of a pool between two changes of
// its keys' states: the keys that may take a request, and the best
// priority tier of them. It is built by a scan of the pool when a request
// finds the previous one stale — a key's state changed (store.StateEpoch:
// cooldown, disable, ejection, probe), or the earliest time-bound
// exclusion ended — and shared read-only by the requests that follow, so
// that a request no longer checks every key of its pool. Admission that
// depends on the request is not cached: a pool with rpm or tpm limits (a
// key's minute counters change its eligibility with every request), and,
// while one of its keys has a per-model state (headroom, model cooldown:
// the request's token estimate decides) or is in slow start (the
// selection's number decides), is scanned per request as before.
type eligibleSet struct {
	epoch   uint64    // store.StateEpoch() before the scan
	until   time.Time // when the earliest time-bound exclusion or slow start ends (zero: none)
	limited bool      // a key of the pool has limits: scan per request, for good
	scan    bool      // a key has model state or is in slow start: scan per request while the set is valid
	entries []*store.Entry
	skipped []telemetry.Skip // the keys left out, and why (pool order)
	// The best priority tier of entries, in pool order: the candidates
	// (Key only) and their entries.
	tier        []policy.Candidate
	tierEntries []*store.Entry
}

// valid reports whether the set still holds at now.
func (s *eligibleSet) valid(now time.Time) bool {
	return s.epoch == store.StateEpoch() && (s.until.IsZero() || now.Before(s.until))
}

// eligibleOf returns pool's eligible set at now, nil when the pool must be
// scanned per request; slowStart is settings.ejection.slow_start.
func eligibleOf(pool *store.Pool, now time.Time, slowStart time.Duration) *eligibleSet {
	s, _ := pool.Selection.Load().(*eligibleSet)
	if s == nil || (!s.limited && !s.valid(now)) {
		s = buildEligible(pool, store.StateEpoch(), now, slowStart)
		pool.Selection.Store(s)
	}
	if s.limited || s.scan {
		return nil
	}
	return s
}

// buildEligible scans pool at now; epoch is the state epoch read before.
func buildEligible(pool *store.Pool, epoch uint64, now time.Time, slowStart time.Duration) *eligibleSet {
	s := &eligibleSet{epoch: epoch}
	ends := func(t time.Time) {
		if !t.IsZero() && (s.until.IsZero() || t.Before(s.until)) {
			s.until = t
		}
	}
	var cands []policy.Candidate
	for _, e := range pool.Entries {
		if l := e.Key.Limits; l.RPM > 0 || l.TPM > 0 {
			return &eligibleSet{limited: true}
		}
		st := e.RT.State()
		ok, why := policy.Eligible(e.Key, st, now)
		if !ok {
			ends(why.Until)
			s.skipped = append(s.skipped, telemetry.Skip{KeyID: e.Key.ID, Reason: why.Reason, Until: why.Until})
			continue
		}
		if e.RT.HasModels() {
			s.scan = true
		}
		if policy.SlowStartShare(st.SlowStartFrom, now, slowStart) < 1 {
			s.scan = true
			ends(st.SlowStartFrom.Add(slowStart))
		}
		s.entries = append(s.entries, e)
		cands = append(cands, policy.Candidate{Key: e.Key})
	}
	for _, i := range policy.BestTier(nil, cands) {
		s.tier = append(s.tier, cands[i])
		s.tierEntries = append(s.tierEntries, s.entries[i])
	}
	return s
}
