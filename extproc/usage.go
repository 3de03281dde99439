package extproc

import (
	"bytes"

	"github.com/tidwall/gjson"
)

// Limits of the response scanner: keymux only reads responses for token
// usage, so it keeps at most this much of a JSON body and of one SSE line.
const (
	maxJSONScan = 4 << 20
	maxSSELine  = 1 << 20
)

// usageScanner reads token usage out of a response body that arrives in
// arbitrary chunks (Envoy's STREAMED mode cuts inside lines and events). It
// never alters the body.
type usageScanner struct {
	sse      bool
	buf      []byte // JSON: the body so far; SSE: the unfinished line
	overflow bool   // buf hit its limit: usage unknown
	done     bool   // SSE: saw "data: [DONE]" or an Anthropic message_stop
	eos      bool   // the last chunk arrived

	input, output int64
	known         bool
	errorCode     string // JSON error bodies: error.code
	errorType     string // and error.type
}

func (u *usageScanner) feed(chunk []byte, eos bool) {
	if eos {
		u.eos = true
	}
	if u.sse {
		u.feedSSE(chunk)
		if eos && len(u.buf) > 0 {
			u.line(u.buf)
			u.buf = u.buf[:0]
		}
		return
	}
	if !u.overflow {
		if len(u.buf)+len(chunk) > maxJSONScan {
			u.overflow, u.buf = true, nil
		} else {
			u.buf = append(u.buf, chunk...)
		}
	}
	if eos && !u.overflow && len(u.buf) > 0 {
		res := gjson.GetManyBytes(u.buf, "usage", "error.code", "error.type")
		u.readUsage(res[0])
		u.errorCode, u.errorType = res[1].Str, res[2].Str
		u.buf = nil
	}
}

func (u *usageScanner) feedSSE(chunk []byte) {
	for len(chunk) > 0 {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			if len(u.buf)+len(chunk) > maxSSELine {
				u.buf = u.buf[:0] // a line this long carries no usage we can read
				return
			}
			u.buf = append(u.buf, chunk...)
			return
		}
		if len(u.buf) > 0 {
			u.buf = append(u.buf, chunk[:i]...)
			u.line(u.buf)
			u.buf = u.buf[:0]
		} else {
			u.line(chunk[:i])
		}
		chunk = chunk[i+1:]
	}
}

// line handles one SSE line (without its "\n").
func (u *usageScanner) line(l []byte) {
	l = bytes.TrimSuffix(l, []byte{'\r'})
	data, ok := bytes.CutPrefix(l, []byte("data:"))
	if !ok {
		return
	}
	data = bytes.TrimLeft(data, " ")
	if bytes.Equal(data, []byte("[DONE]")) {
		u.done = true
		return
	}
	if !bytes.Contains(data, []byte(`"usage"`)) {
		if bytes.Contains(data, []byte(`"message_stop"`)) {
			u.done = true
		}
		return
	}
	// OpenAI: a final chunk {"usage":{…}}; Anthropic: message_start
	// {"message":{"usage":{…}}} and message_delta {"usage":{…}}.
	res := gjson.GetManyBytes(data, "usage", "message.usage")
	u.readUsage(res[0])
	u.readUsage(res[1])
}

func (u *usageScanner) readUsage(r gjson.Result) {
	if !r.IsObject() {
		return
	}
	get := func(names ...string) int64 {
		for _, n := range names {
			if v := r.Get(n); v.Type == gjson.Number {
				return v.Int()
			}
		}
		return -1
	}
	if in := get("prompt_tokens", "input_tokens"); in >= 0 {
		u.input, u.known = max(u.input, in), true
	}
	if out := get("completion_tokens", "output_tokens"); out >= 0 {
		u.output, u.known = max(u.output, out), true
	}
}
