package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/wait"
)

// accessLog is /status's access_log.
type accessLog struct {
	Streams int               `json:"streams"`
	Matched uint64            `json:"matched"`
	Dropped map[string]uint64 `json:"dropped"`
}

func (g *gateway) accessLog() accessLog {
	var st struct {
		AccessLog accessLog `json:"access_log"`
	}
	if err := json.Unmarshal(g.getAdmin("/status"), &st); err != nil {
		g.t.Fatal(err)
	}
	return st.AccessLog
}

// responseBodyMessages is keymux_extproc_messages_total{kind="response_body"}.
func (g *gateway) responseBodyMessages() int { return g.extprocMessages("response_body") }

// A key whose upstream resets every chat request (its probe, GET /models,
// passes) is ejected after ejection.consecutive_failures requests: Envoy
// answers them itself (503, UC) and keymux learns it from the access log
// only, the response never reaching ext_proc.
func TestResettingUpstreamEjectsKey(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Header().Set("content-type", "application/json")
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}`)
			return
		}
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	t.Cleanup(up.Close)
	g := startGateway(t, `settings: {ejection: {consecutive_failures: 2}}
keys:
  k1: {provider: openai_compatible, base_url: "`+up.URL+`/v1", secret: sk-test-k1}
`)
	for i := range 2 {
		if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 503 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
	}
	var keys []keyHealth
	wait.Until(t, 5*time.Second, "k1 ejected on /stats", func() bool {
		keys = g.keys()
		return len(keys) == 1 && keys[0].State == "ejected"
	})
	if keys[0].Ejections != 1 {
		t.Errorf("k1 %+v, want one ejection", keys[0])
	}
	// Now out: keymux answers the next request itself.
	if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 503 || !regexp.MustCompile(`keys_ejected`).Match(b) {
		t.Errorf("after the ejection: %d %s, want keymux's 503 keys_ejected", resp.StatusCode, b)
	}
}

// JSON and SSE usage is booked exactly from Envoy's filters, from the first
// calls on (before Envoy's first flush opens the access-log stream), and
// keymux receives no response body message at all.
func TestUsageFromEnvoyFilters(t *testing.T) {
	g := startGateway(t, threeKeys)
	if st := g.accessLog(); st.Streams != 0 {
		t.Fatalf("access log %+v before any request, want no stream", st)
	}
	type usage struct {
		Prompt     int64 `json:"prompt_tokens"`
		Completion int64 `json:"completion_tokens"`
	}
	var want usage
	resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[{"role":"user","content":"count my tokens"}]}`)
	var completion struct {
		Usage usage `json:"usage"`
	}
	if err := json.Unmarshal(b, &completion); err != nil || resp.StatusCode != 200 || completion.Usage.Prompt == 0 {
		t.Fatalf("JSON call: %d %v %s", resp.StatusCode, err, b)
	}
	want.Prompt += completion.Usage.Prompt
	want.Completion += completion.Usage.Completion
	resp, b = g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"and these"}]}`)
	m := regexp.MustCompile(`"usage":\{"prompt_tokens":(\d+),"completion_tokens":(\d+)`).FindSubmatch(b)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("SSE call: %d %s", resp.StatusCode, b)
	}
	p, _ := strconv.ParseInt(string(m[1]), 10, 64)
	c, _ := strconv.ParseInt(string(m[2]), 10, 64)
	want.Prompt += p
	want.Completion += c

	wait.Until(t, 5*time.Second, "both calls matched with their entries", func() bool { return g.accessLog().Matched >= 2 })
	if n := g.responseBodyMessages(); n != 0 {
		t.Errorf("%d response body messages, want none", n)
	}
	if got := g.keyTokens(); got != uint64(want.Prompt+want.Completion) {
		t.Errorf("keys' tokens %d, want the two calls' %d (%+v)", got, want.Prompt+want.Completion, want)
	}
}

// keyHealth is the part of a /stats key these tests read.
type keyHealth struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	Errors    uint64 `json:"errors"`
	Ejections uint64 `json:"ejections"`
	Tokens    uint64 `json:"tokens"`
}

// keys is /stats's keys.
func (g *gateway) keys() []keyHealth {
	var st struct {
		Keys []keyHealth `json:"keys"`
	}
	if err := json.Unmarshal(g.getAdmin("/stats"), &st); err != nil {
		g.t.Fatal(err)
	}
	return st.Keys
}

// keyTokens is the sum of the keys' tokens on /stats.
func (g *gateway) keyTokens() uint64 {
	var total uint64
	for _, k := range g.keys() {
		total += k.Tokens
	}
	return total
}

// Anthropic's JSON answer and SSE stream (input_tokens in message_start,
// output_tokens in message_delta) on the native /v1/messages are booked
// exactly from Envoy's filters, on /stats and in the call log, with no
// response body message to keymux.
func TestAnthropicUsageFromEnvoyFilters(t *testing.T) {
	g, callLog := startGatewayWithCallLog(t, `
keys:
  ant: {provider: anthropic, base_url: "{{MOCK}}/v1", secret: sk-test-ant}
`)
	header := map[string]string{"content-type": "application/json", "anthropic-version": "2023-06-01"}
	inputRe := regexp.MustCompile(`"input_tokens":(\d+)`)
	outputRe := regexp.MustCompile(`"output_tokens":(\d+)`)
	// last is the last match's number in b (message_delta's output_tokens is
	// cumulative and comes after message_start's).
	last := func(re *regexp.Regexp, b []byte) int64 {
		m := re.FindAllSubmatch(b, -1)
		if m == nil {
			t.Fatalf("no %s in %s", re, b)
		}
		n, _ := strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
		return n
	}
	cases := []struct {
		name, body, contentType string
	}{
		{"json", `{"model":"claude-sonnet","max_tokens":64,"messages":[{"role":"user","content":"count my tokens"}]}`, "application/json"},
		{"sse", `{"model":"claude-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"and these, streamed"}]}`, "text/event-stream"},
	}
	var total uint64
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := g.do("POST", "/v1/messages", header, tc.body)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("content-type"), tc.contentType) {
				t.Fatalf("status %d content-type %q: %s", resp.StatusCode, resp.Header.Get("content-type"), b)
			}
			in, out := last(inputRe, b), last(outputRe, b)
			if in == 0 || out == 0 {
				t.Fatalf("usage %d/%d in %s, want both non-zero", in, out, b)
			}
			if tc.name == "sse" && !bytes.Contains(b, []byte("event: message_delta")) {
				t.Fatalf("no message_delta in the stream: %s", b)
			}
			total += uint64(in + out)
			rec := waitCallRecord(t, callLog, i+1)
			if rec.Status != 200 || !rec.Success || rec.Error != "" || rec.InputTokens == nil || rec.OutputTokens == nil ||
				*rec.InputTokens != in || *rec.OutputTokens != out {
				t.Errorf("call record %+v (tokens %v/%v), want 200, success, tokens %d/%d", rec, deref(rec.InputTokens), deref(rec.OutputTokens), in, out)
			}
		})
	}
	if n := g.responseBodyMessages(); n != 0 {
		t.Errorf("%d response body messages, want none", n)
	}
	if got := g.keyTokens(); got != total {
		t.Errorf("key's tokens %d on /stats, want the calls' %d", got, total)
	}
}

// deref is *p, or -1 for nil.
func deref(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}
