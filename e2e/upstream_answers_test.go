package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/wait"
)

// Hostile answers from an upstream (scripted on the mock): the client gets
// the upstream's bytes unchanged, keymux books the call with the usage it
// could read (or none) and the right outcome, and keeps serving.
func TestHostileUpstreamAnswers(t *testing.T) {
	g, callLog := startGatewayWithCallLog(t, `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
`)
	sse := map[string]string{"content-type": "text/event-stream"}
	const chunk = `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}` + "\n\n"
	const done = "data: [DONE]\n\n"
	usage := func(u string) string {
		return `data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":` + u + `}` + "\n\n"
	}
	const u23 = `{"prompt_tokens":2,"completion_tokens":3}`
	const request = `{"model":"gpt-4o","messages":[]}`
	none := int64(-1) // no usage booked
	cases := []struct {
		name    string
		b       mockupstream.Behaviour
		status  int
		success bool
		errType string
		in, out int64
	}{
		// JSON answers.
		{"usage null", mockupstream.Behaviour{Body: `{"id":"x","usage":null}`}, 200, true, "", none, none},
		{"usage an array", mockupstream.Behaviour{Body: `{"id":"x","usage":[1,2]}`}, 200, true, "", none, none},
		{"html with a JSON content-type", mockupstream.Behaviour{Body: `<html>oops</html>`}, 200, true, "", none, none},
		{"top-level array", mockupstream.Behaviour{Body: `[{"usage":` + u23 + `}]`}, 200, true, "", none, none},
		{"nested usage ignored", mockupstream.Behaviour{Body: `{"choices":[{"usage":{"prompt_tokens":100,"completion_tokens":100}}],"usage":` + u23 + `}`}, 200, true, "", 2, 3},
		{"negative tokens read as 0", mockupstream.Behaviour{Body: `{"usage":{"prompt_tokens":-10,"completion_tokens":3}}`}, 200, true, "", 0, 3},
		{"500 with binary garbage", mockupstream.Behaviour{Status: 500, Body: "\x00\x01garbage"}, 500, false, "server", none, none},
		// SSE answers.
		{"well-formed stream", mockupstream.Behaviour{Headers: sse, Body: chunk + usage(u23) + done}, 200, true, "", 2, 3},
		{"CRLF line endings", mockupstream.Behaviour{Headers: sse, Body: strings.ReplaceAll(chunk+usage(u23)+done, "\n", "\r\n")}, 200, true, "", 2, 3},
		// sse_to_metadata's JSON parser drops an event that is not valid
		// JSON (with --usage-from-body keymux's scanner read 2/0 from it).
		{"malformed usage event", mockupstream.Behaviour{Headers: sse, Body: chunk + `data: {"usage":{"prompt_tokens":2,` + "\n\n" + done}, 200, true, "", none, none},
		{"4 MiB line before the usage", mockupstream.Behaviour{Headers: sse, Body: `data: {"pad":"` + strings.Repeat("x", 4<<20) + `"}` + "\n\n" + usage(u23) + done}, 200, true, "", 2, 3},
		{"usage after [DONE]", mockupstream.Behaviour{Headers: sse, Body: chunk + done + usage(u23)}, 200, true, "", 2, 3},
		// The upstream ended these streams cleanly: with the body off the
		// Process stream keymux does not see the SSE terminator, and
		// Envoy's entry (no UC/UT/DC flag) says the response completed.
		{"no [DONE]", mockupstream.Behaviour{Headers: sse, Body: chunk + usage(u23)}, 200, true, "", 2, 3},
		{"unterminated last event", mockupstream.Behaviour{Headers: sse, Body: chunk + strings.TrimSuffix(usage(u23), "\n\n")}, 200, true, "", 2, 3},
		{"comments and empty events only", mockupstream.Behaviour{Headers: sse, Body: ": ping\n\nevent: x\n\nretry: 5\n\n"}, 200, true, "", none, none},
		{"non-JSON data", mockupstream.Behaviour{Headers: sse, Body: "data: hello\n\ndata: {{{\n\n"}, 200, true, "", none, none},
		{"NUL bytes in data", mockupstream.Behaviour{Headers: sse, Body: "data: \x00\x00\n\n" + usage(u23)}, 200, true, "", 2, 3},
		{"JSON body with an SSE content-type", mockupstream.Behaviour{Headers: sse, Body: `{"usage":` + u23 + `}`}, 200, true, "", none, none},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g.mock.Script("sk-test-k1", tc.b)
			resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, request)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if string(b) != tc.b.Body {
				t.Errorf("the client got %d bytes that differ from the upstream's %d", len(b), len(tc.b.Body))
			}
			rec := waitCallRecord(t, callLog, i+1)
			in, out := none, none
			if rec.InputTokens != nil {
				in = *rec.InputTokens
			}
			if rec.OutputTokens != nil {
				out = *rec.OutputTokens
			}
			if rec.Status != tc.status || rec.Success != tc.success || rec.Error != tc.errType || in != tc.in || out != tc.out {
				t.Errorf("call record status %d success %v error %q tokens %d/%d, want %d %v %q %d/%d",
					rec.Status, rec.Success, rec.Error, in, out, tc.status, tc.success, tc.errType, tc.in, tc.out)
			}
		})
	}
	// Still serving, and /metrics still renders.
	if resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, request); resp.StatusCode != 200 {
		t.Fatalf("after the table: %d %s", resp.StatusCode, b)
	}
	resp, err := http.Get(g.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/metrics: %d", resp.StatusCode)
	}
}

// callRecord is the part of a call log line these tests read.
type callRecord struct {
	Status       int    `json:"status"`
	Success      bool   `json:"success"`
	Error        string `json:"error"`
	InputTokens  *int64 `json:"input_tokens"`
	OutputTokens *int64 `json:"output_tokens"`
	Operation    string `json:"operation"`
	KeyID        string `json:"key_id"`
	Attempts     int    `json:"attempts"`
}

// startGatewayWithCallLog is startGateway writing a call log, whose path it
// returns with the gateway.
func startGatewayWithCallLog(t *testing.T, cfg string, extraArgs ...string) (*gateway, string) {
	t.Helper()
	callLog := filepath.Join(t.TempDir(), "calls.jsonl")
	return startGateway(t, cfg, append([]string{"--call-log", callLog}, extraArgs...)...), callLog
}

// waitCallRecord waits for the n-th line of the call log (written
// asynchronously after the exchange ends) and decodes it.
func waitCallRecord(t *testing.T, path string, n int) callRecord {
	t.Helper()
	var lines []string
	wait.Until(t, 5*time.Second, "call log line", func() bool {
		raw, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		lines = strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
		return len(raw) > 0 && len(lines) >= n
	})
	var rec callRecord
	if err := json.Unmarshal([]byte(lines[n-1]), &rec); err != nil {
		t.Fatalf("call log line %d: %v", n, err)
	}
	return rec
}
