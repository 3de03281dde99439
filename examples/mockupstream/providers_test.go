package mockupstream_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/examples/mockupstream"
)

func TestAzure(t *testing.T) {
	srv := startMock(t, mockupstream.Options{StrictModels: true})
	const path = "/openai/deployments/my-gpt4o/chat/completions"
	const body = `{"model":"ignored-by-azure","messages":[{"role":"user","content":"hi"}]}`
	tests := []struct {
		name       string
		query      string
		header     map[string]string
		b          *mockupstream.Behaviour
		wantStatus int
		wantCode   string // Azure error code, "" = success
		wantHeader map[string]string
	}{
		{"api-key and api-version", "?api-version=2024-10-21", map[string]string{"api-key": "sk-test-az"}, nil, 200, "", nil},
		{"missing api-version", "", map[string]string{"api-key": "sk-test-az"}, nil, 404, "404", nil},
		{"missing api-key", "?api-version=2024-10-21", nil, nil, 401, "401", nil},
		{"429", "?api-version=2024-10-21", map[string]string{"api-key": "sk-test-az"}, &mockupstream.Behaviour{Status: 429, RetryAfter: "3"},
			429, "429", map[string]string{"retry-after": "3", "retry-after-ms": "3000", "x-ms-retry-after-ms": "3000", "x-ratelimit-remaining-requests": "0"}},
		{"401", "?api-version=2024-10-21", map[string]string{"api-key": "sk-test-az"}, &mockupstream.Behaviour{Status: 401}, 401, "401", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.b != nil {
				srv.Script("sk-test-az", *tc.b)
			}
			status, hdr, out := do(t, "POST", srv.URL()+path+tc.query, tc.header, body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tc.wantStatus, out)
			}
			rec := last(t, srv)
			if rec.Path != path || rec.RawQuery != strings.TrimPrefix(tc.query, "?") || rec.Deployment != "my-gpt4o" ||
				rec.Model != "my-gpt4o" || rec.BodyModel != "ignored-by-azure" {
				t.Errorf("recorded path %q query %q deployment %q model %q body model %q", rec.Path, rec.RawQuery, rec.Deployment, rec.Model, rec.BodyModel)
			}
			if tc.header != nil && (rec.Credential != "sk-test-az" || rec.AuthHeader != "api-key") {
				t.Errorf("recorded credential %q from %q", rec.Credential, rec.AuthHeader)
			}
			for k, v := range tc.wantHeader {
				if got := hdr.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tc.wantCode == "" {
				if got := gjson.GetBytes(out, "model").Str; got != "my-gpt4o" {
					t.Errorf("model = %q, want the deployment", got)
				}
				if got := gjson.GetBytes(out, "choices.0.message.content").Str; got != mockupstream.Reply("my-gpt4o", rec.Body) {
					t.Errorf("content %q", got)
				}
				return
			}
			var e struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			dec := json.NewDecoder(strings.NewReader(string(out)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || e.Error.Code != tc.wantCode || e.Error.Message == "" {
				t.Errorf("azure error %s: %v", out, err)
			}
		})
	}
}

func TestAzureOtherPaths(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	hdr := map[string]string{"api-key": "sk-test-az"}
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		check                    func(t *testing.T, out []byte)
	}{
		{"embeddings", "POST", "/openai/deployments/emb-1/embeddings?api-version=2024-10-21", `{"input":"abcd"}`, 200,
			func(t *testing.T, out []byte) {
				if gjson.GetBytes(out, "model").Str != "emb-1" || gjson.GetBytes(out, "usage.prompt_tokens").Int() != 1 ||
					len(gjson.GetBytes(out, "data.0.embedding").Array()) != mockupstream.DefaultEmbeddingDims {
					t.Errorf("answer %s", out)
				}
			}},
		{"models", "GET", "/openai/models?api-version=2024-10-21", ``, 200,
			func(t *testing.T, out []byte) {
				if gjson.GetBytes(out, "object").Str != "list" || gjson.GetBytes(out, "data.#").Int() != int64(len(mockupstream.DefaultModels)) {
					t.Errorf("answer %s", out)
				}
			}},
		{"unknown operation", "POST", "/openai/deployments/dep-1/images/generations?api-version=2024-10-21", `{}`, 404,
			func(t *testing.T, out []byte) {
				if gjson.GetBytes(out, "error.code").Str != "404" || gjson.GetBytes(out, "error.message").Str != "Resource not found" {
					t.Errorf("answer %s", out)
				}
			}},
		{"no deployment", "POST", "/openai/deployments/", `{}`, 404, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _, out := do(t, tc.method, srv.URL()+tc.path, hdr, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tc.wantStatus, out)
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
}

// TestAzureWithSDK drives the deployment path with the official client the
// way an Azure user without the azure helper package would.
func TestAzureWithSDK(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	client := openai.NewClient(
		option.WithBaseURL(srv.URL()+"/openai/deployments/dep-1/"),
		option.WithQuery("api-version", "2024-10-21"),
		option.WithHeaderDel("authorization"),
		option.WithHeader("api-key", "sk-test-az"),
		option.WithMaxRetries(0),
	)
	resp, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if err != nil {
		t.Fatal(err)
	}
	rec := last(t, srv)
	if resp.Model != "dep-1" || rec.Credential != "sk-test-az" || rec.AuthHeader != "api-key" || rec.RawQuery != "api-version=2024-10-21" ||
		rec.Header.Get("authorization") != "" {
		t.Errorf("model %q, recorded %+v", resp.Model, rec)
	}
}

func TestAnthropicMessages(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	url := srv.URL() + "/v1/messages"
	hdr := map[string]string{"x-api-key": "sk-ant-test-1", "anthropic-version": "2023-06-01", "content-type": "application/json"}
	const body = `{"model":"claude-sonnet-4-0","max_tokens":64,"system":"be brief","messages":[{"role":"user","content":"Hello, Claude"}]}`

	t.Run("message", func(t *testing.T) {
		status, h, out := do(t, "POST", url, hdr, body)
		if status != 200 {
			t.Fatalf("status %d: %s", status, out)
		}
		rec := last(t, srv)
		var m struct {
			ID         string `json:"id"`
			Type       string `json:"type"`
			Role       string `json:"role"`
			Model      string `json:"model"`
			StopReason string `json:"stop_reason"`
			Content    []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
			Usage struct {
				InputTokens  int `json:"input_tokens"`
				OutputTokens int `json:"output_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		reply := mockupstream.Reply("claude-sonnet-4-0", rec.Body)
		if m.Type != "message" || m.Role != "assistant" || m.Model != "claude-sonnet-4-0" || m.StopReason != "end_turn" ||
			!strings.HasPrefix(m.ID, "msg_") || len(m.Content) != 1 || m.Content[0].Type != "text" || m.Content[0].Text != reply {
			t.Errorf("message %+v", m)
		}
		// "be brief" (8) + "Hello, Claude" (13) = 21 bytes → 6 tokens.
		if m.Usage.InputTokens != 6 || m.Usage.OutputTokens != 7 {
			t.Errorf("usage %+v, want 6/7", m.Usage)
		}
		if rec.Credential != "sk-ant-test-1" || rec.AuthHeader != "x-api-key" || rec.Model != "claude-sonnet-4-0" {
			t.Errorf("recorded %+v", rec)
		}
		if h.Get("request-id") == "" || h.Get("anthropic-ratelimit-requests-limit") != "10000" {
			t.Errorf("headers %v", h)
		}
	})

	t.Run("stream", func(t *testing.T) {
		sbody := strings.Replace(body, `"max_tokens":64`, `"max_tokens":64,"stream":true`, 1)
		status, h, out := do(t, "POST", url, hdr, sbody)
		if status != 200 || h.Get("content-type") != "text/event-stream; charset=utf-8" {
			t.Fatalf("status %d content-type %q", status, h.Get("content-type"))
		}
		events := sseEvents(t, out)
		var names []string
		var text strings.Builder
		for _, ev := range events {
			lines := strings.Split(ev, "\n")
			name, ok1 := strings.CutPrefix(lines[0], "event: ")
			data, ok2 := strings.CutPrefix(lines[1], "data: ")
			if len(lines) != 2 || !ok1 || !ok2 || gjson.Get(data, "type").Str != name {
				t.Fatalf("event %q", ev)
			}
			names = append(names, name)
			if name == "content_block_delta" {
				text.WriteString(gjson.Get(data, "delta.text").Str)
			}
			if name == "message_delta" && gjson.Get(data, "usage.output_tokens").Int() != 7 {
				t.Errorf("message_delta %s", data)
			}
		}
		want := "message_start content_block_start ping" + strings.Repeat(" content_block_delta", 7) +
			" content_block_stop message_delta message_stop"
		if got := strings.Join(names, " "); got != want {
			t.Errorf("events %q\nwant   %q", got, want)
		}
		if got := text.String(); got != mockupstream.Reply("claude-sonnet-4-0", last(t, srv).Body) {
			t.Errorf("text %q", got)
		}
	})

	t.Run("cut stream", func(t *testing.T) {
		srv.Script("sk-ant-test-1", mockupstream.Behaviour{CutStreamAfter: 4})
		sbody := strings.Replace(body, `"max_tokens":64`, `"max_tokens":64,"stream":true`, 1)
		req, _ := http.NewRequestWithContext(t.Context(), "POST", url, strings.NewReader(sbody))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("the cut stream ended cleanly: %q", got)
		}
		if n := strings.Count(string(got), "\n\n"); n != 4 || !strings.Contains(string(got), "event: content_block_delta") {
			t.Errorf("%d events before the cut: %q", n, got)
		}
		if rec := last(t, srv); !rec.Cut {
			t.Error("not recorded as cut")
		}
	})

	errTests := []struct {
		name       string
		header     map[string]string
		body       string
		b          *mockupstream.Behaviour
		wantStatus int
		wantType   string
		wantHeader map[string]string
	}{
		{"no x-api-key", map[string]string{"anthropic-version": "2023-06-01"}, body, nil, 401, "authentication_error", nil},
		{"bearer is not x-api-key", map[string]string{"authorization": "Bearer sk-ant-test-1", "anthropic-version": "2023-06-01"}, body, nil,
			401, "authentication_error", nil},
		{"no anthropic-version", map[string]string{"x-api-key": "sk-ant-test-1"}, body, nil, 400, "invalid_request_error", nil},
		{"bad JSON", hdr, `{`, nil, 400, "invalid_request_error", nil},
		{"no max_tokens", hdr, `{"model":"claude-sonnet-4-0","messages":[]}`, nil, 400, "invalid_request_error", nil},
		{"no model", hdr, `{"max_tokens":5,"messages":[]}`, nil, 400, "invalid_request_error", nil},
		{"no messages", hdr, `{"model":"m","max_tokens":5}`, nil, 400, "invalid_request_error", nil},
		{"429", hdr, body, &mockupstream.Behaviour{Status: 429, RetryAfter: "7"}, 429, "rate_limit_error",
			map[string]string{"retry-after": "7", "anthropic-ratelimit-requests-remaining": "0"}},
		{"401", hdr, body, &mockupstream.Behaviour{Status: 401}, 401, "authentication_error", nil},
		{"403", hdr, body, &mockupstream.Behaviour{Status: 403}, 403, "permission_error", nil},
		{"500", hdr, body, &mockupstream.Behaviour{Status: 500}, 500, "api_error", nil},
		{"529", hdr, body, &mockupstream.Behaviour{Status: 529}, 529, "overloaded_error", nil},
		{"type override", hdr, body, &mockupstream.Behaviour{Status: 400, ErrorCode: "billing_error"}, 400, "billing_error", nil},
	}
	for _, tc := range errTests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.b != nil {
				srv.Script("sk-ant-test-1", *tc.b)
			}
			status, h, out := do(t, "POST", url, tc.header, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tc.wantStatus, out)
			}
			var e struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
			}
			dec := json.NewDecoder(strings.NewReader(string(out)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || e.Type != "error" || e.Error.Type != tc.wantType || e.Error.Message == "" {
				t.Errorf("error body %s (%v), want type %q", out, err, tc.wantType)
			}
			for k, v := range tc.wantHeader {
				if got := h.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestAnthropicOpenAICompatible: Anthropic's OpenAI-compatible endpoint is
// /v1/chat/completions with a Bearer key; the mock answers it as OpenAI.
func TestAnthropicOpenAICompatible(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	client := openai.NewClient(option.WithBaseURL(srv.URL()+"/v1/"), option.WithAPIKey("sk-ant-test-2"), option.WithMaxRetries(0))
	resp, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "claude-sonnet-4-0",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if err != nil {
		t.Fatal(err)
	}
	if rec := last(t, srv); resp.Model != "claude-sonnet-4-0" || rec.Credential != "sk-ant-test-2" || rec.AuthHeader != "authorization" {
		t.Errorf("model %q recorded %+v", resp.Model, rec)
	}
}

func TestTLS(t *testing.T) {
	srv := mockupstream.New(mockupstream.Options{})
	if err := srv.StartTLS("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	if err := srv.Start("127.0.0.1:0"); err != mockupstream.ErrStarted {
		t.Errorf("second start: %v", err)
	}
	if !strings.HasPrefix(srv.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %q", srv.URL())
	}
	tr := &http.Transport{TLSClientConfig: srv.ClientTLSConfig(), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	var raw *http.Response
	client := openai.NewClient(option.WithBaseURL(srv.URL()+"/v1/"), option.WithAPIKey("sk-test-tls"), option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Transport: tr}))
	if _, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, option.WithResponseInto(&raw)); err != nil {
		t.Fatal(err)
	}
	if raw.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2 by ALPN", raw.Proto)
	}
	// Without the pool the certificate is refused.
	if _, err := http.Get(srv.URL() + "/v1/models"); err == nil {
		t.Error("an untrusted client accepted the self-signed certificate")
	}
	if last(t, srv).Credential != "sk-test-tls" {
		t.Error("credential not recorded")
	}
}
