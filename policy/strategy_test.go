package policy

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// cand builds a candidate; weight 0 means the default.
func cand(id string, weight float64, priority int, usage, errs uint64) Candidate {
	return Candidate{Key: &Key{ID: id, Weight: weight, Priority: priority, Enabled: true}, Usage: usage, Errors: errs}
}

func mustStrategy(t testing.TB, name string) Strategy {
	t.Helper()
	s, err := StrategyFor(name)
	if err != nil {
		t.Fatalf("StrategyFor(%q): %v", name, err)
	}
	return s
}

func TestRegistry(t *testing.T) {
	want := []string{"adjust_by_error_rate", "affinity", "least_used", "random", "round_robin", "weighted_by_usage"}
	if got := Strategies(); !slices.Equal(got, want) {
		t.Fatalf("Strategies() = %v, want %v", got, want)
	}
	for _, name := range want {
		if got := mustStrategy(t, name).Name(); got != name {
			t.Errorf("StrategyFor(%q).Name() = %q", name, got)
		}
	}

	_, err := StrategyFor("fastest")
	if !errors.Is(err, ErrUnknownStrategy) {
		t.Fatalf("StrategyFor(fastest) error = %v, want ErrUnknownStrategy", err)
	}
	const msg = `unknown strategy "fastest" (want one of adjust_by_error_rate, affinity, least_used, random, round_robin, weighted_by_usage)`
	if err.Error() != msg {
		t.Errorf("error = %q, want %q", err, msg)
	}
}

// lastStrategy always picks the last candidate; it proves a strategy added
// by one Register call is served by StrategyFor and Select.
type lastStrategy struct{}

func (lastStrategy) Name() string                                    { return "test_last" }
func (lastStrategy) Pick(cands []Candidate, _ uint64, _ float64) int { return len(cands) - 1 }

func TestRegisterNewStrategy(t *testing.T) {
	Register(lastStrategy{})
	t.Cleanup(func() {
		registry.mu.Lock()
		next := maps.Clone(registered())
		delete(next, "test_last")
		registry.byName.Store(&next)
		registry.mu.Unlock()
	})
	if got := Strategies(); !slices.Contains(got, "test_last") {
		t.Fatalf("Strategies() = %v, want test_last in it", got)
	}
	s := mustStrategy(t, "test_last")
	cands := []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 1, 0, 0), cand("c", 1, 0, 0, 0), cand("d", 1, 1, 0, 0)}
	if got := Select(cands, s, 0, 0); got != 2 {
		t.Errorf("Select = %d, want 2 (last of priority-0 tier)", got)
	}
}

type namedStrategy string

func (n namedStrategy) Name() string                              { return string(n) }
func (namedStrategy) Pick(_ []Candidate, _ uint64, _ float64) int { return 0 }

func TestRegisterPanics(t *testing.T) {
	tests := []struct {
		name string
		s    Strategy
		want string
	}{
		{"nil", nil, "policy: Register of a nil strategy"},
		{"empty name", namedStrategy(""), "policy: Register of a strategy with an empty name"},
		{"duplicate", RoundRobin{}, "policy: Register called twice for strategy round_robin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if got := recover(); got != tt.want {
					t.Errorf("panic = %v, want %q", got, tt.want)
				}
			}()
			Register(tt.s)
		})
	}
}

func TestRoundRobinRotation(t *testing.T) {
	rr := mustStrategy(t, StrategyRoundRobin)
	three := []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 0, 0, 0), cand("c", 1, 0, 0, 0)}
	var got []int
	for seq := range uint64(7) {
		got = append(got, rr.Pick(three, seq, 0.99))
	}
	if want := []int{0, 1, 2, 0, 1, 2, 0}; !slices.Equal(got, want) {
		t.Errorf("picks = %v, want %v", got, want)
	}
	if got := rr.Pick(three, math.MaxUint64, 0); got != 0 { // 2^64-1 is a multiple of 3
		t.Errorf("Pick(seq=MaxUint64) = %d, want 0", got)
	}
	if got := rr.Pick(three[:2], math.MaxUint64, 0); got != 1 {
		t.Errorf("Pick(2 cands, seq=MaxUint64) = %d, want 1", got)
	}
}

// TestRoundRobinFairWhenSetChanges removes key b for a third of the run:
// the others share its part and the shares stay within one pick of each
// other in every phase.
func TestRoundRobinFairWhenSetChanges(t *testing.T) {
	rr := mustStrategy(t, StrategyRoundRobin)
	all := []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 0, 0, 0), cand("c", 1, 0, 0, 0)}
	without := []Candidate{all[0], all[2]}
	counts := map[string]int{}
	for seq := range uint64(3000) {
		cands := all
		if seq >= 1000 && seq < 2000 {
			cands = without
		}
		counts[cands[rr.Pick(cands, seq, 0)].Key.ID]++
	}
	want := map[string]int{"a": 334 + 500 + 333, "b": 333 + 333, "c": 333 + 500 + 334}
	for id, n := range want {
		if counts[id] != n {
			t.Errorf("key %s picked %d times, want %d (all: %v)", id, counts[id], n, counts)
		}
	}
}

// shareTest is a case of TestWeightedShares: a strategy, candidates and
// each one's share of the picks.
type shareTest struct {
	strategy string
	cands    []Candidate
	want     []float64
}

// weightedShareTests are the cases of TestWeightedShares (and of
// TestIndexShares).
func weightedShareTests() []shareTest {
	return []shareTest{
		{
			strategy: StrategyRandom,
			cands:    []Candidate{cand("a", 1, 0, 0, 0), cand("b", 2, 0, 0, 0), cand("c", 3, 0, 0, 0), cand("d", 4, 0, 0, 0)},
			want:     []float64{0.1, 0.2, 0.3, 0.4},
		},
		{
			strategy: StrategyRandom, // usage and errors do not matter
			cands:    []Candidate{cand("a", 1, 0, 1000, 50), cand("b", 1, 0, 0, 0)},
			want:     []float64{0.5, 0.5},
		},
		{
			strategy: StrategyWeightedByUsage, // 1/1, 1/2, 1/4, 1/10
			cands:    []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 0, 1, 0), cand("c", 1, 0, 3, 0), cand("d", 1, 0, 9, 0)},
			want:     []float64{1 / 1.85, 0.5 / 1.85, 0.25 / 1.85, 0.1 / 1.85},
		},
		{
			strategy: StrategyWeightedByUsage, // 3/3, 1/1, 2/8: weight compensates usage
			cands:    []Candidate{cand("a", 3, 0, 2, 0), cand("b", 1, 0, 0, 0), cand("c", 2, 0, 7, 0)},
			want:     []float64{1 / 2.25, 1 / 2.25, 0.25 / 2.25},
		},
		{
			strategy: StrategyWeightedByUsage, // all unused: plain weights
			cands:    []Candidate{cand("a", 1, 0, 0, 0), cand("b", 3, 0, 0, 0)},
			want:     []float64{0.25, 0.75},
		},
		{
			strategy: StrategyAdjustByErrorRate, // 1/1, 1/2, 1/5
			cands:    []Candidate{cand("a", 1, 0, 500, 0), cand("b", 1, 0, 0, 1), cand("c", 1, 0, 0, 4)},
			want:     []float64{1 / 1.7, 0.5 / 1.7, 0.2 / 1.7},
		},
		{
			strategy: StrategyAdjustByErrorRate, // a recovered key (0 errors in window) has its full share back
			cands:    []Candidate{cand("a", 2, 0, 0, 0), cand("b", 2, 0, 0, 0)},
			want:     []float64{0.5, 0.5},
		},
	}
}

// TestWeightedShares draws 10,000 picks with a fixed-seed PRNG and checks
// every key's share against the strategy's formula within ±2 percentage
// points (about 4 standard deviations at p=0.5).
func TestWeightedShares(t *testing.T) {
	const picks, tolerance = 10000, 0.02
	tests := weightedShareTests()
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.strategy, i), func(t *testing.T) {
			s := mustStrategy(t, tt.strategy)
			rng := rand.New(rand.NewPCG(1, uint64(i)))
			counts := make([]int, len(tt.cands))
			for seq := range uint64(picks) {
				counts[s.Pick(tt.cands, seq, rng.Float64())]++
			}
			for j, want := range tt.want {
				got := float64(counts[j]) / picks
				if math.Abs(got-want) > tolerance {
					t.Errorf("key %s share = %.4f, want %.4f ± %.2f (counts %v)", tt.cands[j].Key.ID, got, want, tolerance, counts)
				}
			}
		})
	}
}

func TestStrategyEdgeCases(t *testing.T) {
	nearOne := math.Nextafter(1, 0)
	huge := uint64(math.MaxUint64)
	tests := []struct {
		name     string
		strategy string
		cands    []Candidate
		seq      uint64
		rnd      float64
		want     int
	}{
		// One candidate: always it.
		{"rr one", StrategyRoundRobin, []Candidate{cand("a", 1, 0, 0, 0)}, 41, 0.5, 0},
		{"random one", StrategyRandom, []Candidate{cand("a", 1, 0, 0, 0)}, 0, nearOne, 0},
		{"usage one huge", StrategyWeightedByUsage, []Candidate{cand("a", 1, 0, huge, 0)}, 0, nearOne, 0},
		{"errors one huge", StrategyAdjustByErrorRate, []Candidate{cand("a", 1, 0, 0, huge)}, 0, 0, 0},
		{"least one", StrategyLeastUsed, []Candidate{cand("a", 1, 0, 7, 0)}, 99, 0, 0},

		// Zero usage everywhere: uniform by weight; rnd picks the slot.
		{"usage zero rnd 0", StrategyWeightedByUsage, four(0), 0, 0, 0},
		{"usage zero rnd .5", StrategyWeightedByUsage, four(0), 0, 0.5, 2},
		{"usage zero rnd .74", StrategyWeightedByUsage, four(0), 0, 0.74, 2},
		{"usage zero rnd .75", StrategyWeightedByUsage, four(0), 0, 0.75, 3},
		{"usage zero rnd ~1", StrategyWeightedByUsage, four(0), 0, nearOne, 3},

		// Huge counts: a key with 2^64-1 tokens still weighs > 0 but loses.
		{"usage huge vs 0 rnd tiny", StrategyWeightedByUsage, []Candidate{cand("a", 1, 0, huge, 0), cand("b", 1, 0, 0, 0)}, 0, 1e-10, 1},
		{"usage huge vs 0 rnd 0", StrategyWeightedByUsage, []Candidate{cand("a", 1, 0, huge, 0), cand("b", 1, 0, 0, 0)}, 0, 0, 0},
		{"usage both huge rnd .49", StrategyWeightedByUsage, []Candidate{cand("a", 1, 0, huge, 0), cand("b", 1, 0, huge, 0)}, 0, 0.49, 0},
		{"usage both huge rnd .5", StrategyWeightedByUsage, []Candidate{cand("a", 1, 0, huge, 0), cand("b", 1, 0, huge, 0)}, 0, 0.5, 1},
		// b's share (~5e-20) is below float resolution: even rnd ~1 picks a.
		{"errors 0 vs huge rnd ~1", StrategyAdjustByErrorRate, []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 0, 0, huge)}, 0, nearOne, 0},
		{"errors huge vs 0 rnd ~1", StrategyAdjustByErrorRate, []Candidate{cand("a", 1, 0, 0, huge), cand("b", 1, 0, 0, 0)}, 0, nearOne, 1},
		{"errors huge vs 0 rnd 1e-10", StrategyAdjustByErrorRate, []Candidate{cand("a", 1, 0, 0, huge), cand("b", 1, 0, 0, 0)}, 0, 1e-10, 1},

		// rnd close to 1 picks the last candidate, outside [0,1) is clamped.
		{"random rnd ~1", StrategyRandom, four(0), 0, nearOne, 3},
		{"random rnd 1", StrategyRandom, four(0), 0, 1, 3},
		{"random rnd -1", StrategyRandom, four(0), 0, -1, 0},
		{"random rnd NaN", StrategyRandom, four(0), 0, math.NaN(), 0},

		// Weights that are not positive finite numbers count as 1.
		{"random weight 0/neg/NaN", StrategyRandom, []Candidate{cand("a", 0, 0, 0, 0), cand("b", -5, 0, 0, 0), cand("c", math.NaN(), 0, 0, 0), cand("d", 1, 0, 0, 0)}, 0, 0.3, 1},
		{"random weight +Inf", StrategyRandom, []Candidate{cand("a", math.Inf(1), 0, 0, 0), cand("b", 1, 0, 0, 0)}, 0, 0.6, 1},
		// A total that overflows falls back to seq rotation.
		{"random total overflows", StrategyRandom, []Candidate{cand("a", math.MaxFloat64, 0, 0, 0), cand("b", math.MaxFloat64, 0, 0, 0), cand("c", 1, 0, 0, 0)}, 5, 0.1, 2},
		// A nil Key weighs 1.
		{"random nil key", StrategyRandom, []Candidate{{}, {}}, 0, 0.6, 1},

		// least_used: lowest usage, ties take turns in order.
		{"least seq 0", StrategyLeastUsed, leastSet(), 0, 0, 1},
		{"least seq 1", StrategyLeastUsed, leastSet(), 1, 0, 2},
		{"least seq 2", StrategyLeastUsed, leastSet(), 2, 0, 4},
		{"least seq 3", StrategyLeastUsed, leastSet(), 3, 0.9, 1},
		{"least all huge", StrategyLeastUsed, []Candidate{cand("a", 1, 0, huge, 0), cand("b", 1, 0, huge, 0)}, 3, 0, 1},
		{"least zero first", StrategyLeastUsed, []Candidate{cand("a", 1, 0, 0, 0), cand("b", 1, 0, huge, 0)}, 3, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustStrategy(t, tt.strategy).Pick(tt.cands, tt.seq, tt.rnd); got != tt.want {
				t.Errorf("%s.Pick(seq=%d, rnd=%v) = %d, want %d", tt.strategy, tt.seq, tt.rnd, got, tt.want)
			}
		})
	}
}

func four(usage uint64) []Candidate {
	return []Candidate{cand("a", 1, 0, usage, 0), cand("b", 1, 0, usage, 0), cand("c", 1, 0, usage, 0), cand("d", 1, 0, usage, 0)}
}

func leastSet() []Candidate {
	return []Candidate{cand("a", 1, 0, 5, 0), cand("b", 9, 0, 2, 0), cand("c", 1, 0, 2, 0), cand("d", 1, 0, 7, 0), cand("e", 1, 0, 2, 0)}
}

// fixedStrategy returns the same index whatever it is given.
type fixedStrategy int

func (fixedStrategy) Name() string                                  { return "fixed" }
func (f fixedStrategy) Pick(_ []Candidate, _ uint64, _ float64) int { return int(f) }

func prios(ps ...int) []Candidate {
	cands := make([]Candidate, len(ps))
	for i, p := range ps {
		cands[i] = cand(fmt.Sprintf("k%d", i), float64(i+1), p, 0, 0)
	}
	return cands
}

func TestSelect(t *testing.T) {
	rr := mustStrategy(t, StrategyRoundRobin)
	random := mustStrategy(t, StrategyRandom)
	tests := []struct {
		name  string
		cands []Candidate
		strat Strategy
		seq   uint64
		rnd   float64
		want  int
	}{
		{"empty", nil, rr, 0, 0, -1},
		{"one tier seq 4", prios(0, 0, 0), rr, 4, 0, 1},
		{"contiguous middle seq 1", prios(1, 0, 0, 2), rr, 1, 0, 2},
		{"contiguous middle seq 2", prios(1, 0, 0, 2), rr, 2, 0, 1},
		{"negative priority wins", prios(0, -1, 0), rr, 7, 0, 1},
		{"scattered seq 0", prios(1, 0, 2, 0, 0), rr, 0, 0, 1},
		{"scattered seq 1", prios(1, 0, 2, 0, 0), rr, 1, 0, 3},
		{"scattered seq 2", prios(1, 0, 2, 0, 0), rr, 2, 0, 4},
		{"scattered seq 3", prios(1, 0, 2, 0, 0), rr, 3, 0, 1},
		// Tier members k1 (weight 2) and k3 (weight 4): rnd·6 < 2 → k1.
		{"scattered weighted low", prios(1, 0, 1, 0), random, 0, 0.3, 1},
		{"scattered weighted high", prios(1, 0, 1, 0), random, 0, 0.34, 3},
		{"nil key is priority 0", []Candidate{cand("a", 1, 1, 0, 0), {}, cand("b", 1, 0, 0, 0)}, rr, 1, 0, 2},
		{"strategy out of range high", prios(1, 0, 2, 0), fixedStrategy(99), 0, 0, 1},
		{"strategy out of range negative", prios(0, 0), fixedStrategy(-3), 0, 0, 0},
		{"strategy out of range scattered", prios(2, 1, 2, 1), fixedStrategy(2), 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.cands)
			if got := Select(tt.cands, tt.strat, tt.seq, tt.rnd); got != tt.want {
				t.Errorf("Select = %d, want %d", got, tt.want)
			}
			if !slices.Equal(before, tt.cands) {
				t.Errorf("Select modified cands")
			}
		})
	}
}

// TestSelectTierShares checks the scattered path end to end: over 10,000
// picks only the best tier is chosen, in weight proportions.
func TestSelectTierShares(t *testing.T) {
	cands := []Candidate{cand("a", 1, 1, 0, 0), cand("b", 1, 0, 0, 0), cand("c", 5, 1, 0, 0), cand("d", 3, 0, 0, 0)}
	random := mustStrategy(t, StrategyRandom)
	rng := rand.New(rand.NewPCG(7, 7))
	counts := make([]int, len(cands))
	for seq := range uint64(10000) {
		counts[Select(cands, random, seq, rng.Float64())]++
	}
	if counts[0] != 0 || counts[2] != 0 {
		t.Fatalf("lower tier picked: %v", counts)
	}
	if got := float64(counts[1]) / 10000; math.Abs(got-0.25) > 0.02 {
		t.Errorf("share of b = %.4f, want 0.25 ± 0.02 (counts %v)", got, counts)
	}
}

// TestNoAllocs pins the "no allocation per call" property for every
// strategy and for Select's contiguous path (the scattered path uses a
// sync.Pool whose refills after a GC are not deterministic; its steady state
// is shown by BenchmarkSelect).
func TestNoAllocs(t *testing.T) {
	cands := benchCands(100, 1)
	for _, name := range Strategies() {
		s := mustStrategy(t, name)
		var seq uint64
		if n := testing.AllocsPerRun(100, func() { seq++; s.Pick(cands, seq, 0.37) }); n != 0 {
			t.Errorf("%s.Pick allocates %v times per call", name, n)
		}
		if n := testing.AllocsPerRun(100, func() { seq++; Select(cands, s, seq, 0.37) }); n != 0 {
			t.Errorf("Select(%s) allocates %v times per call", name, n)
		}
	}
}

// benchCands returns n candidates with varied usage and errors; tiers > 1
// spreads them over that many priorities, interleaved (the scattered case).
func benchCands(n, tiers int) []Candidate {
	rng := rand.New(rand.NewPCG(3, 4))
	cands := make([]Candidate, n)
	for i := range cands {
		cands[i] = Candidate{
			Key:    &Key{ID: fmt.Sprintf("k%05d", i), Weight: float64(1 + i%4), Priority: i % tiers, Enabled: true},
			Usage:  rng.Uint64N(1_000_000),
			Errors: rng.Uint64N(10),
		}
	}
	return cands
}

var sink int

func BenchmarkStrategies(b *testing.B) {
	for _, name := range Strategies() {
		s := mustStrategy(b, name)
		for _, n := range []int{10, 1000, 10000} {
			cands := benchCands(n, 1)
			b.Run(fmt.Sprintf("%s/n=%d", name, n), func(b *testing.B) {
				b.ReportAllocs()
				var seq uint64
				for b.Loop() {
					seq++
					sink = s.Pick(cands, seq, float64(seq%1000)/1000)
				}
			})
		}
	}
}

func BenchmarkSelect(b *testing.B) {
	for _, layout := range []struct {
		name  string
		tiers int
	}{{"one_tier", 1}, {"scattered_2_tiers", 2}} {
		for _, name := range []string{StrategyRoundRobin, StrategyWeightedByUsage} {
			s := mustStrategy(b, name)
			for _, n := range []int{10, 1000, 10000} {
				cands := benchCands(n, layout.tiers)
				b.Run(fmt.Sprintf("%s/%s/n=%d", layout.name, name, n), func(b *testing.B) {
					b.ReportAllocs()
					var seq uint64
					for b.Loop() {
						seq++
						sink = Select(cands, s, seq, float64(seq%1000)/1000)
					}
				})
			}
		}
	}
}

func TestStrategyInputs(t *testing.T) {
	want := map[string][2]bool{
		StrategyRoundRobin:        {false, false},
		StrategyRandom:            {false, false},
		StrategyWeightedByUsage:   {true, false},
		StrategyLeastUsed:         {true, false},
		StrategyAdjustByErrorRate: {false, true},
	}
	for name, w := range want {
		s, err := StrategyFor(name)
		if err != nil {
			t.Fatal(err)
		}
		if u, e := StrategyInputs(s); u != w[0] || e != w[1] {
			t.Errorf("%s: Inputs() = %v, %v; want %v", name, u, e, w)
		}
	}
}

// TestSelectTierMatchesSelect: every strategy over BestTier's candidates
// (SelectTier) picks the key Select picks over the whole list, priorities
// mixed and scattered.
func TestSelectTierMatchesSelect(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, name := range Strategies() {
		s := mustStrategy(t, name)
		for round := range 300 {
			n := 1 + rng.IntN(12)
			cands := make([]Candidate, n)
			for i := range cands {
				cands[i] = cand(fmt.Sprintf("k%d", i), float64(1+rng.IntN(3)), rng.IntN(3), uint64(rng.IntN(5)), uint64(rng.IntN(4)))
			}
			seq, rnd := rng.Uint64(), rng.Float64()
			idx := BestTier(nil, cands)
			tier := make([]Candidate, len(idx))
			for i, j := range idx {
				tier[i] = cands[j]
			}
			want := Select(cands, s, seq, rnd)
			if got := idx[SelectTier(tier, s, seq, rnd)]; got != want {
				t.Fatalf("%s round %d: SelectTier picked %d, Select %d (cands %+v)", name, round, got, want, cands)
			}
		}
	}
	if got := SelectTier(nil, RoundRobin{}, 1, 0); got != -1 {
		t.Errorf("SelectTier(empty) = %d, want -1", got)
	}
}
