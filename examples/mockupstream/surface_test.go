package mockupstream_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/keymux/keymux/testutil/wsevent"

	"github.com/keymux/keymux/examples/mockupstream"
)

var anthropicHeaders = map[string]string{"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01", "content-type": "application/json"}

func TestAnthropicCountTokens(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	body := `{"model":"claude-sonnet-4-0","messages":[{"role":"user","content":"Hello, world"}]}`
	status, _, out := do(t, "POST", srv.URL()+"/v1/messages/count_tokens", anthropicHeaders, body)
	want := `{"input_tokens":` + itoa(mockupstream.PromptTokens([]byte(body))) + "}\n"
	if status != 200 || string(out) != want {
		t.Fatalf("got %d %s, want 200 %s", status, out, want)
	}
	status, _, out = do(t, "POST", srv.URL()+"/v1/messages/count_tokens", anthropicHeaders, `{"messages":[]}`)
	if status != 400 || !strings.Contains(string(out), `"model: Field required"`) {
		t.Fatalf("no model: %d %s", status, out)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// Message batches: created ended, listed, fetched, their results as JSONL,
// deleted; another credential (account) sees none of them.
func TestAnthropicBatches(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	base := srv.URL() + "/v1/messages/batches"
	status, _, out := do(t, "POST", base, anthropicHeaders,
		`{"requests":[{"custom_id":"a","params":{"model":"claude-sonnet-4-0","max_tokens":5,"messages":[]}}]}`)
	var b struct {
		ID               string         `json:"id"`
		Type             string         `json:"type"`
		ProcessingStatus string         `json:"processing_status"`
		RequestCounts    map[string]int `json:"request_counts"`
		ResultsURL       string         `json:"results_url"`
	}
	if err := json.Unmarshal(out, &b); err != nil || status != 200 || b.Type != "message_batch" || b.ProcessingStatus != "ended" ||
		b.RequestCounts["succeeded"] != 1 || !strings.HasPrefix(b.ID, "msgbatch_") || !strings.HasSuffix(b.ResultsURL, "/"+b.ID+"/results") {
		t.Fatalf("create: %d %s (%v)", status, out, err)
	}
	if status, _, out = do(t, "GET", base+"/"+b.ID, anthropicHeaders, ""); status != 200 || !strings.Contains(string(out), `"id":"`+b.ID+`"`) {
		t.Errorf("get: %d %s", status, out)
	}
	if status, _, out = do(t, "GET", base, anthropicHeaders, ""); status != 200 ||
		!strings.Contains(string(out), `"first_id":"`+b.ID+`"`) || !strings.Contains(string(out), `"has_more":false`) {
		t.Errorf("list: %d %s", status, out)
	}
	status, h, out := do(t, "GET", base+"/"+b.ID+"/results", anthropicHeaders, "")
	if status != 200 || h.Get("content-type") != "application/x-jsonl" || !strings.HasPrefix(string(out), `{"custom_id":"a","result":{`) {
		t.Errorf("results: %d %s %s", status, h.Get("content-type"), out)
	}
	if status, _, out = do(t, "POST", base+"/"+b.ID+"/cancel", anthropicHeaders, ""); status != 200 || !strings.Contains(string(out), `"processing_status":"ended"`) {
		t.Errorf("cancel: %d %s", status, out)
	}
	other := map[string]string{"x-api-key": "sk-ant-2", "anthropic-version": "2023-06-01"}
	if status, _, out = do(t, "GET", base+"/"+b.ID, other, ""); status != 404 || !strings.Contains(string(out), `"not_found_error"`) {
		t.Errorf("another account: %d %s", status, out)
	}
	if status, _, out = do(t, "GET", base, other, ""); status != 200 || string(out) != `{"data":[],"first_id":null,"has_more":false,"last_id":null}`+"\n" {
		t.Errorf("another account's list: %d %s", status, out)
	}
	if status, _, out = do(t, "DELETE", base+"/"+b.ID, anthropicHeaders, ""); status != 200 || string(out) != `{"id":"`+b.ID+`","type":"message_batch_deleted"}`+"\n" {
		t.Errorf("delete: %d %s", status, out)
	}
	if status, _, _ = do(t, "GET", base+"/"+b.ID, anthropicHeaders, ""); status != 404 {
		t.Errorf("get after delete: %d", status)
	}
}

// The Realtime WebSocket: session.created with the query's model, then a
// server event for each client event; the upgrade is recorded with its
// credential and model.
func TestRealtime(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	for _, tc := range []struct {
		name, path, header, value, model string
	}{
		{"openai", "/v1/realtime?model=gpt-4o-realtime-preview", "authorization", "Bearer sk-rt", "gpt-4o-realtime-preview"},
		{"azure", "/openai/realtime?api-version=2024-10-01-preview&deployment=rt-dep", "api-key", "sk-rt", "rt-dep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.Reset()
			ws := "ws" + strings.TrimPrefix(srv.URL(), "http") + tc.path
			c, resp, err := websocket.Dial(t.Context(), ws, &websocket.DialOptions{HTTPHeader: http.Header{tc.header: {tc.value}}, Subprotocols: []string{"realtime"}})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer func() { _ = c.CloseNow() }()
			if resp.StatusCode != http.StatusSwitchingProtocols || c.Subprotocol() != "realtime" {
				t.Fatalf("status %d, subprotocol %q", resp.StatusCode, c.Subprotocol())
			}
			if ev := wsevent.Read(t, c); ev["type"] != "session.created" || ev["session"].(map[string]any)["model"] != tc.model {
				t.Fatalf("first event %v", ev)
			}
			wsevent.Exchange(t, c,
				wsevent.Step{Send: `{"type":"session.update","session":{"instructions":"be brief"}}`, Want: "session.updated"},
				wsevent.Step{Send: `{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}`, Want: "conversation.item.created"},
				wsevent.Step{Send: `{"type":"response.create"}`, Want: "response.created"},
				wsevent.Step{Want: "response.done"},
				wsevent.Step{Send: `{"type":"nonsense","event_id":"e1"}`, Want: "error"},
			)
			_ = c.Close(websocket.StatusNormalClosure, "")
			reqs := srv.Requests()
			if len(reqs) != 1 || reqs[0].Credential != "sk-rt" || reqs[0].Model != tc.model || reqs[0].Status != 101 {
				t.Errorf("recorded %+v", reqs)
			}
		})
	}
}
