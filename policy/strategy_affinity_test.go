package policy

import (
	"fmt"
	"math"
	"testing"
)

func affinityCands(weights ...float64) []Candidate {
	cands := make([]Candidate, len(weights))
	for i, w := range weights {
		cands[i] = Candidate{Key: &Key{ID: fmt.Sprintf("k%d", i+1), Weight: w}}
	}
	return cands
}

func TestAffinityIsStable(t *testing.T) {
	s := Affinity{}
	cands := affinityCands(1, 1, 1, 1)
	for _, user := range []string{"alice", "bob", "carol", ""} {
		h := AffinityHash(user)
		first := s.Pick(cands, h, 0.1)
		for i := range 20 {
			if got := s.Pick(cands, h, float64(i)/20); got != first {
				t.Fatalf("%q moved from %d to %d", user, first, got)
			}
		}
	}
}

func TestAffinityMovesOnlyTheLeavingKeysShare(t *testing.T) {
	s := Affinity{}
	all := affinityCands(1, 1, 1, 1)
	without3 := []Candidate{all[0], all[1], all[3]}
	moved, onK3 := 0, 0
	for u := range 10000 {
		h := AffinityHash(fmt.Sprintf("user-%d", u))
		before := all[s.Pick(all, h, 0)].Key.ID
		after := without3[s.Pick(without3, h, 0)].Key.ID
		if before == "k3" {
			onK3++
			continue
		}
		if before != after {
			moved++
		}
	}
	if moved != 0 {
		t.Fatalf("%d affinity keys moved although their key stayed", moved)
	}
	if onK3 < 2200 || onK3 > 2800 {
		t.Fatalf("k3 held %d of 10000 affinity keys, want about 2500", onK3)
	}
}

func TestAffinitySharesFollowWeights(t *testing.T) {
	s := Affinity{}
	cands := affinityCands(1, 2, 3, 4)
	counts := make([]int, len(cands))
	const n = 20000
	for u := range n {
		counts[s.Pick(cands, AffinityHash(fmt.Sprintf("session-%d", u)), 0)]++
	}
	for i, c := range counts {
		want := float64(i+1) / 10
		if got := float64(c) / n; math.Abs(got-want) > 0.02 {
			t.Errorf("k%d share %.3f, want %.3f ± 0.02", i+1, got, want)
		}
	}
}

func TestUsesAffinity(t *testing.T) {
	for _, name := range Strategies() {
		s, _ := StrategyFor(name)
		if got, want := UsesAffinity(s), name == StrategyAffinity; got != want {
			t.Errorf("UsesAffinity(%s) = %v, want %v", name, got, want)
		}
	}
}
