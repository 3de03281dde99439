package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/policy"
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
// passes) or refuses connections is ejected after
// ejection.consecutive_failures requests: Envoy answers them itself (503, UC
// or UF) and keymux learns it from the access log only, the response never
// reaching ext_proc.
func TestResettingUpstreamEjectsKey(t *testing.T) {
	tests := []struct {
		name     string
		upstream func(t *testing.T) string // the key's base URL
	}{
		// Every request's connection is closed before an answer (UC); its
		// health probes (GET /v1/models) pass.
		{name: "reset before headers", upstream: func(t *testing.T) string {
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
			return up.URL
		}},
		// Nothing listens (UF).
		{name: "connection refused", upstream: func(t *testing.T) string {
			up := httptest.NewServer(http.NotFoundHandler())
			up.Close()
			return up.URL
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t, `settings: {ejection: {consecutive_failures: 2}}
keys:
  k1: {provider: openai_compatible, base_url: "`+tt.upstream(t)+`/v1", secret: sk-test-k1}
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
		})
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

// A client that leaves mid-stream is booked as a cut call that is not the
// key's fault, while an upstream that cuts the stream counts against the key.
// The mock holds the stream open after its first event until the client has
// gone (HoldStreamAfter), so the abort always lands before the stream's end.
func TestMidStreamCutBlamesOnlyTheUpstream(t *testing.T) {
	tests := []struct {
		name      string
		behaviour mockupstream.Behaviour
		abort     bool // the client cancels after the first event
		wantClass string
		wantState string
		wantEject uint64
	}{
		{name: "client abort spares the key", behaviour: mockupstream.Behaviour{HoldStreamAfter: 1}, abort: true,
			wantClass: policy.ClassStreamCut, wantState: "healthy", wantEject: 0},
		{name: "upstream cut ejects the key", behaviour: mockupstream.Behaviour{CutStreamAfter: 1},
			wantClass: policy.ClassServer, wantState: "ejected", wantEject: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, callLog := startGatewayWithCallLog(t, `settings: {ejection: {consecutive_failures: 1}}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
`)
			g.mock.Script("sk-test-k1", tt.behaviour)
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			req, err := http.NewRequestWithContext(ctx, "POST", g.url+"/v1/chat/completions",
				strings.NewReader(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"talk"}]}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("content-type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			body := bufio.NewReader(resp.Body)
			line, err := body.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "data: ") {
				t.Fatalf("first event %q: %v", line, err)
			}
			if tt.abort {
				cancel()
			} else if rest, err := io.ReadAll(body); err == nil || strings.Contains(string(rest), "[DONE]") {
				t.Fatalf("after the first event: %q, %v; want a broken stream", rest, err)
			}
			resp.Body.Close()

			rec := waitCallRecord(t, callLog, 1)
			if rec.Status != 200 || rec.Success || rec.Error != tt.wantClass {
				raw, _ := os.ReadFile(callLog)
				t.Errorf("call record %+v, want status 200, not a success, error %q\n%s\n%+v", rec, tt.wantClass, raw, g.accessLog())
			}
			keys := g.keys()
			if len(keys) != 1 || keys[0].State != tt.wantState || keys[0].Ejections != tt.wantEject {
				t.Errorf("keys %+v, want k1 %s with %d ejections", keys, tt.wantState, tt.wantEject)
			}
		})
	}
}
