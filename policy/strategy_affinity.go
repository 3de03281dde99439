package policy

import (
	"math"
	"slices"
)

// StrategyAffinity is the settings.strategy name of Affinity.
const StrategyAffinity = "affinity"

// Affinity keeps the requests that share an affinity key (a session, a user,
// OpenAI's prompt_cache_key) on the same upstream key, so that the
// provider's prompt cache stays warm — rotation defeats it. It is
// consistent hashing on a ring: every key has RingPointsPerWeight points
// per unit of its Weight (at least one, at most RingMaxPoints) at
// positions hashed from its id, and a request goes to the key of the
// first point at or after the hash of seq. When the eligible set changes
// only the requests of the keys that left or joined move, and over many
// affinity keys each key's share is about Weight / ΣWeight (the points of
// a weight-1 key spread its share by about a tenth of itself).
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

// Pick implements Strategy: the candidate whose point follows seq's
// closest on the ring (ties: the earlier candidate), without building the
// ring — O(points). An Index over a Ring picks the same in O(log points).
func (Affinity) Pick(cands []Candidate, seq uint64, _ float64) int {
	h := mix64(seq) >> ownerBits
	best, bestD := 0, uint64(math.MaxUint64)
	for i := range cands {
		base := AffinityHash(keyID(&cands[i]))
		for j := range ringPoints(&cands[i]) {
			if d := (ringPos(base, j) - h) & posMask; d < bestD {
				best, bestD = i, d
			}
		}
	}
	return best
}

// The ring's geometry.
const (
	// RingPointsPerWeight is the number of ring points of a key per unit
	// of its weight.
	RingPointsPerWeight = 100
	// RingMaxPoints caps a key's points (weights above 64 count as 64).
	RingMaxPoints = 64 * RingPointsPerWeight
	// A ring point is its position (the high 40 bits) and its owner's
	// index among the ring's candidates (the low 24 bits), so that a
	// sorted []uint64 is the ring and ties go to the earlier candidate.
	ownerBits = 24
	ownerMask = 1<<ownerBits - 1
	posMask   = 1<<(64-ownerBits) - 1
)

// Ring is Affinity's ring over a list of candidates (a pool's keys),
// built once and walked by an Index over any tier of them.
type Ring struct {
	points []uint64 // sorted: position<<ownerBits | owner
	n      int
}

// NewRing builds the ring of cands (fewer than 2^24).
func NewRing(cands []Candidate) *Ring {
	r := &Ring{n: len(cands)}
	total := 0
	for i := range cands {
		total += ringPoints(&cands[i])
	}
	r.points = make([]uint64, 0, total)
	for i := range cands {
		base := AffinityHash(keyID(&cands[i]))
		for j := range ringPoints(&cands[i]) {
			r.points = append(r.points, ringPos(base, j)<<ownerBits|uint64(i)&ownerMask)
		}
	}
	radixSort(r.points)
	return r
}

// radixSort sorts a in place (LSD, 8-bit digits): a ring of 10,000 keys
// has a million points, which a comparison sort takes ~10× longer over.
func radixSort(a []uint64) {
	if len(a) < 256 {
		slices.Sort(a)
		return
	}
	buf := make([]uint64, len(a))
	src, dst := a, buf
	var count [256]int
	for shift := 0; shift < 64; shift += 8 {
		clear(count[:])
		for _, v := range src {
			count[v>>shift&0xff]++
		}
		sum := 0
		for i, c := range count {
			count[i], sum = sum, sum+c
		}
		for _, v := range src {
			d := v >> shift & 0xff
			dst[count[d]] = v
			count[d]++
		}
		src, dst = dst, src
	}
	// An even number of passes: the sorted points are back in a.
}

// search returns the index of the first point at or after position h
// (wrapping to 0).
func (r *Ring) search(h uint64) int {
	i, _ := slices.BinarySearch(r.points, h<<ownerBits)
	if i == len(r.points) {
		return 0
	}
	return i
}

// ringPoints is how many points candidate c has on the ring.
func ringPoints(c *Candidate) int {
	return int(min(max(math.Round(weight(c)*RingPointsPerWeight), 1), RingMaxPoints))
}

// ringPos is the position of point j of the key whose id hashes to base.
func ringPos(base uint64, j int) uint64 {
	return mix64(base+uint64(j+1)*0x9E3779B97F4A7C15) >> ownerBits
}

func keyID(c *Candidate) string {
	if c.Key == nil {
		return ""
	}
	return c.Key.ID
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
