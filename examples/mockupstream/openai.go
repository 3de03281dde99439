package mockupstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/internal/backoff"
)

// The OpenAI chat completion shapes, field order as the API writes them.
type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             chatUsage    `json:"usage"`
	ServiceTier       string       `json:"service_tier"`
	SystemFingerprint string       `json:"system_fingerprint"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role        string   `json:"role"`
	Content     string   `json:"content"`
	Refusal     *string  `json:"refusal"`
	Annotations []string `json:"annotations"`
}

type chatUsage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
		AudioTokens  int `json:"audio_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens          int `json:"reasoning_tokens"`
		AudioTokens              int `json:"audio_tokens"`
		AcceptedPredictionTokens int `json:"accepted_prediction_tokens"`
		RejectedPredictionTokens int `json:"rejected_prediction_tokens"`
	} `json:"completion_tokens_details"`
}

type chatChunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	ServiceTier       string          `json:"service_tier"`
	SystemFingerprint string          `json:"system_fingerprint"`
	Choices           []chunkChoice   `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int        `json:"index"`
	Delta        chunkDelta `json:"delta"`
	Logprobs     *struct{}  `json:"logprobs"`
	FinishReason *string    `json:"finish_reason"`
}

type chunkDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
	Refusal *string `json:"refusal,omitempty"`
}

// invalidType is OpenAI's 400 for a field of the wrong JSON type.
func invalidType(field, want string, got gjson.Result) apiError {
	kind := "an object"
	switch got.Type {
	case gjson.String:
		kind = "a string"
	case gjson.Number:
		kind = "a number"
		if !strings.ContainsAny(got.Raw, ".eE") {
			kind = "an integer"
		}
	case gjson.True, gjson.False:
		kind = "a boolean"
	case gjson.Null:
		kind = "null"
	default:
		if got.IsArray() {
			kind = "an array"
		}
	}
	return apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: field, code: "invalid_type",
		message: fmt.Sprintf("Invalid type for '%s': expected %s, but got %s instead.", field, want, kind)}
}

var errParse = apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
	message: "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"}

// checkBody validates what every OpenAI POST body needs: a JSON object with
// a string model (unless the Azure deployment names it). The mock's answers
// to bad bodies are part of its contract: a fuzz target checks them.
func (s *Server) checkBody(rq *request) (apiError, bool) {
	if !gjson.ValidBytes(rq.body) || !gjson.ParseBytes(rq.body).IsObject() {
		return errParse, false
	}
	m := gjson.GetBytes(rq.body, "model")
	switch {
	case rq.rt.deployment != "":
	case !m.Exists():
		return apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			message: "you must provide a model parameter"}, false
	case m.Type != gjson.String:
		return invalidType("model", "a string", m), false
	case s.opts.StrictModels && !contains(s.models, m.Str):
		return behaviourError(Behaviour{Status: http.StatusNotFound}, rq.rt.dialect, m.Str), false
	}
	if st := gjson.GetBytes(rq.body, "stream"); st.Exists() && st.Type != gjson.True && st.Type != gjson.False && st.Type != gjson.Null {
		return invalidType("stream", "a boolean", st), false
	}
	return apiError{}, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// completionLimit is the request's max_completion_tokens or max_tokens (0 = none).
func completionLimit(body []byte) int {
	for _, f := range []string{"max_completion_tokens", "max_tokens"} {
		if v := gjson.GetBytes(body, f); v.Type == gjson.Number && v.Int() > 0 {
			return int(v.Int())
		}
	}
	return 0
}

// answer is the reply text of a chat or messages request.
func (rq *request) answer() (pieces []string, text string, truncated bool) {
	reply := rq.b.Content
	if reply == "" {
		reply = Reply(rq.model, rq.body)
	}
	pieces, truncated = replyPieces(reply, completionLimit(rq.body))
	return pieces, strings.Join(pieces, ""), truncated
}

func (s *Server) chat(w *statusWriter, rq *request) {
	if e, ok := s.checkBody(rq); !ok {
		s.writeError(w, rq.rt.dialect, e)
		return
	}
	msgs := gjson.GetBytes(rq.body, "messages")
	if !msgs.Exists() {
		s.writeError(w, rq.rt.dialect, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			param: "messages", code: "missing_required_parameter", message: "Missing required parameter: 'messages'."})
		return
	}
	if !msgs.IsArray() {
		s.writeError(w, rq.rt.dialect, invalidType("messages", "an array", msgs))
		return
	}
	pieces, text, truncated := rq.answer()
	finish := "stop"
	if truncated {
		finish = "length"
	}
	var u chatUsage
	u.PromptTokens = PromptTokens(rq.body)
	u.CompletionTokens = CompletionTokens(text)
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	id := fmt.Sprintf("chatcmpl-mock%06d", rq.seq)
	created := s.now().Unix()

	if !rq.stream {
		resp := chatCompletion{
			ID: id, Object: "chat.completion", Created: created, Model: rq.model,
			Choices: []chatChoice{{Message: chatMessage{Role: "assistant", Content: text, Annotations: []string{}},
				FinishReason: finish}},
			Usage: u, ServiceTier: "default", SystemFingerprint: "fp_mock",
		}
		s.writeJSON(w, rq, resp)
		return
	}

	includeUsage := gjson.GetBytes(rq.body, "stream_options.include_usage").Type == gjson.True
	chunk := func(delta chunkDelta, finish *string) chatChunk {
		c := chatChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: rq.model,
			ServiceTier: "default", SystemFingerprint: "fp_mock",
			Choices: []chunkChoice{{Delta: delta, FinishReason: finish}}}
		if includeUsage {
			c.Usage = json.RawMessage("null")
		}
		return c
	}
	empty := ""
	events := []chatChunk{chunk(chunkDelta{Role: "assistant", Content: &empty, Refusal: nil}, nil)}
	for _, p := range pieces {
		events = append(events, chunk(chunkDelta{Content: &p}, nil))
	}
	events = append(events, chunk(chunkDelta{}, &finish))
	if includeUsage {
		usage, err := json.Marshal(u)
		if err != nil {
			panic(err)
		}
		c := chunk(chunkDelta{}, nil)
		c.Choices = []chunkChoice{}
		c.Usage = usage
		events = append(events, c)
	}
	sse := s.newSSE(w, rq)
	for _, ev := range events {
		data, err := json.Marshal(ev)
		if err != nil {
			panic(err)
		}
		if !sse.event("", data) {
			return
		}
	}
	sse.event("", []byte("[DONE]"))
}

// writeJSON writes a 200 JSON answer, or half of it and a cut connection
// when the behaviour says CutStreamAfter.
func (s *Server) writeJSON(w *statusWriter, rq *request, v any) {
	out, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	out = append(out, '\n')
	w.Header().Set("content-type", "application/json")
	w.Header().Set("openai-processing-ms", "1")
	if rq.b.CutStreamAfter > 0 {
		w.Header().Set("content-length", strconv.Itoa(len(out)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(out[:len(out)/2])
		_ = http.NewResponseController(w).Flush()
		w.abort(true)
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// sseWriter writes server-sent events, flushing after each, and cuts the
// connection where the behaviour says.
type sseWriter struct {
	w     *statusWriter
	rc    *http.ResponseController
	ctx   context.Context
	n     int
	cut   int
	hold  int
	delay time.Duration
}

func (s *Server) newSSE(w *statusWriter, rq *request) *sseWriter {
	h := w.Header()
	h.Set("content-type", "text/event-stream; charset=utf-8")
	h.Set("cache-control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	return &sseWriter{w: w, rc: rc, ctx: rq.r.Context(), cut: rq.b.CutStreamAfter, hold: rq.b.HoldStreamAfter, delay: rq.b.ChunkDelay}
}

// event writes one event ("event: name" line when name is not empty);
// false when the client went away.
func (e *sseWriter) event(name string, data []byte) bool {
	if e.cut > 0 && e.n >= e.cut {
		e.w.abort(true)
	}
	if e.hold > 0 && e.n >= e.hold {
		<-e.ctx.Done()
		e.w.abort(false)
	}
	if e.n > 0 && e.delay > 0 && !backoff.Sleep(e.ctx, e.delay) {
		e.w.abort(false) // never end a stream cleanly after an interruption
	}
	buf := make([]byte, 0, len(name)+len(data)+16)
	if name != "" {
		buf = append(buf, "event: "...)
		buf = append(buf, name...)
		buf = append(buf, '\n')
	}
	buf = append(buf, "data: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	if _, err := e.w.Write(buf); err != nil {
		return false
	}
	e.n++
	return e.rc.Flush() == nil
}

type embeddingsResponse struct {
	Object string          `json:"object"`
	Data   []embeddingItem `json:"data"`
	Model  string          `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

type embeddingItem struct {
	Object    string    `json:"object"`
	Index     int       `json:"index"`
	Embedding []float64 `json:"embedding"`
}

// embeddingInputs are the texts to embed; a token array is embedded as its
// raw JSON.
func embeddingInputs(in gjson.Result) ([]string, bool) {
	switch {
	case in.Type == gjson.String:
		return []string{in.Str}, true
	case in.IsArray():
		items := in.Array()
		if len(items) == 0 {
			return nil, false
		}
		if items[0].Type == gjson.Number { // one token array
			return []string{in.Raw}, true
		}
		out := make([]string, 0, len(items))
		for _, it := range items {
			switch {
			case it.Type == gjson.String:
				out = append(out, it.Str)
			case it.IsArray():
				out = append(out, it.Raw)
			default:
				return nil, false
			}
		}
		return out, true
	}
	return nil, false
}

func (s *Server) embeddings(w *statusWriter, rq *request) {
	if e, ok := s.checkBody(rq); !ok {
		s.writeError(w, rq.rt.dialect, e)
		return
	}
	in := gjson.GetBytes(rq.body, "input")
	if !in.Exists() {
		s.writeError(w, rq.rt.dialect, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			param: "input", code: "missing_required_parameter", message: "Missing required parameter: 'input'."})
		return
	}
	inputs, ok := embeddingInputs(in)
	if !ok {
		s.writeError(w, rq.rt.dialect, apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: "input",
			message: "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."})
		return
	}
	dims := s.dims
	if d := gjson.GetBytes(rq.body, "dimensions"); d.Type == gjson.Number {
		if d.Int() < 1 || d.Int() > 4096 {
			s.writeError(w, rq.rt.dialect, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
				param: "dimensions", message: "Invalid value for 'dimensions': must be between 1 and 4096."})
			return
		}
		dims = int(d.Int())
	}
	resp := embeddingsResponse{Object: "list", Model: rq.model, Data: make([]embeddingItem, len(inputs))}
	for i, t := range inputs {
		resp.Data[i] = embeddingItem{Object: "embedding", Index: i, Embedding: Embedding(t, dims)}
	}
	resp.Usage.PromptTokens = PromptTokens(rq.body)
	resp.Usage.TotalTokens = resp.Usage.PromptTokens
	s.writeJSON(w, rq, resp)
}

type modelList struct {
	Object string        `json:"object"`
	Data   []modelObject `json:"data"`
}

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (s *Server) listModels(w *statusWriter, rq *request) {
	resp := modelList{Object: "list", Data: make([]modelObject, len(s.models))}
	for i, m := range s.models {
		owner := "openai"
		if strings.HasPrefix(m, "claude") {
			owner = "anthropic"
		}
		resp.Data[i] = modelObject{ID: m, Object: "model", Created: 1686935002, OwnedBy: owner}
	}
	s.writeJSON(w, rq, resp)
}
