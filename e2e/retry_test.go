package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/telemetry"
	"github.com/keymux/keymux/testutil/jaegertest"
)

// retryBody is a chat request whose bytes a retry must keep: odd spacing,
// an escaped character, a field after the model.
const retryBody = `{"messages":[{"role":"user","content":"h\u00e9llo"}],  "model" :  "gpt-4", "temperature":0.25}`

// retryKeys: three keys on the mock; k2's rule turns gpt-4 into gpt-4o-mini.
const retryKeys = threeKeys + `
rules:
  k2-mini: {key: k2, from: gpt-4, to: gpt-4o-mini}
`

var jsonHeader = map[string]string{"content-type": "application/json"}

// tooLargeBody is OpenAI's 429 for a request larger than the key's tokens
// per minute.
const tooLargeBody = `{"error":{"message":"Request too large for gpt-4 in organization org-test on tokens per min (TPM): Limit 10000, Requested 25000. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`

// k2Next walks the round robin until k1 served a request, so that k2 (whose
// rule rewrites the model) is chosen next; it returns the number of
// upstream requests so far.
func (g *gateway) k2Next() int {
	g.t.Helper()
	for i := 0; ; i++ {
		resp, b := g.do("POST", "/v1/chat/completions", jsonHeader, retryBody)
		if resp.StatusCode != 200 {
			g.t.Fatalf("warm-up %d: status %d: %s", i, resp.StatusCode, b)
		}
		reqs := g.requests()
		if reqs[len(reqs)-1].Credential == "sk-test-k1" {
			return len(reqs)
		}
		if i == 3 {
			g.t.Fatal("k1 never served a request")
		}
	}
}

// statsRetry is one row of /stats's retries.
type statsRetry struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	Count  uint64 `json:"count"`
}

// statsRetries is /stats's retries.
func (g *gateway) statsRetries() []statsRetry {
	var st struct {
		Retries []statsRetry `json:"retries"`
	}
	if err := json.Unmarshal(g.getAdmin("/stats"), &st); err != nil {
		g.t.Fatal(err)
	}
	return st.Retries
}

// A key's failure stays inside the gateway: Envoy retries the request
// (the route's retry_policy) and keymux's upstream ext_proc filter puts
// another key of the same host on the retry, re-applying that key's model
// rule to the body. The call is booked on the key that answered, with its
// attempts, and /stats counts the retry on the key that failed. Client
// errors go back as they came, after one attempt.
func TestRetryOnAnotherKey(t *testing.T) {
	mini := strings.Replace(retryBody, `"gpt-4"`, `"gpt-4o-mini"`, 1) // k2's rule
	cases := []struct {
		name     string
		b        mockupstream.Behaviour
		status   int // what the client gets
		attempts int
		reason   string // /stats retries reason for k2
	}{
		{"429 rate limit", mockBehaviour429("30"), 200, 2, "rate_limited"},
		{"401 invalid key", mockBehaviourStatus(401), 200, 2, "auth"},
		{"503 unavailable", mockBehaviourStatus(503), 200, 2, "server"},
		{"reset before the response", mockupstream.Behaviour{Reset: true, Path: chatPath}, 200, 2, "reset"},
		{"400 bad request", mockBehaviourStatus(400), 400, 1, ""},
		{"404 not found", mockBehaviourStatus(404), 404, 1, ""},
		{"413 too large", mockBehaviourStatus(413), 413, 1, ""},
		// OpenAI's answer to a request over the key's tokens per minute:
		// another key would refuse it too.
		{"429 request too large", mockupstream.Behaviour{Status: 429, Path: chatPath, Body: tooLargeBody}, 429, 1, ""},
		// The same told by the headers alone: requests left, a token limit
		// below the request.
		{"429 too large by its headers", mockupstream.Behaviour{Status: 429, Path: chatPath, Headers: map[string]string{
			"x-ratelimit-limit-tokens": "1", "x-ratelimit-remaining-tokens": "1",
			"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99"}}, 429, 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, callLog := startGatewayWithCallLog(t, retryKeys)
			warm := g.k2Next()
			g.mock.Script("sk-test-k2", tc.b)
			resp, b := g.do("POST", "/v1/chat/completions", jsonHeader, retryBody)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if tc.b.Body != "" && string(b) != tc.b.Body {
				t.Errorf("body %s, want the upstream's %s", b, tc.b.Body)
			}
			if v := resp.Header.Get("X-Envoy-Ratelimited"); v != "" {
				t.Errorf("x-envoy-ratelimited %q reached the client", v)
			}
			reqs := g.requests()[warm:]
			if len(reqs) != tc.attempts {
				t.Fatalf("upstream attempts %d, want %d", len(reqs), tc.attempts)
			}
			first := reqs[0]
			if first.Credential != "sk-test-k2" || first.Status != tc.b.Status || string(first.Body) != mini {
				t.Errorf("first attempt: key %s status %d body %s; want sk-test-k2, %d, %s", first.Credential, first.Status, first.Body, tc.b.Status, mini)
			}
			for _, r := range reqs {
				if v := r.Header.Get("X-Keymux-Call") + r.Header.Get("X-Envoy-Max-Retries"); v != "" {
					t.Errorf("%s: keymux's retry headers reached the upstream: %v", r.Credential, r.Header)
				}
				if r.ContentLength != int64(len(r.Body)) {
					t.Errorf("%s: content-length %d for %d bytes", r.Credential, r.ContentLength, len(r.Body))
				}
			}
			// The call log line comes once Envoy's access-log entry joined
			// the call (its usage): the entry of a retried call is not
			// refused for naming another key.
			rec := waitCallRecord(t, callLog, warm+1)
			if tc.attempts == 1 {
				if rec.KeyID != "k2" || rec.Attempts != 0 || rec.Status != tc.status {
					t.Errorf("call log: key %s attempts %d status %d, want k2, none, %d", rec.KeyID, rec.Attempts, rec.Status, tc.status)
				}
				if got := g.statsRetries(); len(got) != 0 {
					t.Errorf("/stats retries %+v, want none", got)
				}
				for k, st := range g.modelStates() {
					// (A 404 takes k2 out of the model's pool: not a 429's effect.)
					if tc.status == 429 && strings.HasPrefix(k, "k2") && st != "healthy" {
						t.Errorf("%s %s after a client error, want healthy", k, st)
					}
				}
				return
			}
			retry := reqs[1]
			if retry.Credential == "sk-test-k2" || !strings.HasPrefix(retry.Credential, "sk-test-k") || retry.Status != 200 {
				t.Errorf("retry: key %s status %d, want another key and 200", retry.Credential, retry.Status)
			}
			// Neither k1 nor k3 has a rule: the body is the client's again.
			if string(retry.Body) != retryBody {
				t.Errorf("retry body\n got %s\nwant %s", retry.Body, retryBody)
			}
			retryKey := strings.TrimPrefix(retry.Credential, "sk-test-")
			if rec.KeyID != retryKey || rec.Attempts != 2 || rec.Status != 200 || !rec.Success || rec.InputTokens == nil {
				t.Errorf("call log: key %s attempts %d status %d success %v tokens %v; want %s, 2, 200, true, the usage",
					rec.KeyID, rec.Attempts, rec.Status, rec.Success, rec.InputTokens, retryKey)
			}
			if got := g.statsRetries(); len(got) != 1 || got[0].ID != "k2" || got[0].Reason != tc.reason || got[0].Count != 1 {
				t.Errorf("/stats retries %+v, want k2 %s 1", got, tc.reason)
			}
			if m := string(g.getAdmin("/metrics")); !strings.Contains(m, `keymux_retries_total{key="k2",reason="`+tc.reason+`"} 1`) {
				t.Errorf("/metrics lacks keymux_retries_total{key=\"k2\",reason=%q} 1", tc.reason)
			}
			if al := g.accessLog(); al.Dropped["malformed"] != 0 {
				t.Errorf("access log entries dropped as malformed: %+v", al)
			}
		})
	}
}

// When every key is limited, a request costs at most retry.max_attempts
// upstream attempts, and no more than the eligible keys: four keys,
// max_attempts 3, each key's upstream answering 429. The client gets the
// last 429; once every key is out, its Retry-After is the earliest a key of
// the pool is back (not the last key's), and then keymux answers 503 itself
// with that Retry-After, without an upstream attempt.
func TestRetriesWhenEveryKeyIsLimited(t *testing.T) {
	g := startGateway(t, `
settings:
  strategy: round_robin
  retry: {max_attempts: 3}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3}
  k4: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k4}
`)
	// Distinct Retry-After per key; k2's is the shortest.
	after := map[string]string{"sk-test-k1": "40", "sk-test-k2": "7", "sk-test-k3": "50", "sk-test-k4": "60"}
	for cred, ra := range after {
		g.mock.Script(cred, mockBehaviour429(ra))
	}
	const body = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`

	// 1: three attempts (max_attempts), one key left eligible: the last
	// key's own answer.
	resp, b := g.do("POST", "/v1/chat/completions", jsonHeader, body)
	reqs := g.requests()
	if resp.StatusCode != 429 || len(reqs) != 3 {
		t.Fatalf("request 1: status %d after %d upstream attempts, want 429 after 3: %s", resp.StatusCode, len(reqs), b)
	}
	last := reqs[2].Credential
	if got := resp.Header.Get("Retry-After"); got != after[last] {
		t.Errorf("request 1: Retry-After %q, want the last key's %q (a key is still free)", got, after[last])
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		seen[r.Credential] = true
	}
	if len(seen) != 3 {
		t.Errorf("request 1 attempts on %v, want three keys", g.credentials())
	}

	// 2: the one key left, alone: one attempt; now every key is out and
	// the earliest back is k2, whose Retry-After was the shortest: at
	// most 7 s from now (less as time passes), where every other key says
	// 40 s or more.
	earliest := func(v string) bool { n, err := strconv.Atoi(v); return err == nil && n >= 1 && n <= 7 }
	resp, b = g.do("POST", "/v1/chat/completions", jsonHeader, body)
	reqs = g.requests()
	if resp.StatusCode != 429 || len(reqs) != 4 || seen[reqs[3].Credential] {
		t.Fatalf("request 2: status %d after %d upstream requests (last %s), want 429 after one attempt on the fourth key: %s",
			resp.StatusCode, len(reqs), reqs[len(reqs)-1].Credential, b)
	}
	if got := resp.Header.Get("Retry-After"); !earliest(got) {
		t.Errorf("request 2: Retry-After %q, want k2's (1-7): the earliest a key is back", got)
	}

	// 3: no key is eligible: keymux answers 503 with the same Retry-After.
	resp, b = g.do("POST", "/v1/chat/completions", jsonHeader, body)
	if resp.StatusCode != 503 || len(g.requests()) != 4 {
		t.Fatalf("request 3: status %d after %d upstream requests, want 503 and none more: %s", resp.StatusCode, len(g.requests()), b)
	}
	if got := resp.Header.Get("Retry-After"); !earliest(got) {
		t.Errorf("request 3: Retry-After %q, want k2's (1-7)", got)
	}
}

// A streamed request is retried only before its first byte: a 429 before
// the response headers is retried on another key and the client (the
// official SDK, its own retries off) reads a whole stream; a stream cut
// after its first events is not retried: it ends as it came, after one
// upstream attempt.
func TestRetryStreamBeforeFirstByteOnly(t *testing.T) {
	params := openai.ChatCompletionNewParams{Model: "gpt-4",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream please")}}

	t.Run("429 before headers", func(t *testing.T) {
		g := startGateway(t, retryKeys)
		warm := g.k2Next()
		g.mock.Script("sk-test-k2", mockBehaviour429("30"))
		client := g.client("ignored")
		stream := client.Chat.Completions.NewStreaming(t.Context(), params)
		var text strings.Builder
		chunks := 0
		for stream.Next() {
			chunks++
			if c := stream.Current(); len(c.Choices) > 0 {
				text.WriteString(c.Choices[0].Delta.Content)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		reqs := g.requests()[warm:]
		if len(reqs) != 2 || reqs[0].Credential != "sk-test-k2" || reqs[0].Status != 429 || reqs[1].Credential == "sk-test-k2" || reqs[1].Status != 200 {
			t.Fatalf("upstream attempts %v, want k2's 429 then another key's 200", attemptsOf(reqs))
		}
		if !reqs[0].Stream || !reqs[1].Stream || reqs[0].BodyModel != "gpt-4o-mini" || reqs[1].BodyModel != "gpt-4" {
			t.Errorf("attempt bodies: stream %v/%v models %s/%s, want streams for gpt-4o-mini then gpt-4",
				reqs[0].Stream, reqs[1].Stream, reqs[0].BodyModel, reqs[1].BodyModel)
		}
		if chunks < 2 || text.Len() == 0 {
			t.Errorf("client read %d chunks, text %q: want the retried key's whole stream", chunks, text.String())
		}
	})

	t.Run("cut after the first bytes", func(t *testing.T) {
		g := startGateway(t, retryKeys)
		for _, k := range []string{"sk-test-k1", "sk-test-k2", "sk-test-k3"} {
			g.mock.Script(k, mockupstream.Behaviour{CutStreamAfter: 2, Path: chatPath})
		}
		client := g.client("ignored")
		stream := client.Chat.Completions.NewStreaming(t.Context(), params)
		chunks := 0
		for stream.Next() {
			chunks++
		}
		if stream.Err() == nil {
			t.Error("the stream ended cleanly, want it cut")
		}
		reqs := g.requests()
		if len(reqs) != 1 || !reqs[0].Cut || reqs[0].Status != http.StatusOK {
			t.Fatalf("upstream attempts %v, want one, cut after its headers", attemptsOf(reqs))
		}
		if chunks == 0 {
			t.Error("the client read nothing before the cut, want the events sent before it")
		}
	})
}

// attemptsOf describes upstream requests for a failure message.
func attemptsOf(reqs []mockupstream.Recorded) []string {
	out := make([]string, 0, len(reqs))
	for _, r := range reqs {
		s := r.Credential + ":" + http.StatusText(r.Status)
		if r.Cut {
			s += "(cut)"
		}
		out = append(out, s)
	}
	return out
}

// TestRetryAttemptSpansInJaeger: the real Jaeger shows a retried call as
// its span (the child of the client's) with one child span per upstream
// attempt: the key, its status and why it was retried.
func TestRetryAttemptSpansInJaeger(t *testing.T) {
	j := startJaegerRun(t, "grpc")
	g := startGateway(t, retryKeys)
	warm := g.k2Next()
	g.mock.Script("sk-test-k2", mockBehaviour429("30"))
	const traceID, clientSpan = "5bf92f3577b34da6a3ce929d0e0e4737", "00f067aa0ba902b8"
	h := map[string]string{"content-type": "application/json", "traceparent": "00-" + traceID + "-" + clientSpan + "-01"}
	if resp, b := g.do("POST", "/v1/chat/completions", h, retryBody); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	reqs := g.requests()[warm:]
	if len(reqs) != 2 {
		t.Fatalf("upstream attempts %v, want two", attemptsOf(reqs))
	}
	retryKey := strings.TrimPrefix(reqs[1].Credential, "sk-test-")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := j.WaitTrace(ctx, traceID, func(tr *jaegertest.Trace) bool { return len(tr.Spans) >= 3 })
	if err != nil {
		t.Fatalf("the trace never reached Jaeger: %v", err)
	}
	if len(tr.Spans) != 3 {
		t.Fatalf("%d spans, want the call's and two attempts", len(tr.Spans))
	}
	var call *jaegertest.Span
	for i := range tr.Spans {
		if s := &tr.Spans[i]; s.ParentSpanID() == clientSpan {
			call = s
		}
	}
	if call == nil || call.OperationName != "chat gpt-4" || call.TagString("keymux.key.id") != retryKey ||
		call.TagString("keymux.attempts") != "2" || call.TagString("keymux.candidates") != "3" ||
		call.TagString("keymux.rule.id") != "" || call.TagString("gen_ai.response.model") != "gpt-4" {
		t.Fatalf("call span %+v: want chat gpt-4 under the client's span, key %s without a rule, model gpt-4, 2 attempts, 3 candidates", call, retryKey)
	}
	want := []struct{ key, status, reason string }{{"k2", "429", "rate_limited"}, {retryKey, "200", ""}}
	for i, w := range want {
		var got *jaegertest.Span
		for k := range tr.Spans {
			if s := &tr.Spans[k]; s.OperationName == telemetry.AttemptSpanName && s.TagString("keymux.attempt") == strconv.Itoa(i+1) {
				got = s
			}
		}
		if got == nil {
			t.Errorf("no span of attempt %d", i+1)
			continue
		}
		if got.ParentSpanID() != call.SpanID || got.TagString("keymux.key.id") != w.key ||
			got.TagString("http.response.status_code") != w.status || got.TagString("keymux.retry.reason") != w.reason {
			t.Errorf("attempt %d: parent %s key %s status %s reason %q; want parent %s, %s, %s, %q", i+1, got.ParentSpanID(),
				got.TagString("keymux.key.id"), got.TagString("http.response.status_code"), got.TagString("keymux.retry.reason"),
				call.SpanID, w.key, w.status, w.reason)
		}
	}
}
