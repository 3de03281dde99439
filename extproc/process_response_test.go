package extproc

import (
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
)

// The upstream's answer feeds the chosen key's passive health: 429 cools it
// down (Retry-After or the default cooldown), 401/403 and insufficient_quota
// disable it, 5xx and 504 count towards an ejection; the call carries the
// error class.
func TestResponseFeedsKeyState(t *testing.T) {
	tests := []struct {
		name      string
		settings  string
		responses [][]*extprocv3.ProcessingRequest // one upstream answer per request to the key
		state     policy.KeyState
		cooldown  time.Time // the key's 429 cooldown for gpt-4o alone
		errClass  string    // call.ErrorCode of the last call
		errors    uint64    // errors recorded on the key
		cooldowns uint64
		ejections uint64
	}{
		{name: "success", responses: answers(respHeaders(true, ":status", "200")), errClass: ""},
		{name: "429 with Retry-After", responses: answers(respHeaders(true, ":status", "429", "retry-after", "7")),
			cooldown: t0.Add(7 * time.Second), errClass: "rate_limited", errors: 1, cooldowns: 1},
		{name: "429 with OpenAI reset headers", responses: answers(respHeaders(true, ":status", "429", "x-ratelimit-reset-requests", "1s", "x-ratelimit-reset-tokens", "6m0s")),
			cooldown: t0.Add(6 * time.Minute), errClass: "rate_limited", errors: 1, cooldowns: 1},
		{name: "429 without a header: the default cooldown", settings: "settings: {ejection: {cooldown: 45s}}\n",
			responses: answers(respHeaders(true, ":status", "429")),
			cooldown:  t0.Add(45 * time.Second), errClass: "rate_limited", errors: 1, cooldowns: 1},
		{name: "401 disables", responses: answers(respHeaders(true, ":status", "401")),
			state: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth}, errClass: "auth", errors: 1},
		{name: "403 disables", responses: answers(respHeaders(true, ":status", "403")),
			state: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth}, errClass: "auth", errors: 1},
		{name: "insufficient_quota in a 429 body", responses: answers(
			respHeaders(false, ":status", "429", "content-type", "application/json", "retry-after", "3"),
			respBody(`{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`, true)),
			// The headers cool the key down for the model; the body then
			// disables it.
			state: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledQuota}, cooldown: t0.Add(3 * time.Second),
			errClass: "auth", errors: 2, cooldowns: 1},
		{name: "insufficient_quota type in a 403 body", responses: answers(
			respHeaders(false, ":status", "403", "content-type", "application/json; charset=utf-8"),
			respBody(`{"error":{"type":"insufficient_quota"}}`, true)),
			state: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledQuota}, errClass: "auth", errors: 2},
		{name: "500 once", responses: answers(respHeaders(true, ":status", "500")),
			state: policy.KeyState{ConsecutiveFailures: 1}, errClass: "server", errors: 1},
		{name: "504", responses: answers(respHeaders(true, ":status", "504")),
			state: policy.KeyState{ConsecutiveFailures: 1}, errClass: "timeout", errors: 1},
		{name: "5xx three times in a row: ejected", responses: [][]*extprocv3.ProcessingRequest{
			{respHeaders(true, ":status", "502")}, {respHeaders(true, ":status", "500")}, {respHeaders(true, ":status", "503")}},
			state: policy.KeyState{EjectedUntil: t0.Add(policy.DefaultEjectionBase), Ejections: 1}, errClass: "server", errors: 3, ejections: 1},
		{name: "a success in between resets the count", responses: [][]*extprocv3.ProcessingRequest{
			{respHeaders(true, ":status", "500")}, {respHeaders(true, ":status", "200")}, {respHeaders(true, ":status", "500")}},
			state: policy.KeyState{ConsecutiveFailures: 1}, errClass: "server", errors: 2},
		{name: "a client error leaves the key alone", responses: answers(
			respHeaders(false, ":status", "400", "content-type", "application/json"),
			respBody(`{"error":{"code":"invalid_request_error"}}`, true)), errClass: policy.ClassClient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(tc.settings))
			var last exchangeResult
			for _, resp := range tc.responses {
				last = r.run(then(chat("gpt-4o"), resp)...)
			}
			rt := r.entry("oai").RT
			if got := rt.State(); !sameState(got, tc.state) {
				t.Errorf("state %+v, want %+v", got, tc.state)
			}
			var cooldown time.Time
			if m := rt.Model("gpt-4o"); m != nil {
				cooldown = m.CooldownUntil()
			}
			if !cooldown.Equal(tc.cooldown) {
				t.Errorf("gpt-4o cooldown until %v, want %v", cooldown, tc.cooldown)
			}
			if last.call.ErrorCode != tc.errClass || last.call.KeyID != "oai" {
				t.Errorf("call key %s error code %q, want oai %q", last.call.KeyID, last.call.ErrorCode, tc.errClass)
			}
			if rt.Errors() != tc.errors || rt.Cooldowns() != tc.cooldowns || rt.Ejections() != tc.ejections {
				t.Errorf("errors %d cooldowns %d ejections %d, want %d %d %d",
					rt.Errors(), rt.Cooldowns(), rt.Ejections(), tc.errors, tc.cooldowns, tc.ejections)
			}
		})
	}
}

// answers is one upstream answer, as a list of answers.
func answers(msgs ...*extprocv3.ProcessingRequest) [][]*extprocv3.ProcessingRequest {
	return [][]*extprocv3.ProcessingRequest{msgs}
}

func sameState(a, b policy.KeyState) bool {
	return a.CooldownUntil.Equal(b.CooldownUntil) && a.EjectedUntil.Equal(b.EjectedUntil) &&
		a.Disabled == b.Disabled && a.DisabledReason == b.DisabledReason &&
		a.ConsecutiveFailures == b.ConsecutiveFailures && a.Ejections == b.Ejections && a.HalfOpen == b.HalfOpen
}

// A key cooling down after a 429 is out exactly until its Retry-After, and
// an ejected one until its backoff runs out, on the server's clock.
func TestKeyComesBackWhenItsWindowEnds(t *testing.T) {
	tests := []struct {
		name   string
		answer []*extprocv3.ProcessingRequest
		times  int
		out    time.Duration // how long the key stays out
		code   string
	}{
		{"429 Retry-After: 2", []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "429", "retry-after", "2")}, 1, 2 * time.Second, policy.CodeKeysCoolingDown},
		{"429 retry-after-ms: 1500", []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "429", "retry-after-ms", "1500")}, 1, 1500 * time.Millisecond, policy.CodeKeysCoolingDown},
		{"ejected after 3 × 500", []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "500")}, 3, policy.DefaultEjectionBase, policy.CodeKeysEjected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			for range tc.times {
				r.run(then(chat("qwen"), tc.answer)...)
			}
			r.clock.Advance(tc.out - time.Millisecond)
			l := immediate(t, r.run(chat("qwen")...).replies[1])
			if l.status != 503 || l.code() != tc.code || l.headers["retry-after"] != "1" {
				t.Fatalf("1ms before the end: %d %s Retry-After %q, want 503 %s 1", l.status, l.code(), l.headers["retry-after"], tc.code)
			}
			r.clock.Advance(time.Millisecond)
			res := r.run(then(chat("qwen"), []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")})...)
			if f := forwardOf(t, res.replies[1]); f.metadata["key_id"] != "compat" {
				t.Fatalf("at the end: %v, want compat again", f.metadata)
			}
			if s := r.entry("compat").RT.State(); s.Ejections != 0 || s.HalfOpen || s.ConsecutiveFailures != 0 {
				t.Errorf("after a success the key is %+v, want closed", s)
			}
		})
	}
}

// Envoy is asked to stream the response body to keymux (mode override) only
// when keymux reads it for usage: JSON and SSE bodies of a forwarded
// request.
func TestResponseHeadersModeOverride(t *testing.T) {
	tests := []struct {
		name    string
		headers *extprocv3.ProcessingRequest
		stream  bool
	}{
		{"json", respHeaders(false, ":status", "200", "content-type", "application/json"), true},
		{"sse", respHeaders(false, ":status", "200", "content-type", "text/event-stream; charset=utf-8"), true},
		{"other type", respHeaders(false, ":status", "200", "content-type", "audio/mpeg"), false},
		{"no body", respHeaders(true, ":status", "200", "content-type", "application/json"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			res := r.run(then(chat("gpt-4o"), []*extprocv3.ProcessingRequest{tc.headers})...)
			h := res.replies[2].GetResponseHeaders()
			if h == nil {
				t.Fatalf("reply %v, want a response headers reply", res.replies[2])
			}
			want := (*filterv3.ProcessingMode)(nil)
			if tc.stream {
				want = &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_STREAMED}
			}
			if got := res.replies[2].GetModeOverride(); (got == nil) != (want == nil) || got.GetResponseBodyMode() != want.GetResponseBodyMode() ||
				got.GetRequestBodyMode() != filterv3.ProcessingMode_NONE || got.GetResponseHeaderMode() != filterv3.ProcessingMode_DEFAULT {
				t.Errorf("mode override %v, want %v", got, want)
			}
			if res.call.Status != 200 {
				t.Errorf("call status %d, want 200", res.call.Status)
			}
		})
	}
	// Nothing of a local answer's response is looked at.
	r := newRig(t, testKeys(""))
	res := r.run(request("GET", "/v1/models", "")...)
	st := newStream(t, respHeaders(false, ":status", "200", "content-type", "application/json"), respBody(`{"usage":{"prompt_tokens":1}}`, true))
	if err := r.srv.Process(st); err != nil || len(st.out) != 2 {
		t.Fatalf("Process: %v, %d replies", err, len(st.out))
	}
	if st.out[0].GetModeOverride() != nil || st.out[0].GetResponseHeaders() == nil || st.out[1].GetResponseBody() == nil {
		t.Errorf("replies to a response without a request: %v", st.out)
	}
	if !res.call.Local {
		t.Errorf("models call not local")
	}
}

// finish decides whether a call was cut short, from what the stream showed.
func TestCallTruncation(t *testing.T) {
	sse := func(status string) *extprocv3.ProcessingRequest {
		return respHeaders(false, ":status", status, "content-type", "text/event-stream")
	}
	json := respHeaders(false, ":status", "200", "content-type", "application/json")
	tests := []struct {
		name      string
		answer    []*extprocv3.ProcessingRequest
		truncated bool
		code      string
		status    int
		usage     [2]int64 // input, output; zero = unknown
	}{
		{name: "no response at all", truncated: true, code: "stream_cut"},
		{name: "headers only", answer: []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "204")}, status: 204},
		{name: "mode override not taken: no body message", answer: []*extprocv3.ProcessingRequest{json}, status: 200},
		{name: "json complete", answer: []*extprocv3.ProcessingRequest{json, respBody(`{"usage":{"prompt_tokens":12,`, false), respBody(`"completion_tokens":5}}`, true)},
			status: 200, usage: [2]int64{12, 5}},
		{name: "json cut", answer: []*extprocv3.ProcessingRequest{json, respBody(`{"usage":{"prompt_tokens":12,`, false)},
			truncated: true, code: "stream_cut", status: 200},
		{name: "sse with [DONE]", answer: []*extprocv3.ProcessingRequest{sse("200"),
			respBody("data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\nda", false),
			respBody("ta: [DONE]\n\n", true)}, status: 200, usage: [2]int64{3, 4}},
		{name: "sse anthropic message_stop", answer: []*extprocv3.ProcessingRequest{sse("200"),
			respBody("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n", false),
			respBody("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", true)},
			status: 200, usage: [2]int64{9, 15}},
		{name: "sse ends without its terminator", answer: []*extprocv3.ProcessingRequest{sse("200"), respBody("data: {\"choices\":[]}\n\n", true)},
			truncated: true, code: "stream_cut", status: 200},
		{name: "sse cut mid-stream", answer: []*extprocv3.ProcessingRequest{sse("200"), respBody("data: {\"choices\":[]}\n\n", false)},
			truncated: true, code: "stream_cut", status: 200},
		{name: "sse error body needs no terminator", answer: []*extprocv3.ProcessingRequest{sse("500"), respBody("data: {\"error\":{}}\n\n", true)},
			code: "server", status: 500},
		{name: "a cut 429 keeps its class", answer: []*extprocv3.ProcessingRequest{
			respHeaders(false, ":status", "429", "content-type", "application/json", "retry-after", "1"), respBody(`{"error":`, false)},
			truncated: true, code: "rate_limited", status: 429},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			res := r.run(then(chat("gpt-4o"), tc.answer)...)
			c := res.call
			if c.Truncated != tc.truncated || c.ErrorCode != tc.code || c.Status != tc.status || c.Local {
				t.Errorf("call truncated=%v code=%q status=%d local=%v, want %v %q %d",
					c.Truncated, c.ErrorCode, c.Status, c.Local, tc.truncated, tc.code, tc.status)
			}
			known := tc.usage != [2]int64{}
			if c.UsageKnown != known || c.InputTokens != tc.usage[0] || c.OutputTokens != tc.usage[1] {
				t.Errorf("usage known=%v %d/%d, want %v %d/%d", c.UsageKnown, c.InputTokens, c.OutputTokens, known, tc.usage[0], tc.usage[1])
			}
			rt := r.entry("oai").RT
			if want := uint64(tc.usage[0] + tc.usage[1]); rt.Usage() != want || rt.MinuteTokens.Get(t0) != want {
				t.Errorf("key usage %d, minute tokens %d, want %d", rt.Usage(), rt.MinuteTokens.Get(t0), want)
			}
			for i, resp := range res.replies[2:] {
				if resp.GetResponseHeaders() == nil && resp.GetResponseBody() == nil {
					t.Errorf("reply %d to a response message: %v", i+2, resp)
				}
			}
		})
	}
}

// Trailers (response_trailer_mode SKIP in envoy/envoy.yaml, so only when an
// operator turns them on) are acknowledged with a reply of their own kind.
func TestTrailers(t *testing.T) {
	r := newRig(t, testKeys(""))
	msgs := chat("gpt-4o")
	msgs = []*extprocv3.ProcessingRequest{msgs[0], reqBody(string(msgs[1].GetRequestBody().GetBody()), false), reqTrailers(),
		respHeaders(false, ":status", "200", "content-type", "application/json"),
		respBody(`{"usage":{"prompt_tokens":1,"completion_tokens":2}}`, false), respTrailers()}
	res := r.run(msgs...)
	if res.replies[2].GetRequestTrailers() == nil || res.replies[5].GetResponseTrailers() == nil {
		t.Fatalf("trailer replies %v / %v", res.replies[2], res.replies[5])
	}
	if f := forwardOf(t, res.replies[1]); f.metadata["key_id"] != "oai" {
		t.Fatalf("body with trailers: %v", f.metadata)
	}
}
