package health_test

import (
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
)

const testInterval = 200 * time.Millisecond

// slack covers the scheduler tick (interval/4), the probe's round trip and
// a loaded machine.
const slack = 150 * time.Millisecond

func testSettings() policy.Settings {
	s := policy.Defaults()
	s.Ejection.Base = 300 * time.Millisecond
	s.Ejection.Max = time.Second
	return s
}

// A key whose probe fails is excluded within one interval and comes back
// when the upstream recovers.
func TestProbeFailureExcludesAndRecovers(t *testing.T) {
	m := startMock(t)
	st := newStore(t, testSettings(), map[string]string{"k1": openAIKey(m, "sk-test-k1"), "k2": openAIKey(m, "sk-test-k2")})
	r := startChecker(t, health.Config{Store: st, Interval: testInterval, Timeout: 100 * time.Millisecond, ID: "solo"})
	c := r.c

	waitFor(t, c, "first probes", func() bool {
		return !state(st, "k1").ProbedAt.IsZero() && !state(st, "k2").ProbedAt.IsZero()
	})
	if !c.IsLeader() {
		t.Fatal("standalone checker is not the leader")
	}
	if ok, why := eligible(st, "k1"); !ok {
		t.Fatalf("k1 not eligible after a passing probe: %+v", why)
	}

	m.SetDefault("sk-test-k1", mockupstream.Behaviour{Status: 503})
	broke := time.Now()
	lastPass := state(st, "k1").ProbedAt
	waitFor(t, c, "k1 excluded", func() bool {
		ok, why := eligible(st, "k1")
		return !ok && why.Reason == policy.ReasonProbeFailed
	})
	failedAt := state(st, "k1").ProbedAt
	if d := failedAt.Sub(later(lastPass, broke)); d > testInterval+slack {
		t.Errorf("k1 excluded %v after the upstream broke, want within one interval (%v)", d, testInterval)
	}
	if got := state(st, "k1").ProbeError; got != "upstream: status 503 (server_error)" {
		t.Errorf("ProbeError = %q", got)
	}
	if ok, why := eligible(st, "k2"); !ok {
		t.Errorf("k2 excluded too: %+v", why)
	}
	ks := statusOf(c, "k1")
	if ks.State != health.StateProbeFailed || ks.Reason != policy.ReasonProbeFailed || ks.LastHealthy || ks.Error != "upstream: status 503 (server_error)" {
		t.Errorf("Snapshot k1 = %+v", ks)
	}
	if ks.NextProbe.IsZero() || ks.NextProbe.Before(failedAt) || ks.NextProbe.Sub(failedAt) > testInterval+slack {
		t.Errorf("k1 out of rotation with next probe %v (failed at %v)", ks.NextProbe, failedAt)
	}

	m.SetDefault("sk-test-k1", mockupstream.Behaviour{})
	waitFor(t, c, "k1 back", func() bool { ok, _ := eligible(st, "k1"); return ok })
	s := state(st, "k1")
	if s.ProbeFailed || s.ProbeError != "" || !s.ProbedAt.After(failedAt) {
		t.Errorf("k1 back with state %+v", s)
	}
	if ks := statusOf(c, "k1"); ks.State != health.StateHealthy || !ks.LastHealthy || ks.Failures != 0 {
		t.Errorf("Snapshot k1 after recovery = %+v", ks)
	}
	stats := c.Stats()
	if stats.Mode != "standalone" || !stats.Leader || stats.ProbeFailures == 0 || stats.RecoveryProbes == 0 || stats.KVWrites != 0 {
		t.Errorf("Stats = %+v", stats)
	}
}

// Keys taken out by passive health (what extproc does with policy.NextState)
// are brought back by the probe loop.
func TestPassiveOutcomesRecoverThroughProbes(t *testing.T) {
	cfg := testSettings().Ejection
	tests := []struct {
		name string
		// outcomes fed to NextState, as extproc would after upstream answers.
		outcomes   []policy.Outcome
		wantReason string
		// probe is what the upstream answers probes while out (zero = OK).
		probe mockupstream.Behaviour
		// wantWhileOut is the reason while probes still fail.
		wantWhileOut string
	}{
		{name: "401 disabled, probe passes", outcomes: []policy.Outcome{{Kind: policy.OutcomeAuth, Status: 401}},
			wantReason: policy.ReasonAuthFailed},
		{name: "401 disabled, probes fail then pass", outcomes: []policy.Outcome{{Kind: policy.OutcomeAuth, Status: 401}},
			wantReason: policy.ReasonAuthFailed, probe: mockupstream.Behaviour{Status: 401}, wantWhileOut: policy.ReasonAuthFailed},
		{name: "quota, probes fail then pass", outcomes: []policy.Outcome{{Kind: policy.OutcomeQuota, Status: 429}},
			wantReason: policy.ReasonQuotaExhausted, probe: mockupstream.Behaviour{Status: 429, ErrorCode: "insufficient_quota"}, wantWhileOut: policy.ReasonQuotaExhausted},
		{name: "500s ejected, probe passes", outcomes: []policy.Outcome{
			{Kind: policy.OutcomeServer, Status: 500}, {Kind: policy.OutcomeServer, Status: 500}, {Kind: policy.OutcomeServer, Status: 500}},
			wantReason: policy.ReasonEjected},
		{name: "500s ejected, probes fail then pass", outcomes: []policy.Outcome{
			{Kind: policy.OutcomeServer, Status: 500}, {Kind: policy.OutcomeServer, Status: 500}, {Kind: policy.OutcomeServer, Status: 500}},
			wantReason: policy.ReasonEjected, probe: mockupstream.Behaviour{Status: 500}, wantWhileOut: policy.ReasonProbeFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startMock(t)
			st := newStore(t, testSettings(), map[string]string{"k1": openAIKey(m, "sk-test-k1")})
			// The recovery delay (≥ 1s) is longer than the ejection
			// (300ms) only in the half-open test below; here it is 200ms.
			// The interval is long so that no routine probe is in flight
			// when the outcomes below take k1 out: such a probe, answered
			// before, would bring k1 back with a pass that predates them.
			// For the same reason the first probe must have passed (a
			// failed one, e.g. timed out on a loaded machine, would keep
			// recovery probes going).
			c := startChecker(t, health.Config{Store: st, Interval: time.Minute, RecoveryBase: testInterval,
				RecoveryMax: testInterval, Timeout: time.Second, ID: "solo"}).c
			waitFor(t, c, "a passing first probe", func() bool {
				s := state(st, "k1")
				return !s.ProbedAt.IsZero() && !s.ProbeFailed
			})

			failing := tt.probe.Status != 0
			if failing {
				m.SetDefault("sk-test-k1", tt.probe)
			}
			e := st.Read().Key("k1")
			now := time.Now()
			for _, o := range tt.outcomes {
				e.RT.Update(func(s policy.KeyState) policy.KeyState { return policy.NextState(s, o, cfg, now) })
			}
			out := time.Now()
			if ok, why := eligible(st, "k1"); ok || why.Reason != tt.wantReason {
				t.Fatalf("after %v: eligible=%v %+v, want reason %s", tt.outcomes, ok, why, tt.wantReason)
			}
			if failing {
				waitFor(t, c, "a failed recovery probe", func() bool {
					s := state(st, "k1")
					return s.ProbeFailed && s.ProbedAt.After(out)
				})
				if ok, why := eligible(st, "k1"); ok || why.Reason != tt.wantWhileOut {
					t.Fatalf("while probes fail: eligible=%v %+v, want reason %s", ok, why, tt.wantWhileOut)
				}
				if ks := statusOf(c, "k1"); ks.NextProbe.IsZero() {
					t.Fatalf("key out of rotation without a next probe: %+v", ks)
				}
				m.SetDefault("sk-test-k1", mockupstream.Behaviour{})
			}
			waitFor(t, c, "k1 back in rotation", func() bool {
				s := state(st, "k1")
				ok, _ := eligible(st, "k1")
				return ok && !s.ProbeFailed && s.ProbedAt.After(out)
			})
			s := state(st, "k1")
			if s.Disabled || s.DisabledReason != "" || s.Ejections != 0 || !s.EjectedUntil.IsZero() || s.HalfOpen {
				t.Errorf("k1 back with leftover state %+v", s)
			}
		})
	}
}

// An ejection that runs out before any probe leaves the key half-open: it
// serves again and the next answer decides.
func TestEjectionHalfOpenWithoutProbe(t *testing.T) {
	m := startMock(t)
	settings := testSettings()
	st := newStore(t, settings, map[string]string{"k1": openAIKey(m, "sk-test-k1")})
	c := startChecker(t, health.Config{Store: st, Interval: 5 * time.Second, RecoveryBase: 5 * time.Second,
		Timeout: time.Second, ID: "solo"}).c
	waitFor(t, c, "first probe", func() bool { return !state(st, "k1").ProbedAt.IsZero() })
	probed := len(probesOf(m, "sk-test-k1"))

	e := st.Read().Key("k1")
	now := time.Now()
	for range 3 {
		e.RT.Update(func(s policy.KeyState) policy.KeyState {
			return policy.NextState(s, policy.Outcome{Kind: policy.OutcomeServer, Status: 500}, settings.Ejection, now)
		})
	}
	if ok, why := eligible(st, "k1"); ok || why.Reason != policy.ReasonEjected {
		t.Fatalf("eligible=%v %+v, want ejected", ok, why)
	}
	waitFor(t, c, "half-open", func() bool { return statusOf(c, "k1").State == health.StateHalfOpen })
	if ok, why := eligible(st, "k1"); !ok {
		t.Fatalf("half-open key not eligible: %+v", why)
	}
	// The trial succeeds (extproc feeds the answer back): closed again.
	s := e.RT.Update(func(s policy.KeyState) policy.KeyState {
		return policy.NextState(s, policy.Outcome{Kind: policy.OutcomeSuccess, Status: 200}, settings.Ejection, time.Now())
	})
	if s.HalfOpen || s.Ejections != 0 || !s.EjectedUntil.IsZero() {
		t.Errorf("after the trial: %+v", s)
	}
	if ks := statusOf(c, "k1"); ks.State != health.StateHealthy {
		t.Errorf("Snapshot state %s, want healthy", ks.State)
	}
	if n := len(probesOf(m, "sk-test-k1")); n != probed {
		t.Errorf("%d probes during the ejection, want none (recovery delay 5s > ejection 300ms)", n-probed)
	}
}

// Every key out of rotation has a next probe, no later than the recovery
// cap; enabled: false keys are not probed.
func TestEveryOutKeyHasARecoveryProbe(t *testing.T) {
	m := startMock(t)
	settings := testSettings()
	keys := map[string]string{
		"auth": openAIKey(m, "sk-test-auth"), "quota": openAIKey(m, "sk-test-quota"),
		"eject": openAIKey(m, "sk-test-eject"), "probe": openAIKey(m, "sk-test-probe"),
		"ok":  openAIKey(m, "sk-test-ok"),
		"off": `{"provider":"openai","base_url":"` + m.URL() + `/v1","secret":"sk-test-off","enabled":false}`,
	}
	for _, id := range []string{"auth", "quota", "eject", "probe"} {
		m.SetDefault("sk-test-"+id, mockupstream.Behaviour{Status: 401})
	}
	st := newStore(t, settings, keys)
	const interval = 10 * time.Second
	c := startChecker(t, health.Config{Store: st, Interval: interval, RecoveryBase: 300 * time.Millisecond,
		RecoveryMax: 2 * time.Second, Timeout: time.Second, ID: "solo"}).c
	waitFor(t, c, "first probes", func() bool {
		for _, id := range []string{"auth", "quota", "eject", "probe", "ok"} {
			if state(st, id).ProbedAt.IsZero() {
				return false
			}
		}
		return true
	})
	now := time.Now()
	feed := map[string][]policy.Outcome{
		"auth":  {{Kind: policy.OutcomeAuth}},
		"quota": {{Kind: policy.OutcomeQuota}},
		"eject": {{Kind: policy.OutcomeServer}, {Kind: policy.OutcomeServer}, {Kind: policy.OutcomeServer}},
	}
	for id, os := range feed {
		for _, o := range os {
			st.Read().Key(id).RT.Update(func(s policy.KeyState) policy.KeyState { return policy.NextState(s, o, settings.Ejection, now) })
		}
	}
	waitFor(t, c, "a few recovery rounds", func() bool { return statusOf(c, "probe").Failures >= 4 })
	snap := c.Snapshot()
	if len(snap) != len(keys) {
		t.Fatalf("Snapshot has %d keys, want %d", len(snap), len(keys))
	}
	for _, ks := range snap {
		switch ks.ID {
		case "ok":
			if ks.State != health.StateHealthy || ks.NextProbe.Sub(ks.LastProbe) > interval {
				t.Errorf("ok: %+v", ks)
			}
		case "off":
			if ks.State != health.StateDisabled || ks.Reason != policy.ReasonDisabled || !ks.NextProbe.IsZero() || ks.Probes != 0 {
				t.Errorf("off: %+v", ks)
			}
		default:
			if ks.State == health.StateHealthy || ks.State == health.StateHalfOpen {
				t.Errorf("%s: state %s, want out of rotation", ks.ID, ks.State)
			}
			if ks.NextProbe.IsZero() || ks.NextProbe.After(ks.LastProbe.Add(2*time.Second+slack)) {
				t.Errorf("%s: next probe %v, last %v: want within the recovery cap (2s)", ks.ID, ks.NextProbe, ks.LastProbe)
			}
			if !ks.Leader {
				t.Errorf("%s: Leader false on a standalone checker", ks.ID)
			}
		}
	}
	if n := len(probesOf(m, "sk-test-off")); n != 0 {
		t.Errorf("a disabled key was probed %d times", n)
	}
	// Backoff: the gaps between recovery probes of one key grow.
	rs := probesOf(m, "sk-test-probe")
	if len(rs) < 4 {
		t.Fatalf("%d probes of a failing key, want ≥ 4", len(rs))
	}
	g0, g1, g2 := rs[1].Time.Sub(rs[0].Time), rs[2].Time.Sub(rs[1].Time), rs[3].Time.Sub(rs[2].Time)
	if g0 < 250*time.Millisecond || g1 < 550*time.Millisecond || g2 < 1150*time.Millisecond {
		t.Errorf("recovery gaps %v, %v, %v: want ~300ms, ~600ms, ~1.2s", g0, g1, g2)
	}
}

// A probe answered 429 keeps the key valid but cools it down.
func TestRateLimitedProbeCoolsDown(t *testing.T) {
	m := startMock(t)
	m.SetDefault("sk-test-k1", mockupstream.Behaviour{Status: 429, RetryAfter: "30"})
	st := newStore(t, testSettings(), map[string]string{"k1": openAIKey(m, "sk-test-k1")})
	c := startChecker(t, health.Config{Store: st, Interval: testInterval, Timeout: time.Second, ID: "solo"}).c
	waitFor(t, c, "a probe", func() bool { return !state(st, "k1").ProbedAt.IsZero() })
	s := state(st, "k1")
	if s.ProbeFailed || s.Disabled {
		t.Fatalf("a 429 failed the key: %+v", s)
	}
	if d := time.Until(s.CooldownUntil); d < 25*time.Second || d > 31*time.Second {
		t.Errorf("cooldown until now+%v, want ~30s", d)
	}
	if ok, why := eligible(st, "k1"); ok || why.Reason != policy.ReasonCoolingDown {
		t.Errorf("eligible=%v %+v, want cooling_down", ok, why)
	}
	if ks := statusOf(c, "k1"); ks.NextProbe.Before(s.CooldownUntil) || ks.State != health.StateCoolingDown || ks.Error != "rate limited (429)" {
		t.Errorf("cooling key: %+v, want no probe before the cooldown ends (%v)", ks, s.CooldownUntil)
	}
	if c.Stats().RateLimited == 0 {
		t.Error("RateLimited counter not incremented")
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
