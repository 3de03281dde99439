package e2e

import (
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/keymux/keymux/examples/mockupstream"
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
	reqs := g.mock.Requests()
	if len(reqs) != 1 || !reqs[0].Stream {
		t.Fatalf("mock requests = %d (stream=%v), want 1 streamed", len(reqs), len(reqs) == 1 && reqs[0].Stream)
	}
}
