package extproc

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// step is one request of a limits scenario: at the fake clock's time, token
// asks for model; the request is either forwarded to key or refused with a
// 429 of type typ and Retry-After.
type step struct {
	at         time.Duration // since t0 (20s into a minute)
	token      string
	model      string
	usage      string // the upstream's JSON usage for a forwarded request, "" = none
	key        string // forwarded to this key; "" = refused
	typ        string
	retryAfter string
	limit      int
}

// Client rpm and tpm are counted per wall-clock minute on the server's
// clock: refused with 429 and the seconds left in the minute, admitted
// again when the minute turns. Refusals are not counted.
func TestClientLimitsPerMinute(t *testing.T) {
	ok := func(at time.Duration, token, model, key string) step {
		return step{at: at, token: token, model: model, key: key}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"rpm", []step{
			ok(0, tokenLimited, "gpt-4o", "oai"),
			ok(time.Second, tokenLimited, "qwen", "compat"),
			{at: 2 * time.Second, token: tokenLimited, model: "gpt-4o", typ: "requests", retryAfter: "38", limit: 2},
			{at: 2*time.Second + 300*time.Millisecond, token: tokenLimited, model: "gpt-4o", typ: "requests", retryAfter: "38", limit: 2},
			ok(2*time.Second, tokenAll, "gpt-4o", "oai"), // other clients are not affected
			{at: 39*time.Second + 400*time.Millisecond, token: tokenLimited, model: "gpt-4o", typ: "requests", retryAfter: "1", limit: 2},
			{at: 39*time.Second + 900*time.Millisecond, token: tokenLimited, model: "gpt-4o", typ: "requests", retryAfter: "1", limit: 2},
			ok(40*time.Second, tokenLimited, "gpt-4o", "oai"), // the minute turned
			ok(41*time.Second, tokenLimited, "gpt-4o", "oai"),
			{at: 42 * time.Second, token: tokenLimited, model: "gpt-4o", typ: "requests", retryAfter: "58", limit: 2},
		}},
		{"tpm", []step{
			{at: 0, token: tokenLimited, model: "gpt-4o", key: "oai", usage: `{"prompt_tokens":60,"completion_tokens":40}`},
			{at: 2 * time.Second, token: tokenLimited, model: "gpt-4o", typ: "tokens", retryAfter: "38", limit: 100},
			ok(40*time.Second, tokenLimited, "gpt-4o", "oai"),
		}},
		{"usage of the previous minute does not count", []step{
			{at: 39 * time.Second, token: tokenLimited, model: "gpt-4o", key: "oai", usage: `{"prompt_tokens":500,"completion_tokens":500}`},
			ok(40*time.Second, tokenLimited, "gpt-4o", "oai"),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(settingsClientKeys))
			runSteps(t, r, tc.steps)
		})
	}
}

// A key's own rpm and tpm take it out of its pool until the minute turns
// (round robin: the pick is the request's sequence number modulo the
// eligible keys).
func TestKeyLimitsPerMinute(t *testing.T) {
	pool := func(limits string) string {
		return `
settings: {strategy: round_robin}
keys:
  k1: {provider: openai, secret: sk-test-k1, limits: ` + limits + `}
  k2: {provider: openai, secret: sk-test-k2}
`
	}
	tests := []struct {
		name   string
		limits string
		steps  []step
	}{
		{"rpm", "{rpm: 1}", []step{
			{at: 0, model: "gpt-4o", key: "k1"},
			{at: time.Second, model: "gpt-4o", key: "k2"},
			{at: 2 * time.Second, model: "gpt-4o", key: "k2"}, // k1's turn, but it is over its rpm
			{at: 3 * time.Second, model: "gpt-4o", key: "k2"},
			{at: 40 * time.Second, model: "gpt-4o", key: "k1"}, // the minute turned
		}},
		{"tpm", "{tpm: 10}", []step{
			{at: 0, model: "gpt-4o", key: "k1", usage: `{"input_tokens":4,"output_tokens":6}`},
			{at: time.Second, model: "gpt-4o", key: "k2"},
			{at: 2 * time.Second, model: "gpt-4o", key: "k2"}, // k1's turn, but it is over its tpm
			{at: 39 * time.Second, model: "gpt-4o", key: "k2"},
			{at: 40 * time.Second, model: "gpt-4o", key: "k1"}, // the minute turned
		}},
		{"tpm not reached", "{tpm: 10}", []step{
			{at: 0, model: "gpt-4o", key: "k1", usage: `{"prompt_tokens":9}`},
			{at: time.Second, model: "gpt-4o", key: "k2"},
			{at: 2 * time.Second, model: "gpt-4o", key: "k1"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runSteps(t, newRig(t, pool(tc.limits)), tc.steps)
		})
	}
}

func runSteps(t *testing.T, r *rig, steps []step) {
	t.Helper()
	for i, s := range steps {
		r.clock.Set(t0.Add(s.at))
		var kv []string
		if s.token != "" {
			kv = bearer(s.token)
		}
		msgs := chat(s.model, kv...)
		if s.key != "" {
			if s.usage == "" {
				msgs = append(msgs, respHeaders(true, ":status", "200"))
			} else {
				msgs = append(msgs, respHeaders(false, ":status", "200", "content-type", "application/json"),
					respBody(`{"usage":`+s.usage+`}`, true))
			}
		}
		res := r.run(msgs...)
		if s.key != "" {
			if res.replies[1].GetImmediateResponse() != nil {
				t.Fatalf("step %d (+%v): refused %s, want key %s", i, s.at, res.replies[1].GetImmediateResponse().GetBody(), s.key)
			}
			if got := forwardOf(t, res.replies[1]).metadata["key_id"]; got != s.key {
				t.Fatalf("step %d (+%v): key %s, want %s", i, s.at, got, s.key)
			}
			continue
		}
		l := immediate(t, res.replies[len(res.replies)-1])
		client := strings.TrimPrefix(s.token, "km-test-")
		msg := fmt.Sprintf("Rate limit reached for client %s on %s per minute: limit %d.", client, s.typ, s.limit)
		if l.status != 429 || l.code() != "rate_limit_exceeded" || l.err.Type != s.typ || l.err.Message != msg || l.headers["retry-after"] != s.retryAfter {
			t.Fatalf("step %d (+%v): %d %s %s %q Retry-After %q, want 429 rate_limit_exceeded %s %q Retry-After %s",
				i, s.at, l.status, l.code(), l.err.Type, l.err.Message, l.headers["retry-after"], s.typ, msg, s.retryAfter)
		}
		if len(res.replies) != 1 || res.call.ErrorCode != "rate_limit_exceeded" || res.call.ClientID != client {
			t.Fatalf("step %d: refused on reply %d, call %+v", i, len(res.replies), res.call)
		}
	}
}

// adjust_by_error_rate weighs a key by the errors in its window: a failing
// key's share shrinks, and comes back once its errors have left the window
// (here 2s, on the server's clock), not before.
func TestErrorWindowShrinksAndRestoresShare(t *testing.T) {
	r := newRig(t, `
settings:
  strategy: adjust_by_error_rate
  ejection: {consecutive_failures: 100000, error_window: 2s}
keys:
  k1: {provider: openai_compatible, base_url: "http://up.local/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "http://up.local/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "http://up.local/v1", secret: sk-test-k3}
`)
	failing := true
	shares := func(n int) map[string]float64 {
		t.Helper()
		out := map[string]float64{}
		for range n {
			st := newStream(t, chat("gpt-4o")...)
			var key string
			st.upstream = answerAs(func(k string) []*extprocv3.ProcessingRequest {
				key = k
				if k == "k1" && failing {
					return []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "500")}
				}
				return []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")}
			})
			r.runStream(st)
			out[key] += 1 / float64(n)
		}
		return out
	}
	warm := shares(60) // k1 collects errors
	// With e errors in the window k1 weighs 1/(e+1) against 1 and 1.
	if got := shares(600)["k1"]; got > 0.05 {
		t.Fatalf("failing key kept a share of %.3f (warm-up %.3f), want < 0.05", got, warm["k1"])
	}
	failing = false
	// One second on, the errors are still inside the 2s window.
	r.clock.Advance(time.Second)
	if got := shares(600)["k1"]; got > 0.05 {
		t.Fatalf("1s later a healed key has a share of %.3f, want < 0.05 while its errors are in the window", got)
	}
	// Two seconds on, they have left it: k1 is weighed like the others.
	r.clock.Advance(time.Second)
	// 3000 picks at p = 1/3: σ ≈ 0.009; ±0.05 is more than 5σ.
	if got := shares(3000); math.Abs(got["k1"]-1.0/3) > 0.05 {
		t.Fatalf("recovered key share %.3f, want 0.333 ± 0.05 (all: %v)", got["k1"], got)
	}
}
