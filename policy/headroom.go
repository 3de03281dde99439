package policy

import (
	"strconv"
	"strings"
	"time"
)

// The provider headers that report a key's rate-limit headroom on every
// answer. OpenAI and Azure send x-ratelimit-{limit,remaining,reset}-
// {requests,tokens} (resets as Go-style durations: "6m0s", "1m30.5s",
// "20ms"); Anthropic sends anthropic-ratelimit-{requests,tokens,
// input-tokens,output-tokens}-{limit,remaining,reset} (resets as RFC 3339
// times).
const (
	HeaderLimitRequests     = "x-ratelimit-limit-requests"
	HeaderLimitTokens       = "x-ratelimit-limit-tokens"
	HeaderRemainingRequests = "x-ratelimit-remaining-requests"
	HeaderRemainingTokens   = "x-ratelimit-remaining-tokens"
	// HeaderRateLimitResetRequests and HeaderRateLimitResetTokens: classify.go.
)

// anthropicLimits are Anthropic's rate-limit headers (limit, remaining,
// reset); the first counts requests, the others tokens (the smallest token
// headroom wins).
var anthropicLimits = [...][3]string{
	{"anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining", HeaderAnthropicRequestsReset},
	{"anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining", HeaderAnthropicTokensReset},
	{"anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"},
	{"anthropic-ratelimit-output-tokens-limit", "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"},
}

// Budget is one rate limit of a key as a provider reported it: the limit,
// what remains of it and when it is whole again. Known is false when the
// answer said nothing usable about it.
type Budget struct {
	Known     bool
	Limit     int64 // 0: not reported
	Remaining int64
	Reset     time.Time // zero: not reported
}

// Headroom is what one answer says about a key's rate limits for the
// model it served.
type Headroom struct {
	Requests Budget
	Tokens   Budget
}

// Known reports whether the answer reported any headroom.
func (h Headroom) Known() bool { return h.Requests.Known || h.Tokens.Known }

// ParseHeadroom reads the provider's rate-limit headers of any answer
// (header looks a header up by lower-case name; nil reads nothing) at now:
// OpenAI/Azure's x-ratelimit-* first, Anthropic's anthropic-ratelimit-*
// when those are absent. A budget is Known when its remaining count parsed;
// resets are clamped to [now, now+MaxRetryDelay]. A value that does not
// parse (a negative count, a bad duration or time) is left out and counted
// in malformed: providers' headers never make the caller fail.
func ParseHeadroom(header func(string) string, now time.Time) (h Headroom, malformed int) {
	if header == nil {
		return h, 0
	}
	h.Requests, malformed = budget(header, HeaderLimitRequests, HeaderRemainingRequests, HeaderRateLimitResetRequests, now, malformed)
	h.Tokens, malformed = budget(header, HeaderLimitTokens, HeaderRemainingTokens, HeaderRateLimitResetTokens, now, malformed)
	if h.Known() {
		return h, malformed
	}
	for i, names := range anthropicLimits {
		var b Budget
		b, malformed = budget(header, names[0], names[1], names[2], now, malformed)
		if !b.Known {
			continue
		}
		switch {
		case i == 0:
			h.Requests = b
		case !h.Tokens.Known || b.Remaining < h.Tokens.Remaining:
			h.Tokens = b
		}
	}
	return h, malformed
}

// budget reads one limit from its three headers. A reset is a duration
// (OpenAI, Azure) or an RFC 3339 time (Anthropic).
func budget(header func(string) string, limitName, remainingName, resetName string, now time.Time, malformed int) (Budget, int) {
	var b Budget
	if v := header(remainingName); v != "" {
		if n, ok := parseCount(v); ok {
			b.Known, b.Remaining = true, n
		} else {
			malformed++
		}
	}
	if v := header(limitName); v != "" {
		if n, ok := parseCount(v); ok {
			b.Limit = n
		} else {
			malformed++
		}
	}
	if v := header(resetName); v != "" {
		if d, ok := ParseResetDuration(v); ok {
			b.Reset = after(now, d)
		} else if t, err := time.Parse(time.RFC3339, strings.TrimSpace(v)); err == nil {
			b.Reset = clampTime(t, now)
		} else {
			malformed++
		}
	}
	return b, malformed
}

// maxCount bounds a reported count, so that sums over a pool cannot
// overflow.
const maxCount = 1 << 40

// parseCount reads a non-negative decimal count (saturating at 2^40).
func parseCount(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 40 {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > maxCount {
		return maxCount, true // all digits: only a range error
	}
	return n, true
}

// ParseResetDuration reads an OpenAI reset value: a Go-style duration
// ("6m0s", "1m30.5s", "20ms", "1h2m") or bare seconds ("17", "0.5"), never
// negative, clamped to MaxRetryDelay.
func ParseResetDuration(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if d, ok := parseDecimal(v, float64(time.Second)); ok {
		return d, true
	}
	if v == "" || v[0] == '-' || v[0] == '+' {
		return 0, false
	}
	d, err := time.ParseDuration(v)
	if err != nil { // also beyond 290 years
		return 0, false
	}
	return min(d, MaxRetryDelay), true
}

// EstimateTokens is the tokens a request may use, before it is sent: its
// body bytes / 4 (an upper bound on the prompt for English text) plus the
// completion it allows (max_tokens or max_completion_tokens; 0 when the
// body names neither).
func EstimateTokens(bodyBytes int, maxTokens int64) int64 {
	return int64(bodyBytes)/4 + max(maxTokens, 0)
}

// HeadroomAdmits reports whether a key with requests and tokens left
// (as estimated from the provider's headers, reqKnown/tokKnown when they
// are) may take a request estimated at est tokens: not when no request is
// left, nor when fewer tokens are left than est, unless est exceeds the
// key's whole token limit (then the provider refuses the request as too
// large whatever keymux does, and that answer belongs to the client).
func HeadroomAdmits(reqKnown bool, requests int64, tokKnown bool, tokens, tokenLimit, est int64) bool {
	if reqKnown && requests <= 0 {
		return false
	}
	if tokKnown && tokens < est && (tokenLimit <= 0 || est <= tokenLimit) {
		return false
	}
	return true
}

// TooLarge reports whether a 429 is the client's: the answer's own
// headers show the key had requests left and the request's estimate est
// exceeds the key's whole token limit ("Request too large … tokens per
// min"), so no key with that limit can ever take it and the key is not to
// blame.
func TooLarge(h Headroom, est int64) bool {
	if h.Requests.Known && h.Requests.Remaining <= 0 {
		return false
	}
	return h.Tokens.Known && h.Tokens.Limit > 0 && est > h.Tokens.Limit
}

// SlowStartShare is the share of its traffic a key re-admitted at since
// takes at now: it grows linearly from 0 to 1 over window (1 once window
// has passed, or when since is zero or window is not positive).
func SlowStartShare(since, now time.Time, window time.Duration) float64 {
	if since.IsZero() || window <= 0 || !now.Before(since.Add(window)) {
		return 1
	}
	if now.Before(since) {
		return 0
	}
	return float64(now.Sub(since)) / float64(window)
}

// SlowStartAdmits reports whether a key whose slow-start share is share
// takes the selection numbered seq: a low-discrepancy sequence (seq times
// the golden ratio, mod 1) is below share for that share of consecutive
// selections, deterministically and without a random source.
func SlowStartAdmits(share float64, seq uint64) bool {
	if share >= 1 {
		return true
	}
	const golden = 0x9E3779B97F4A7C15
	frac := float64((seq*golden)>>11) / (1 << 53)
	return frac < share
}
