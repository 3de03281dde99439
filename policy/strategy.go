package policy

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrUnknownStrategy is returned by StrategyFor for a name nobody registered.
var ErrUnknownStrategy = errors.New("unknown strategy")

// registry holds the strategies by name. Built-in strategies register in
// their file's init; a new strategy is one strategy_xxx.go file with one
// Register call. Readers (StrategyFor, on every request) load the map
// without a lock; Register, under mu, publishes a copy with the new name.
var registry struct {
	mu     sync.Mutex
	byName atomic.Pointer[map[string]Strategy]
}

// Register makes s available to StrategyFor under s.Name(). It panics when s
// is nil, its name is empty or the name is already taken, like
// database/sql.Register: registration is a programming decision made in init.
func Register(s Strategy) {
	if s == nil {
		panic("policy: Register of a nil strategy")
	}
	name := s.Name()
	if name == "" {
		panic("policy: Register of a strategy with an empty name")
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	old := registered()
	if _, dup := old[name]; dup {
		panic("policy: Register called twice for strategy " + name)
	}
	next := maps.Clone(old)
	if next == nil {
		next = make(map[string]Strategy, 1)
	}
	next[name] = s
	registry.byName.Store(&next)
}

// registered returns the current registry map (never written to).
func registered() map[string]Strategy {
	if m := registry.byName.Load(); m != nil {
		return *m
	}
	return nil
}

// StrategyFor returns the strategy registered as name (a settings.strategy
// value). The error wraps ErrUnknownStrategy and lists the known names.
func StrategyFor(name string) (Strategy, error) {
	s, ok := registered()[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrUnknownStrategy, name, strings.Join(Strategies(), ", "))
	}
	return s, nil
}

// Strategies returns the registered strategy names, sorted.
func Strategies() []string {
	byName := registered()
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Select picks one of cands: it keeps the best (lowest) Key.Priority present,
// runs strat over the candidates of that tier in their given order, and
// returns the chosen index into cands as passed (cands is never reordered or
// modified), or -1 when cands is empty.
//
// cands is the caller's (reusable) buffer of eligible keys in stable key-id
// order; it may hold several priority tiers in any order. When the best tier
// is contiguous in cands (always true when every key shares one priority, or
// when cands is ordered by priority) strat sees a sub-slice of cands and
// nothing is copied; otherwise the tier is copied into a pooled scratch
// buffer, which costs O(n) but still no allocation in steady state.
//
// seq and rnd are passed through to strat (see Strategy.Pick). Select is safe
// for concurrent use as long as concurrent calls do not share cands with a
// writer.
func Select(cands []Candidate, strat Strategy, seq uint64, rnd float64) int {
	n := len(cands)
	if n == 0 {
		return -1
	}
	// Pass 1: the best priority, and whether its tier is contiguous.
	best := priority(&cands[0])
	first, last, count := 0, 0, 1
	for i := 1; i < n; i++ {
		p := priority(&cands[i])
		switch {
		case p < best:
			best, first, last, count = p, i, i, 1
		case p == best:
			last, count = i, count+1
		}
	}
	if last-first+1 == count {
		return first + clampIndex(strat.Pick(cands[first:last+1], seq, rnd), count)
	}

	// The tier is scattered: copy it into scratch, pick, map back.
	bufp := scratch.Get().(*[]Candidate)
	buf := (*bufp)[:0]
	for i := first; i <= last; i++ {
		if priority(&cands[i]) == best {
			buf = append(buf, cands[i])
		}
	}
	k := clampIndex(strat.Pick(buf, seq, rnd), count)
	clear(buf) // drop the *Key references before pooling
	*bufp = buf[:0]
	scratch.Put(bufp)
	for i := first; i <= last; i++ {
		if priority(&cands[i]) == best {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return first // unreachable: k < count
}

// BestTier appends to dst the indexes of cands's best (lowest) priority
// tier, in order: the candidates Select runs its strategy over.
func BestTier(dst []int, cands []Candidate) []int {
	if len(cands) == 0 {
		return dst
	}
	best := priority(&cands[0])
	for i := 1; i < len(cands); i++ {
		best = min(best, priority(&cands[i]))
	}
	for i := range cands {
		if priority(&cands[i]) == best {
			dst = append(dst, i)
		}
	}
	return dst
}

// SelectTier is Select over candidates of one priority tier (BestTier's,
// kept by the caller): strat's pick, clamped as Select clamps it; -1 when
// tier is empty.
func SelectTier(tier []Candidate, strat Strategy, seq uint64, rnd float64) int {
	if len(tier) == 0 {
		return -1
	}
	return clampIndex(strat.Pick(tier, seq, rnd), len(tier))
}

// scratch holds buffers for Select's scattered-tier path.
var scratch = sync.Pool{New: func() any { return new([]Candidate) }}

// clampIndex guards Select against a strategy returning an out-of-range
// index: such a result picks the first candidate of the tier.
func clampIndex(i, n int) int {
	if i < 0 || i >= n {
		return 0
	}
	return i
}

func priority(c *Candidate) int {
	if c.Key == nil {
		return 0
	}
	return c.Key.Priority
}

// weight returns the candidate's key weight; a weight that is not a positive
// finite number counts as 1, the documented default.
func weight(c *Candidate) float64 {
	if c.Key != nil {
		if w := c.Key.Weight; w > 0 && w <= math.MaxFloat64 { // not NaN, not +Inf
			return w
		}
	}
	return 1
}

// weighBy selects the weight formula of weightedPick. A switch on it,
// rather than a function value, keeps the per-candidate call inlined.
type weighBy uint8

const (
	byWeight weighBy = iota // Weight
	byUsage                 // Weight / (Usage + 1)
	byErrors                // Weight / (Errors + 1)
)

func (by weighBy) of(c *Candidate) float64 {
	w := weight(c)
	switch by {
	case byUsage:
		w /= float64(c.Usage) + 1
	case byErrors:
		w /= float64(c.Errors) + 1
	}
	return w
}

// weightedPick returns the index i with probability by.of(i)/Σ, using rnd in
// [0, 1). Pass 2 recomputes the same weights in the same order, so the
// running sum ends exactly at the total; rnd values that round onto the total
// pick the last candidate. When the total is not a usable number (overflow,
// or every weight underflowed to 0) it falls back to seq rotation.
func weightedPick(cands []Candidate, seq uint64, rnd float64, by weighBy) int {
	n := len(cands)
	if n == 1 {
		return 0
	}
	var total float64
	for i := range cands {
		total += by.of(&cands[i])
	}
	if !(total > 0) || math.IsInf(total, 1) {
		return int(seq % uint64(n))
	}
	if !(rnd > 0) { // also NaN
		rnd = 0
	}
	target := rnd * total
	var sum float64
	for i := range cands {
		sum += by.of(&cands[i])
		if target < sum {
			return i
		}
	}
	return n - 1
}
