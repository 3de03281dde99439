package policy

import (
	"strings"
	"testing"
	"time"
)

var ejCfg = EjectionSettings{ConsecutiveFailures: 3, Base: 30 * time.Second, Max: 5 * time.Minute, Cooldown: 60 * time.Second, ErrorWindow: time.Minute}

func sec(n int) time.Duration { return time.Duration(n) * time.Second }

func TestNextState(t *testing.T) {
	ok := Outcome{Kind: OutcomeSuccess, Status: 200}
	fail := Outcome{Kind: OutcomeServer, Status: 502}
	timeout := Outcome{Kind: OutcomeTimeout, Status: 504}
	tests := []struct {
		name string
		s    KeyState
		o    Outcome
		cfg  EjectionSettings
		want KeyState
	}{
		{"success resets counters", KeyState{ConsecutiveFailures: 2, Ejections: 3, HalfOpen: true}, ok, ejCfg, KeyState{}},
		{"success keeps cooldown and disabled", KeyState{CooldownUntil: t0.Add(sec(5)), Disabled: true, DisabledReason: DisabledAuth}, ok,
			ejCfg, KeyState{CooldownUntil: t0.Add(sec(5)), Disabled: true, DisabledReason: DisabledAuth}},
		{"success after expired ejection closes", KeyState{EjectedUntil: t0, Ejections: 2}, ok, ejCfg, KeyState{}},
		{"stale success while ejected keeps backoff", KeyState{EjectedUntil: t0.Add(sec(10)), Ejections: 2, ConsecutiveFailures: 1}, ok,
			ejCfg, KeyState{EjectedUntil: t0.Add(sec(10)), Ejections: 2}},

		{"429 with RetryAt", KeyState{ConsecutiveFailures: 1}, Outcome{OutcomeRateLimited, 429, t0.Add(sec(7))},
			ejCfg, KeyState{ConsecutiveFailures: 1, CooldownUntil: t0.Add(sec(7))}},
		{"429 default cooldown", KeyState{}, Outcome{Kind: OutcomeRateLimited, Status: 429}, ejCfg, KeyState{CooldownUntil: t0.Add(sec(60))}},
		{"429 keeps a later cooldown", KeyState{CooldownUntil: t0.Add(sec(90))}, Outcome{OutcomeRateLimited, 429, t0.Add(sec(7))},
			ejCfg, KeyState{CooldownUntil: t0.Add(sec(90))}},
		{"429 while half-open stays half-open", KeyState{EjectedUntil: t0.Add(-sec(1)), Ejections: 1}, Outcome{OutcomeRateLimited, 429, t0.Add(sec(2))},
			ejCfg, KeyState{HalfOpen: true, Ejections: 1, CooldownUntil: t0.Add(sec(2))}},

		{"auth disables", KeyState{ConsecutiveFailures: 1}, Outcome{Kind: OutcomeAuth, Status: 401},
			ejCfg, KeyState{ConsecutiveFailures: 1, Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0, DisabledAt: t0}},
		{"quota disables", KeyState{}, Outcome{Kind: OutcomeQuota, Status: 429}, ejCfg, KeyState{Disabled: true, DisabledReason: DisabledQuota, VerdictAt: t0, DisabledAt: t0}},
		{"a later verdict stays", KeyState{VerdictAt: t0.Add(sec(1)), DisabledAt: t0.Add(sec(1))}, Outcome{Kind: OutcomeAuth, Status: 401}, ejCfg,
			KeyState{Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0.Add(sec(1)), DisabledAt: t0.Add(sec(1))}},
		{"a second 401 stamps the disable", KeyState{Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0.Add(-sec(1)), DisabledAt: t0.Add(-sec(1))}, Outcome{Kind: OutcomeAuth, Status: 401}, ejCfg,
			KeyState{Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0, DisabledAt: t0}},

		{"first failure counts", KeyState{}, fail, ejCfg, KeyState{ConsecutiveFailures: 1}},
		{"second timeout counts", KeyState{ConsecutiveFailures: 1}, timeout, ejCfg, KeyState{ConsecutiveFailures: 2}},
		{"third failure ejects for base", KeyState{ConsecutiveFailures: 2}, fail, ejCfg, KeyState{EjectedUntil: t0.Add(sec(30)), SlowStartFrom: t0.Add(sec(30)), Ejections: 1, VerdictAt: t0}},
		{"failure while half-open flag doubles", KeyState{HalfOpen: true, Ejections: 1}, timeout, ejCfg, KeyState{EjectedUntil: t0.Add(sec(60)), SlowStartFrom: t0.Add(sec(60)), Ejections: 2, VerdictAt: t0}},
		{"failure after expired ejection doubles", KeyState{EjectedUntil: t0, Ejections: 2}, fail, ejCfg, KeyState{EjectedUntil: t0.Add(sec(120)), SlowStartFrom: t0.Add(sec(120)), Ejections: 3, VerdictAt: t0}},
		{"backoff capped at max", KeyState{HalfOpen: true, Ejections: 10}, fail, ejCfg, KeyState{EjectedUntil: t0.Add(5 * time.Minute), SlowStartFrom: t0.Add(5 * time.Minute), Ejections: 11, VerdictAt: t0}},
		{"failure while ejected ignored", KeyState{EjectedUntil: t0.Add(sec(1)), Ejections: 1}, fail, ejCfg, KeyState{EjectedUntil: t0.Add(sec(1)), Ejections: 1}},
		{"threshold 1 ejects at once", KeyState{}, fail, EjectionSettings{ConsecutiveFailures: 1, Base: sec(5), Max: sec(60)},
			KeyState{EjectedUntil: t0.Add(sec(5)), SlowStartFrom: t0.Add(sec(5)), Ejections: 1, VerdictAt: t0}},
		{"zero cfg takes defaults", KeyState{ConsecutiveFailures: 2}, fail, EjectionSettings{}, KeyState{EjectedUntil: t0.Add(DefaultEjectionBase), SlowStartFrom: t0.Add(DefaultEjectionBase), Ejections: 1, VerdictAt: t0}},
		{"zero cfg default cooldown", KeyState{}, Outcome{Kind: OutcomeRateLimited}, EjectionSettings{}, KeyState{CooldownUntil: t0.Add(DefaultCooldown)}},

		{"client error changes nothing", KeyState{ConsecutiveFailures: 2, EjectedUntil: t0, Ejections: 1}, Outcome{Kind: OutcomeClient, Status: 400},
			ejCfg, KeyState{ConsecutiveFailures: 2, EjectedUntil: t0, Ejections: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NextState(tt.s, tt.o, tt.cfg, t0); got != tt.want {
				t.Errorf("NextState =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

// TestCircuitScenario walks one key through eject → half-open → re-eject →
// close → eject again, checking eligibility at each step.
func TestCircuitScenario(t *testing.T) {
	k := &Key{ID: "k1", Enabled: true}
	fail := Outcome{Kind: OutcomeServer, Status: 500}
	var s KeyState
	now := t0
	step := func(o Outcome) { s = NextState(s, o, ejCfg, now) }
	expect := func(wantOK bool, wantReason Ineligible, wantHalfOpen bool) {
		t.Helper()
		ok, why := Eligible(k, s, now)
		if ok != wantOK || why != wantReason {
			t.Fatalf("at +%v: Eligible = %v %+v, want %v %+v (state %+v)", now.Sub(t0), ok, why, wantOK, wantReason, s)
		}
		if got := s.HalfOpenAt(now); got != wantHalfOpen {
			t.Fatalf("at +%v: HalfOpenAt = %v, want %v", now.Sub(t0), got, wantHalfOpen)
		}
	}

	step(fail)
	step(fail)
	expect(true, Ineligible{}, false)
	step(fail) // third: ejected 30s
	expect(false, Ineligible{ReasonEjected, t0.Add(sec(30))}, false)

	now = t0.Add(sec(29))
	expect(false, Ineligible{ReasonEjected, t0.Add(sec(30))}, false)
	now = t0.Add(sec(30)) // ejection over: half-open trial
	expect(true, Ineligible{}, true)
	step(fail) // the trial fails: 60s
	expect(false, Ineligible{ReasonEjected, t0.Add(sec(90))}, false)

	now = t0.Add(sec(90))
	expect(true, Ineligible{}, true)
	step(Outcome{Kind: OutcomeSuccess, Status: 200}) // the trial passes: closed
	expect(true, Ineligible{}, false)
	if s != (KeyState{SlowStartFrom: t0.Add(sec(90)), VerdictAt: t0.Add(sec(30))}) {
		t.Fatalf("after a passing trial state = %+v, want zero but the slow start from the ejection's end and the last ejection's time", s)
	}

	step(fail)
	step(fail)
	step(fail) // backoff starts over at base
	expect(false, Ineligible{ReasonEjected, t0.Add(sec(120))}, false)
}

func TestEjectionBackoff(t *testing.T) {
	tests := []struct {
		cfg       EjectionSettings
		ejections int
		want      time.Duration
	}{
		{ejCfg, 0, sec(30)},
		{ejCfg, 1, sec(60)},
		{ejCfg, 2, sec(120)},
		{ejCfg, 3, sec(240)},
		{ejCfg, 4, 5 * time.Minute},
		{ejCfg, 1 << 30, 5 * time.Minute},
		{ejCfg, -1, sec(30)},
		{EjectionSettings{Base: time.Hour, Max: time.Minute}, 0, time.Minute},
		{EjectionSettings{Base: time.Duration(1) << 62, Max: time.Duration(1<<63 - 1)}, 5, time.Duration(1<<63 - 1)},
		{EjectionSettings{}, 1, 2 * DefaultEjectionBase},
	}
	for _, tt := range tests {
		if got := EjectionBackoff(tt.cfg, tt.ejections); got != tt.want {
			t.Errorf("EjectionBackoff(%+v, %d) = %v, want %v", tt.cfg, tt.ejections, got, tt.want)
		}
	}
}

func TestProbeResult(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	tests := []struct {
		name   string
		s      KeyState
		ok     bool
		errMsg string
		want   KeyState
	}{
		{"pass clears everything but cooldown",
			KeyState{Disabled: true, DisabledReason: DisabledAuth, ProbeFailed: true, ProbeError: "401", EjectedUntil: t0.Add(sec(9)), Ejections: 3, ConsecutiveFailures: 2, HalfOpen: true, CooldownUntil: t0.Add(sec(4))},
			true, "", KeyState{CooldownUntil: t0.Add(sec(4)), ProbedAt: t0, SlowStartFrom: t0}},
		{"pass clears quota", KeyState{Disabled: true, DisabledReason: DisabledQuota}, true, "ignored", KeyState{ProbedAt: t0}},
		{"pass after the verdict clears it", KeyState{Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0.Add(-sec(1))}, true, "",
			KeyState{ProbedAt: t0, VerdictAt: t0.Add(-sec(1))}},
		{"pass older than a disable keeps it", KeyState{Disabled: true, DisabledReason: DisabledAuth, ProbeFailed: true, ProbeError: "x", VerdictAt: t0.Add(sec(1))}, true, "",
			KeyState{Disabled: true, DisabledReason: DisabledAuth, ProbedAt: t0, VerdictAt: t0.Add(sec(1))}},
		{"pass at the instant of an ejection keeps it", KeyState{EjectedUntil: t0.Add(sec(30)), Ejections: 1, SlowStartFrom: t0.Add(sec(30)), VerdictAt: t0}, true, "",
			KeyState{EjectedUntil: t0.Add(sec(30)), Ejections: 1, SlowStartFrom: t0.Add(sec(30)), ProbedAt: t0, VerdictAt: t0}},
		{"fail sets ProbeFailed", KeyState{Disabled: true, DisabledReason: DisabledAuth}, false, "GET /v1/models: 401",
			KeyState{Disabled: true, DisabledReason: DisabledAuth, ProbeFailed: true, ProbeError: "GET /v1/models: 401", ProbedAt: t0}},
		{"fail truncates on a rune boundary", KeyState{}, false, long, KeyState{ProbeFailed: true, ProbeError: long[:256], ProbedAt: t0}},
		{"fail truncates mid-rune", KeyState{}, false, "a" + long, KeyState{ProbeFailed: true, ProbeError: "a" + long[:254], ProbedAt: t0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ProbeResult(tt.s, tt.ok, tt.errMsg, t0); got != tt.want {
				t.Errorf("ProbeResult =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestEligible(t *testing.T) {
	on := &Key{ID: "k1", Enabled: true}
	off := &Key{ID: "k2"}
	tests := []struct {
		name   string
		k      *Key
		s      KeyState
		ok     bool
		reason Ineligible
	}{
		{"healthy", on, KeyState{}, true, Ineligible{}},
		{"nil key", nil, KeyState{}, false, Ineligible{Reason: ReasonDisabled}},
		{"key disabled by config", off, KeyState{}, false, Ineligible{Reason: ReasonDisabled}},
		{"config wins over auth", off, KeyState{Disabled: true, DisabledReason: DisabledAuth}, false, Ineligible{Reason: ReasonDisabled}},
		{"auth failed", on, KeyState{Disabled: true, DisabledReason: DisabledAuth}, false, Ineligible{Reason: ReasonAuthFailed}},
		{"quota", on, KeyState{Disabled: true, DisabledReason: DisabledQuota, CooldownUntil: t0.Add(sec(5))}, false, Ineligible{Reason: ReasonQuotaExhausted}},
		{"disabled other reason", on, KeyState{Disabled: true, DisabledReason: "manual"}, false, Ineligible{Reason: ReasonDisabled}},
		{"probe failed", on, KeyState{ProbeFailed: true}, false, Ineligible{Reason: ReasonProbeFailed}},
		{"cooling down", on, KeyState{CooldownUntil: t0.Add(sec(2))}, false, Ineligible{ReasonCoolingDown, t0.Add(sec(2))}},
		{"cooldown over", on, KeyState{CooldownUntil: t0}, true, Ineligible{}},
		{"ejected", on, KeyState{EjectedUntil: t0.Add(sec(30)), Ejections: 1}, false, Ineligible{ReasonEjected, t0.Add(sec(30))}},
		{"half-open admitted", on, KeyState{EjectedUntil: t0, Ejections: 1}, true, Ineligible{}},
		{"half-open flag admitted", on, KeyState{HalfOpen: true, Ejections: 1}, true, Ineligible{}},
		{"cooling ends later than ejection", on, KeyState{CooldownUntil: t0.Add(sec(40)), EjectedUntil: t0.Add(sec(30))}, false, Ineligible{ReasonCoolingDown, t0.Add(sec(40))}},
		{"ejection ends later than cooling", on, KeyState{CooldownUntil: t0.Add(sec(20)), EjectedUntil: t0.Add(sec(30))}, false, Ineligible{ReasonEjected, t0.Add(sec(30))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, reason := Eligible(tt.k, tt.s, t0)
			if ok != tt.ok || reason != tt.reason {
				t.Errorf("Eligible = %v, %+v; want %v, %+v", ok, reason, tt.ok, tt.reason)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	cool := func(d time.Duration) Ineligible { return Ineligible{ReasonCoolingDown, t0.Add(d)} }
	eject := func(d time.Duration) Ineligible { return Ineligible{ReasonEjected, t0.Add(d)} }
	auth := Ineligible{Reason: ReasonAuthFailed}
	quota := Ineligible{Reason: ReasonQuotaExhausted}
	disabled := Ineligible{Reason: ReasonDisabled}
	probe := Ineligible{Reason: ReasonProbeFailed}
	tests := []struct {
		name     string
		model    string
		reasons  []Ineligible
		wantMsg  string
		wantCode string
	}{
		{"all cooling, earliest named", "gpt-4", []Ineligible{cool(sec(9)), cool(sec(2)), cool(sec(5))},
			"all 3 keys for model gpt-4 are cooling down until 2026-11-25T20:00:02Z", CodeKeysCoolingDown},
		{"until rounded up", "gpt-4", []Ineligible{cool(1500 * time.Millisecond), cool(sec(3))},
			"all 2 keys for model gpt-4 are cooling down until 2026-11-25T20:00:02Z", CodeKeysCoolingDown},
		{"one key", "gpt-4o", []Ineligible{eject(sec(30))},
			"the key for model gpt-4o is ejected after upstream errors until 2026-11-25T20:00:30Z", CodeKeysEjected},
		{"no model", "", []Ineligible{auth, auth},
			"all 2 keys are disabled (auth failed)", CodeKeysDisabled},
		{"all quota", "m", []Ineligible{quota, quota, quota},
			"all 3 keys for model m are disabled (quota exhausted)", CodeKeysDisabled},
		{"all plain disabled", "m", []Ineligible{disabled, disabled},
			"all 2 keys for model m are disabled", CodeKeysDisabled},
		{"mixed", "gpt-4", []Ineligible{disabled, cool(sec(9)), cool(sec(2))},
			"no eligible key for model gpt-4: 2 cooling down (until 2026-11-25T20:00:02Z), 1 disabled", CodeNoEligibleKey},
		{"mixed time-bound", "gpt-4", []Ineligible{eject(sec(60)), cool(sec(2))},
			"no eligible key for model gpt-4: 1 cooling down (until 2026-11-25T20:00:02Z), 1 ejected after upstream errors (until 2026-11-25T20:01:00Z)", CodeNoEligibleKey},
		{"mixed disabled kinds", "m", []Ineligible{probe, auth, quota, auth},
			"no eligible key for model m: 2 disabled (auth failed), 1 disabled (quota exhausted), 1 disabled (probe failed)", CodeKeysDisabled},
		{"unknown reason alone", "m", []Ineligible{{Reason: "draining"}},
			"no eligible key for model m: 1 draining", CodeNoEligibleKey},
		{"unknown reason mixed", "m", []Ineligible{{Reason: "draining"}, auth, {Reason: "draining"}},
			"no eligible key for model m: 1 disabled (auth failed), 2 draining", CodeNoEligibleKey},
		{"no reasons", "gpt-4", nil, "no key serves model gpt-4", CodeNoEligibleKey},
		{"no reasons no model", "", nil, "no key is configured", CodeNoEligibleKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, code := Explain(tt.model, tt.reasons)
			if msg != tt.wantMsg || code != tt.wantCode {
				t.Errorf("Explain =\n %q, %q\nwant\n %q, %q", msg, code, tt.wantMsg, tt.wantCode)
			}
		})
	}
}

func TestEarliestUntil(t *testing.T) {
	tests := []struct {
		reasons []Ineligible
		want    time.Time
	}{
		{nil, time.Time{}},
		{[]Ineligible{{Reason: ReasonAuthFailed}}, time.Time{}},
		{[]Ineligible{{ReasonEjected, t0.Add(sec(30))}, {Reason: ReasonDisabled}, {ReasonCoolingDown, t0.Add(sec(3))}}, t0.Add(sec(3))},
	}
	for i, tt := range tests {
		if got := EarliestUntil(tt.reasons); !got.Equal(tt.want) {
			t.Errorf("%d: EarliestUntil = %v, want %v", i, got, tt.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	want := Settings{
		Strategy: "round_robin",
		Health:   HealthSettings{Interval: 10 * time.Minute, Timeout: 10 * time.Second},
		Ejection: EjectionSettings{ConsecutiveFailures: 3, Base: 30 * time.Second, Max: 5 * time.Minute, Cooldown: 60 * time.Second, ErrorWindow: 60 * time.Second, SlowStart: 30 * time.Second},
		Auth:     AuthSettings{Mode: AuthNone, Claim: "role", Value: "ROLE_API_USER"},
		Alerts:   AlertSettings{ErrorRate: 0.2, Usage: 10000},

		MaxBodyBytes: 8 << 20,
		MaxJSONDepth: 256,
		StreamUsage:  true,
		Retry:        RetrySettings{MaxAttempts: 3},
		Objects:      ObjectSettings{Retention: 30 * 24 * time.Hour, Max: 10000},
		Share:        ShareSettings{CooldownOver: 10 * time.Second},
		UnknownPaths: "refuse",
	}
	if got := Defaults(); got != want {
		t.Fatalf("Defaults() =\n %+v\nwant\n %+v", got, want)
	}

	s := Settings{Strategy: "least_used", Ejection: EjectionSettings{Base: time.Second}, Auth: AuthSettings{Mode: AuthJWTClaim, Claim: "scope"}, MaxBodyBytes: 1024}
	if p := s.WithDefaults(); p != &s {
		t.Fatalf("WithDefaults returned another pointer")
	}
	want.Strategy = "least_used"
	want.Ejection.Base = time.Second
	want.Auth.Mode, want.Auth.Claim = AuthJWTClaim, "scope"
	want.MaxBodyBytes = 1024
	want.StreamUsage = false // a bool cannot be told unset; Defaults sets it
	if s != want {
		t.Errorf("WithDefaults kept/filled =\n %+v\nwant\n %+v", s, want)
	}
}

func TestApplyRule(t *testing.T) {
	r := &Rule{ID: "r1", KeyID: "k1", From: "gpt-4", To: "gpt-4o-mini", Enabled: true}
	tests := []struct {
		name    string
		r       *Rule
		model   string
		want    string
		applied bool
	}{
		{"exact match", r, "gpt-4", "gpt-4o-mini", true},
		{"prefix is not a match", r, "gpt-4-turbo", "gpt-4-turbo", false},
		{"case matters", r, "GPT-4", "GPT-4", false},
		{"disabled", &Rule{From: "gpt-4", To: "x", Enabled: false}, "gpt-4", "gpt-4", false},
		{"empty To ignored", &Rule{From: "gpt-4", Enabled: true}, "gpt-4", "gpt-4", false},
		{"nil rule", nil, "gpt-4", "gpt-4", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, applied := ApplyRule(tt.r, tt.model)
			if got != tt.want || applied != tt.applied {
				t.Errorf("ApplyRule = %q, %v; want %q, %v", got, applied, tt.want, tt.applied)
			}
		})
	}
}

func BenchmarkNextState(b *testing.B) {
	fail := Outcome{Kind: OutcomeServer, Status: 502}
	ok := Outcome{Kind: OutcomeSuccess, Status: 200}
	b.ReportAllocs()
	var s KeyState
	now := t0
	for b.Loop() {
		now = now.Add(time.Second)
		s = NextState(s, fail, ejCfg, now)
		s = NextState(s, ok, ejCfg, now)
	}
}

func BenchmarkEligible(b *testing.B) {
	k := &Key{ID: "k1", Enabled: true}
	s := KeyState{CooldownUntil: t0.Add(-time.Second), EjectedUntil: t0.Add(-time.Second)}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := Eligible(k, s, t0); !ok {
			b.Fatal("not eligible")
		}
	}
}
