package policy

import (
	"math"
	"testing"
	"time"
)

func TestParseHeadroom(t *testing.T) {
	tests := []struct {
		name      string
		header    func(string) string
		want      Headroom
		malformed int
	}{
		{"none", headers(), Headroom{}, 0},
		{"nil", nil, Headroom{}, 0},
		{"openai", headers(
			"x-ratelimit-limit-requests", "60", "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "20s",
			"x-ratelimit-limit-tokens", "150000", "x-ratelimit-remaining-tokens", "149984", "x-ratelimit-reset-tokens", "6m0s"),
			Headroom{
				Requests: Budget{Known: true, Limit: 60, Remaining: 0, Reset: t0.Add(20 * time.Second)},
				Tokens:   Budget{Known: true, Limit: 150000, Remaining: 149984, Reset: t0.Add(6 * time.Minute)},
			}, 0},
		{"fractional and millisecond resets", headers(
			"x-ratelimit-remaining-requests", "5", "x-ratelimit-reset-requests", "1m30.5s",
			"x-ratelimit-remaining-tokens", "7", "x-ratelimit-reset-tokens", "20ms"),
			Headroom{
				Requests: Budget{Known: true, Remaining: 5, Reset: t0.Add(90*time.Second + 500*time.Millisecond)},
				Tokens:   Budget{Known: true, Remaining: 7, Reset: t0.Add(20 * time.Millisecond)},
			}, 0},
		{"anthropic: the smallest token budget", headers(
			"anthropic-ratelimit-requests-limit", "50", "anthropic-ratelimit-requests-remaining", "49", "anthropic-ratelimit-requests-reset", "2026-11-25T20:01:00Z",
			"anthropic-ratelimit-tokens-remaining", "9000", "anthropic-ratelimit-tokens-reset", "2026-11-25T20:00:30Z",
			"anthropic-ratelimit-input-tokens-limit", "40000", "anthropic-ratelimit-input-tokens-remaining", "300", "anthropic-ratelimit-input-tokens-reset", "2026-11-25T20:00:25Z",
			"anthropic-ratelimit-output-tokens-remaining", "8000"),
			Headroom{
				Requests: Budget{Known: true, Limit: 50, Remaining: 49, Reset: t0.Add(time.Minute)},
				Tokens:   Budget{Known: true, Limit: 40000, Remaining: 300, Reset: t0.Add(25 * time.Second)},
			}, 0},
		{"malformed values are left out and counted", headers(
			"x-ratelimit-remaining-requests", "-1", "x-ratelimit-limit-requests", "ten", "x-ratelimit-reset-requests", "soon",
			"x-ratelimit-remaining-tokens", "12", "x-ratelimit-reset-tokens", "-3s"),
			Headroom{Tokens: Budget{Known: true, Remaining: 12}}, 4},
		{"a past anthropic reset is now", headers("anthropic-ratelimit-requests-remaining", "3", "anthropic-ratelimit-requests-reset", "2020-01-01T00:00:00Z"),
			Headroom{Requests: Budget{Known: true, Remaining: 3, Reset: t0}}, 0},
		{"huge counts saturate", headers("x-ratelimit-remaining-tokens", "99999999999999999999999"),
			Headroom{Tokens: Budget{Known: true, Remaining: maxCount}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad := ParseHeadroom(tt.header, t0)
			if got != tt.want || bad != tt.malformed {
				t.Errorf("ParseHeadroom =\n %+v, %d malformed\nwant\n %+v, %d", got, bad, tt.want, tt.malformed)
			}
		})
	}
}

func TestParseResetDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"6m0s", 6 * time.Minute, true},
		{"1m30.5s", 90500 * time.Millisecond, true},
		{"20ms", 20 * time.Millisecond, true},
		{" 17 ", 17 * time.Second, true},
		{"0.5", 500 * time.Millisecond, true},
		{"1000000h", MaxRetryDelay, true},
		{"-1s", 0, false},
		{"+1s", 0, false},
		{"", 0, false},
		{"2026-11-25T20:01:00Z", 0, false},
		{"99999999999h", 0, false}, // beyond time.Duration
	}
	for _, tt := range tests {
		if got, ok := ParseResetDuration(tt.in); got != tt.want || ok != tt.ok {
			t.Errorf("ParseResetDuration(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestHeadroomAdmits(t *testing.T) {
	tests := []struct {
		name               string
		reqKnown           bool
		requests           int64
		tokKnown           bool
		tokens, limit, est int64
		want               bool
	}{
		{"nothing known", false, 0, false, 0, 0, 100, true},
		{"no request left", true, 0, false, 0, 0, 1, false},
		{"one request left", true, 1, true, 100, 1000, 100, true},
		{"too few tokens", true, 5, true, 99, 1000, 100, false},
		{"larger than the whole limit: the provider's answer", true, 5, true, 99, 50, 100, true},
		{"tokens without a known limit", false, 0, true, 10, 0, 11, false},
	}
	for _, tt := range tests {
		if got := HeadroomAdmits(tt.reqKnown, tt.requests, tt.tokKnown, tt.tokens, tt.limit, tt.est); got != tt.want {
			t.Errorf("%s: HeadroomAdmits = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestTooLarge(t *testing.T) {
	h := Headroom{Requests: Budget{Known: true, Remaining: 10}, Tokens: Budget{Known: true, Limit: 10000, Remaining: 10000}}
	if !TooLarge(h, 10001) {
		t.Error("a request above the token limit with requests left is not too large")
	}
	if TooLarge(h, 10000) {
		t.Error("a request within the limit is too large")
	}
	h.Requests.Remaining = 0
	if TooLarge(h, 10001) {
		t.Error("a key without requests left: its 429 is the key's")
	}
	if TooLarge(Headroom{}, 1<<40) {
		t.Error("no headers: a 429 is the key's")
	}
}

func TestSlowStart(t *testing.T) {
	w := 30 * time.Second
	for _, tt := range []struct {
		since, now time.Time
		want       float64
	}{
		{time.Time{}, t0, 1},
		{t0, t0, 0},
		{t0, t0.Add(15 * time.Second), 0.5},
		{t0, t0.Add(30 * time.Second), 1},
		{t0, t0.Add(-time.Second), 0},
	} {
		if got := SlowStartShare(tt.since, tt.now, w); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("SlowStartShare(%v, %v) = %v, want %v", tt.since, tt.now, got, tt.want)
		}
	}
	// The admitted share of consecutive selections is the share, within 1%.
	for _, share := range []float64{0, 0.1, 0.25, 0.5, 0.9, 1} {
		n := 0
		for seq := range uint64(1000) {
			if SlowStartAdmits(share, seq) {
				n++
			}
		}
		if got := float64(n) / 1000; math.Abs(got-share) > 0.01 {
			t.Errorf("share %v: admitted %v", share, got)
		}
	}
}

func TestEstimateTokens(t *testing.T) {
	if got := EstimateTokens(400, 50); got != 150 {
		t.Errorf("EstimateTokens(400, 50) = %d, want 150", got)
	}
	if got := EstimateTokens(3, -5); got != 0 {
		t.Errorf("EstimateTokens(3, -5) = %d, want 0", got)
	}
}

// FuzzParseHeadroom: any header values parse without a panic; a known
// budget is never negative nor above maxCount, and resets lie in
// [now, now+MaxRetryDelay].
func FuzzParseHeadroom(f *testing.F) {
	f.Add("0", "60", "20s", "149984", "6m0s", "2026-11-25T20:01:00Z", "9")
	f.Add("-1", "1e9", "1m30.5s", "x", "20ms", "not a time", "")
	f.Add("", "", "", "", "", "9999-12-31T23:59:59Z", "18446744073709551616")
	f.Fuzz(func(t *testing.T, remReq, limReq, resetReq, remTok, resetTok, anthReset, anthRem string) {
		for _, h := range []func(string) string{
			headers("x-ratelimit-remaining-requests", remReq, "x-ratelimit-limit-requests", limReq, "x-ratelimit-reset-requests", resetReq,
				"x-ratelimit-remaining-tokens", remTok, "x-ratelimit-reset-tokens", resetTok),
			headers("anthropic-ratelimit-requests-remaining", anthRem, "anthropic-ratelimit-requests-reset", anthReset,
				"anthropic-ratelimit-tokens-reset", resetTok, "anthropic-ratelimit-output-tokens-remaining", remTok),
		} {
			got, bad := ParseHeadroom(h, t0)
			if bad < 0 || bad > 12 {
				t.Fatalf("malformed %d", bad)
			}
			for _, b := range []Budget{got.Requests, got.Tokens} {
				if b.Remaining < 0 || b.Remaining > maxCount || b.Limit < 0 || b.Limit > maxCount {
					t.Fatalf("budget %+v out of range", b)
				}
				if !b.Reset.IsZero() && (b.Reset.Before(t0) || b.Reset.After(t0.Add(MaxRetryDelay))) {
					t.Fatalf("reset %v outside [now, now+MaxRetryDelay]", b.Reset)
				}
			}
		}
	})
}
