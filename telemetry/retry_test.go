package telemetry

import (
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/keymux/keymux/policy"
)

// retriedCall: k2 answered 429, k3's connection was reset, k1 answered
// 200; k4 was cooling down when k2 was chosen.
func retriedCall() *Call {
	c := call("k1", "gpt-4o", 200, 90*time.Millisecond, t0)
	s := c.Start
	c.Attempts = []Attempt{
		{KeyID: "k2", Start: s, End: s.Add(10 * time.Millisecond), Status: 429, Retried: policy.ClassRateLimited},
		{KeyID: "k3", Start: s.Add(20 * time.Millisecond), End: s.Add(30 * time.Millisecond), Retried: RetryReset},
		{KeyID: "k1", Start: s.Add(40 * time.Millisecond), End: s.Add(90 * time.Millisecond), Status: 200},
	}
	c.Candidates = 3
	c.AddSkipped(Skip{KeyID: "k4", Reason: policy.ReasonCoolingDown, Until: t0.Add(time.Minute)})
	return c
}

// TestRetriedCallSpans: the call's span counts its attempts and explains
// the choice of its first key; each attempt is a child span with its key,
// status and the reason of its retry.
func TestRetriedCallSpans(t *testing.T) {
	sr, tp := newRecorder()
	tel := newTel(t, Config{TracerProvider: tp})
	c := retriedCall()
	tel.Begin(c)
	tel.End(c)
	spans := sr.Ended()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want the call's and 3 attempts:\n%s", len(spans), dumpSpans(sr))
	}
	var parent tracetest.SpanStub
	for _, s := range spans {
		if s.Name() == "chat gpt-4o" {
			parent = tracetest.SpanStubFromReadOnlySpan(s)
		}
	}
	got := attrMap(parent.Attributes)
	for k, v := range map[string]string{
		"keymux.attempts": "3", "keymux.candidates": "3", "keymux.skipped.count": "1", "keymux.rule.id": "",
		"keymux.skipped": `["k4: cooling_down until 2026-01-02T03:11:30Z"]`, "keymux.key.id": "k1",
	} {
		if got[k] != v {
			t.Errorf("call span %s = %q, want %q", k, got[k], v)
		}
	}
	want := []struct {
		key, status, reason string
		code                codes.Code
		start, end          time.Duration
	}{
		{"k2", "429", "rate_limited", codes.Error, 0, 10 * time.Millisecond},
		{"k3", "", "reset", codes.Error, 20 * time.Millisecond, 30 * time.Millisecond},
		{"k1", "200", "", codes.Unset, 40 * time.Millisecond, 90 * time.Millisecond},
	}
	for i, s := range spans[:3] {
		w := want[i]
		a := attrMap(s.Attributes())
		if s.Name() != AttemptSpanName || s.SpanKind() != trace.SpanKindInternal || s.Parent().SpanID() != parent.SpanContext.SpanID() {
			t.Errorf("attempt %d: span %q kind %v parent %v, want %q internal under the call's", i+1, s.Name(), s.SpanKind(), s.Parent().SpanID(), AttemptSpanName)
		}
		if a["keymux.key.id"] != w.key || a["http.response.status_code"] != w.status || a["keymux.retry.reason"] != w.reason || a["keymux.attempt"] != string(rune('1'+i)) {
			t.Errorf("attempt %d attributes %v, want key %s status %q reason %q", i+1, a, w.key, w.status, w.reason)
		}
		if s.Status().Code != w.code {
			t.Errorf("attempt %d status %v, want %v", i+1, s.Status().Code, w.code)
		}
		if !s.StartTime().Equal(c.Start.Add(w.start)) || !s.EndTime().Equal(c.Start.Add(w.end)) {
			t.Errorf("attempt %d at %v..%v, want +%v..+%v", i+1, s.StartTime(), s.EndTime(), w.start, w.end)
		}
	}
}

// TestRetriesCounted: /metrics and /stats count the retried attempts by
// the key that failed and why; the call log counts the attempts.
func TestRetriesCounted(t *testing.T) {
	var buf syncBuffer
	tel := newTel(t, Config{CallLog: &buf, Now: func() time.Time { return t0 }})
	tel.End(retriedCall())
	tel.End(retriedCall())
	tel.End(call("k1", "gpt-4o", 200, time.Millisecond, t0)) // not retried
	m := scrape(t, tel)
	got := series(m, "keymux_retries_total")
	want := []string{`keymux_retries_total{key="k2",reason="rate_limited"}`, `keymux_retries_total{key="k3",reason="reset"}`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("retry series %v, want %v", got, want)
	}
	for _, s := range want {
		if m[s] != 2 {
			t.Errorf("%s = %v, want 2", s, m[s])
		}
	}
	for _, q := range []string{"", "?window=5m"} {
		_, body := getStats(t, tel, q)
		i := strings.Index(body, `"retries"`)
		if i < 0 {
			t.Fatalf("/stats%s without retries: %s", q, body)
		}
		jsonEqual(t, "/stats"+q+" retries", "{"+body[i:], `{"retries": [
		  {"id": "k2", "reason": "rate_limited", "count": 2}, {"id": "k3", "reason": "reset", "count": 2}]}`)
	}
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `{"key_id":"k1",`) || !strings.HasSuffix(lines[0], `,"attempts":3}`) || strings.Contains(lines[2], "attempts") {
		t.Errorf("call log:\n%s\nwant attempts 3 on the retried calls only", buf.String())
	}
}
