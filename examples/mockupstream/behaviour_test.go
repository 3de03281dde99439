package mockupstream_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/keymux/keymux/examples/mockupstream"
)

const chatBody = `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`

func chatAs(t *testing.T, srv *mockupstream.Server, key string) int {
	t.Helper()
	status, _, _ := do(t, "POST", srv.URL()+"/v1/chat/completions", map[string]string{"authorization": "Bearer " + key}, chatBody)
	return status
}

func TestScriptAndDefault(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	srv.Script("sk-test-a", mockupstream.Behaviour{Status: 429}, mockupstream.Behaviour{Status: 500})
	srv.Script("sk-test-a", mockupstream.Behaviour{Status: 503})
	srv.SetDefault("sk-test-b", mockupstream.Behaviour{Status: 401})
	srv.Script("", mockupstream.Behaviour{Status: 403})

	steps := []struct {
		key  string
		want int
	}{
		{"sk-test-a", 429}, // a's script, in order
		{"sk-test-b", 403}, // b has no script: the shared one, once
		{"sk-test-a", 500},
		{"sk-test-b", 401}, // b's sticky default
		{"sk-test-a", 503},
		{"sk-test-a", 200}, // a's script used up, no default
		{"sk-test-b", 401},
		{"sk-test-c", 200},
	}
	for i, s := range steps {
		if got := chatAs(t, srv, s.key); got != s.want {
			t.Errorf("step %d (%s): status %d, want %d", i, s.key, got, s.want)
		}
	}

	srv.SetDefault("", mockupstream.Behaviour{Status: 500})
	srv.SetDefault("sk-test-b", mockupstream.Behaviour{})
	if got := chatAs(t, srv, "sk-test-c"); got != 500 {
		t.Errorf("global default: %d, want 500", got)
	}
	if got := chatAs(t, srv, "sk-test-b"); got != 200 {
		t.Errorf("own default restored to OK: %d, want 200", got)
	}

	srv.Script("sk-test-a", mockupstream.Behaviour{Status: 429})
	srv.Reset()
	if n := len(srv.Requests()); n != 0 {
		t.Errorf("after Reset: %d requests", n)
	}
	for _, key := range []string{"sk-test-a", "sk-test-c"} {
		if got := chatAs(t, srv, key); got != 200 {
			t.Errorf("after Reset %s: %d, want 200", key, got)
		}
	}
	if reqs := srv.Requests(); len(reqs) != 2 || reqs[0].Seq != 1 || reqs[1].Seq != 2 {
		t.Errorf("after Reset: %+v", reqs)
	}
}

func TestBodyOverride(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	srv.Script("sk-test-k1", mockupstream.Behaviour{Body: `{"not":"openai"`, Status: 502})
	status, hdr, body := do(t, "POST", srv.URL()+"/v1/chat/completions", map[string]string{"authorization": "Bearer sk-test-k1"}, chatBody)
	if status != 502 || string(body) != `{"not":"openai"` || hdr.Get("content-type") != "application/json" {
		t.Errorf("status %d body %q", status, body)
	}
	// A content-type in Headers stays: a scripted raw stream.
	srv.Script("sk-test-k1", mockupstream.Behaviour{Body: "data: {}\n\n", Headers: map[string]string{"content-type": "text/event-stream"}})
	status, hdr, body = do(t, "POST", srv.URL()+"/v1/chat/completions", map[string]string{"authorization": "Bearer sk-test-k1"}, chatBody)
	if status != 200 || string(body) != "data: {}\n\n" || hdr.Get("content-type") != "text/event-stream" {
		t.Errorf("raw stream: status %d body %q content-type %q", status, body, hdr.Get("content-type"))
	}
	srv.Script("sk-test-k1", mockupstream.Behaviour{Content: "one two"})
	client := sdk(srv, "sk-test-k1")
	resp, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Choices[0].Message.Content != "one two" || resp.Usage.CompletionTokens != 2 {
		t.Errorf("content %q completion tokens %d", resp.Choices[0].Message.Content, resp.Usage.CompletionTokens)
	}
}

func TestDelay(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})

	t.Run("answers after the delay", func(t *testing.T) {
		srv.Script("sk-test-slow", mockupstream.Behaviour{Delay: 50 * time.Millisecond})
		start := time.Now()
		if got := chatAs(t, srv, "sk-test-slow"); got != 200 {
			t.Fatalf("status %d", got)
		}
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("answered after %v, before the 50ms delay", d)
		}
	})

	t.Run("client cancellation ends the delay", func(t *testing.T) {
		srv.Reset()
		srv.Script("sk-test-slow", mockupstream.Behaviour{Delay: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			client := sdk(srv, "sk-test-slow")
			_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
			errc <- err
		}()
		if _, err := srv.WaitRequests(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("client error = %v, want context.Canceled", err)
		}
		// The handler gives up without answering: its record has no status.
		if rec := last(t, srv); rec.Status != 0 || rec.Credential != "sk-test-slow" {
			t.Errorf("recorded status %d credential %q", rec.Status, rec.Credential)
		}
	})

	t.Run("Close ends the delay", func(t *testing.T) {
		srv := startMock(t, mockupstream.Options{})
		srv.SetDefault("", mockupstream.Behaviour{Delay: time.Hour})
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(t.Context(), "POST", srv.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
			req.Header.Set("authorization", "Bearer sk-test-k1")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		if _, err := srv.WaitRequests(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-errc; err == nil {
			t.Error("the client got an answer from a closed server")
		}
	})
}

func TestCutStream(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	for _, n := range []int{1, 3, 5} {
		t.Run(fmt.Sprintf("after %d events", n), func(t *testing.T) {
			srv.Script("sk-test-cut", mockupstream.Behaviour{CutStreamAfter: n})
			client := sdk(srv, "sk-test-cut")
			params := openai.ChatCompletionNewParams{Model: "gpt-4",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
			params.StreamOptions.IncludeUsage = openai.Bool(true)
			stream := client.Chat.Completions.NewStreaming(t.Context(), params)
			got := 0
			for stream.Next() {
				got++
			}
			if stream.Err() == nil {
				t.Fatal("the SDK saw a cut stream end cleanly")
			}
			if got != n {
				t.Errorf("chunks before the cut = %d, want %d", got, n)
			}
			if rec := last(t, srv); !rec.Cut || rec.Status != 200 {
				t.Errorf("recorded cut=%v status=%d", rec.Cut, rec.Status)
			}
		})
	}
	t.Run("beyond the stream length", func(t *testing.T) {
		srv.Script("sk-test-cut", mockupstream.Behaviour{CutStreamAfter: 1000})
		client := sdk(srv, "sk-test-cut")
		stream := client.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		for stream.Next() {
		}
		if err := stream.Err(); err != nil {
			t.Errorf("stream: %v", err)
		}
		if rec := last(t, srv); rec.Cut {
			t.Error("recorded a cut")
		}
	})
	t.Run("non-stream answer", func(t *testing.T) {
		srv.Script("sk-test-cut", mockupstream.Behaviour{CutStreamAfter: 1})
		client := sdk(srv, "sk-test-cut")
		_, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "gpt-4",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		var apiErr *openai.Error
		if err == nil || errors.As(err, &apiErr) {
			t.Errorf("err = %v, want a transport error", err)
		}
		if rec := last(t, srv); !rec.Cut {
			t.Error("not recorded as cut")
		}
	})
}

// sseEvents splits a raw SSE body into events, failing on bad framing.
func sseEvents(t *testing.T, raw []byte) []string {
	t.Helper()
	if !bytes.HasSuffix(raw, []byte("\n\n")) {
		t.Fatalf("body does not end with a blank line: %q", raw)
	}
	parts := strings.Split(strings.TrimSuffix(string(raw), "\n\n"), "\n\n")
	for i, p := range parts {
		if p == "" || strings.Contains(p, "\r") {
			t.Fatalf("event %d is empty or has CR: %q", i, p)
		}
	}
	return parts
}

func TestSSEFraming(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	tests := []struct {
		name         string
		includeUsage bool
		maxTokens    int
	}{
		{"with usage", true, 0},
		{"without usage", false, 0},
		{"truncated with usage", true, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":%v},"messages":[{"role":"user","content":"frame me"}]`, tc.includeUsage)
			if tc.maxTokens > 0 {
				body += fmt.Sprintf(`,"max_tokens":%d`, tc.maxTokens)
			}
			body += "}"
			status, hdr, raw := do(t, "POST", srv.URL()+"/v1/chat/completions", map[string]string{"authorization": "Bearer sk-test-k1"}, body)
			if status != 200 || hdr.Get("content-type") != "text/event-stream; charset=utf-8" || hdr.Get("content-length") != "" {
				t.Fatalf("status %d content-type %q content-length %q", status, hdr.Get("content-type"), hdr.Get("content-length"))
			}
			events := sseEvents(t, raw)
			if events[len(events)-1] != "data: [DONE]" {
				t.Fatalf("last event = %q", events[len(events)-1])
			}
			type chunk struct {
				ID      string `json:"id"`
				Object  string `json:"object"`
				Model   string `json:"model"`
				Choices []struct {
					Index int `json:"index"`
					Delta struct {
						Role    *string `json:"role"`
						Content *string `json:"content"`
					} `json:"delta"`
					FinishReason *string `json:"finish_reason"`
				} `json:"choices"`
				Usage *struct {
					PromptTokens     int `json:"prompt_tokens"`
					CompletionTokens int `json:"completion_tokens"`
					TotalTokens      int `json:"total_tokens"`
				} `json:"usage"`
			}
			var chunks []chunk
			var rawUsage []json.RawMessage
			for i, ev := range events[:len(events)-1] {
				data, ok := strings.CutPrefix(ev, "data: ")
				if !ok || strings.Contains(data, "\n") {
					t.Fatalf("event %d is not one data line: %q", i, ev)
				}
				var c chunk
				if err := json.Unmarshal([]byte(data), &c); err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				var u struct {
					Usage json.RawMessage `json:"usage"`
				}
				_ = json.Unmarshal([]byte(data), &u)
				rawUsage = append(rawUsage, u.Usage)
				if c.Object != "chat.completion.chunk" || c.Model != "gpt-4o" || c.ID != "chatcmpl-mock"+pad(last(t, srv).Seq) {
					t.Errorf("event %d: object %q model %q id %q", i, c.Object, c.Model, c.ID)
				}
				chunks = append(chunks, c)
			}
			rec := last(t, srv)
			reply := mockupstream.Reply("gpt-4o", rec.Body)
			words := strings.Fields(reply)
			if tc.maxTokens > 0 {
				words = words[:tc.maxTokens]
			}
			want := 1 + len(words) + 1
			if tc.includeUsage {
				want++
			}
			if len(chunks) != want {
				t.Fatalf("%d chunks, want %d", len(chunks), want)
			}
			first := chunks[0].Choices[0]
			if first.Delta.Role == nil || *first.Delta.Role != "assistant" || first.Delta.Content == nil || *first.Delta.Content != "" || first.FinishReason != nil {
				t.Errorf("first chunk %+v", first)
			}
			var content strings.Builder
			for i, c := range chunks[1 : 1+len(words)] {
				ch := c.Choices[0]
				if ch.Delta.Role != nil || ch.Delta.Content == nil || ch.FinishReason != nil {
					t.Errorf("content chunk %d: %+v", i, ch)
					continue
				}
				content.WriteString(*ch.Delta.Content)
			}
			if got := content.String(); got != strings.Join(words, " ") {
				t.Errorf("content = %q, want %q", got, strings.Join(words, " "))
			}
			fin := chunks[1+len(words)].Choices[0]
			wantFinish := "stop"
			if tc.maxTokens > 0 {
				wantFinish = "length"
			}
			if fin.FinishReason == nil || *fin.FinishReason != wantFinish || fin.Delta.Content != nil || fin.Delta.Role != nil {
				t.Errorf("finish chunk %+v", fin)
			}
			if tc.includeUsage {
				u := chunks[len(chunks)-1]
				prompt := mockupstream.PromptTokens(rec.Body)
				if len(u.Choices) != 0 || u.Usage == nil || u.Usage.PromptTokens != prompt ||
					u.Usage.CompletionTokens != len(words) || u.Usage.TotalTokens != prompt+len(words) {
					t.Errorf("usage chunk %+v", u)
				}
				for i, ru := range rawUsage[:len(rawUsage)-1] {
					if string(ru) != "null" {
						t.Errorf("chunk %d usage = %s, want null", i, ru)
					}
				}
			} else {
				for i, ru := range rawUsage {
					if ru != nil {
						t.Errorf("chunk %d has usage %s without include_usage", i, ru)
					}
				}
			}
		})
	}
}

// TestSSEFlushedPerEvent reads the first event while the mock holds the
// second back: it only arrives if the mock flushed it.
func TestSSEFlushedPerEvent(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	srv.Script("sk-test-k1", mockupstream.Behaviour{ChunkDelay: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", srv.URL()+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4","stream":true,"messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("authorization", "Bearer sk-test-k1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("first event line: %v", err)
	}
	if !strings.HasPrefix(line, `data: {"id":"chatcmpl-`) || !strings.Contains(line, `"role":"assistant"`) {
		t.Errorf("first line %q", line)
	}
	if blank, err := br.ReadString('\n'); err != nil || blank != "\n" {
		t.Errorf("event terminator %q, %v", blank, err)
	}
	cancel()
	if _, err := io.ReadAll(br); err == nil {
		t.Error("the body ended cleanly although the request was cancelled mid-stream")
	}
}

func TestConcurrentRecording(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	const n, keys = 40, 4
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("sk-test-k%d", i%keys)
			req, _ := http.NewRequestWithContext(t.Context(), "POST", srv.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
			req.Header.Set("authorization", "Bearer "+key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		})
	}
	reqs, err := srv.WaitRequests(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	reqs = srv.Requests()
	per := map[string]int{}
	for i, r := range reqs {
		if r.Seq != i+1 {
			t.Errorf("record %d has seq %d", i, r.Seq)
		}
		per[r.Credential]++
	}
	for k := range keys {
		if got := per[fmt.Sprintf("sk-test-k%d", k)]; got != n/keys {
			t.Errorf("key %d: %d requests, want %d", k, got, n/keys)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	if _, err := srv.WaitRequests(ctx, n+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitRequests beyond the count: %v", err)
	}
}

// TestShortBody: a body shorter than its Content-Length (what a proxy that
// patches a body without fixing the length sends) is answered 400 and
// recorded with the announced length.
func TestShortBody(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	conn, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: upstream.test\r\nAuthorization: Bearer sk-test-k1\r\nContent-Length: %d\r\n\r\n%s",
		len(chatBody)+10, chatBody)
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
	rec := last(t, srv)
	if rec.ContentLength != int64(len(chatBody)+10) || string(rec.Body) != chatBody || rec.Host != "upstream.test" || rec.Status != 400 {
		t.Errorf("recorded content-length %d body %q host %q status %d", rec.ContentLength, rec.Body, rec.Host, rec.Status)
	}
}

func TestBehaviourPathLimitsWhereItApplies(t *testing.T) {
	s := mockupstream.New(mockupstream.Options{})
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetDefault("sk-test-a", mockupstream.Behaviour{Status: 500, Path: "/chat/completions"})
	s.Script("sk-test-a", mockupstream.Behaviour{Status: 429, Path: "/chat/completions"})
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, s.URL()+path, strings.NewReader(body))
		req.Header.Set("authorization", "Bearer sk-test-a")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	chat := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/models", "", 200},              // the script waits for its path
		{"POST", "/v1/chat/completions", chat, 429}, // the script
		{"GET", "/v1/models", "", 200},              // the default is for chat only
		{"POST", "/v1/chat/completions", chat, 500}, // the default
		{"POST", "/v1/embeddings", `{"model":"m","input":"x"}`, 200},
	} {
		if got := do(tc.method, tc.path, tc.body); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, got, tc.want)
		}
	}
}

// TestReset: a Reset script closes the connection before any byte of an
// answer; the client sees the connection end, and the next request of the
// key is answered normally.
func TestReset(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	srv.Script("sk-test-reset", mockupstream.Behaviour{Reset: true})
	req, err := http.NewRequestWithContext(t.Context(), "POST", srv.URL()+"/v1/chat/completions", strings.NewReader(chatBody))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("authorization", "Bearer sk-test-reset")
	// A fresh connection each time: the transport must not retry it on another.
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatalf("status %d, want the connection closed before an answer", resp.StatusCode)
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "EOF") {
		t.Errorf("err = %v, want the connection ended (EOF)", err)
	}
	if rec := last(t, srv); rec.Status != 0 || !rec.Cut || rec.Credential != "sk-test-reset" {
		t.Errorf("record: status %d cut %v credential %s, want 0, true, sk-test-reset", rec.Status, rec.Cut, rec.Credential)
	}
	if got := chatAs(t, srv, "sk-test-reset"); got != 200 {
		t.Errorf("next request: status %d, want 200", got)
	}
}

// Behaviour.Model limits a behaviour to one model, and the rate-limit
// headers count each (credential, model) apart, as providers do; scripted
// headers replace them.
func TestBehaviourModelAndPerModelHeadroom(t *testing.T) {
	s := mockupstream.New(mockupstream.Options{})
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetDefault("sk-test-a", mockupstream.Behaviour{Model: "gpt-4o", Headers: map[string]string{
		"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}})
	s.Script("sk-test-a", mockupstream.Behaviour{Status: 429, Model: "gpt-4o-mini"})
	chat := func(model string) (int, http.Header) {
		req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("authorization", "Bearer sk-test-a")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	for _, tc := range []struct {
		model     string
		status    int
		remaining string
		reset     string
	}{
		{"gpt-4", 200, "9999", "6ms"},       // neither behaviour: the first gpt-4 request
		{"gpt-4o", 200, "0", "20s"},         // the default's headers
		{"gpt-4", 200, "9998", "6ms"},       // gpt-4's own count
		{"gpt-4o-mini", 429, "0", "1s"},     // the script waited for its model
		{"gpt-4o-mini", 200, "9998", "6ms"}, // its second request
	} {
		st, h := chat(tc.model)
		if st != tc.status || h.Get("x-ratelimit-remaining-requests") != tc.remaining || h.Get("x-ratelimit-reset-requests") != tc.reset {
			t.Errorf("%s: %d remaining %q reset %q, want %d %q %q", tc.model, st, h.Get("x-ratelimit-remaining-requests"),
				h.Get("x-ratelimit-reset-requests"), tc.status, tc.remaining, tc.reset)
		}
	}
}
