package policy

import (
	"fmt"
	"strings"
	"time"
)

// The KeyState.DisabledReason values.
const (
	DisabledAuth  = "auth"  // 401/403: the credential was refused
	DisabledQuota = "quota" // insufficient_quota: the account is out of credit
)

// The Ineligible.Reason values, from Eligible.
const (
	ReasonDisabled       = "disabled"        // the key document says enabled: false
	ReasonAuthFailed     = "auth_failed"     // disabled after 401/403 until a probe passes
	ReasonQuotaExhausted = "quota_exhausted" // disabled after insufficient_quota until a probe passes
	ReasonProbeFailed    = "probe_failed"    // the latest active probe failed
	ReasonCoolingDown    = "cooling_down"    // 429: until Until
	ReasonEjected        = "ejected"         // consecutive 5xx/timeouts: until Until
	// Per (key, model), from the store's model state:
	ReasonNoHeadroom       = "no_headroom"       // the provider's remaining requests/tokens are spent: until the reset
	ReasonModelUnavailable = "model_unavailable" // 403/404 for the model: until the next probe
)

// The error codes Explain returns, for the client-facing 503 body.
const (
	CodeKeysCoolingDown = "keys_cooling_down"
	CodeKeysEjected     = "keys_ejected"
	CodeKeysDisabled    = "keys_disabled"
	CodeNoEligibleKey   = "no_eligible_key"
)

// maxProbeError bounds KeyState.ProbeError.
const maxProbeError = 256

// Ineligible says why Eligible refused a key and, for the time-bound reasons
// (cooling_down, ejected), until when.
type Ineligible struct {
	Reason string
	Until  time.Time
}

// NextState returns the passive health of a key after outcome o at now:
//
//   - Success closes the circuit: ConsecutiveFailures, Ejections, HalfOpen
//     and EjectedUntil are reset. A success that arrives while the key is
//     still ejected (a request sent before the ejection) only resets
//     ConsecutiveFailures, so it cannot shorten the backoff.
//   - RateLimited sets CooldownUntil to o.RetryAt, or now+cfg.Cooldown when
//     RetryAt is zero (keeping a later cooldown already set); it is not a
//     failure and does not decide a half-open trial.
//   - Auth and Quota disable the key (DisabledReason "auth" or "quota")
//     until a probe that finishes later passes (ProbeResult); VerdictAt is
//     set to now, as for an ejection, and DisabledAt too.
//   - Server and Timeout count a failure. At cfg.ConsecutiveFailures in a
//     row, or at any failure while half-open, the key is ejected until
//     now + min(cfg.Base·2^Ejections, cfg.Max); Ejections is incremented and
//     the failure count restarts; SlowStartFrom is the ejection's end.
//     Failures that arrive while the key is already ejected are ignored.
//   - Client (the caller's fault) leaves the state unchanged.
//
// A key whose ejection has expired is half-open: Eligible admits it again and
// the next Success or failure decides. Zero fields of cfg take their defaults.
func NextState(s KeyState, o Outcome, cfg EjectionSettings, now time.Time) KeyState {
	cfg.WithDefaults()
	if o.Kind == OutcomeClient {
		return s
	}
	ejected := now.Before(s.EjectedUntil)
	if !ejected && !s.EjectedUntil.IsZero() {
		// The ejection has run out: this answer is the half-open trial.
		s.EjectedUntil = time.Time{}
		s.HalfOpen = true
	}
	switch o.Kind {
	case OutcomeSuccess:
		s.ConsecutiveFailures = 0
		if !ejected {
			s.Ejections = 0
			s.HalfOpen = false
		}
	case OutcomeRateLimited:
		until := o.RetryAt
		if until.IsZero() {
			until = now.Add(cfg.Cooldown)
		}
		s.CooldownUntil = later(s.CooldownUntil, until)
	case OutcomeAuth:
		s.Disabled, s.DisabledReason = true, DisabledAuth
		s.VerdictAt, s.DisabledAt = later(s.VerdictAt, now), later(s.DisabledAt, now)
	case OutcomeQuota:
		s.Disabled, s.DisabledReason = true, DisabledQuota
		s.VerdictAt, s.DisabledAt = later(s.VerdictAt, now), later(s.DisabledAt, now)
	case OutcomeServer, OutcomeTimeout:
		if ejected {
			break
		}
		s.ConsecutiveFailures++
		if s.HalfOpen || s.ConsecutiveFailures >= cfg.ConsecutiveFailures {
			s.EjectedUntil = now.Add(EjectionBackoff(cfg, s.Ejections))
			s.SlowStartFrom = s.EjectedUntil
			s.VerdictAt = later(s.VerdictAt, now)
			s.Ejections++
			s.ConsecutiveFailures = 0
			s.HalfOpen = false
		}
	}
	return s
}

// EjectionBackoff returns min(cfg.Base·2^ejections, cfg.Max), the length of
// the ejection that follows ejections earlier consecutive ones.
func EjectionBackoff(cfg EjectionSettings, ejections int) time.Duration {
	cfg.WithDefaults()
	d := cfg.Base
	for i := 0; i < ejections && d < cfg.Max; i++ {
		if d > cfg.Max/2 { // also keeps d*2 from overflowing
			return cfg.Max
		}
		d *= 2
	}
	return min(d, cfg.Max)
}

// ProbeResult returns the state after an active probe finished at now. A
// passing probe puts the key back in rotation: it clears Disabled,
// ProbeFailed and any ejection (a rate-limit cooldown stays, since a probe
// says nothing about it), unless the disable or ejection was observed at or
// after now (VerdictAt): then it clears ProbeFailed only. A failing probe sets ProbeFailed and ProbeError
// (errMsg cut to 256 bytes; it must not hold a secret), which keeps the key
// out until a probe passes.
func ProbeResult(s KeyState, ok bool, errMsg string, now time.Time) KeyState {
	s.ProbedAt = now
	if !ok {
		s.ProbeFailed = true
		s.ProbeError = Truncate(errMsg, maxProbeError)
		return s
	}
	s.ProbeFailed, s.ProbeError = false, ""
	if !now.After(s.VerdictAt) {
		// A probe that finished before a disable or an ejection was
		// observed (its record arriving late, from another instance) says
		// nothing about it.
		return s
	}
	s.Disabled, s.DisabledReason = false, ""
	if now.Before(s.EjectedUntil) {
		s.SlowStartFrom = now // back before the ejection's end
	}
	s.EjectedUntil = time.Time{}
	s.Ejections, s.ConsecutiveFailures, s.HalfOpen = 0, 0, false
	return s
}

// HalfOpenAt reports whether the key is on its half-open trial at now: its
// ejection has run out and no answer has decided yet.
func (s KeyState) HalfOpenAt(now time.Time) bool {
	return s.HalfOpen || (!s.EjectedUntil.IsZero() && !now.Before(s.EjectedUntil))
}

// Eligible reports whether key k with health s may serve a request at now
// and, when it may not, why. The reasons are checked in this order: the key
// is not enabled (or nil), disabled after auth/quota, the latest probe
// failed, then the time-bound ones: cooling down (429) and ejected (5xx);
// when both of those run, the one that ends later is reported. A key whose
// ejection has expired (half-open) is eligible.
func Eligible(k *Key, s KeyState, now time.Time) (ok bool, reason Ineligible) {
	switch {
	case k == nil || !k.Enabled:
		return false, Ineligible{Reason: ReasonDisabled}
	case s.Disabled:
		switch s.DisabledReason {
		case DisabledAuth:
			return false, Ineligible{Reason: ReasonAuthFailed}
		case DisabledQuota:
			return false, Ineligible{Reason: ReasonQuotaExhausted}
		}
		return false, Ineligible{Reason: ReasonDisabled}
	case s.ProbeFailed:
		return false, Ineligible{Reason: ReasonProbeFailed}
	}
	cooling, ejected := now.Before(s.CooldownUntil), now.Before(s.EjectedUntil)
	switch {
	case ejected && (!cooling || s.EjectedUntil.After(s.CooldownUntil)):
		return false, Ineligible{Reason: ReasonEjected, Until: s.EjectedUntil}
	case cooling:
		return false, Ineligible{Reason: ReasonCoolingDown, Until: s.CooldownUntil}
	}
	return true, Ineligible{}
}

// explainOrder lists the reasons in the order Explain names them, with the
// words it uses.
var explainOrder = [...]struct{ reason, label string }{
	{ReasonCoolingDown, "cooling down"},
	{ReasonEjected, "ejected after upstream errors"},
	{ReasonNoHeadroom, "out of provider rate-limit headroom"},
	{ReasonModelUnavailable, "unable to use the model (until a probe passes)"},
	{ReasonAuthFailed, "disabled (auth failed)"},
	{ReasonQuotaExhausted, "disabled (quota exhausted)"},
	{ReasonProbeFailed, "disabled (probe failed)"},
	{ReasonDisabled, "disabled"},
}

// Explain builds the client-facing message and error code for a request that
// found no eligible key, from the reasons Eligible gave for every key that
// serves model (model may be ""). Examples:
//
//	all 3 keys for model gpt-4 are cooling down until 2026-11-25T20:00:02Z    keys_cooling_down
//	all 2 keys for model gpt-4 are ejected after upstream errors until …      keys_ejected
//	all 2 keys for model gpt-4 are disabled (auth failed)                     keys_disabled
//	no eligible key for model gpt-4: 2 cooling down (until …), 1 disabled     no_eligible_key
//	no key serves model gpt-4                                                 no_eligible_key (no reasons)
//
// Times are the earliest Until of their reason in UTC, rounded up to the
// second. When every key is out for a disabled-like reason (disabled,
// auth_failed, quota_exhausted, probe_failed) the code is keys_disabled.
// Unknown reasons are named as they are. The message never holds a secret.
func Explain(model string, reasons []Ineligible) (message, code string) {
	forModel := ""
	if model != "" {
		forModel = " for model " + model
	}
	if len(reasons) == 0 {
		if model == "" {
			return "no key is configured", CodeNoEligibleKey
		}
		return "no key serves model " + model, CodeNoEligibleKey
	}

	var counts [len(explainOrder)]int
	var earliest [len(explainOrder)]time.Time
	var other []string // unknown reasons, in order of first appearance
	otherCount := map[string]int(nil)
	for _, r := range reasons {
		i := explainIndex(r.Reason)
		if i < 0 {
			if otherCount == nil {
				otherCount = make(map[string]int)
			}
			if otherCount[r.Reason] == 0 {
				other = append(other, r.Reason)
			}
			otherCount[r.Reason]++
			continue
		}
		counts[i]++
		if !r.Until.IsZero() && (earliest[i].IsZero() || r.Until.Before(earliest[i])) {
			earliest[i] = r.Until
		}
	}

	// One reason for all keys.
	kinds := len(other)
	single := -1
	for i, c := range counts {
		if c > 0 {
			kinds++
			single = i
		}
	}
	if kinds == 1 && single >= 0 {
		subject := fmt.Sprintf("all %d keys%s are", len(reasons), forModel)
		if len(reasons) == 1 {
			subject = "the key" + forModel + " is"
		}
		msg := subject + " " + explainOrder[single].label
		if !earliest[single].IsZero() {
			msg += " until " + formatUntil(earliest[single])
		}
		return msg, codeFor(explainOrder[single].reason)
	}

	// A mix.
	var b strings.Builder
	b.WriteString("no eligible key")
	b.WriteString(forModel)
	b.WriteString(": ")
	allDisabled := len(other) == 0
	n := 0
	for i, c := range counts {
		if c == 0 {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		n++
		fmt.Fprintf(&b, "%d %s", c, explainOrder[i].label)
		if !earliest[i].IsZero() {
			b.WriteString(" (until " + formatUntil(earliest[i]) + ")")
		}
		if codeFor(explainOrder[i].reason) != CodeKeysDisabled {
			allDisabled = false
		}
	}
	for _, r := range other {
		if n > 0 {
			b.WriteString(", ")
		}
		n++
		fmt.Fprintf(&b, "%d %s", otherCount[r], r)
	}
	if allDisabled {
		return b.String(), CodeKeysDisabled
	}
	return b.String(), CodeNoEligibleKey
}

// EarliestUntil returns the earliest Until among reasons: the first moment a
// key may come back by itself (a Retry-After for the 503), or zero when no
// reason is time-bound.
func EarliestUntil(reasons []Ineligible) time.Time {
	var t time.Time
	for _, r := range reasons {
		if !r.Until.IsZero() && (t.IsZero() || r.Until.Before(t)) {
			t = r.Until
		}
	}
	return t
}

func explainIndex(reason string) int {
	for i, e := range explainOrder {
		if e.reason == reason {
			return i
		}
	}
	return -1
}

func codeFor(reason string) string {
	switch reason {
	case ReasonCoolingDown, ReasonNoHeadroom:
		return CodeKeysCoolingDown
	case ReasonEjected:
		return CodeKeysEjected
	case ReasonDisabled, ReasonAuthFailed, ReasonQuotaExhausted, ReasonProbeFailed, ReasonModelUnavailable:
		return CodeKeysDisabled
	}
	return CodeNoEligibleKey
}

// formatUntil writes t in UTC RFC 3339, rounded up to the whole second so
// that "until" is never earlier than the truth.
func formatUntil(t time.Time) string {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		t = r.Add(time.Second)
	}
	return t.UTC().Format(time.RFC3339)
}
