package mockupstream

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strings"

	"github.com/tidwall/gjson"
)

// Reply is the assistant text the mock answers to a chat or messages request
// for model whose raw JSON body is body: "Hello from mock (model M, prompt
// H)." where H is the first 8 hex digits of the SHA-256 of the raw bytes of
// the body's "messages" value. A proxy that patches only the model keeps H.
func Reply(model string, body []byte) string {
	raw := gjson.GetBytes(body, "messages").Raw
	sum := sha256.Sum256([]byte(raw))
	return fmt.Sprintf("Hello from mock (model %s, prompt %s).", model, hex.EncodeToString(sum[:4]))
}

// PromptTokens is the prompt token count the mock reports for a chat,
// messages or embeddings request body: the number of bytes of its text (every
// message's content, string or text parts; Anthropic's system; the embeddings
// input strings) divided by 4, rounded up. A token array input counts one
// token per element.
func PromptTokens(body []byte) int {
	n := 0
	text := func(v gjson.Result) {
		switch {
		case v.Type == gjson.String:
			n += len(v.Str)
		case v.IsArray():
			for _, part := range v.Array() {
				if part.Type == gjson.String {
					n += len(part.Str)
				} else if t := part.Get("text"); t.Type == gjson.String {
					n += len(t.Str)
				}
			}
		}
	}
	for _, m := range gjson.GetBytes(body, "messages").Array() {
		text(m.Get("content"))
	}
	text(gjson.GetBytes(body, "system"))
	tokens := 0
	input := gjson.GetBytes(body, "input")
	switch {
	case input.Type == gjson.String:
		n += len(input.Str)
	case input.IsArray():
		for _, item := range input.Array() {
			switch {
			case item.Type == gjson.String:
				n += len(item.Str)
			case item.Type == gjson.Number:
				tokens++
			case item.IsArray():
				tokens += len(item.Array())
			}
		}
	}
	return (n+3)/4 + tokens
}

// CompletionTokens is the completion token count the mock reports for text:
// its number of space-separated words.
func CompletionTokens(text string) int {
	return len(strings.Fields(text))
}

// replyPieces splits a reply into the content deltas of a stream, one word
// each (with its trailing space), keeping at most limit words when limit > 0.
// It reports whether the reply was truncated.
func replyPieces(reply string, limit int) ([]string, bool) {
	pieces := strings.SplitAfter(reply, " ")
	if limit > 0 && limit < len(pieces) {
		pieces = pieces[:limit:limit]
		last := len(pieces) - 1
		pieces[last] = strings.TrimSuffix(pieces[last], " ")
		return pieces, true
	}
	return pieces, false
}

// Embedding is the unit vector of dims floats the mock answers for input:
// derived from SHA-256 of the input and the component's index, so equal
// inputs give equal vectors and different inputs (almost surely) do not.
func Embedding(input string, dims int) []float64 {
	v := make([]float64, dims)
	var norm float64
	var block [sha256.Size]byte
	for i := range v {
		if i%8 == 0 {
			buf := make([]byte, 0, len(input)+8)
			buf = binary.BigEndian.AppendUint64(buf, uint64(i/8))
			buf = append(buf, input...)
			block = sha256.Sum256(buf)
		}
		u := binary.BigEndian.Uint32(block[(i%8)*4:])
		x := float64(u)/float64(math.MaxUint32)*2 - 1
		v[i] = x
		norm += x * x
	}
	if norm == 0 {
		return v
	}
	norm = math.Sqrt(norm)
	for i := range v {
		v[i] /= norm
	}
	return v
}
