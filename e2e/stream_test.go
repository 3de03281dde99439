package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/wait"
)

func TestStreamingThroughTheSDK(t *testing.T) {
	g := startGateway(t, threeKeys)
	// Each event after the first is held back, so incremental delivery is
	// visible: the first delta must reach the client well before the last.
	const gap = 150 * time.Millisecond
	for _, k := range []string{"sk-test-k1", "sk-test-k2", "sk-test-k3"} {
		g.mock.SetDefault(k, mockupstream.Behaviour{ChunkDelay: gap})
	}
	c := g.client("x")
	start := time.Now()
	stream := c.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{
		Model:         "gpt-4o",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Tell me a story")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var acc openai.ChatCompletionAccumulator
	var firstAt, lastAt time.Duration
	events := 0
	for stream.Next() {
		chunk := stream.Current()
		acc.AddChunk(chunk)
		if events == 0 {
			firstAt = time.Since(start)
		}
		lastAt = time.Since(start)
		events++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if events < 4 {
		t.Fatalf("got %d events, want several", events)
	}
	if lastAt-firstAt < time.Duration(events-2)*gap {
		t.Errorf("events arrived together (first at %v, last at %v over %d events): not streamed", firstAt, lastAt, events)
	}
	if len(acc.Choices) != 1 || acc.Choices[0].Message.Content == "" {
		t.Fatalf("accumulated completion has no content: %+v", acc.ChatCompletion)
	}
	if acc.Usage.TotalTokens == 0 || acc.Usage.TotalTokens != acc.Usage.PromptTokens+acc.Usage.CompletionTokens {
		t.Errorf("usage = %+v, want the mock's final usage chunk", acc.Usage)
	}
	reqs := g.requests()
	if len(reqs) != 1 || !reqs[0].Stream {
		t.Fatalf("mock requests = %d (stream=%v), want 1 streamed", len(reqs), len(reqs) == 1 && reqs[0].Stream)
	}
}

// keymux asks for the final usage chunk when the client did not
// (settings.stream_usage, default on), so that streamed calls count tokens;
// everything else in the body stays as the client sent it.
func TestStreamUsageRequested(t *testing.T) {
	g := startGateway(t, threeKeys+`
rules:
  k1-mini: {key: k1, from: gpt-4, to: gpt-4o-mini}
`)
	tests := []struct{ body, want string }{
		{`{"model":"gpt-4o","stream":true,"messages":[]}`, `{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}`},
		{`{"model":"gpt-4o","stream":true,"stream_options":null,"messages":[]}`, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`},
		{`{"model":"gpt-4o","stream":true,"stream_options":{"x":1},"messages":[]}`, `{"model":"gpt-4o","stream":true,"stream_options":{"x":1,"include_usage":true},"messages":[]}`},
		{`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`},
		{`{"model":"gpt-4o","stream":false,"messages":[]}`, `{"model":"gpt-4o","stream":false,"messages":[]}`},
	}
	for _, tc := range tests {
		before := len(g.requests())
		if resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, tc.body); resp.StatusCode != 200 {
			t.Fatalf("%s: status %d %s", tc.body, resp.StatusCode, b)
		}
		r := g.requests()[before]
		if string(r.Body) != tc.want {
			t.Errorf("upstream body\n got %s\nwant %s", r.Body, tc.want)
		}
	}
	// The rule and the usage request together, on k1.
	for range 3 {
		g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4","stream":true,"messages":[]}`)
	}
	for _, r := range g.requests() {
		if r.Credential == "sk-test-k1" && r.BodyModel == "gpt-4o-mini" {
			if want := `{"stream_options":{"include_usage":true},"model":"gpt-4o-mini","stream":true,"messages":[]}`; string(r.Body) != want {
				t.Errorf("k1 body %s, want %s", r.Body, want)
			}
		}
	}
	var stats struct {
		TopKeys []struct {
			ID    string `json:"id"`
			Usage uint64 `json:"usage"`
		} `json:"top_keys"`
	}
	// Calls are booked when their ext_proc streams end, just after the
	// clients have their answers.
	wait.Until(t, 5*time.Second, "the streamed calls booked on /stats", func() bool {
		if err := json.Unmarshal(g.getAdmin("/stats"), &stats); err != nil {
			t.Fatal(err)
		}
		for _, k := range stats.TopKeys {
			if k.Usage == 0 {
				return false
			}
		}
		return len(stats.TopKeys) == 3
	})
	for _, k := range stats.TopKeys {
		if k.Usage == 0 {
			t.Errorf("key %s has no token usage after streamed calls: %+v", k.ID, stats.TopKeys)
		}
	}
}
