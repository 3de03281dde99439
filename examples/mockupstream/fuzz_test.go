package mockupstream_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/examples/mockupstream"
)

// FuzzRequestBody feeds arbitrary bodies to every POST endpoint: the mock
// must never panic, and must answer 200 with a well-formed answer or 400
// with the provider's error shape.
func FuzzRequestBody(f *testing.F) {
	for _, seed := range []string{
		chatBody,
		`{"model":"gpt-4","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}`,
		`{"model":"gpt-4","messages":[],"max_tokens":1}`,
		`{"model":"text-embedding-3-small","input":["a",[1,2]],"dimensions":3}`,
		`{"model":"claude","max_tokens":3,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"claude","max_tokens":3,"stream":true,"messages":[]}`,
		`{"model":1}`, `[]`, `null`, `{`, ``, `{"model":"m","messages":{}}`, `{"model":"m","input":{}}`,
	} {
		for path := range uint8(3) {
			f.Add(path, []byte(seed))
		}
	}
	srv := mockupstream.New(mockupstream.Options{})
	paths := []string{"/v1/chat/completions", "/v1/embeddings", "/v1/messages"}
	f.Fuzz(func(t *testing.T, p uint8, body []byte) {
		srv.Reset() // keep the record from growing over millions of runs
		path := paths[int(p)%len(paths)]
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set("authorization", "Bearer sk-test-fuzz")
		req.Header.Set("x-api-key", "sk-test-fuzz")
		req.Header.Set("anthropic-version", "2023-06-01")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		out := rec.Body.Bytes()
		switch rec.Code {
		case http.StatusBadRequest:
			if path == "/v1/messages" {
				if gjson.GetBytes(out, "type").Str != "error" || gjson.GetBytes(out, "error.type").Str != "invalid_request_error" {
					t.Fatalf("anthropic 400 body %s", out)
				}
			} else if gjson.GetBytes(out, "error.type").Str != "invalid_request_error" || gjson.GetBytes(out, "error.message").Str == "" {
				t.Fatalf("400 body %s", out)
			}
		case http.StatusOK:
			if strings.HasPrefix(rec.Header().Get("content-type"), "text/event-stream") {
				if !bytes.HasSuffix(out, []byte("\n\n")) {
					t.Fatalf("stream not terminated: %q", out)
				}
				if path == "/v1/chat/completions" && !bytes.HasSuffix(out, []byte("data: [DONE]\n\n")) {
					t.Fatalf("stream without [DONE]: %q", out)
				}
				return
			}
			if !gjson.ValidBytes(out) {
				t.Fatalf("invalid JSON answer %q", out)
			}
			prompt := int64(mockupstream.PromptTokens(body))
			switch path {
			case "/v1/chat/completions":
				model := validUTF8(gjson.GetBytes(body, "model").Str)
				if got := gjson.GetBytes(out, "usage.prompt_tokens").Int(); got != prompt || gjson.GetBytes(out, "model").Str != model {
					t.Fatalf("usage %d, want %d; answer %s", got, prompt, out)
				}
			case "/v1/embeddings":
				if len(gjson.GetBytes(out, "data").Array()) == 0 || gjson.GetBytes(out, "usage.prompt_tokens").Int() != prompt {
					t.Fatalf("embeddings answer %s", out)
				}
			case "/v1/messages":
				if gjson.GetBytes(out, "usage.input_tokens").Int() != prompt {
					t.Fatalf("messages answer %s", out)
				}
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, out)
		}
	})
}

// validUTF8 is s as encoding/json writes it: every byte that is not valid
// UTF-8 becomes U+FFFD.
func validUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}
