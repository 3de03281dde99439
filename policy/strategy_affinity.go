package policy

import "math"

// StrategyAffinity is the settings.strategy name of Affinity.
const StrategyAffinity = "affinity"

// Affinity keeps the requests that share an affinity key (a session, a user,
// OpenAI's prompt_cache_key) on the same upstream key, so that the
// provider's prompt cache stays warm — rotation defeats it. It is weighted
// rendezvous hashing: every candidate scores Weight / −ln(h), h uniform in
// (0, 1) from hashing seq with the key id, and the highest score wins. When
// the eligible set changes only the requests of the keys that left or
// joined move, and over many affinity keys each key's share is
// Weight / ΣWeight.
//
// seq must be the hash of the request's affinity key (see AffinityHash);
// the caller passes its counter when the request has none, which spreads
// such requests like random picks.
type Affinity struct{}

var _ Strategy = Affinity{}

func init() { Register(Affinity{}) }

// Name implements Strategy.
func (Affinity) Name() string { return StrategyAffinity }

// Inputs implements InputsReader.
func (Affinity) Inputs() (usage, errors bool) { return false, false }

// UsesAffinity implements AffinityUser.
func (Affinity) UsesAffinity() bool { return true }

// Pick implements Strategy.
func (Affinity) Pick(cands []Candidate, seq uint64, _ float64) int {
	best, bestScore := 0, math.Inf(-1)
	for i := range cands {
		id := ""
		if cands[i].Key != nil {
			id = cands[i].Key.ID
		}
		// 53 random bits from the pair, mapped into (0, 1).
		h := (float64(mix64(seq^AffinityHash(id))>>11) + 0.5) / (1 << 53)
		if score := weight(&cands[i]) / -math.Log(h); score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// AffinityUser is implemented by strategies whose seq argument is the hash
// of the request's affinity key rather than a counter.
type AffinityUser interface{ UsesAffinity() bool }

// UsesAffinity reports whether s wants AffinityHash(affinity key) as seq.
func UsesAffinity(s Strategy) bool {
	a, ok := s.(AffinityUser)
	return ok && a.UsesAffinity()
}

// AffinityHash is the 64-bit FNV-1a hash of s, finalised with mix64.
func AffinityHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// mix64 is the splitmix64 finaliser: every input bit affects every output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
