package mockupstream_test

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/examples/mockupstream"
)

func TestChatCompletion(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	tests := []struct {
		name       string
		params     openai.ChatCompletionNewParams
		wantFinish string
		wantWords  int // completion tokens
	}{
		{
			name: "one user message",
			params: openai.ChatCompletionNewParams{Model: "gpt-4",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")}},
			wantFinish: "stop", wantWords: 7,
		},
		{
			name: "system and user",
			params: openai.ChatCompletionNewParams{Model: "gpt-4o-mini",
				Messages: []openai.ChatCompletionMessageParamUnion{
					openai.SystemMessage("You are terse."), openai.UserMessage("Count to three, please."),
				}},
			wantFinish: "stop", wantWords: 7,
		},
		{
			name: "max_completion_tokens truncates",
			params: openai.ChatCompletionNewParams{Model: "gpt-4", MaxCompletionTokens: openai.Int(3),
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")}},
			wantFinish: "length", wantWords: 3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var raw *http.Response
			client := sdk(srv, "sk-test-k1")
			resp, err := client.Chat.Completions.New(t.Context(), tc.params, option.WithResponseInto(&raw))
			if err != nil {
				t.Fatalf("chat: %v", err)
			}
			rec := last(t, srv)
			model := string(tc.params.Model)
			full := mockupstream.Reply(model, rec.Body)
			want := strings.Join(strings.Fields(full)[:tc.wantWords], " ")
			if got := resp.Choices[0].Message.Content; got != want {
				t.Errorf("content = %q, want %q", got, want)
			}
			if resp.Object != "chat.completion" || resp.Model != model || !strings.HasPrefix(resp.ID, "chatcmpl-") {
				t.Errorf("object %q model %q id %q", resp.Object, resp.Model, resp.ID)
			}
			if resp.Choices[0].Message.Role != "assistant" || resp.Choices[0].FinishReason != tc.wantFinish {
				t.Errorf("role %q finish %q, want assistant %q", resp.Choices[0].Message.Role, resp.Choices[0].FinishReason, tc.wantFinish)
			}
			wantPrompt := int64(mockupstream.PromptTokens(rec.Body))
			if wantPrompt == 0 {
				t.Fatal("prompt tokens 0: the test input is wrong")
			}
			u := resp.Usage
			if u.PromptTokens != wantPrompt || u.CompletionTokens != int64(tc.wantWords) || u.TotalTokens != wantPrompt+int64(tc.wantWords) {
				t.Errorf("usage = %d/%d/%d, want %d/%d/%d", u.PromptTokens, u.CompletionTokens, u.TotalTokens,
					wantPrompt, tc.wantWords, wantPrompt+int64(tc.wantWords))
			}
			if rec.Method != "POST" || rec.Path != "/v1/chat/completions" || rec.Credential != "sk-test-k1" ||
				rec.AuthHeader != "authorization" || rec.AuthValue != "Bearer sk-test-k1" ||
				rec.Model != model || rec.BodyModel != model || rec.Stream || rec.Status != 200 || rec.Cut ||
				rec.ContentLength != int64(len(rec.Body)) {
				t.Errorf("recorded %+v", rec)
			}
			if rec.Host != strings.TrimPrefix(srv.URL(), "http://") {
				t.Errorf("host = %q", rec.Host)
			}
			if got := raw.Header.Get("x-request-id"); got != "req_mock"+pad(rec.Seq) {
				t.Errorf("x-request-id = %q", got)
			}
			if got := raw.Header.Get("x-ratelimit-limit-requests"); got != "10000" {
				t.Errorf("x-ratelimit-limit-requests = %q", got)
			}
		})
	}
}

func pad(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", 6-len(s)) + s
}

func TestPromptTokensAndReply(t *testing.T) {
	tests := []struct {
		body string
		want int
	}{
		{`{"messages":[{"role":"user","content":"abcd"}]}`, 1},
		{`{"messages":[{"role":"user","content":"abcde"}]}`, 2},
		{`{"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]},{"role":"assistant","content":"x"}]}`, 3},
		{`{"system":"abcd","messages":[{"role":"user","content":"abcd"}]}`, 2},
		{`{"input":["abcd","ef"]}`, 2},
		{`{"input":[1,2,3]}`, 3},
		{`{"input":[[1,2],[3]]}`, 3},
		{`{}`, 0},
		{`not json`, 0},
	}
	for _, tc := range tests {
		if got := mockupstream.PromptTokens([]byte(tc.body)); got != tc.want {
			t.Errorf("PromptTokens(%s) = %d, want %d", tc.body, got, tc.want)
		}
	}
	a := mockupstream.Reply("gpt-4", []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`))
	b := mockupstream.Reply("gpt-4", []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
	c := mockupstream.Reply("gpt-4", []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"ho"}]}`))
	if a != b || a == c || !strings.HasPrefix(a, "Hello from mock (model gpt-4, prompt ") {
		t.Errorf("Reply: %q %q %q", a, b, c)
	}
	if n := mockupstream.CompletionTokens(a); n != 7 {
		t.Errorf("CompletionTokens(%q) = %d", a, n)
	}
}

func TestChatCompletionStream(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	for _, includeUsage := range []bool{true, false} {
		t.Run("include_usage="+strconv.FormatBool(includeUsage), func(t *testing.T) {
			params := openai.ChatCompletionNewParams{
				Model:    "gpt-4o-mini",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Stream me a greeting")},
			}
			if includeUsage {
				params.StreamOptions.IncludeUsage = openai.Bool(true)
			}
			client := sdk(srv, "sk-test-k2")
			stream := client.Chat.Completions.NewStreaming(t.Context(), params)
			var acc openai.ChatCompletionAccumulator
			chunks := 0
			for stream.Next() {
				chunk := stream.Current()
				if !acc.AddChunk(chunk) {
					t.Fatalf("accumulator rejected chunk %d", chunks)
				}
				if chunk.Object != "chat.completion.chunk" {
					t.Errorf("chunk object = %q", chunk.Object)
				}
				chunks++
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("stream: %v", err)
			}
			rec := last(t, srv)
			reply := mockupstream.Reply("gpt-4o-mini", rec.Body)
			words := mockupstream.CompletionTokens(reply)
			wantChunks := 1 + words + 1 // role, one per word, finish
			if includeUsage {
				wantChunks++
			}
			if chunks != wantChunks {
				t.Errorf("chunks = %d, want %d", chunks, wantChunks)
			}
			if got := acc.Choices[0].Message.Content; got != reply {
				t.Errorf("content = %q, want %q", got, reply)
			}
			if acc.Choices[0].FinishReason != "stop" {
				t.Errorf("finish = %q", acc.Choices[0].FinishReason)
			}
			prompt := int64(mockupstream.PromptTokens(rec.Body))
			want := openai.CompletionUsage{}
			if includeUsage {
				want = openai.CompletionUsage{PromptTokens: prompt, CompletionTokens: int64(words), TotalTokens: prompt + int64(words)}
			}
			u := acc.Usage
			if u.PromptTokens != want.PromptTokens || u.CompletionTokens != want.CompletionTokens || u.TotalTokens != want.TotalTokens {
				t.Errorf("usage = %d/%d/%d, want %d/%d/%d", u.PromptTokens, u.CompletionTokens, u.TotalTokens,
					want.PromptTokens, want.CompletionTokens, want.TotalTokens)
			}
			if !rec.Stream || rec.Status != 200 || rec.Cut || rec.Credential != "sk-test-k2" {
				t.Errorf("recorded stream=%v status=%d cut=%v credential=%q", rec.Stream, rec.Status, rec.Cut, rec.Credential)
			}
		})
	}
}

func TestEmbeddings(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	tests := []struct {
		name   string
		input  openai.EmbeddingNewParamsInputUnion
		dims   int64
		texts  []string
		tokens int64
	}{
		{"one string", openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hello world")}, 0,
			[]string{"hello world"}, 3},
		{"strings with dimensions", openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "bcdef"}}, 16,
			[]string{"a", "bcdef"}, 2},
		{"token array", openai.EmbeddingNewParamsInputUnion{OfArrayOfTokens: []int64{1, 2, 3}}, 0,
			[]string{"[1,2,3]"}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			params := openai.EmbeddingNewParams{Model: openai.EmbeddingModelTextEmbedding3Small, Input: tc.input,
				EncodingFormat: openai.EmbeddingNewParamsEncodingFormatFloat}
			dims := mockupstream.DefaultEmbeddingDims
			if tc.dims > 0 {
				params.Dimensions = openai.Int(tc.dims)
				dims = int(tc.dims)
			}
			client := sdk(srv, "sk-test-k1")
			resp, err := client.Embeddings.New(t.Context(), params)
			if err != nil {
				t.Fatalf("embeddings: %v", err)
			}
			if len(resp.Data) != len(tc.texts) {
				t.Fatalf("data = %d items, want %d", len(resp.Data), len(tc.texts))
			}
			for i, d := range resp.Data {
				want := mockupstream.Embedding(tc.texts[i], dims)
				if d.Index != int64(i) || !slices.Equal(d.Embedding, want) {
					t.Errorf("item %d: index %d vector %v, want %v", i, d.Index, d.Embedding, want)
				}
			}
			if resp.Model != "text-embedding-3-small" || resp.Usage.PromptTokens != tc.tokens || resp.Usage.TotalTokens != tc.tokens {
				t.Errorf("model %q usage %d/%d, want %d", resp.Model, resp.Usage.PromptTokens, resp.Usage.TotalTokens, tc.tokens)
			}
			if rec := last(t, srv); rec.Path != "/v1/embeddings" || rec.Model != "text-embedding-3-small" {
				t.Errorf("recorded %s %q", rec.Path, rec.Model)
			}
		})
	}
	a, b := mockupstream.Embedding("x", 8), mockupstream.Embedding("y", 8)
	if slices.Equal(a, b) {
		t.Error("different inputs gave equal vectors")
	}
	var norm float64
	for _, x := range a {
		norm += x * x
	}
	if norm < 0.999999 || norm > 1.000001 {
		t.Errorf("norm² = %v, want 1", norm)
	}
}

func TestModelsList(t *testing.T) {
	tests := []struct {
		name   string
		models []string
		want   []string
	}{
		{"default", nil, mockupstream.DefaultModels},
		{"custom", []string{"m-a", "m-b"}, []string{"m-a", "m-b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startMock(t, mockupstream.Options{Models: tc.models})
			client := sdk(srv, "sk-test-k1")
			page, err := client.Models.List(t.Context())
			if err != nil {
				t.Fatalf("models: %v", err)
			}
			var got []string
			for _, m := range page.Data {
				if m.Object != "model" || m.OwnedBy == "" {
					t.Errorf("model %+v", m)
				}
				got = append(got, m.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("models = %v, want %v", got, tc.want)
			}
			if rec := last(t, srv); rec.Method != "GET" || rec.Path != "/v1/models" || rec.Status != 200 {
				t.Errorf("recorded %s %s %d", rec.Method, rec.Path, rec.Status)
			}
		})
	}
}

func TestErrorBehaviours(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	tests := []struct {
		name       string
		b          mockupstream.Behaviour
		wantStatus int
		wantType   string
		wantCode   string
		wantHeader map[string]string
	}{
		{"429 rate limit", mockupstream.Behaviour{Status: 429, RetryAfter: "2"}, 429, "requests", "rate_limit_exceeded",
			map[string]string{"retry-after": "2", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}},
		{"429 without retry-after", mockupstream.Behaviour{Status: 429}, 429, "requests", "rate_limit_exceeded",
			map[string]string{"retry-after": "", "x-ratelimit-remaining-requests": "0"}},
		{"429 http-date retry-after", mockupstream.Behaviour{Status: 429, RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"}, 429,
			"requests", "rate_limit_exceeded", map[string]string{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}},
		{"429 insufficient quota", mockupstream.Behaviour{Status: 429, ErrorCode: "insufficient_quota"}, 429,
			"insufficient_quota", "insufficient_quota", nil},
		{"401 invalid key", mockupstream.Behaviour{Status: 401}, 401, "invalid_request_error", "invalid_api_key", nil},
		{"403 forbidden", mockupstream.Behaviour{Status: 403}, 403, "request_forbidden", "unsupported_country_region_territory", nil},
		{"500 server error", mockupstream.Behaviour{Status: 500}, 500, "server_error", "", nil},
		{"503 overloaded", mockupstream.Behaviour{Status: 503}, 503, "server_error", "", nil},
		{"502 other", mockupstream.Behaviour{Status: 502}, 502, "server_error", "", nil},
		{"custom headers", mockupstream.Behaviour{Status: 500, Headers: map[string]string{"x-custom": "v1"}}, 500,
			"server_error", "", map[string]string{"x-custom": "v1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv.Script("sk-test-err", tc.b)
			client := sdk(srv, "sk-test-err")
			_, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != tc.wantStatus || apiErr.Type != tc.wantType || apiErr.Code != tc.wantCode || apiErr.Message == "" {
				t.Errorf("error = %d type %q code %q message %q, want %d %q %q", apiErr.StatusCode, apiErr.Type, apiErr.Code,
					apiErr.Message, tc.wantStatus, tc.wantType, tc.wantCode)
			}
			if strings.Contains(apiErr.RawJSON(), "sk-test-err") {
				t.Error("the error body carries the credential")
			}
			for k, v := range tc.wantHeader {
				if got := apiErr.Response.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if rec := last(t, srv); rec.Status != tc.wantStatus {
				t.Errorf("recorded status %d", rec.Status)
			}
			// The script is used up: the next request is answered normally.
			if _, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}); err != nil {
				t.Errorf("request after the script: %v", err)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	srv := startMock(t, mockupstream.Options{Keys: []string{"sk-test-k1"}, StrictModels: true})
	auth := map[string]string{"authorization": "Bearer sk-test-k1", "content-type": "application/json"}
	chat := srv.URL() + "/v1/chat/completions"
	tests := []struct {
		name       string
		method     string
		url        string
		header     map[string]string
		body       string
		wantStatus int
		wantType   string
		wantCode   string // "" = null
		wantParam  string // "" = null
	}{
		{"bad JSON", "POST", chat, auth, `{"model":`, 400, "invalid_request_error", "", ""},
		{"not an object", "POST", chat, auth, `[1,2]`, 400, "invalid_request_error", "", ""},
		{"missing model", "POST", chat, auth, `{"messages":[]}`, 400, "invalid_request_error", "", ""},
		{"model not a string", "POST", chat, auth, `{"model":4,"messages":[]}`, 400, "invalid_request_error", "invalid_type", "model"},
		{"missing messages", "POST", chat, auth, `{"model":"gpt-4"}`, 400, "invalid_request_error", "missing_required_parameter", "messages"},
		{"messages not an array", "POST", chat, auth, `{"model":"gpt-4","messages":"x"}`, 400, "invalid_request_error", "invalid_type", "messages"},
		{"stream not a boolean", "POST", chat, auth, `{"model":"gpt-4","messages":[],"stream":"yes"}`, 400, "invalid_request_error", "invalid_type", "stream"},
		{"unknown model (strict)", "POST", chat, auth, `{"model":"gpt-9","messages":[]}`, 404, "invalid_request_error", "model_not_found", ""},
		{"embeddings without input", "POST", srv.URL() + "/v1/embeddings", auth, `{"model":"text-embedding-3-small"}`, 400,
			"invalid_request_error", "missing_required_parameter", "input"},
		{"embeddings bad dimensions", "POST", srv.URL() + "/v1/embeddings", auth,
			`{"model":"text-embedding-3-small","input":"x","dimensions":0}`, 400, "invalid_request_error", "", "dimensions"},
		{"no credential", "POST", chat, map[string]string{"content-type": "application/json"}, `{"model":"gpt-4","messages":[]}`,
			401, "invalid_request_error", "invalid_api_key", ""},
		{"basic auth is no credential", "POST", chat, map[string]string{"authorization": "Basic dXNlcjpwYXNz"}, `{}`,
			401, "invalid_request_error", "invalid_api_key", ""},
		{"key not in allow-list", "POST", chat, map[string]string{"authorization": "Bearer sk-test-other"}, `{"model":"gpt-4","messages":[]}`,
			401, "invalid_request_error", "invalid_api_key", ""},
		{"unknown path", "POST", srv.URL() + "/v1/nothing", auth, `{}`, 404, "invalid_request_error", "", ""},
		{"wrong method", "GET", chat, auth, ``, 405, "invalid_request_error", "", ""},
		{"models by POST", "POST", srv.URL() + "/v1/models", auth, `{}`, 405, "invalid_request_error", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, hdr, body := do(t, tc.method, tc.url, tc.header, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", status, tc.wantStatus, body)
			}
			if ct := hdr.Get("content-type"); ct != "application/json" {
				t.Errorf("content-type = %q", ct)
			}
			e := decodeError(t, body)
			wantCode, wantParam := "null", "null"
			if tc.wantCode != "" {
				wantCode = strconv.Quote(tc.wantCode)
			}
			if tc.wantParam != "" {
				wantParam = strconv.Quote(tc.wantParam)
			}
			if e.Error.Type != tc.wantType || string(e.Error.Code) != wantCode || string(e.Error.Param) != wantParam || e.Error.Message == "" {
				t.Errorf("error = type %q code %s param %s message %q, want %q %s %s", e.Error.Type, e.Error.Code, e.Error.Param,
					e.Error.Message, tc.wantType, wantCode, wantParam)
			}
			if strings.Contains(string(body), "sk-test") {
				t.Error("the error body carries a credential")
			}
		})
	}
	// Every request, good or bad, is recorded with the status answered.
	reqs := srv.Requests()
	if len(reqs) != len(tests) {
		t.Fatalf("recorded %d requests, want %d", len(reqs), len(tests))
	}
	for i, r := range reqs {
		if r.Seq != i+1 || r.Status != tests[i].wantStatus {
			t.Errorf("record %d: seq %d status %d, want %d", i, r.Seq, r.Status, tests[i].wantStatus)
		}
	}
	if got := gjson.GetBytes(reqs[4].Body, "model").Str; got != "gpt-4" || reqs[4].Model != "gpt-4" {
		t.Errorf("recorded body model %q model %q", got, reqs[4].Model)
	}
}
