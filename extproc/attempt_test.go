package extproc

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// retryKeys: three OpenAI keys on one host (b's rule turns gpt-4 into
// gpt-4o) and one key of another host serving the same model.
const retryKeys = `
settings:
  strategy: round_robin
keys:
  a: {provider: openai, secret: sk-test-a, models: [gpt-4, gpt-4o]}
  b: {provider: openai, secret: sk-test-b, models: [gpt-4, gpt-4o]}
  c: {provider: openai, secret: sk-test-c, models: [gpt-4, gpt-4o]}
rules:
  b-up: {key: b, from: gpt-4, to: gpt-4o}
`

// modelFor is the model key id's upstream must get for gpt-4.
func modelFor(id string) string {
	if id == "b" {
		return "gpt-4o"
	}
	return "gpt-4"
}

// runAttempt serves one upstream attempt's stream as the upstream filter
// (its gRPC initial metadata) and returns keymux's replies.
func (r *rig) runAttempt(msgs ...*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
	r.t.Helper()
	st := newStream(r.t, msgs...)
	st.ctx = metadata.NewIncomingContext(st.ctx, metadata.Pairs(FilterMetadataKey, FilterUpstream))
	if err := r.srv.Process(st); err != nil {
		r.t.Fatalf("attempt: %v", err)
	}
	if len(st.out) != len(msgs) {
		r.t.Fatalf("attempt: %d replies to %d messages", len(st.out), len(msgs))
	}
	return st.out
}

// keyOfCredential maps "Bearer sk-test-x" to x.
func keyOfCredential(auth string) string { return strings.TrimPrefix(auth, "Bearer sk-test-") }

// TestRetryPutsAnotherKey: the first attempt keeps the key chosen at the
// router level, its response feeds that key, and the retry carries another
// key of the same host with its credentials and its rule's model; the call
// is booked on the key that answered last.
func TestRetryPutsAnotherKey(t *testing.T) {
	cases := []struct {
		name   string
		status string
		check  func(e *store.Entry) bool
	}{
		{"429 cools the key down for its model", "429", func(e *store.Entry) bool {
			m := e.RT.Model(modelFor(e.Key.ID))
			return m != nil && m.CooldownUntil().Equal(t0.Add(30*time.Second)) && e.RT.State().CooldownUntil.IsZero()
		}},
		{"401 disables the key", "401", func(e *store.Entry) bool { s := e.RT.State(); return s.Disabled && s.DisabledReason == "auth" }},
		{"503 counts towards ejection", "503", func(e *store.Entry) bool { return e.RT.State().ConsecutiveFailures == 1 }},
	}
	const body = `{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, retryKeys)
			var first, second forwarded
			var firstKey, secondKey string
			st := newStream(t, request("POST", "/v1/chat/completions", body)...)
			st.upstream = answerAs(func(key string) []*extprocv3.ProcessingRequest {
				first = forwardOf(t, st.out[len(st.out)-1])
				firstKey = key
				sent := body
				if first.body != nil {
					sent = string(first.body)
				}
				// Attempt 1 carries the call id; Envoy keeps the upstream
				// filter's changes, so attempt 2 carries it no more.
				a1 := r.runAttempt(
					reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "x-request-id", "req-1", HeaderCall, first.call, "authorization", first.set["authorization"]),
					reqBody(sent, true),
					respHeaders(true, ":status", tc.status, "retry-after", "30"))
				if f := forwardOf(t, a1[0]); len(f.set) != 0 || len(f.removed) != 1 || f.removed[0] != HeaderCall {
					t.Errorf("attempt 1 headers: set %v removed %v, want only %s removed", f.set, f.removed, HeaderCall)
				}
				if f := forwardOf(t, a1[1]); f.body != nil || len(f.set) != 0 {
					t.Errorf("attempt 1 body changed: %q %v", f.body, f.set)
				}
				if !tc.check(r.entry(firstKey)) {
					t.Errorf("key %s after %s: %+v", firstKey, tc.status, r.entry(firstKey).RT.State())
				}
				a2 := r.runAttempt(
					reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "x-request-id", "req-1", "authorization", first.set["authorization"]),
					reqBody(sent, true),
					respHeaders(true, ":status", "200"))
				second = forwardOf(t, a2[0])
				secondKey = keyOfCredential(second.set["authorization"])
				if b := forwardOf(t, a2[1]); modelFor(secondKey) != modelFor(firstKey) {
					want := strings.Replace(sent, `"`+modelFor(firstKey)+`"`, `"`+modelFor(secondKey)+`"`, 1)
					if string(b.body) != want || b.set[hdrContentLength] != strconv.Itoa(len(want)) {
						t.Errorf("attempt 2 body %q content-length %q, want %q", b.body, b.set[hdrContentLength], want)
					}
				} else if b.body != nil {
					t.Errorf("attempt 2 body rewritten to %q, the model %s stays", b.body, modelFor(secondKey))
				}
				return []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")}
			})
			res := r.runStream(st)
			if first.maxRetries != "2" || first.call == "" {
				t.Errorf("router level: x-envoy-max-retries %q, call %q; want 2 and an id", first.maxRetries, first.call)
			}
			if secondKey == firstKey || r.store.Read().Key(secondKey) == nil {
				t.Fatalf("retry on key %q after %q, want another key of the pool", secondKey, firstKey)
			}
			if got := second.set[hdrPath]; got != "/v1/chat/completions" {
				t.Errorf("retry :path %q", got)
			}
			if res.call.KeyID != secondKey || res.call.ModelFinal != modelFor(secondKey) || res.call.Status != 200 {
				t.Errorf("call booked on %s (%s, %d), want %s (%s, 200)", res.call.KeyID, res.call.ModelFinal, res.call.Status, secondKey, modelFor(secondKey))
			}
			if s := r.entry(secondKey).RT.State(); s.CooldownUntil.After(t0) || s.Disabled || s.ConsecutiveFailures != 0 {
				t.Errorf("key %s that answered 200: %+v", secondKey, s)
			}
			if _, ok := r.srv.calls.Load(first.call); ok {
				t.Error("the call's attempts outlived its stream")
			}
		})
	}
}

// TestMaxRetries: x-envoy-max-retries is retry.max_attempts-1, capped by
// the other eligible keys of the chosen key's host.
func TestMaxRetries(t *testing.T) {
	cases := []struct {
		name     string
		settings string
		cool     int // keys of the host put in cooldown before the request
		want     string
	}{
		{"default: 2", "", 0, "2"},
		{"max_attempts 2", "  retry: {max_attempts: 2}\n", 0, "1"},
		{"max_attempts 1: none", "  retry: {max_attempts: 1}\n", 0, "0"},
		{"capped by eligible keys", "  retry: {max_attempts: 5}\n", 0, "2"},
		{"a cooling key is not counted", "", 1, "1"},
		{"no other key", "", 2, "0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := strings.Replace(retryKeys, "  strategy: round_robin\n", "  strategy: round_robin\n"+tc.settings, 1) + `
  z: {provider: openai_compatible, base_url: "http://vllm.local:8000/v1", secret: sk-test-z, models: [gpt-4, gpt-4o]}
`
			cfg = strings.Replace(cfg, "rules:", "keys2:", 1) // keep the keys map whole
			cfg = strings.Replace(cfg, "keys2:\n  b-up: {key: b, from: gpt-4, to: gpt-4o}\n", "", 1) + "rules:\n  b-up: {key: b, from: gpt-4, to: gpt-4o}\n"
			r := newRig(t, cfg)
			for _, id := range []string{"a", "b", "c"}[:tc.cool] {
				r.entry(id).RT.Update(func(s policy.KeyState) policy.KeyState { s.CooldownUntil = t0.Add(time.Minute); return s })
			}
			res := r.run(chat("gpt-4")...)
			f := forwardOf(t, res.replies[len(res.replies)-1])
			want := tc.want
			if res.call.KeyID == "z" {
				want = "0" // alone on its host
			}
			if f.maxRetries != want {
				t.Errorf("key %s: x-envoy-max-retries %q, want %q", res.call.KeyID, f.maxRetries, want)
			}
		})
	}
}

// tooLarge429 is OpenAI's 429 body for a request over the key's tokens per
// minute.
const tooLarge429 = `{"error":{"message":"Request too large for gpt-4 in organization org-test on tokens per min (TPM): Limit 10000, Requested 25000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`

// TestAttempt429Body: the upstream filter holds a 429 until its body:
// a rate limit cools the key down and is retried, with the attempts on the
// call; a request too large for the key's limit is marked so that Envoy
// does not retry it, leaves the key alone, and the router-level exchange
// removes the mark and books a client error; a 429 whose body never comes
// (an Envoy that did not take the mode override) is fed as the rate limit
// its status says when the retry begins.
func TestAttempt429Body(t *testing.T) {
	cases := []struct {
		name     string
		body     string // "" = no body message
		mark     bool
		cooled   bool
		attempts int
		code     string
	}{
		{"rate limit", `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`, false, true, 2, ""},
		{"request too large", tooLarge429, true, false, 1, policy.ClassClient},
		{"no body message", "", false, true, 2, ""},
	}
	const body = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, retryKeys)
			var firstKey string
			st := newStream(t, request("POST", "/v1/chat/completions", body)...)
			st.upstream = answerAs(func(key string) []*extprocv3.ProcessingRequest {
				firstKey = key
				f := forwardOf(t, st.out[len(st.out)-1])
				msgs := []*extprocv3.ProcessingRequest{
					reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "x-request-id", "req-1", HeaderCall, f.call, "authorization", f.set["authorization"]),
					reqBody(body, true),
					respHeaders(false, ":status", "429", "retry-after", "30", "content-type", "application/json"),
				}
				if tc.body != "" {
					msgs = append(msgs, respBody(tc.body, true))
				}
				a1 := r.runAttempt(msgs...)
				if m := a1[2].GetModeOverride(); m.GetResponseBodyMode() != filterv3.ProcessingMode_BUFFERED {
					t.Errorf("429 headers reply: mode override %v, want the body BUFFERED", m)
				}
				if tc.body != "" {
					set := a1[3].GetResponseBody().GetResponse().GetHeaderMutation().GetSetHeaders()
					marked := len(set) == 1 && set[0].GetHeader().GetKey() == hdrEnvoyRateLimited && string(set[0].GetHeader().GetRawValue()) == markTooLarge
					if marked != tc.mark {
						t.Errorf("429 body reply sets %v, want the too-large mark: %v", set, tc.mark)
					}
				}
				final := []string{":status", "429", "retry-after", "30"}
				if tc.mark {
					final = append(final, hdrEnvoyRateLimited, markTooLarge)
				}
				if tc.attempts == 2 {
					r.runAttempt(
						reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "x-request-id", "req-1", "authorization", f.set["authorization"]),
						reqBody(body, true),
						respHeaders(true, ":status", "200"))
					final = []string{":status", "200"}
				}
				return []*extprocv3.ProcessingRequest{respHeaders(true, final...)}
			})
			res := r.runStream(st)
			var until time.Time // the key's cooldown for the model (a 429's is per model)
			if m := r.entry(firstKey).RT.Model("gpt-4o"); m != nil {
				until = m.CooldownUntil()
			}
			if cooled := until.Equal(t0.Add(30 * time.Second)); cooled != tc.cooled {
				t.Errorf("key %s cooldown for gpt-4o until %v, want cooled for 30s: %v", firstKey, until, tc.cooled)
			}
			if got := len(res.call.Attempts); tc.attempts == 2 && (got != 2 || res.call.Attempts[0].Retried != policy.ClassRateLimited || res.call.Attempts[0].Status != 429) {
				t.Errorf("attempts %+v, want 2, the first retried as rate_limited", res.call.Attempts)
			} else if tc.attempts == 1 && got != 0 {
				t.Errorf("attempts %+v, want none recorded", res.call.Attempts)
			}
			if res.call.ErrorCode != tc.code {
				t.Errorf("call error %q, want %q", res.call.ErrorCode, tc.code)
			}
			rm := res.replies[len(res.replies)-1].GetResponseHeaders().GetResponse().GetHeaderMutation().GetRemoveHeaders()
			if removed := slices.Contains(rm, hdrEnvoyRateLimited); removed != tc.mark {
				t.Errorf("router-level reply removes %v, want the mark removed: %v", rm, tc.mark)
			}
		})
	}
}

// TestSkippedCandidates: the call records the keys that could take it and
// why the others could not.
func TestSkippedCandidates(t *testing.T) {
	r := newRig(t, retryKeys)
	r.entry("b").RT.Update(func(s policy.KeyState) policy.KeyState { s.CooldownUntil = t0.Add(time.Minute); return s })
	res := r.run(chat("gpt-4")...)
	want := telemetry.Skip{KeyID: "b", Reason: policy.ReasonCoolingDown, Until: t0.Add(time.Minute)}
	if res.call.Candidates != 2 || res.call.NSkipped != 1 || res.call.Skipped[0] != want {
		t.Errorf("candidates %d, skipped %d %+v; want 2, 1 %+v", res.call.Candidates, res.call.NSkipped, res.call.Skipped[0], want)
	}
}
