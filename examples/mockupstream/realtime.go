package mockupstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/tidwall/gjson"
)

// realtimeTimeout bounds one Realtime session of the mock.
const realtimeTimeout = 5 * time.Minute

// realtime answers GET /v1/realtime (Azure: /openai/realtime) with a
// WebSocket: session.created first, then one server event per client
// event — session.update → session.updated, conversation.item.create →
// conversation.item.created, response.create → response.created and
// response.done, anything else → an error event naming it.
func (s *Server) realtime(w *statusWriter, rq *request) {
	c, err := websocket.Accept(w, rq.r, &websocket.AcceptOptions{Subprotocols: []string{"realtime"}})
	if err != nil {
		return // Accept answered the client
	}
	defer func() { _ = c.CloseNow() }()
	ctx, cancel := context.WithTimeout(s.ctx, realtimeTimeout)
	defer cancel()
	n := 0
	send := func(typ string, fields map[string]any) bool {
		n++
		ev := map[string]any{"type": typ, "event_id": fmt.Sprintf("event_mock%06d_%d", rq.seq, n)}
		for k, v := range fields {
			ev[k] = v
		}
		b, err := json.Marshal(ev)
		if err != nil {
			panic(err)
		}
		return c.Write(ctx, websocket.MessageText, b) == nil
	}
	session := map[string]any{"id": fmt.Sprintf("sess_mock%06d", rq.seq), "object": "realtime.session", "model": rq.model,
		"modalities": []string{"text", "audio"}}
	if !send("session.created", map[string]any{"session": session}) {
		return
	}
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return // the client closed, or the session timed out
		}
		ev := gjson.ParseBytes(data)
		if typ != websocket.MessageText || !gjson.ValidBytes(data) || !ev.IsObject() {
			send("error", map[string]any{"error": map[string]any{"type": "invalid_request_error", "code": "invalid_json",
				"message": "The event is not a JSON object.", "event_id": nil}})
			continue
		}
		clientID := ev.Get("event_id").Value()
		ok := true
		switch t := ev.Get("type").String(); t {
		case "session.update":
			for k, v := range ev.Get("session").Map() {
				session[k] = v.Value()
			}
			ok = send("session.updated", map[string]any{"session": session})
		case "conversation.item.create":
			ok = send("conversation.item.created", map[string]any{"previous_item_id": nil, "item": ev.Get("item").Value()})
		case "response.create":
			resp := map[string]any{"id": fmt.Sprintf("resp_mock%06d_%d", rq.seq, n), "object": "realtime.response", "status": "in_progress"}
			ok = send("response.created", map[string]any{"response": resp})
			done := map[string]any{"id": resp["id"], "object": "realtime.response", "status": "completed",
				"output": []any{map[string]any{"type": "message", "role": "assistant",
					"content": []any{map[string]any{"type": "text", "text": "Hello from the mock upstream."}}}},
				"usage": map[string]int{"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}}
			ok = ok && send("response.done", map[string]any{"response": done})
		default:
			ok = send("error", map[string]any{"error": map[string]any{"type": "invalid_request_error", "code": "invalid_value",
				"message":  fmt.Sprintf("Invalid value: '%s'. Supported values are: 'session.update', 'conversation.item.create' and 'response.create'.", t),
				"event_id": clientID}})
		}
		if !ok {
			return
		}
	}
}

// upgradeModel is the model of a Realtime upgrade: the query's model
// (Azure: its deployment).
func upgradeModel(r *http.Request) (model, deployment string) {
	q := r.URL.Query()
	return q.Get("model"), q.Get("deployment")
}
