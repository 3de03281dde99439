package policy

import (
	"math"
	"slices"
	"sync/atomic"
)

// An Index is a strategy's selection structure over one priority tier of
// eligible keys: it is built when the tier changes (a key's eligibility
// moved) and kept between selections, so that a pick costs O(log n)
// instead of a pass over the tier:
//
//   - round_robin: seq mod n;
//   - random, weighted_by_usage, adjust_by_error_rate: a sum tree of the
//     candidates' weights (Weight, Weight/(Usage+1), Weight/(Errors+1)),
//     descended with rnd;
//   - least_used: a tree of each subtree's lowest usage and how many
//     candidates have it, descended to the (seq mod ties)-th of them;
//   - affinity: the pool's Ring, walked from the request's point to the
//     first key of the tier.
//
// The counters the index holds may lag the live ones (a key's requests
// grow through every pool it serves, its errors with every failure): the
// caller hands each proposed candidate's live counters to Check, which
// updates the index and accepts the proposal with the probability that
// makes the pick follow the live weights (rejection sampling: the index's
// weight of a key is never below its live weight as long as its counters
// only grow, which the caller ensures by rebuilding the index when an
// error leaves the window). A proposal the caller refuses for reasons of
// its own (limits, headroom, slow start) is replaced by Next; refusing
// proposals drawn in proportion to the weights leaves the pick in
// proportion to the weights of the keys accepted.
//
// Index is safe for concurrent use without locks: every node is one
// atomic word, and an update recomputes each ancestor from its children
// until the children it read are still those stored (the last writer of
// a node checks after its write, so no update is lost).
type Index struct {
	kind   indexKind
	by     weighBy
	n      int
	leaves int             // a power of two ≥ n
	tree   []atomic.Uint64 // node 1 the root, node k's children 2k and 2k+1, leaf i at leaves+i
	ring   *Ring
	tierOf []int32 // ring owner → tier index (-1: not in the tier)
}

// MaxDraws bounds the proposals of one selection (First and Next): after
// that many the caller falls back to a pass over the pool.
const MaxDraws = 8

// ringWalk bounds the ring points one proposal walks over keys outside
// the tier; beyond it Next reports no proposal (the caller's pass over
// the pool finds the same key).
const ringWalk = 1024

type indexKind uint8

const (
	indexRotate indexKind = iota + 1
	indexWeighted
	indexLeast
	indexRing
)

// indexer is implemented by the strategies that have an Index.
type indexer interface{ indexKind() (indexKind, weighBy) }

func (RoundRobin) indexKind() (indexKind, weighBy)        { return indexRotate, byWeight }
func (Random) indexKind() (indexKind, weighBy)            { return indexWeighted, byWeight }
func (WeightedByUsage) indexKind() (indexKind, weighBy)   { return indexWeighted, byUsage }
func (AdjustByErrorRate) indexKind() (indexKind, weighBy) { return indexWeighted, byErrors }
func (LeastUsed) indexKind() (indexKind, weighBy)         { return indexLeast, byWeight }
func (Affinity) indexKind() (indexKind, weighBy)          { return indexRing, byWeight }

// UsesRing reports whether s's Index walks a Ring (NewIndex's ring).
func UsesRing(s Strategy) bool {
	ix, ok := s.(indexer)
	if !ok {
		return false
	}
	k, _ := ix.indexKind()
	return k == indexRing
}

// NewIndex returns s's Index over tier (candidates with their counters
// now), or nil when s has none (a strategy registered from outside: pick
// with SelectTier). For a strategy that UsesRing, ring is the Ring of the
// candidates tier was taken from and at[i] the position of tier[i] among
// them; a nil ring is built over tier itself.
func NewIndex(s Strategy, tier []Candidate, ring *Ring, at []int) *Index {
	ix, ok := s.(indexer)
	if !ok || len(tier) == 0 || len(tier) >= 1<<ownerBits {
		return nil
	}
	kind, by := ix.indexKind()
	x := &Index{kind: kind, by: by, n: len(tier)}
	switch kind {
	case indexRing:
		if ring == nil {
			ring, at = NewRing(tier), nil
		}
		x.ring = ring
		x.tierOf = make([]int32, ring.n)
		for i := range x.tierOf {
			x.tierOf[i] = -1
		}
		for i := range tier {
			p := i
			if at != nil {
				p = at[i]
			}
			x.tierOf[p] = int32(i)
		}
	case indexWeighted, indexLeast:
		x.leaves = 1
		for x.leaves < x.n {
			x.leaves *= 2
		}
		x.tree = make([]atomic.Uint64, 2*x.leaves)
		for i := range x.leaves {
			v := x.pad()
			if i < x.n {
				v = x.leaf(&tier[i])
			}
			x.tree[x.leaves+i].Store(v)
		}
		for k := x.leaves - 1; k >= 1; k-- {
			x.tree[k].Store(x.combine(x.tree[2*k].Load(), x.tree[2*k+1].Load()))
		}
	}
	return x
}

// Len is the number of candidates of the index's tier.
func (x *Index) Len() int { return x.n }

// Draw is one proposal of an Index: the tier index I, or -1 when there is
// none left (pick by a pass over the candidates).
type Draw struct {
	I       int
	try     int
	u       float64 // weighted: where the draw fell within the candidate's weight, in [0, 1)
	pos     int     // ring: the point proposed
	refused [MaxDraws]int32
}

// First returns the first proposal for a selection with the arguments of
// Strategy.Pick (seq: the pool's counter, or the affinity hash).
func (x *Index) First(seq uint64, rnd float64) Draw {
	d := Draw{I: -1}
	if x.kind == indexRing {
		x.walk(&d, x.ring.search(mix64(seq)>>ownerBits))
		return d
	}
	x.draw(&d, seq, rnd)
	return d
}

// Next returns the proposal after d, which the caller refused (Check's
// false, or a refusal of its own).
func (x *Index) Next(d Draw, seq uint64, rnd float64) Draw {
	if d.I < 0 || d.try+1 >= MaxDraws {
		return Draw{I: -1}
	}
	d.refused[d.try] = int32(d.I)
	d.try++
	if x.kind == indexRing {
		x.walk(&d, d.pos+1)
		return d
	}
	x.draw(&d, seq, redraw(seq, rnd, d.try))
	return d
}

// Check compares the counters the index holds for proposal d with the
// candidate's live counters c, updates the index when they differ, and
// reports whether the proposal stands (false: call Next).
func (x *Index) Check(d Draw, c Candidate) bool {
	if x.tree == nil || d.I < 0 {
		return true
	}
	held := x.tree[x.leaves+d.I].Load()
	live := x.leaf(&c)
	if held == live {
		return true
	}
	x.set(d.I, live)
	if x.kind == indexLeast {
		return false // another candidate may be lower now
	}
	// Accept with probability live/held: the draw's position within the
	// held weight is uniform.
	w, h := math.Float64frombits(live), math.Float64frombits(held)
	return w >= h || d.u*h < w
}

// Update sets the counters of the tier's candidate i to c's (after the
// caller changed them, e.g. by counting a request).
func (x *Index) Update(i int, c Candidate) {
	if x.tree == nil || i < 0 || i >= x.n {
		return
	}
	if v := x.leaf(&c); x.tree[x.leaves+i].Load() != v {
		x.set(i, v)
	}
}

// draw fills d with a proposal of a rotation or tree index.
func (x *Index) draw(d *Draw, seq uint64, rnd float64) {
	switch x.kind {
	case indexRotate:
		if d.try == 0 {
			d.I = int(seq % uint64(x.n))
		} else {
			d.I = int(unit(rnd) * float64(x.n))
		}
	case indexWeighted:
		x.drawWeighted(d, seq, rnd)
	case indexLeast:
		x.drawLeast(d, seq+uint64(d.try))
	}
	if d.I >= x.n {
		d.I = x.n - 1
	}
}

// drawWeighted proposes i with probability weight(i)/Σ, as weightedPick.
func (x *Index) drawWeighted(d *Draw, seq uint64, rnd float64) {
	if x.n == 1 {
		d.I, d.u = 0, 0
		return
	}
	total := math.Float64frombits(x.tree[1].Load())
	if !(total > 0) || math.IsInf(total, 1) {
		d.I = int((seq + uint64(d.try)) % uint64(x.n)) // as weightedPick
		return
	}
	target := unit(rnd) * total
	k := 1
	for k < x.leaves {
		l := math.Float64frombits(x.tree[2*k].Load())
		if target < l {
			k = 2 * k
		} else {
			target -= l
			k = 2*k + 1
		}
	}
	i := k - x.leaves
	if w := math.Float64frombits(x.tree[k].Load()); i < x.n && w > 0 {
		d.I, d.u = i, min(max(target/w, 0), math.Nextafter(1, 0))
		return
	}
	// Rounding (or a concurrent update) ran past the last weight: the last
	// candidate with a weight, as weightedPick's rnd ~1.
	for i = min(i, x.n) - 1; i > 0 && x.tree[x.leaves+i].Load() == 0; i-- {
	}
	d.I, d.u = max(i, 0), 0
}

// drawLeast proposes the (seq mod ties)-th candidate of the lowest usage.
func (x *Index) drawLeast(d *Draw, seq uint64) {
	root := x.tree[1].Load()
	low, ties := root>>countBits, root&countMask
	if ties == 0 {
		d.I = -1
		return
	}
	k := seq % ties
	n := 1
	for n < x.leaves {
		l := x.tree[2*n].Load()
		if l>>countBits == low {
			if c := l & countMask; k < c {
				n = 2 * n
				continue
			} else {
				k -= c
			}
		}
		n = 2*n + 1
	}
	d.I = n - x.leaves
	if d.I >= x.n {
		d.I = -1
	}
}

// walk proposes the owner of the first ring point from pos on that is in
// the tier and not refused.
func (x *Index) walk(d *Draw, pos int) {
	r := x.ring
	d.I = -1
	for range min(ringWalk, len(r.points)) {
		if pos >= len(r.points) {
			pos = 0
		}
		if t := x.tierOf[r.points[pos]&ownerMask]; t >= 0 && !slices.Contains(d.refused[:d.try], t) {
			d.I, d.pos = int(t), pos
			return
		}
		pos++
	}
}

// The least_used tree packs a node as lowest usage (high 40 bits, capped)
// and how many leaves below have it (low 24 bits).
const (
	countBits = 24
	countMask = 1<<countBits - 1
	maxLow    = 1<<(64-countBits) - 1
)

// leaf is the tree value of candidate c.
func (x *Index) leaf(c *Candidate) uint64 {
	if x.kind == indexLeast {
		return min(c.Usage, maxLow)<<countBits | 1
	}
	return math.Float64bits(x.by.of(c))
}

// pad is the value of the leaves past the tier.
func (x *Index) pad() uint64 {
	if x.kind == indexLeast {
		return maxLow << countBits // count 0
	}
	return 0 // weight +0
}

func (x *Index) combine(a, b uint64) uint64 {
	if x.kind != indexLeast {
		return math.Float64bits(math.Float64frombits(a) + math.Float64frombits(b))
	}
	switch la, lb := a>>countBits, b>>countBits; {
	case la < lb:
		return a
	case lb < la:
		return b
	}
	return a + b&countMask
}

// set stores leaf i and recomputes its ancestors.
// setHook, when set (tests only), runs in set between reading a node's
// children and storing the node: where a concurrent update interleaves.
var setHook func(node int)

func (x *Index) set(i int, v uint64) {
	k := x.leaves + i
	x.tree[k].Store(v)
	for k > 1 {
		k /= 2
		for {
			l, r := x.tree[2*k].Load(), x.tree[2*k+1].Load()
			if setHook != nil {
				setHook(k) // tests: another update runs here
			}
			x.tree[k].Store(x.combine(l, r))
			if x.tree[2*k].Load() == l && x.tree[2*k+1].Load() == r {
				break
			}
		}
	}
}

// unit maps rnd into [0, 1) as weightedPick does (NaN and negatives: 0).
func unit(rnd float64) float64 {
	if !(rnd > 0) {
		return 0
	}
	return min(rnd, math.Nextafter(1, 0))
}

// redraw is the try-th uniform number in [0, 1) derived from a
// selection's seq and rnd (its draws after the first).
func redraw(seq uint64, rnd float64, try int) float64 {
	return float64(mix64(math.Float64bits(rnd)^seq*0x9E3779B97F4A7C15^uint64(try)*0xD1B54A32D192ED03)>>11) / (1 << 53)
}
