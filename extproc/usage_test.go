package extproc

import (
	"cmp"
	"testing"

	"github.com/keymux/keymux/testutil/deep"
)

func TestUsageScannerSSEAcrossChunkBoundaries(t *testing.T) {
	stream := "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n" +
		"data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n" +
		"data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n" +
		"data: [DONE]\n\n"
	for _, size := range []int{1, 2, 3, 7, 16, 64, len(stream)} {
		u := usageScanner{sse: true}
		for i := 0; i < len(stream); i += size {
			end := min(i+size, len(stream))
			u.feed([]byte(stream[i:end]), false)
		}
		u.feed(nil, true)
		if !u.known || u.input != 12 || u.output != 7 || !u.done {
			t.Errorf("chunk %d: known=%v in=%d out=%d done=%v", size, u.known, u.input, u.output, u.done)
		}
	}
}

func TestUsageScanner(t *testing.T) {
	tests := []struct {
		name        string
		sse         bool
		chunks      []string
		in, out     int64
		known, done bool
		errorCode   string
	}{
		{"json", false, []string{`{"id":"x","usage":{"prompt_tokens":3,`, `"completion_tokens":4}}`}, 3, 4, true, false, ""},
		{"json no usage", false, []string{`{"id":"x"}`}, 0, 0, false, false, ""},
		{"json error quota", false, []string{`{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}`}, 0, 0, false, false, "insufficient_quota"},
		{"json error type only", false, []string{`{"error":{"type":"server_error","code":null}}`}, 0, 0, false, false, "server_error"},
		{"anthropic sse", true, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"}, 25, 15, true, true, ""},
		{"crlf", true, []string{"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\n\r\ndata: [DONE]\r\n\r\n"}, 1, 2, true, true, ""},
		{"cut stream", true, []string{"data: {\"choices\":[]}\n\ndata: {\"usa"}, 0, 0, false, false, ""},
		{"garbage", true, []string{"data: {not json \"usage\"\n\n"}, 0, 0, false, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := usageScanner{sse: tc.sse}
			for i, c := range tc.chunks {
				u.feed([]byte(c), i == len(tc.chunks)-1)
			}
			if u.input != tc.in || u.output != tc.out || u.known != tc.known || u.done != tc.done || cmp.Or(u.errorCode, u.errorType) != tc.errorCode {
				t.Fatalf("got in=%d out=%d known=%v done=%v code=%q type=%q", u.input, u.output, u.known, u.done, u.errorCode, u.errorType)
			}
		})
	}
}

// TestUsageScannerDeepAnswers: answers nested as deep as the scanner keeps
// (a 4 MiB JSON body, a 1 MiB SSE line) are read without growing the
// goroutine stack: gjson skips values it does not look into iteratively.
func TestUsageScannerDeepAnswers(t *testing.T) {
	const usage = `"usage":{"prompt_tokens":5,"completion_tokens":6}}`
	nestedJSON := append(append([]byte(`{"x":`), deep.Arrays((maxJSONScan-200)/2, "1")...), ","+usage...)
	nestedSSE := "data: {\"x\":" + string(deep.Objects((maxSSELine-200)/6, "1")) + "," + usage + "\n\ndata: [DONE]\n\n"
	unclosed := append([]byte(`{"usage":`), deep.Arrays(maxJSONScan-100, "")[:maxJSONScan-100]...)
	tests := []struct {
		name    string
		sse     bool
		body    []byte
		in, out int64
		known   bool
	}{
		{"json", false, nestedJSON, 5, 6, true},
		{"sse", true, []byte(nestedSSE), 5, 6, true},
		{"json unclosed", false, unclosed, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := usageScanner{sse: tc.sse}
			grew := deep.StackGrowth(func() {
				for i := 0; i < len(tc.body); i += 64 << 10 {
					u.feed(tc.body[i:min(i+64<<10, len(tc.body))], false)
				}
				u.feed(nil, true)
			})
			if u.known != tc.known || u.input != tc.in || u.output != tc.out {
				t.Errorf("known=%v in=%d out=%d, want %v %d %d", u.known, u.input, u.output, tc.known, tc.in, tc.out)
			}
			if grew > 64<<10 {
				t.Errorf("the stack grew by %d bytes", grew)
			}
		})
	}
}

func FuzzUsageScanner(f *testing.F) {
	f.Add(deep.Arrays(maxJSONScan/2, "1"), uint8(31))
	f.Add(append([]byte("data: "), deep.Objects(maxSSELine/6, `{"usage":{"prompt_tokens":1}}`)...), uint8(7))
	f.Add([]byte("data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n"), uint8(3))
	f.Add([]byte("data: {\"message\":{\"usage\":{\"input_tokens\":-5}}}\n"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		for _, sse := range []bool{true, false} {
			u := usageScanner{sse: sse}
			step := int(cut%32) + 1
			for i := 0; i < len(data); i += step {
				u.feed(data[i:min(i+step, len(data))], false)
			}
			u.feed(nil, true)
			if u.input < 0 || u.output < 0 {
				t.Fatalf("negative usage %d/%d", u.input, u.output)
			}
			if len(u.buf) > maxJSONScan {
				t.Fatalf("buffer grew past its limit")
			}
		}
	})
}
