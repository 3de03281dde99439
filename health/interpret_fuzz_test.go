package health_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/deep"
)

// FuzzInterpret feeds a probe arbitrary answers (status, rate-limit headers,
// error body, deeply nested ones included): no panic, the status kept, a
// cooldown only when rate limited and within policy.MaxRetryDelay, an error
// that never holds the key's secret.
func FuzzInterpret(f *testing.F) {
	const secret = "sk-test-fuzz-secret"
	f.Add(429, "2", "", []byte(`{"error":{"code":"rate_limit_exceeded"}}`))
	f.Add(401, "", "", []byte(`{"error":{"code":"invalid_api_key","message":"sk-test-fuzz-secret"}}`))
	f.Add(403, "", "", []byte(`{"error":{"type":"insufficient_quota"}}`))
	f.Add(404, "", "", []byte(`{"error":{"code":"sk-test-fuzz-secret"}}`))
	f.Add(500, "Wed, 25 Nov 2026 20:00:30 GMT", "250", []byte(`<html>`))
	f.Add(400, "", "", append(append([]byte(`{"x":`), deep.Arrays(1<<20, "1")...), `,"error":{"code":"x"}}`...))
	now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, retryAfter, retryAfterMS string, body []byte) {
		h := http.Header{}
		h.Set("retry-after", retryAfter)
		h.Set("retry-after-ms", retryAfterMS)
		r := health.Interpret(status, h, body, nil, time.Millisecond, now, secret)
		if r.Status != status {
			t.Fatalf("status %d, want %d", r.Status, status)
		}
		if strings.Contains(r.Error, secret) {
			t.Fatalf("error %q holds the secret", r.Error)
		}
		if !r.RetryAt.IsZero() && (r.Kind != policy.OutcomeRateLimited || r.RetryAt.Before(now) || r.RetryAt.After(now.Add(policy.MaxRetryDelay))) {
			t.Fatalf("RetryAt %v on kind %d", r.RetryAt, r.Kind)
		}
	})
}
