// Command go calls keymux with the official OpenAI Go client: point the base
// URL at keymux and use your keymux client token as the API key.
//
//	go run ./examples/clients/go            # against `keymux dev` on 127.0.0.1:10000
//	KEYMUX_URL=http://gateway:10000/v1 KEYMUX_TOKEN=... go run ./examples/clients/go
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context) error {
	client := openai.NewClient(
		option.WithBaseURL(getenv("KEYMUX_URL", "http://127.0.0.1:10000/v1")),
		// Your keymux client token (client_keys mode), never an upstream key.
		option.WithAPIKey(getenv("KEYMUX_TOKEN", "km-example-alice-not-a-real-token")),
	)

	resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "gpt-4",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s (model %s, %d tokens)\n", resp.Choices[0].Message.Content, resp.Model, resp.Usage.TotalTokens)

	// Streaming, with the usage reported in the last chunk.
	params := openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	}
	params.StreamOptions.IncludeUsage = openai.Bool(true)
	stream := client.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		chunk := stream.Current()
		acc.AddChunk(chunk)
		if len(chunk.Choices) > 0 {
			fmt.Print(chunk.Choices[0].Delta.Content)
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	fmt.Printf("\n(%d tokens)\n", acc.Usage.TotalTokens)
	return nil
}
