package policy

import (
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)

// headers returns a lookup over a fixed map, the way extproc hands
// lower-case response headers to Classify.
func headers(kv ...string) func(string) string {
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(name string) string { return m[name] }
}

const quotaBody = `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header func(string) string
		body   string
		want   Outcome
	}{
		{"200", 200, nil, "", Outcome{Kind: OutcomeSuccess, Status: 200}},
		{"204", 204, nil, "", Outcome{Kind: OutcomeSuccess, Status: 204}},
		{"101", 101, nil, "", Outcome{Kind: OutcomeSuccess, Status: 101}},
		{"302", 302, nil, "", Outcome{Kind: OutcomeSuccess, Status: 302}},
		{"429 no header", 429, headers(), "", Outcome{Kind: OutcomeRateLimited, Status: 429}},
		{"429 nil header func", 429, nil, "", Outcome{Kind: OutcomeRateLimited, Status: 429}},
		{"429 retry-after seconds", 429, headers("retry-after", "2"), "", Outcome{OutcomeRateLimited, 429, t0.Add(2 * time.Second)}},
		{"429 retry-after body not json", 429, headers("retry-after", "2"), "slow down", Outcome{OutcomeRateLimited, 429, t0.Add(2 * time.Second)}},
		{"429 quota code", 429, headers("retry-after", "2"), quotaBody, Outcome{Kind: OutcomeQuota, Status: 429}},
		{"429 quota type only", 429, nil, `{"error":{"type":"insufficient_quota"}}`, Outcome{Kind: OutcomeQuota, Status: 429}},
		{"429 quota code only", 429, nil, `{"error":{"code":"insufficient_quota","type":"requests"}}`, Outcome{Kind: OutcomeQuota, Status: 429}},
		{"429 rate limit body", 429, nil, `{"error":{"code":"rate_limit_exceeded","type":"requests"}}`, Outcome{Kind: OutcomeRateLimited, Status: 429}},
		{"429 quota not under error", 429, nil, `{"code":"insufficient_quota"}`, Outcome{Kind: OutcomeRateLimited, Status: 429}},
		{"403 quota", 403, nil, quotaBody, Outcome{Kind: OutcomeQuota, Status: 403}},
		{"403", 403, nil, `{"error":{"code":"forbidden"}}`, Outcome{Kind: OutcomeAuth, Status: 403}},
		{"401", 401, nil, "", Outcome{Kind: OutcomeAuth, Status: 401}},
		{"401 quota body is still auth", 401, nil, quotaBody, Outcome{Kind: OutcomeAuth, Status: 401}},
		{"408", 408, nil, "", Outcome{Kind: OutcomeTimeout, Status: 408}},
		{"500", 500, nil, "", Outcome{Kind: OutcomeServer, Status: 500}},
		{"502", 502, nil, "", Outcome{Kind: OutcomeServer, Status: 502}},
		{"503", 503, headers("retry-after", "5"), "", Outcome{Kind: OutcomeServer, Status: 503}},
		{"504", 504, nil, "", Outcome{Kind: OutcomeTimeout, Status: 504}},
		{"599", 599, nil, "", Outcome{Kind: OutcomeServer, Status: 599}},
		{"400", 400, nil, quotaBody, Outcome{Kind: OutcomeClient, Status: 400}},
		{"404", 404, nil, "", Outcome{Kind: OutcomeClient, Status: 404}},
		{"413", 413, nil, "", Outcome{Kind: OutcomeClient, Status: 413}},
		{"422", 422, nil, "", Outcome{Kind: OutcomeClient, Status: 422}},
		{"0 no answer", 0, nil, "", Outcome{Kind: OutcomeServer, Status: 0}},
		{"99", 99, nil, "", Outcome{Kind: OutcomeServer, Status: 99}},
		{"600", 600, nil, "", Outcome{Kind: OutcomeServer, Status: 600}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			if got := Classify(tt.status, tt.header, body, t0); got != tt.want {
				t.Errorf("Classify = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRetryAt(t *testing.T) {
	tests := []struct {
		name   string
		header func(string) string
		want   time.Time
	}{
		{"none", headers(), time.Time{}},
		{"delta seconds", headers("retry-after", "20"), t0.Add(20 * time.Second)},
		{"delta seconds spaces", headers("retry-after", " 3 "), t0.Add(3 * time.Second)},
		{"delta zero", headers("retry-after", "0"), t0},
		{"delta fraction", headers("retry-after", "1.5"), t0.Add(1500 * time.Millisecond)},
		{"http-date", headers("retry-after", "Wed, 25 Nov 2026 20:00:30 GMT"), t0.Add(30 * time.Second)},
		{"http-date rfc850", headers("retry-after", "Wednesday, 25-Nov-26 20:01:00 GMT"), t0.Add(time.Minute)},
		{"http-date asctime", headers("retry-after", "Wed Nov 25 20:00:09 2026"), t0.Add(9 * time.Second)},
		{"http-date in the past", headers("retry-after", "Wed, 25 Nov 2026 19:00:00 GMT"), t0},
		{"http-date far future clamped", headers("retry-after", "Fri, 01 Jan 2100 00:00:00 GMT"), t0.Add(MaxRetryDelay)},
		{"delta huge clamped", headers("retry-after", "99999999999999999999999"), t0.Add(MaxRetryDelay)},
		{"delta 400 digits clamped", headers("retry-after", strings.Repeat("9", 400)), t0.Add(MaxRetryDelay)},
		{"delta negative skipped", headers("retry-after", "-1"), time.Time{}},
		{"delta exponent skipped", headers("retry-after", "1e3"), time.Time{}},
		{"delta NaN skipped", headers("retry-after", "NaN"), time.Time{}},
		{"garbage falls through to ms", headers("retry-after", "soon", "retry-after-ms", "1500"), t0.Add(1500 * time.Millisecond)},
		{"retry-after wins over ms", headers("retry-after", "2", "retry-after-ms", "100"), t0.Add(2 * time.Second)},
		{"azure retry-after-ms", headers("retry-after-ms", "250"), t0.Add(250 * time.Millisecond)},
		{"azure ms fraction", headers("retry-after-ms", "0.5"), t0.Add(500 * time.Microsecond)},
		{"azure x-ms", headers("x-ms-retry-after-ms", "750"), t0.Add(750 * time.Millisecond)},
		{"retry-after-ms wins over x-ms", headers("retry-after-ms", "10", "x-ms-retry-after-ms", "750"), t0.Add(10 * time.Millisecond)},
		{"bad ms falls to x-ms", headers("retry-after-ms", "x", "x-ms-retry-after-ms", "750"), t0.Add(750 * time.Millisecond)},
		{"ms wins over openai", headers("retry-after-ms", "10", "x-ratelimit-reset-requests", "5s"), t0.Add(10 * time.Millisecond)},
		{"openai requests", headers("x-ratelimit-reset-requests", "1s"), t0.Add(time.Second)},
		{"openai tokens", headers("x-ratelimit-reset-tokens", "20ms"), t0.Add(20 * time.Millisecond)},
		{"openai both later wins", headers("x-ratelimit-reset-requests", "1s", "x-ratelimit-reset-tokens", "6m0s"), t0.Add(6 * time.Minute)},
		{"openai fraction", headers("x-ratelimit-reset-requests", "59.972s"), t0.Add(59972 * time.Millisecond)},
		{"openai bad requests good tokens", headers("x-ratelimit-reset-requests", "1 second", "x-ratelimit-reset-tokens", "2s"), t0.Add(2 * time.Second)},
		{"openai negative skipped", headers("x-ratelimit-reset-requests", "-1s"), time.Time{}},
		{"openai huge clamped", headers("x-ratelimit-reset-tokens", "2000000h"), t0.Add(MaxRetryDelay)},
		{"openai wins over anthropic", headers("x-ratelimit-reset-requests", "1s", "anthropic-ratelimit-requests-reset", "2026-11-25T20:00:09Z"), t0.Add(time.Second)},
		{"anthropic requests", headers("anthropic-ratelimit-requests-reset", "2026-11-25T20:00:02Z"), t0.Add(2 * time.Second)},
		{"anthropic offset", headers("anthropic-ratelimit-requests-reset", "2026-11-25T21:00:05+01:00"), t0.Add(5 * time.Second)},
		{"anthropic tokens later wins", headers("anthropic-ratelimit-requests-reset", "2026-11-25T20:00:02Z", "anthropic-ratelimit-tokens-reset", "2026-11-25T20:00:40Z"), t0.Add(40 * time.Second)},
		{"anthropic past", headers("anthropic-ratelimit-requests-reset", "2026-11-25T19:59:00Z"), t0},
		{"anthropic bad", headers("anthropic-ratelimit-requests-reset", "in a minute"), time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RetryAt(tt.header, t0); !got.Equal(tt.want) {
				t.Errorf("RetryAt = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzClassify feeds arbitrary rate-limit header values and bodies: Classify
// must not panic, must return a known kind and the status it was given, and
// any RetryAt must lie in [now, now+MaxRetryDelay].
func FuzzClassify(f *testing.F) {
	f.Add(429, "2", "", "", "", []byte(nil))
	f.Add(429, "Wed, 25 Nov 2026 20:00:30 GMT", "", "", "", []byte(nil))
	f.Add(429, "1.5", "250", "6m0s", "2026-11-25T20:00:02Z", []byte(`{"error":{"code":"rate_limit_exceeded"}}`))
	f.Add(429, "", "", "", "", []byte(quotaBody))
	f.Add(403, "", "", "", "", []byte(quotaBody))
	f.Add(429, "999999999999999999999999", "1e309", "9223372036854775807ns", "9999-12-31T23:59:59Z", []byte(`{"error":`))
	f.Add(429, "-0", ".", "-1s", "0000-01-01T00:00:00Z", []byte(`[]`))
	f.Fuzz(func(t *testing.T, status int, retryAfter, ms, openai, anthropic string, body []byte) {
		h := headers("retry-after", retryAfter, "retry-after-ms", ms, "x-ratelimit-reset-tokens", openai, "anthropic-ratelimit-requests-reset", anthropic)
		o := Classify(status, h, body, t0)
		if o.Kind < OutcomeSuccess || o.Kind > OutcomeClient {
			t.Fatalf("kind %d out of range", o.Kind)
		}
		if o.Status != status {
			t.Fatalf("status %d, want %d", o.Status, status)
		}
		if o.Kind != OutcomeRateLimited && !o.RetryAt.IsZero() {
			t.Fatalf("RetryAt %v on kind %d", o.RetryAt, o.Kind)
		}
		if at := RetryAt(h, t0); !at.IsZero() && (at.Before(t0) || at.After(t0.Add(MaxRetryDelay))) {
			t.Fatalf("RetryAt %v outside [now, now+MaxRetryDelay]", at)
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	cases := []struct {
		name   string
		status int
		header func(string) string
		body   []byte
	}{
		{"200", 200, headers(), nil},
		{"429_retry_after", 429, headers("retry-after", "20"), nil},
		{"429_openai_reset", 429, headers("x-ratelimit-reset-requests", "1s", "x-ratelimit-reset-tokens", "6m0s"), nil},
		{"429_quota_body", 429, headers(), []byte(quotaBody)},
		{"503", 503, headers(), nil},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = Classify(c.status, c.header, c.body, t0)
			}
		})
	}
}

// TestStatusClassEveryStatus is the one status → class table: every status
// 100–599 has exactly one class, Classify agrees with StatusKind, and 408
// is a timeout like 504.
func TestStatusClassEveryStatus(t *testing.T) {
	want := func(s int) string {
		switch {
		case s < 400:
			return ""
		case s == 429:
			return ClassRateLimited
		case s == 401 || s == 403:
			return ClassAuth
		case s == 408 || s == 504:
			return ClassTimeout
		case s < 500:
			return ClassClient
		}
		return ClassServer
	}
	for s := 100; s <= 599; s++ {
		k := StatusKind(s)
		if got := k.Class(); got != want(s) {
			t.Errorf("StatusKind(%d).Class() = %q, want %q", s, got, want(s))
		}
		if (k == OutcomeSuccess) != (k.Class() == "") {
			t.Errorf("status %d: kind %d has class %q", s, k, k.Class())
		}
		if c := k.Class(); c != "" && !slices.Contains(ErrorClasses(), c) {
			t.Errorf("status %d: class %q not in ErrorClasses", s, c)
		}
		if got := Classify(s, nil, nil, t0).Kind; got != k {
			t.Errorf("Classify(%d).Kind = %d, StatusKind = %d", s, got, k)
		}
	}
	for _, s := range []int{0, 99, 600, -1} {
		if got := StatusKind(s).Class(); got != ClassServer {
			t.Errorf("StatusKind(%d).Class() = %q, want %q", s, got, ClassServer)
		}
	}
	kinds := map[OutcomeKind]string{OutcomeSuccess: "", OutcomeRateLimited: ClassRateLimited, OutcomeQuota: ClassAuth,
		OutcomeAuth: ClassAuth, OutcomeServer: ClassServer, OutcomeTimeout: ClassTimeout, OutcomeClient: ClassClient}
	for k, c := range kinds {
		if got := k.Class(); got != c {
			t.Errorf("OutcomeKind(%d).Class() = %q, want %q", k, got, c)
		}
	}
}

func TestQuotaExhausted(t *testing.T) {
	tests := []struct {
		status    int
		code, typ string
		want      bool
	}{
		{429, "insufficient_quota", "", true},
		{429, "", "insufficient_quota", true},
		{403, "rate_limit_exceeded", "insufficient_quota", true},
		{429, "rate_limit_exceeded", "requests", false},
		{401, "insufficient_quota", "insufficient_quota", false},
		{400, "insufficient_quota", "", false},
		{500, "insufficient_quota", "", false},
	}
	for _, tt := range tests {
		if got := QuotaExhausted(tt.status, tt.code, tt.typ); got != tt.want {
			t.Errorf("QuotaExhausted(%d, %q, %q) = %v, want %v", tt.status, tt.code, tt.typ, got, tt.want)
		}
	}
}
