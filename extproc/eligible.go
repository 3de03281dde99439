package extproc

import (
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// eligibleSet is what selection needs of a pool between two changes of
// its keys' states: the keys that may take a request, and the best
// priority tier of them. It is built by a scan of the pool when a request
// finds the previous one stale — a key's state changed (store.StateEpoch:
// cooldown, disable, ejection, probe), or the earliest time-bound
// exclusion ended — and shared read-only by the requests that follow, so
// that a request no longer checks every key of its pool. Pools with rpm or
// tpm limits are not cached: a key's minute counters change its
// eligibility with every request (they are scanned per request).
type eligibleSet struct {
	epoch   uint64    // store.StateEpoch() before the scan
	until   time.Time // when the earliest time-bound exclusion ends (zero: none)
	limited bool      // a key of the pool has limits: scan per request
	entries []*store.Entry
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
// scanned per request (limits).
func eligibleOf(pool *store.Pool, now time.Time) *eligibleSet {
	if s, _ := pool.Selection.Load().(*eligibleSet); s != nil && (s.limited || s.valid(now)) {
		if s.limited {
			return nil
		}
		return s
	}
	s := buildEligible(pool, store.StateEpoch(), now)
	pool.Selection.Store(s)
	if s.limited {
		return nil
	}
	return s
}

// buildEligible scans pool at now; epoch is the state epoch read before.
func buildEligible(pool *store.Pool, epoch uint64, now time.Time) *eligibleSet {
	s := &eligibleSet{epoch: epoch}
	var cands []policy.Candidate
	for _, e := range pool.Entries {
		if l := e.Key.Limits; l.RPM > 0 || l.TPM > 0 {
			return &eligibleSet{limited: true}
		}
		ok, why := policy.Eligible(e.Key, e.RT.State(), now)
		if !ok {
			if !why.Until.IsZero() && (s.until.IsZero() || why.Until.Before(s.until)) {
				s.until = why.Until
			}
			continue
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
