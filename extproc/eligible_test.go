package extproc

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// ids lists the key ids of entries.
func ids(entries []*store.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Key.ID)
	}
	return out
}

// TestEligibleSetFollowsStates: the pool's eligible set is reused while no
// key's state moves, rebuilt when one does (a cooldown, a probe result), and
// when a time-bound exclusion ends without any state change; its tier is
// the best priority among the eligible keys. While a key is in slow start
// or has a per-model state, each key proposed is admitted per request
// (check).
func TestEligibleSetFollowsStates(t *testing.T) {
	st := newTestStore(t, `
keys:
  a: {provider: openai, secret: sk-a}
  b: {provider: openai, secret: sk-b}
  c: {provider: openai, secret: sk-c, priority: 1}
`)
	pool := st.Read().Pool("")
	key := func(id string) *store.Entry {
		return pool.Entries[slices.IndexFunc(pool.Entries, func(e *store.Entry) bool { return e.Key.ID == id })]
	}
	t0 := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	const slow = 30 * time.Second // settings.ejection.slow_start
	sel := selection{strat: policy.RoundRobin{}, slowStart: slow}

	type want struct{ entries, tier []string }
	check := func(step string, now time.Time, w want) *eligibleSet {
		t.Helper()
		s := eligibleOf(pool, now, sel)
		if got := ids(s.entries); !slices.Equal(got, w.entries) {
			t.Errorf("%s: eligible %v, want %v", step, got, w.entries)
		}
		if got := ids(s.tierEntries); !slices.Equal(got, w.tier) {
			t.Errorf("%s: tier %v, want %v", step, got, w.tier)
		}
		for i, c := range s.tier {
			if c.Key != s.tierEntries[i].Key {
				t.Errorf("%s: tier candidate %d is key %s, entry %s", step, i, c.Key.ID, s.tierEntries[i].Key.ID)
			}
		}
		return s
	}

	first := check("start", t0, want{[]string{"a", "b", "c"}, []string{"a", "b"}})
	if again := check("unchanged", t0.Add(time.Second), want{[]string{"a", "b", "c"}, []string{"a", "b"}}); again != first {
		t.Errorf("unchanged states: the set was rebuilt")
	}

	// A state change that does not touch eligibility keeps the set.
	key("a").RT.Update(func(s policy.KeyState) policy.KeyState { s.ConsecutiveFailures++; return s })
	if again := eligibleOf(pool, t0, sel); again != first {
		t.Errorf("a failure count moved: the set was rebuilt")
	}

	// a cools down for 10 s, b fails its probe: c's tier is the best left.
	key("a").RT.Update(func(s policy.KeyState) policy.KeyState { s.CooldownUntil = t0.Add(10 * time.Second); return s })
	key("b").RT.Update(func(s policy.KeyState) policy.KeyState { s.ProbeFailed = true; return s })
	s := check("a cooling, b probe failed", t0, want{[]string{"c"}, []string{"c"}})
	if !s.until.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("until %v, want the end of a's cooldown %v", s.until, t0.Add(10*time.Second))
	}
	wantSkipped := []telemetry.Skip{
		{KeyID: "a", Reason: policy.ReasonCoolingDown, Until: t0.Add(10 * time.Second)},
		{KeyID: "b", Reason: policy.ReasonProbeFailed},
	}
	if !slices.Equal(s.skipped, wantSkipped) {
		t.Errorf("skipped %+v, want %+v", s.skipped, wantSkipped)
	}
	check("just before a's cooldown ends", t0.Add(10*time.Second-time.Nanosecond), want{[]string{"c"}, []string{"c"}})
	// No state change: the end of the cooldown alone brings a back.
	check("a's cooldown over", t0.Add(10*time.Second), want{[]string{"a", "c"}, []string{"a"}})

	key("b").RT.Update(func(s policy.KeyState) policy.KeyState { s.ProbeFailed = false; return s })
	check("b's probe passes", t0.Add(11*time.Second), want{[]string{"a", "b", "c"}, []string{"a", "b"}})

	if s.check {
		t.Errorf("no limits, model state or slow start: check set")
	}

	// b back from an ejection: in slow start (the selection's number
	// decides) each proposal is admitted per request until the slow start
	// ends.
	t1 := t0.Add(time.Minute)
	key("b").RT.Update(func(s policy.KeyState) policy.KeyState { s.SlowStartFrom = t1; return s })
	if s := check("b in slow start", t1.Add(slow-time.Nanosecond), want{[]string{"a", "b", "c"}, []string{"a", "b"}}); !s.check || !s.until.Equal(t1.Add(slow)) {
		t.Errorf("b in slow start: check %v until %v, want true until %v", s.check, s.until, t1.Add(slow))
	}
	if s := check("b's slow start over", t1.Add(slow), want{[]string{"a", "b", "c"}, []string{"a", "b"}}); s.check {
		t.Errorf("b's slow start over: check still set")
	}

	// c gets a per-model state (headroom: the request's estimate decides).
	c := key("c").RT.ModelFor("gpt-4o")
	if c == nil {
		t.Fatal("no model state")
	}
	if s := check("c with a model state", t1.Add(slow), want{[]string{"a", "b", "c"}, []string{"a", "b"}}); !s.check {
		t.Errorf("c with a model state: check not set")
	}
}

// TestEligibleSetChecksLimits: in a pool with a key under rpm/tpm limits
// each proposal is admitted per request (its eligibility moves with every
// request).
func TestEligibleSetChecksLimits(t *testing.T) {
	st := newTestStore(t, `
keys:
  a: {provider: openai, secret: sk-a}
  b: {provider: openai, secret: sk-b, limits: {rpm: 5}}
`)
	if s := eligibleOf(st.Read().Pool(""), time.Now(), selection{strat: policy.RoundRobin{}, slowStart: policy.DefaultSlowStart}); !s.check {
		t.Errorf("eligible set %v for a pool with limits without check", ids(s.entries))
	}
}

// TestSelectionAsPolicy: through the pool's eligible set and its index,
// the deterministic strategies pick, request after request, exactly what
// policy.Select picks over the same keys, counters and sequence number;
// affinity sends each session where the ring does, and a key over its rpm
// sends its sessions where the ring without it does (nobody else moves).
func TestSelectionAsPolicy(t *testing.T) {
	const keys = `
  k0: {provider: openai, secret: sk-test-k0}
  k1: {provider: openai, secret: sk-test-k1, weight: 2}
  k2: {provider: openai, secret: sk-test-k2%s}
  k3: {provider: openai, secret: sk-test-k3}
  k4: {provider: openai, secret: sk-test-k4, priority: 1}
`
	for _, strategy := range []string{policy.StrategyRoundRobin, policy.StrategyLeastUsed} {
		t.Run(strategy, func(t *testing.T) {
			r := newRig(t, "settings: {strategy: "+strategy+"}\nkeys:"+fmt.Sprintf(keys, ""))
			pool := r.store.Read().Pool("gpt-4o")
			s, _ := policy.StrategyFor(strategy)
			usage := make([]uint64, len(pool.Entries))
			for seq := range uint64(40) {
				cands := make([]policy.Candidate, len(pool.Entries))
				for i, e := range pool.Entries {
					cands[i] = policy.Candidate{Key: e.Key, Usage: usage[i]}
				}
				want := policy.Select(cands, s, seq, 0)
				if _, got := r.send("gpt-4o", "", answer("200")); got != pool.Entries[want].Key.ID {
					t.Fatalf("request %d: key %s, want %s", seq, got, pool.Entries[want].Key.ID)
				}
				usage[want]++
			}
		})
	}

	t.Run(policy.StrategyAffinity, func(t *testing.T) {
		r := newRig(t, "settings: {strategy: affinity}\nkeys:"+fmt.Sprintf(keys, ", limits: {rpm: 1}"))
		pool := r.store.Read().Pool("gpt-4o")
		var all, without2 []policy.Candidate // the first tier
		for _, e := range pool.Entries {
			if e.Key.Priority == 0 {
				all = append(all, policy.Candidate{Key: e.Key})
				if e.Key.ID != "k2" {
					without2 = append(without2, policy.Candidate{Key: e.Key})
				}
			}
		}
		for minute := range 2 {
			r.clock.Set(t0.Add(time.Duration(minute) * time.Minute))
			k2used, moved := false, 0
			for u := range 60 {
				h := policy.AffinityHash(fmt.Sprintf("user-%d", u))
				want := all[policy.Affinity{}.Pick(all, h, 0)].Key.ID
				if want == "k2" && k2used {
					want, moved = without2[policy.Affinity{}.Pick(without2, h, 0)].Key.ID, moved+1
				}
				k2used = k2used || want == "k2"
				if _, got := r.send("gpt-4o", fmt.Sprintf(`,"user":"user-%d"`, u), answer("200")); got != want {
					t.Fatalf("minute %d, user-%d: key %s, want %s", minute, u, got, want)
				}
			}
			if moved == 0 {
				t.Fatalf("minute %d: no session moved off k2 (the test proves nothing)", minute)
			}
		}
	})
}

// TestRingSelectAsSelect: a scan's pick with the pool's ring is
// policy.Select's over the same candidates (a third of the keys out, two
// priorities).
func TestRingSelectAsSelect(t *testing.T) {
	var cfg strings.Builder
	cfg.WriteString("settings: {strategy: affinity}\nkeys:\n")
	for i := range 3 * ringScanMin {
		fmt.Fprintf(&cfg, "  k%03d: {provider: openai, secret: sk-test-%d, weight: %d, priority: %d}\n", i, i, 1+i%3, i%5/4)
	}
	pool := newTestStore(t, cfg.String()).Read().Pool("gpt-4o")
	buf := new(candidateBuf)
	for i, e := range pool.Entries {
		if i%3 != 1 {
			buf.cands = append(buf.cands, policy.Candidate{Key: e.Key})
			buf.entries = append(buf.entries, e)
			buf.at = append(buf.at, i)
		}
	}
	for u := range 500 {
		h := policy.AffinityHash(fmt.Sprintf("user-%d", u))
		want := policy.Select(buf.cands, policy.Affinity{}, h, 0)
		if got := ringSelect(pool, buf, policy.Affinity{}, h); got != want {
			t.Fatalf("user-%d: ringSelect %d (%s), Select %d (%s)", u, got, buf.cands[max(got, 0)].Key.ID, want, buf.cands[want].Key.ID)
		}
	}
}

// TestEligibleSetErrorsExpire: for adjust_by_error_rate the set holds
// error counts, which fall as errors leave the window: a set that saw an
// error (when it was built, or on a key proposed since) is rebuilt at the
// next second; one that saw none is kept.
func TestEligibleSetErrorsExpire(t *testing.T) {
	r := newRig(t, `
settings: {strategy: adjust_by_error_rate}
keys:
  a: {provider: openai, secret: sk-test-a}
  b: {provider: openai, secret: sk-test-b}
`)
	pool := r.store.Read().Pool("gpt-4o")
	set := func() *eligibleSet { s, _ := pool.Selection.Load().(*eligibleSet); return s }
	r.send("gpt-4o", "", answer("200"))
	first := set()
	r.clock.Advance(5 * time.Second)
	r.send("gpt-4o", "", answer("200"))
	if set() != first || first.errFrom.Load() != 0 {
		t.Fatalf("no errors: the set was rebuilt or expires (%d)", first.errFrom.Load())
	}
	// Both keys fail: no state change, but the next proposal sees an error.
	now := r.clock.Now()
	for _, e := range pool.Entries {
		e.RT.RecordError(now)
	}
	r.send("gpt-4o", "", answer("200"))
	if set() != first {
		t.Fatalf("errors alone (no state change): the set was rebuilt")
	}
	if got, want := first.errFrom.Load(), now.Unix()+1; got != want {
		t.Fatalf("after a proposal saw an error the set expires at %d, want %d", got, want)
	}
	r.clock.Advance(time.Second)
	r.send("gpt-4o", "", answer("200"))
	next := set()
	if next == first {
		t.Fatalf("the next second: the set was kept")
	}
	if got, want := next.errFrom.Load(), r.clock.Now().Unix()+1; got != want {
		t.Errorf("rebuilt set with errors in the window expires at %d, want %d", got, want)
	}
}

// listStrategy is a strategy registered from outside whose values cannot
// be compared (a slice): it picks the candidate its list names first.
type listStrategy []int

func (listStrategy) Name() string { return "test_list" }
func (l listStrategy) Pick(cands []policy.Candidate, _ uint64, _ float64) int {
	return min(l[0], len(cands)-1)
}

// TestEligibleSetUncomparableStrategy: a pool's eligible set is reused
// under a strategy whose values Go cannot compare (no panic), and
// rebuilt when the strategy changes.
func TestEligibleSetUncomparableStrategy(t *testing.T) {
	st := newTestStore(t, `
keys:
  a: {provider: openai, secret: sk-a}
  b: {provider: openai, secret: sk-b}
`)
	pool := st.Read().Pool("")
	now := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	sel := selection{strat: listStrategy{1}}
	first := eligibleOf(pool, now, sel)
	if again := eligibleOf(pool, now, sel); again != first {
		t.Errorf("eligible set rebuilt for the same strategy")
	}
	if other := eligibleOf(pool, now, selection{strat: policy.RoundRobin{}}); other == first || other.strat != (policy.RoundRobin{}) {
		t.Errorf("eligible set kept across a strategy change")
	}
}

// TestRefusedProposalNotCandidate: a key the index proposed and the
// request refused (over its rpm) is listed among the skipped keys and not
// counted among the candidates, as a scan of the pool records it.
func TestRefusedProposalNotCandidate(t *testing.T) {
	r := newRig(t, `
keys:
  a: {provider: openai, secret: sk-test-a, limits: {rpm: 1}}
  b: {provider: openai, secret: sk-test-b}
`)
	for i, want := range []string{"a", "b"} {
		if _, got := r.send("gpt-4o", "", answer("200")); got != want {
			t.Fatalf("request %d: key %s, want %s", i, got, want)
		}
	}
	// Request 2: round robin proposes a first, over its rpm.
	res, got := r.send("gpt-4o", "", answer("200"))
	if got != "b" || res.call.Candidates != 1 || res.call.NSkipped != 1 || res.call.Skipped[0].KeyID != "a" ||
		res.call.Skipped[0].Reason != policy.ReasonCoolingDown {
		t.Errorf("key %s, candidates %d, skipped %+v; want b, 1, [a cooling_down]", got, res.call.Candidates, res.call.Skipped)
	}
}

// TestPoolRing: a pool builds its ring once; a pool of a later generation
// with the same keys and weights takes it; one with other weights builds
// its own; once every pool of a model is collected, the model leaves
// nothing behind.
func TestPoolRing(t *testing.T) {
	const model = "ring-test-model"
	pool := func(weights ...float64) *store.Pool {
		p := &store.Pool{Model: model, Seq: new(atomic.Uint64)}
		for i, w := range weights {
			p.Entries = append(p.Entries, &store.Entry{Key: &policy.Key{ID: fmt.Sprintf("k%d", i), Weight: w, Enabled: true}})
		}
		return p
	}
	p1, p2, p3 := pool(1, 1, 2), pool(1, 1, 2), pool(1, 1, 3)
	r1 := poolRing(p1)
	switch {
	case r1 == nil || poolRing(p1) != r1:
		t.Fatalf("pool 1: ring %p, then %p", r1, poolRing(p1))
	case poolRing(p2) != r1:
		t.Fatal("a pool with the same keys and weights built another ring")
	case poolRing(p3) == r1:
		t.Fatal("a pool with other weights took the first pool's ring")
	}
	if v, ok := poolRings.Load(model); !ok || v.(*pooledRing).ring != p3.Ring.Load() || v.(*pooledRing).users.Load() != 1 {
		t.Fatalf("cache for %s: %v %v, want the last pool's ring", model, v, ok)
	}
	// Two requests giving a new pool its ring at once (2,000 keys: both
	// build one): one ring cached, counted once.
	p4 := pool(slices.Repeat([]float64{1}, 2000)...)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			<-start
			poolRing(p4)
		})
	}
	close(start)
	wg.Wait()
	if v, ok := poolRings.Load(model); !ok || v.(*pooledRing).ring != p4.Ring.Load() || v.(*pooledRing).users.Load() != 1 {
		t.Fatalf("after two requests at once: cache %v %v, want the pool's ring with one user", v, ok)
	}
	runtime.KeepAlive(p1)
	runtime.KeepAlive(p2)
	runtime.KeepAlive(p3)
	runtime.KeepAlive(p4)
	p1, p2, p3, p4 = nil, nil, nil, nil
	for i := 0; ; i++ {
		runtime.GC() // collects the pools; their cleanups run after
		if _, ok := poolRings.Load(model); !ok {
			break
		}
		if i == 1000 {
			t.Fatalf("the ring of %s is still cached after its pools were collected", model)
		}
		runtime.Gosched()
	}
}
