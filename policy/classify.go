package policy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// MaxRetryDelay bounds every RetryAt that Classify derives from a header:
// values further in the future are clamped to now+MaxRetryDelay (which also
// keeps huge delta-seconds from overflowing), values in the past to now.
const MaxRetryDelay = 7 * 24 * time.Hour

// The rate-limit headers Classify reads on a 429, in order of preference.
// header lookups use these lower-case names.
const (
	HeaderRetryAfter             = "retry-after"                        // delta-seconds or HTTP-date
	HeaderRetryAfterMS           = "retry-after-ms"                     // Azure
	HeaderMSRetryAfterMS         = "x-ms-retry-after-ms"                // Azure
	HeaderRateLimitResetRequests = "x-ratelimit-reset-requests"         // OpenAI, Go-style duration
	HeaderRateLimitResetTokens   = "x-ratelimit-reset-tokens"           // OpenAI, Go-style duration
	HeaderAnthropicRequestsReset = "anthropic-ratelimit-requests-reset" // RFC 3339
	HeaderAnthropicTokensReset   = "anthropic-ratelimit-tokens-reset"   // RFC 3339
	insufficientQuota            = "insufficient_quota"
)

// Error classes: the one vocabulary for why a forwarded call failed. The
// request path records them on the call (telemetry's "class" label, a
// failed span's error.type, the call log's "error").
const (
	ClassRateLimited = "rate_limited"
	ClassAuth        = "auth" // 401/403 and insufficient_quota
	ClassServer      = "server"
	ClassTimeout     = "timeout"
	ClassClient      = "client"
	ClassStreamCut   = "stream_cut" // the response ended early, or none came
)

// ErrorClasses lists every error class, in a stable order.
func ErrorClasses() []string {
	return []string{ClassRateLimited, ClassAuth, ClassServer, ClassTimeout, ClassClient, ClassStreamCut}
}

// Class names the error class of an outcome: "" for OutcomeSuccess;
// OutcomeQuota is an auth failure (the key, not the caller, is refused).
func (k OutcomeKind) Class() string {
	switch k {
	case OutcomeRateLimited:
		return ClassRateLimited
	case OutcomeQuota, OutcomeAuth:
		return ClassAuth
	case OutcomeServer:
		return ClassServer
	case OutcomeTimeout:
		return ClassTimeout
	case OutcomeClient:
		return ClassClient
	}
	return ""
}

// StatusKind is the one status → outcome mapping, before the body or
// headers are read:
//
//   - 1xx, 2xx, 3xx: OutcomeSuccess;
//   - 429: OutcomeRateLimited;
//   - 401, 403: OutcomeAuth;
//   - 408 (request timeout), 504 (gateway timeout): OutcomeTimeout;
//   - other 4xx: OutcomeClient;
//   - 5xx, and a status outside 100–599 (no valid answer): OutcomeServer.
func StatusKind(status int) OutcomeKind {
	switch {
	case status >= 100 && status < 400:
		return OutcomeSuccess
	case status == http.StatusTooManyRequests:
		return OutcomeRateLimited
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return OutcomeAuth
	case status == http.StatusRequestTimeout || status == http.StatusGatewayTimeout:
		return OutcomeTimeout
	case status >= 400 && status < 500:
		return OutcomeClient
	}
	return OutcomeServer
}

// QuotaExhausted reports whether an answer says the key's account has no
// quota left: status 429 or 403 with error.code or error.type
// "insufficient_quota" (code and typ as read from the error body).
func QuotaExhausted(status int, code, typ string) bool {
	return (status == http.StatusTooManyRequests || status == http.StatusForbidden) &&
		(code == insufficientQuota || typ == insufficientQuota)
}

// ModelUnavailable reports whether an answer says the key cannot use the
// requested model: status 403 or 404 with error.code model_not_found
// (OpenAI: "The model … does not exist or you do not have access to it"),
// Azure's DeploymentNotFound, or Anthropic's not_found_error on a 404.
func ModelUnavailable(status int, code, typ string) bool {
	if status != http.StatusForbidden && status != http.StatusNotFound {
		return false
	}
	return code == "model_not_found" || code == "DeploymentNotFound" ||
		(status == http.StatusNotFound && typ == "not_found_error")
}

// Classify turns an upstream answer into an Outcome: StatusKind(status),
// except that a QuotaExhausted answer is OutcomeQuota, and a 429 carries
// RetryAt from RetryAt(header, now) (zero when no header says, meaning the
// caller's default cooldown).
//
// header looks a response header up by lower-case name and may be nil; body
// may be nil and is only looked at for 429 and 403.
func Classify(status int, header func(string) string, body []byte, now time.Time) Outcome {
	o := Outcome{Status: status, Kind: StatusKind(status)}
	if len(body) > 0 {
		res := gjson.GetManyBytes(body, "error.code", "error.type")
		if QuotaExhausted(status, res[0].Str, res[1].Str) {
			o.Kind = OutcomeQuota
			return o
		}
	}
	if o.Kind == OutcomeRateLimited {
		o.RetryAt = RetryAt(header, now)
	}
	return o
}

// RetryAt returns when a rate-limited key may be used again according to the
// response headers, clamped to [now, now+MaxRetryDelay], or the zero time
// when no header says. Sources, first usable wins:
//
//  1. Retry-After: delta-seconds (a decimal fraction is accepted) or an
//     HTTP-date;
//  2. Azure retry-after-ms, then x-ms-retry-after-ms: milliseconds;
//  3. OpenAI x-ratelimit-reset-requests / x-ratelimit-reset-tokens: Go-style
//     durations ("1s", "6m0s", "20ms"); when both are present the later reset
//     wins, since either limit may be the one that was hit;
//  4. Anthropic anthropic-ratelimit-requests-reset /
//     anthropic-ratelimit-tokens-reset: RFC 3339 times; the later wins.
//
// A header that does not parse is skipped. header may be nil.
func RetryAt(header func(string) string, now time.Time) time.Time {
	if header == nil {
		return time.Time{}
	}
	if v := header(HeaderRetryAfter); v != "" {
		if t, ok := parseRetryAfter(v, now); ok {
			return t
		}
	}
	for _, name := range [...]string{HeaderRetryAfterMS, HeaderMSRetryAfterMS} {
		if v := header(name); v != "" {
			if d, ok := parseDecimal(v, float64(time.Millisecond)); ok {
				return after(now, d)
			}
		}
	}
	var at time.Time
	for _, name := range [...]string{HeaderRateLimitResetRequests, HeaderRateLimitResetTokens} {
		if v := header(name); v != "" {
			if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil && d >= 0 {
				at = later(at, after(now, d))
			}
		}
	}
	if !at.IsZero() {
		return at
	}
	for _, name := range [...]string{HeaderAnthropicRequestsReset, HeaderAnthropicTokensReset} {
		if v := header(name); v != "" {
			if t, err := time.Parse(time.RFC3339, strings.TrimSpace(v)); err == nil {
				at = later(at, clampTime(t, now))
			}
		}
	}
	return at
}

// parseRetryAfter reads a Retry-After value: delta-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if d, ok := parseDecimal(v, float64(time.Second)); ok {
		return after(now, d), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return clampTime(t, now), true
	}
	return time.Time{}, false
}

// parseDecimal reads a non-negative decimal number of units, saturating at
// MaxRetryDelay. Only digits and one '.' are accepted (no sign, exponent,
// "Inf" or "NaN").
func parseDecimal(v string, unit float64) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" || v == "." {
		return 0, false
	}
	dot := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '.' && !dot {
			dot = true
			continue
		}
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil && !math.IsInf(f, 1) { // a range error still tells "huge"
		return 0, false
	}
	ns := f * unit
	if ns >= float64(MaxRetryDelay) {
		return MaxRetryDelay, true
	}
	return time.Duration(ns), true
}

// after returns now+d with d clamped to [0, MaxRetryDelay].
func after(now time.Time, d time.Duration) time.Time {
	return now.Add(min(max(d, 0), MaxRetryDelay))
}

// clampTime clamps t to [now, now+MaxRetryDelay].
func clampTime(t, now time.Time) time.Time {
	if t.Before(now) {
		return now
	}
	if limit := now.Add(MaxRetryDelay); t.After(limit) {
		return limit
	}
	return t
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
