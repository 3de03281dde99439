package policy

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// pickIndex is one selection through an Index: proposals checked against
// the live counters of live and refused when refuse says so; -1 when the
// draws ran out.
func pickIndex(x *Index, live []Candidate, seq uint64, rnd float64, refuse func(int) bool) int {
	for d := x.First(seq, rnd); d.I >= 0; d = x.Next(d, seq, rnd) {
		if !x.Check(d, live[d.I]) || (refuse != nil && refuse(d.I)) {
			continue
		}
		return d.I
	}
	return -1
}

// TestIndexPicksAsStrategy: with counters up to date and nothing refused,
// round_robin, least_used and affinity pick through their Index exactly
// the candidate their Pick picks; affinity also when the ring holds more
// keys than the tier.
func TestIndexPicksAsStrategy(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, name := range []string{StrategyRoundRobin, StrategyLeastUsed, StrategyAffinity} {
		s := mustStrategy(t, name)
		for round := range 200 {
			n := 1 + rng.IntN(40)
			pool := make([]Candidate, n)
			for i := range pool {
				pool[i] = cand(fmt.Sprintf("k%d", i), float64(1+rng.IntN(3)), 0, uint64(rng.IntN(4)), 0)
			}
			var tier []Candidate
			var at []int
			for i := range pool {
				if rng.IntN(3) > 0 || i == n-1 {
					tier, at = append(tier, pool[i]), append(at, i)
				}
			}
			var ring *Ring
			if UsesRing(s) {
				ring = NewRing(pool)
			}
			x := NewIndex(s, tier, ring, at)
			for range 20 {
				seq, rnd := rng.Uint64(), rng.Float64()
				if got, want := pickIndex(x, tier, seq, rnd, nil), s.Pick(tier, seq, rnd); got != want {
					t.Fatalf("%s round %d seq %d: index picked %d, Pick %d", name, round, seq, got, want)
				}
			}
		}
	}
}

// TestIndexShares runs TestWeightedShares's cases through the Index twice:
// built with the counters (fresh), and built with none while the live
// counters are those of the table (every weight held too high until the
// first draw of the key corrects it). Both follow the live formula.
func TestIndexShares(t *testing.T) {
	const picks, tolerance = 10000, 0.02
	tests := weightedShareTests()
	for i, tt := range tests {
		for _, fresh := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/%d/fresh=%v", tt.strategy, i, fresh), func(t *testing.T) {
				built := tt.cands
				if !fresh {
					built = slices.Clone(tt.cands)
					for j := range built {
						built[j].Usage, built[j].Errors = 0, 0
					}
				}
				x := NewIndex(mustStrategy(t, tt.strategy), built, nil, nil)
				rng := rand.New(rand.NewPCG(1, uint64(i)))
				counts := make([]int, len(tt.cands))
				for seq := range uint64(picks) {
					if got := pickIndex(x, tt.cands, seq, rng.Float64(), nil); got >= 0 {
						counts[got]++
					}
				}
				for j, want := range tt.want {
					if got := float64(counts[j]) / picks; math.Abs(got-want) > tolerance {
						t.Errorf("key %s share = %.4f, want %.4f ± %.2f (counts %v)", tt.cands[j].Key.ID, got, want, tolerance, counts)
					}
				}
			})
		}
	}
}

// TestIndexRefusals: candidates the caller refuses are never picked; the
// others keep their relative shares (weighted), the rotation and the
// lowest usage skip them, and an affinity key moves to the key the ring
// gives it without the refused one.
func TestIndexRefusals(t *testing.T) {
	weighted := []Candidate{cand("a", 1, 0, 0, 0), cand("b", 2, 0, 0, 0), cand("c", 3, 0, 0, 0), cand("d", 4, 0, 0, 0)}
	refuseB := func(i int) bool { return i == 1 }
	x := NewIndex(Random{}, weighted, nil, nil)
	rng := rand.New(rand.NewPCG(9, 9))
	counts := make([]int, 4)
	const picks = 10000
	for seq := range uint64(picks) {
		if got := pickIndex(x, weighted, seq, rng.Float64(), refuseB); got >= 0 {
			counts[got]++
		} else {
			t.Fatalf("seq %d: no pick in %d draws", seq, MaxDraws)
		}
	}
	for j, want := range []float64{1.0 / 8, 0, 3.0 / 8, 4.0 / 8} {
		if got := float64(counts[j]) / picks; math.Abs(got-want) > 0.02 {
			t.Errorf("random, b refused: key %d share %.4f, want %.4f (counts %v)", j, got, want, counts)
		}
	}

	rr := NewIndex(RoundRobin{}, four(0), nil, nil)
	counts = make([]int, 4)
	for seq := range uint64(picks) {
		counts[pickIndex(rr, four(0), seq, rng.Float64(), refuseB)]++
	}
	for j, want := range []float64{1.0 / 3, 0, 1.0 / 3, 1.0 / 3} {
		if got := float64(counts[j]) / picks; math.Abs(got-want) > 0.02 {
			t.Errorf("round_robin, b refused: key %d share %.4f, want %.4f (counts %v)", j, got, want, counts)
		}
	}

	// least_used: b, c and e tie at 2; c refused: b and e take turns.
	lu := NewIndex(LeastUsed{}, leastSet(), nil, nil)
	var got []int
	for seq := range uint64(4) {
		got = append(got, pickIndex(lu, leastSet(), seq, 0, func(i int) bool { return i == 2 }))
	}
	if want := []int{1, 4, 4, 1}; !slices.Equal(got, want) {
		t.Errorf("least_used, c refused: picks %v, want %v", got, want)
	}

	// affinity: refusing k3 sends its sessions where a ring without k3
	// does; nobody else moves.
	all := affinityCands(1, 1, 1, 1)
	without3 := []Candidate{all[0], all[1], all[3]}
	ax := NewIndex(Affinity{}, all, nil, nil)
	for u := range 2000 {
		h := AffinityHash(fmt.Sprintf("user-%d", u))
		got := pickIndex(ax, all, h, 0, func(i int) bool { return i == 2 })
		if got < 0 {
			t.Fatalf("user-%d: no pick", u)
		}
		if want := without3[Affinity{}.Pick(without3, h, 0)].Key.ID; all[got].Key.ID != want {
			t.Fatalf("user-%d: k3 refused, index picked %s, ring without k3 %s", u, all[got].Key.ID, want)
		}
	}
}

// TestIndexLeastStale: built before the counters moved, least_used still
// picks a candidate of the lowest live usage.
func TestIndexLeastStale(t *testing.T) {
	live := leastSet() // lowest usage 2: b, c, e
	x := NewIndex(LeastUsed{}, make([]Candidate, len(live)), nil, nil)
	for seq := range uint64(20) {
		got := pickIndex(x, live, seq, 0, nil)
		if got < 0 || live[got].Usage != 2 {
			t.Fatalf("seq %d: picked %d, want one of usage 2 (b, c, e)", seq, got)
		}
	}
}

// TestIndexConcurrentUpdates: updates racing on the same tree leave every
// node equal to what its children add up to once they are over.
func TestIndexConcurrentUpdates(t *testing.T) {
	// Under -race, the race detector's test of Update; the interleaving
	// that loses an update is TestIndexUpdateInterleaved's. Writers change
	// leaves next to each other (siblings and cousins) and at random.
	for _, s := range []Strategy{WeightedByUsage{}, LeastUsed{}} {
		cands := benchCands(300, 1)
		x := NewIndex(s, cands, nil, nil)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 1))
				for range 20000 {
					i := rng.IntN(8)
					if rng.IntN(4) == 0 {
						i = rng.IntN(len(cands))
					}
					c := cands[i]
					c.Usage = rng.Uint64N(50)
					x.Update(i, c)
				}
			})
		}
		wg.Wait()
		for k := x.leaves - 1; k >= 1; k-- {
			if got, want := x.tree[k].Load(), x.combine(x.tree[2*k].Load(), x.tree[2*k+1].Load()); got != want {
				t.Fatalf("%s: node %d holds %x, its children make %x", s.Name(), k, got, want)
			}
		}
	}
}

// TestIndexUpdateInterleaved runs the interleaving that loses an update
// without set's re-check: writer A reads the children of the root, writer
// B changes A's sibling and stores the root, then A stores its root from
// the children it read. A's re-check sees B's child and stores again.
func TestIndexUpdateInterleaved(t *testing.T) {
	for _, s := range []Strategy{WeightedByUsage{}, LeastUsed{}} {
		cands := benchCands(2, 1)
		cands[0].Usage, cands[1].Usage = 100, 100
		x := NewIndex(s, cands, nil, nil)
		// Both updates change the root whatever the strategy combines
		// (a sum, a minimum): a stale root is seen.
		a, b := cands[0], cands[1]
		a.Usage, b.Usage = 7, 1
		paused, resume := make(chan struct{}), make(chan struct{})
		var first atomic.Bool
		setHook = func(node int) {
			if first.CompareAndSwap(false, true) { // A, the first time only
				close(paused)
				<-resume
			}
		}
		t.Cleanup(func() { setHook = nil })
		done := make(chan struct{})
		go func() {
			defer close(done)
			x.Update(0, a)
		}()
		<-paused
		x.Update(1, b) // B runs while A is between its read and its store
		close(resume)
		<-done
		setHook = nil
		if got, want := x.tree[1].Load(), x.combine(x.leaf(&a), x.leaf(&b)); got != want {
			t.Fatalf("%s: root holds %x, the two updates make %x", s.Name(), got, want)
		}
	}
}

// TestIndexNoAllocs: a selection through an Index allocates nothing.
func TestIndexNoAllocs(t *testing.T) {
	cands := benchCands(1000, 1)
	for _, name := range Strategies() {
		s := mustStrategy(t, name)
		x := NewIndex(s, cands, nil, nil)
		var seq uint64
		if n := testing.AllocsPerRun(100, func() {
			seq++
			if i := pickIndex(x, cands, seq, 0.37, func(i int) bool { return i%2 == 0 }); i >= 0 {
				x.Update(i, cands[i])
			}
		}); n != 0 {
			t.Errorf("%s: a selection allocates %v times", name, n)
		}
	}
}

// TestNewIndexWithout: a strategy registered from outside has no Index.
func TestNewIndexWithout(t *testing.T) {
	if x := NewIndex(lastStrategy{}, four(0), nil, nil); x != nil {
		t.Errorf("NewIndex(test_last) = %v, want nil", x)
	}
	if x := NewIndex(RoundRobin{}, nil, nil, nil); x != nil {
		t.Errorf("NewIndex over no candidates = %v, want nil", x)
	}
}

func BenchmarkIndex(b *testing.B) {
	for _, name := range Strategies() {
		s := mustStrategy(b, name)
		for _, n := range []int{10, 1000, 10000} {
			cands := benchCands(n, 1)
			x := NewIndex(s, cands, nil, nil)
			b.Run(fmt.Sprintf("%s/n=%d", name, n), func(b *testing.B) {
				b.ReportAllocs()
				var seq uint64
				for b.Loop() {
					seq++
					i := pickIndex(x, cands, seq, float64(seq%1000)/1000, nil)
					cands[i].Usage++
					x.Update(i, cands[i])
				}
			})
		}
	}
}

// BenchmarkNewRing builds the ring of a pool of weight-1 keys.
func BenchmarkNewRing(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		cands := benchCands(n, 1)
		for i := range cands {
			cands[i].Key.Weight = 1
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for b.Loop() {
				NewRing(cands)
			}
		})
	}
}
