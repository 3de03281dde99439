package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/keymux/keymux/testutil/wsevent"
)

// The Realtime API through Envoy (the emulator running envoy/envoy.yaml):
// a WebSocket client opens /v1/realtime?model=…, exchanges events both
// ways, and the upstream saw the chosen key's credentials, never the
// client's (neither its Authorization nor a key in a subprotocol), and the
// rule's model in the query.
func TestRealtimeWebSocket(t *testing.T) {
	g, callLog := startGatewayWithCallLog(t, `
settings:
  auth: {mode: client_keys}
keys:
  rt: {provider: openai, base_url: "{{MOCK}}/v1", secret: sk-test-rt}
rules:
  preview: {key: rt, from: gpt-4o-realtime, to: gpt-4o-realtime-preview}
clients:
  app: {token_sha256: "`+sha256hex("km-client-token")+`"}
`)
	url := "ws" + strings.TrimPrefix(g.url, "http") + "/v1/realtime?model=gpt-4o-realtime&trace=1"
	c, resp, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{
		HTTPHeader:   http.Header{"Authorization": {"Bearer km-client-token"}},
		Subprotocols: []string{"realtime", "openai-insecure-api-key.km-client-token"},
	})
	if err != nil {
		t.Fatalf("dial: %v\nstderr:\n%s", err, g.stderr.String())
	}
	defer func() { _ = c.CloseNow() }()
	if resp.StatusCode != http.StatusSwitchingProtocols || c.Subprotocol() != "realtime" {
		t.Fatalf("status %d, subprotocol %q", resp.StatusCode, c.Subprotocol())
	}
	if ev := wsevent.Read(t, c); ev["type"] != "session.created" || ev["session"].(map[string]any)["model"] != "gpt-4o-realtime-preview" {
		t.Fatalf("first event %v, want session.created for the rule's model", ev)
	}
	wsevent.Exchange(t, c,
		wsevent.Step{Send: `{"type":"session.update","session":{"instructions":"be brief"}}`, Want: "session.updated"},
		wsevent.Step{Send: `{"type":"response.create"}`, Want: "response.created"},
		wsevent.Step{Want: "response.done"},
	)
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("close: %v", err)
	}
	reqs := g.requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream got %d requests, want the upgrade", len(reqs))
	}
	r := reqs[0]
	if r.Path != "/v1/realtime" || r.RawQuery != "model=gpt-4o-realtime-preview&trace=1" || r.AuthValue != "Bearer sk-test-rt" || r.Status != 101 {
		t.Errorf("upstream saw %s?%s with %q, answered %d", r.Path, r.RawQuery, r.AuthValue, r.Status)
	}
	for _, h := range []string{"X-Api-Key", "Api-Key"} {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("upstream got %s %q", h, v)
		}
	}
	if p := r.Header.Get("Sec-Websocket-Protocol"); p != "realtime" {
		t.Errorf("upstream got subprotocols %q, want realtime alone", p)
	}
	rec := waitCallRecord(t, callLog, 1)
	if rec.Operation != "realtime" || rec.KeyID != "rt" || rec.Status != 101 || !rec.Success {
		t.Errorf("call record %+v, want realtime on rt, 101, success", rec)
	}
}

// Anthropic's extra endpoints in their exact wire format: count_tokens (the
// rule's model to an Anthropic key), message batches (created and read
// back on the Anthropic key), and the model list in Anthropic's shape.
func TestAnthropicEndpoints(t *testing.T) {
	g, callLog := startGatewayWithCallLog(t, `
keys:
  ant: {provider: anthropic, base_url: "{{MOCK}}/v1", secret: sk-test-ant, models: [claude-sonnet-4-0]}
  oai: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-oai, models: [gpt-4o]}
rules:
  latest: {key: ant, from: claude-latest, to: claude-sonnet-4-0}
`)
	h := map[string]string{"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "client-own-key"}
	body := `{"model":"claude-latest","messages":[{"role":"user","content":"Hello, Claude"}]}`
	resp, b := g.do("POST", "/v1/messages/count_tokens", h, body)
	var count struct {
		InputTokens int `json:"input_tokens"`
	}
	if err := json.Unmarshal(b, &count); err != nil || resp.StatusCode != 200 || count.InputTokens <= 0 {
		t.Fatalf("count_tokens: %d %s", resp.StatusCode, b)
	}
	r := g.requests()[0]
	if r.Path != "/v1/messages/count_tokens" || r.Credential != "sk-test-ant" || r.BodyModel != "claude-sonnet-4-0" ||
		r.Header.Get("anthropic-version") != "2023-06-01" {
		t.Errorf("upstream saw %s with %q, model %q", r.Path, r.Credential, r.BodyModel)
	}
	if rec := waitCallRecord(t, callLog, 1); rec.Operation != "count_tokens" || rec.KeyID != "ant" || rec.Status != 200 {
		t.Errorf("call record %+v", rec)
	}

	resp, b = g.do("POST", "/v1/messages/batches", h,
		`{"requests":[{"custom_id":"q1","params":{"model":"claude-sonnet-4-0","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}}]}`)
	var batch struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &batch); err != nil || resp.StatusCode != 200 || batch.Type != "message_batch" {
		t.Fatalf("create batch: %d %s", resp.StatusCode, b)
	}
	for _, path := range []string{"/v1/messages/batches/" + batch.ID, "/v1/messages/batches/" + batch.ID + "/results"} {
		if resp, b = g.do("GET", path, h, ""); resp.StatusCode != 200 || !strings.Contains(string(b), batch.ID[:8]) && !strings.Contains(string(b), "q1") {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
		}
	}
	for _, r := range g.requests()[1:] {
		if r.Credential != "sk-test-ant" {
			t.Errorf("%s %s went with %q, want the Anthropic key", r.Method, r.Path, r.Credential)
		}
	}

	resp, b = g.do("GET", "/v1/models", map[string]string{"anthropic-version": "2023-06-01"}, "")
	want := `{"data":[{"type":"model","id":"claude-latest","display_name":"claude-latest","created_at":"1970-01-01T00:00:00Z"},` +
		`{"type":"model","id":"claude-sonnet-4-0","display_name":"claude-sonnet-4-0","created_at":"1970-01-01T00:00:00Z"},` +
		`{"type":"model","id":"gpt-4o","display_name":"gpt-4o","created_at":"1970-01-01T00:00:00Z"}],` +
		`"has_more":false,"first_id":"claude-latest","last_id":"gpt-4o"}`
	if resp.StatusCode != 200 || string(b) != want {
		t.Errorf("models: %d %s\nwant %s", resp.StatusCode, b, want)
	}
}

// settings.unknown_paths: with forward, a path keymux does not know reaches
// the upstream with a key (chosen by the body's model); with refuse (the
// default) it gets keymux's 404. Both are in the call log as "other".
func TestUnknownPaths(t *testing.T) {
	const keys = `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, models: [gpt-4o-mini]}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2, models: [gpt-4o]}
`
	body := `{"model":"gpt-4o","input":"something new"}`
	t.Run("forward", func(t *testing.T) {
		g, callLog := startGatewayWithCallLog(t, "settings: {unknown_paths: forward}\n"+keys)
		resp, b := g.do("POST", "/v1/some/new/endpoint?v=1", map[string]string{"content-type": "application/json", "authorization": "Bearer client"}, body)
		if resp.StatusCode != 404 || !strings.Contains(string(b), "Invalid URL (POST /v1/some/new/endpoint)") {
			t.Errorf("client got %d %s, want the upstream's own answer", resp.StatusCode, b)
		}
		reqs := g.requests()
		if len(reqs) != 1 || reqs[0].Path != "/v1/some/new/endpoint" || reqs[0].RawQuery != "v=1" || reqs[0].AuthValue != "Bearer sk-test-k2" ||
			string(reqs[0].Body) != body {
			t.Fatalf("upstream got %+v", reqs)
		}
		if rec := waitCallRecord(t, callLog, 1); rec.Operation != "other" || rec.KeyID != "k2" || rec.Status != 404 {
			t.Errorf("call record %+v, want other on k2", rec)
		}
	})
	t.Run("refuse", func(t *testing.T) {
		g, callLog := startGatewayWithCallLog(t, keys)
		resp, b := g.do("POST", "/v1/some/new/endpoint", map[string]string{"content-type": "application/json"}, body)
		if resp.StatusCode != 404 || !strings.Contains(string(b), `"code":"unknown_url"`) {
			t.Errorf("client got %d %s, want keymux's unknown_url", resp.StatusCode, b)
		}
		if n := len(g.requests()); n != 0 {
			t.Errorf("upstream got %d requests", n)
		}
		if rec := waitCallRecord(t, callLog, 1); rec.Operation != "other" || rec.KeyID != "" || rec.Status != 404 || rec.Error != "unknown_url" {
			t.Errorf("call record %+v, want a refused other", rec)
		}
	})
}
