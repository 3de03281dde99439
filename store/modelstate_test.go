package store

import (
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

func TestModelState(t *testing.T) {
	t0 := time.Date(2026, 3, 4, 5, 6, 0, 0, time.UTC)
	rt := NewRuntime()
	if rt.HasModels() || rt.Model("gpt-4") != nil {
		t.Fatal("a new key has model states")
	}
	m := rt.ModelFor("gpt-4")
	if rt.ModelFor("gpt-4") != m || rt.Model("gpt-4") != m || len(rt.Models()) != 1 {
		t.Fatal("ModelFor does not return the one state of a model")
	}
	m.Observe(policy.Headroom{
		Requests: policy.Budget{Known: true, Limit: 10, Remaining: 2, Reset: t0.Add(20 * time.Second)},
		Tokens:   policy.Budget{Known: true, Limit: 1000, Remaining: 500, Reset: t0.Add(10 * time.Second)},
	}, t0)
	steps := []struct {
		name   string
		at     time.Time
		take   int64 // tokens of a request taken before the check (0: none)
		est    int64
		ok     bool
		reason string
		until  time.Time
	}{
		{"within headroom", t0, 0, 400, true, "", time.Time{}},
		{"tokens below the estimate", t0, 200, 400, false, policy.ReasonNoHeadroom, t0.Add(10 * time.Second)},
		{"larger than the whole limit: the provider answers", t0, 0, 1001, true, "", time.Time{}},
		{"no request left", t0, 1, 1, false, policy.ReasonNoHeadroom, t0.Add(20 * time.Second)},
		{"tokens refilled, requests not", t0.Add(10 * time.Second), 0, 400, false, policy.ReasonNoHeadroom, t0.Add(20 * time.Second)},
		{"after the reset", t0.Add(20 * time.Second), 0, 400, true, "", time.Time{}},
	}
	for _, s := range steps {
		if s.take > 0 {
			m.Take(s.take, s.at)
		}
		ok, why := m.Admits(s.est, time.Time{}, s.at)
		if ok != s.ok || why.Reason != s.reason || !why.Until.Equal(s.until) {
			t.Errorf("%s: Admits = %v %+v, want %v %s until %v", s.name, ok, why, s.ok, s.reason, s.until)
		}
	}
	if !m.CoolDown(t0.Add(time.Minute)) || m.CoolDown(t0.Add(time.Second)) {
		t.Error("CoolDown does not report only a longer cooldown")
	}
	if ok, why := m.Admits(1, time.Time{}, t0.Add(30*time.Second)); ok || why.Reason != policy.ReasonCoolingDown || !why.Until.Equal(t0.Add(time.Minute)) {
		t.Errorf("cooling model: %v %+v", ok, why)
	}
	m.Block(t0.Add(40 * time.Second))
	if ok, why := m.Admits(1, t0, t0.Add(2*time.Minute)); ok || why.Reason != policy.ReasonModelUnavailable {
		t.Errorf("blocked model: %v %+v", ok, why)
	}
	if ok, _ := m.Admits(1, t0.Add(41*time.Second), t0.Add(2*time.Minute)); !ok {
		t.Error("a probe after the block does not lift it")
	}
	if rt.Model("gpt-4o") != nil {
		t.Error("another model has a state")
	}
}

func TestModelStatesBounded(t *testing.T) {
	rt := NewRuntime()
	for i := range MaxModelStates {
		if rt.ModelFor(string(rune('a'+i))) == nil {
			t.Fatalf("model %d refused", i)
		}
	}
	if rt.ModelFor("one too many") != nil || rt.ModelFor("") != nil {
		t.Error("more than MaxModelStates states, or one for no model")
	}
}

func BenchmarkModelStateAdmits(b *testing.B) {
	rt := NewRuntime()
	now := time.Now()
	for _, m := range []string{"gpt-4o-mini", "gpt-4o", "gpt-4"} {
		rt.ModelFor(m).Observe(policy.Headroom{Requests: policy.Budget{Known: true, Remaining: 1 << 30, Reset: now.Add(time.Hour)}}, now)
	}
	b.ReportAllocs()
	for b.Loop() {
		if m := rt.Model("gpt-4"); m != nil {
			m.Admits(100, time.Time{}, now)
			m.Take(100, now)
		}
	}
}
