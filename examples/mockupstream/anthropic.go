package mockupstream

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/tidwall/gjson"
)

// The Anthropic Messages API shapes.
type anthropicMessage struct {
	ID           string             `json:"id"`
	Type         string             `json:"type"`
	Role         string             `json:"role"`
	Model        string             `json:"model"`
	Content      []anthropicContent `json:"content"`
	StopReason   *string            `json:"stop_reason"`
	StopSequence *string            `json:"stop_sequence"`
	Usage        anthropicUsage     `json:"usage"`
}

type anthropicContent struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicUsage struct {
	InputTokens              int `json:"input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	OutputTokens             int `json:"output_tokens"`
}

func anthropicInvalid(msg string) apiError {
	return apiError{status: http.StatusBadRequest, typ: "invalid_request_error", message: msg}
}

// anthropicRequest answers Anthropic's errors for a request without
// anthropic-version or whose body is no JSON object, and reports whether
// the request may go on.
func (s *Server) anthropicRequest(w *statusWriter, rq *request) bool {
	d := rq.rt.dialect
	if rq.r.Header.Get("anthropic-version") == "" {
		s.writeError(w, d, anthropicInvalid("anthropic-version: header is required"))
		return false
	}
	if !gjson.ValidBytes(rq.body) || !gjson.ParseBytes(rq.body).IsObject() {
		s.writeError(w, d, anthropicInvalid("There was an error parsing the body of your request."))
		return false
	}
	return true
}

func (s *Server) messages(w *statusWriter, rq *request) {
	d := rq.rt.dialect
	if !s.anthropicRequest(w, rq) {
		return
	}
	if m := gjson.GetBytes(rq.body, "model"); !m.Exists() {
		s.writeError(w, d, anthropicInvalid("model: Field required"))
		return
	} else if m.Type != gjson.String {
		s.writeError(w, d, anthropicInvalid("model: Input should be a valid string"))
		return
	}
	if mt := gjson.GetBytes(rq.body, "max_tokens"); !mt.Exists() {
		s.writeError(w, d, anthropicInvalid("max_tokens: Field required"))
		return
	} else if mt.Type != gjson.Number || mt.Int() < 1 {
		s.writeError(w, d, anthropicInvalid("max_tokens: Input should be a valid integer greater than 0"))
		return
	}
	if msgs := gjson.GetBytes(rq.body, "messages"); !msgs.Exists() {
		s.writeError(w, d, anthropicInvalid("messages: Field required"))
		return
	} else if !msgs.IsArray() {
		s.writeError(w, d, anthropicInvalid("messages: Input should be a valid list"))
		return
	}
	pieces, text, truncated := rq.answer()
	stop := "end_turn"
	if truncated {
		stop = "max_tokens"
	}
	u := anthropicUsage{InputTokens: PromptTokens(rq.body), OutputTokens: CompletionTokens(text)}
	msg := anthropicMessage{
		ID: fmt.Sprintf("msg_mock%06d", rq.seq), Type: "message", Role: "assistant", Model: rq.model,
		Content: []anthropicContent{{Type: "text", Text: text}}, StopReason: &stop, Usage: u,
	}
	if !rq.stream {
		s.writeJSON(w, rq, msg)
		return
	}

	start := msg
	start.Content = []anthropicContent{}
	start.StopReason = nil
	start.Usage.OutputTokens = 1
	type event struct {
		name string
		data any
	}
	events := []event{
		{"message_start", map[string]any{"type": "message_start", "message": start}},
		{"content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": anthropicContent{Type: "text", Text: ""}}},
		{"ping", map[string]any{"type": "ping"}},
	}
	for _, p := range pieces {
		events = append(events, event{"content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
			"delta": map[string]string{"type": "text_delta", "text": p}}})
	}
	events = append(events,
		event{"content_block_stop", map[string]any{"type": "content_block_stop", "index": 0}},
		event{"message_delta", map[string]any{"type": "message_delta",
			"delta": map[string]any{"stop_reason": stop, "stop_sequence": nil},
			"usage": map[string]int{"output_tokens": u.OutputTokens}}},
		event{"message_stop", map[string]any{"type": "message_stop"}},
	)
	sse := s.newSSE(w, rq)
	for _, ev := range events {
		data, err := json.Marshal(ev.data)
		if err != nil {
			panic(err)
		}
		if !sse.event(ev.name, data) {
			return
		}
	}
}
