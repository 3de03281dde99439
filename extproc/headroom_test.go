package extproc

import (
	"math"
	"slices"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/policy"
)

// twoKeys is a pool of two OpenAI keys serving two models.
const twoKeys = `
settings: {strategy: round_robin}
keys:
  a: {provider: openai, secret: sk-test-a, models: [m-a, m-b]}
  b: {provider: openai, secret: sk-test-b, models: [m-a, m-b]}
`

// oneKey is one OpenAI key serving two models.
const oneKey = `
keys:
  k: {provider: openai, secret: sk-test-k, models: [m-a, m-b]}
`

// send runs one chat request for model (with the extra body members) that
// the chosen key answers with answer(key); it returns the result and the
// key ("" when keymux answered itself).
func (r *rig) send(model, extra string, answer func(key string) []*extprocv3.ProcessingRequest) (exchangeResult, string) {
	r.t.Helper()
	var key string
	st := newStream(r.t, request("POST", "/v1/chat/completions", `{"model":"`+model+`"`+extra+`,"messages":[{"role":"user","content":"hi"}]}`)...)
	st.upstream = answerAs(func(k string) []*extprocv3.ProcessingRequest {
		key = k
		return answer(k)
	})
	return r.runStream(st), key
}

// answer answers with status and headers kv.
func answer(code string, kv ...string) func(string) []*extprocv3.ProcessingRequest {
	return func(string) []*extprocv3.ProcessingRequest {
		return []*extprocv3.ProcessingRequest{respHeaders(true, append([]string{":status", code}, kv...)...)}
	}
}

// A key whose answer says no request is left is not chosen again until
// the reset those headers name; no 429 is needed.
func TestHeadroomSkipsDrainedKey(t *testing.T) {
	r := newRig(t, twoKeys)
	_, first := r.send("m-a", "", answer("200", "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "20s"))
	if first != "a" {
		t.Fatalf("first request on %q, want a", first)
	}
	for i := range 4 {
		if _, k := r.send("m-a", "", answer("200")); k != "b" {
			t.Fatalf("request %d before the reset on %q, want b", i, k)
		}
	}
	// The headroom is per model: m-b still has a.
	if _, k := r.send("m-b", "", answer("200")); k != "a" {
		t.Errorf("m-b on %q, want a (round robin, headroom spent on m-a only)", k)
	}
	r.clock.Advance(20 * time.Second)
	seen := map[string]int{}
	for range 4 {
		_, k := r.send("m-a", "", answer("200"))
		seen[k]++
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Errorf("after the reset: %v, want a and b twice each", seen)
	}
}

// A key with fewer tokens left than a request's estimate (body bytes/4 +
// max_tokens) is skipped for that request, not for a smaller one.
func TestHeadroomTokens(t *testing.T) {
	r := newRig(t, oneKey)
	r.send("m-a", "", answer("200", "x-ratelimit-remaining-tokens", "500", "x-ratelimit-limit-tokens", "10000", "x-ratelimit-reset-tokens", "6m0s"))
	res, k := r.send("m-a", `,"max_tokens":1000`, answer("200"))
	if k != "" {
		t.Fatalf("a request of ~1000 tokens went to %q with 500 left", k)
	}
	if l := immediate(t, res.replies[len(res.replies)-1]); l.status != 503 || l.code() != policy.CodeKeysCoolingDown {
		t.Errorf("refusal %d %s, want 503 %s", l.status, l.code(), policy.CodeKeysCoolingDown)
	}
	if _, k := r.send("m-a", `,"max_completion_tokens":100`, answer("200")); k != "k" {
		t.Errorf("a request of ~120 tokens refused with 500 left")
	}
}

// Each answer is classified once, and changes the key's state for the
// request's model or for all of them.
func TestAnswerClassification(t *testing.T) {
	tests := []struct {
		name     string
		extra    string // body members of the request on m-a
		answer   []string
		body     string // the error body (read from the response, UsageFromBody)
		class    string
		servesA  bool // the key still takes m-a
		servesB  bool // the key still takes m-b
		disabled string
	}{
		{name: "429 cools m-a only", answer: []string{":status", "429", "retry-after", "30"},
			class: policy.ClassRateLimited, servesB: true},
		{name: "request too large: the client's 429", extra: `,"max_tokens":50000`,
			answer: []string{":status", "429", "x-ratelimit-limit-tokens", "30000", "x-ratelimit-remaining-tokens", "30000", "x-ratelimit-remaining-requests", "499"},
			body:   `{"error":{"message":"Request too large for m-a on tokens per min (TPM): Limit 30000, Requested 50100.","type":"tokens","code":"rate_limit_exceeded"}}`,
			class:  policy.ClassClient, servesA: true, servesB: true},
		{name: "401 disables the key", answer: []string{":status", "401"}, class: policy.ClassAuth, disabled: policy.DisabledAuth},
		{name: "insufficient_quota parks the key", answer: []string{":status", "429"},
			body:  `{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}`,
			class: policy.ClassAuth, disabled: policy.DisabledQuota},
		{name: "404 model_not_found: out of m-a's pool", answer: []string{":status", "404"},
			body:  `{"error":{"message":"The model m-a does not exist or you do not have access to it.","code":"model_not_found"}}`,
			class: policy.ClassClient, servesB: true},
		{name: "403 model_not_found: out of m-a's pool, not disabled", answer: []string{":status", "403"},
			body:  `{"error":{"code":"model_not_found"}}`,
			class: policy.ClassAuth, servesB: true},
		{name: "a 404 of another kind is the client's", answer: []string{":status", "404"},
			body:  `{"error":{"code":"unknown_url"}}`,
			class: policy.ClassClient, servesA: true, servesB: true},
		{name: "5xx ejects the key for all models", answer: []string{":status", "503"}, class: policy.ClassServer},
		{name: "504 (timeout) ejects the key for all models", answer: []string{":status", "504"}, class: policy.ClassTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "settings: {ejection: {cooldown: 45s, consecutive_failures: 1}}\n"+oneKey)
			res, _ := r.send("m-a", tc.extra, func(string) []*extprocv3.ProcessingRequest {
				if tc.body == "" {
					return []*extprocv3.ProcessingRequest{respHeaders(true, tc.answer...)}
				}
				return []*extprocv3.ProcessingRequest{respHeaders(false, append(tc.answer, "content-type", "application/json")...), respBody(tc.body, true)}
			})
			if res.call.ErrorCode != tc.class {
				t.Errorf("class %q, want %q", res.call.ErrorCode, tc.class)
			}
			if s := r.entry("k").RT.State(); s.Disabled != (tc.disabled != "") || s.DisabledReason != tc.disabled || !s.CooldownUntil.IsZero() {
				t.Errorf("key state %+v, want disabled %q and no key-wide cooldown", s, tc.disabled)
			}
			for _, m := range []struct {
				model string
				want  bool
			}{{"m-a", tc.servesA}, {"m-b", tc.servesB}} {
				if _, k := r.send(m.model, "", answer("200")); (k == "k") != m.want {
					t.Errorf("%s served: %v, want %v", m.model, k == "k", m.want)
				}
			}
		})
	}
}

// A 403 model_not_found lifts the disable its own headers caused (the
// key's DisabledAt is the one that answer stamped), not one that was there
// before it, nor one a later auth or quota verdict stamped (another
// request's 401, a fleet member's disable); a later ejection does not stop
// it.
func TestBlockModelLiftsOnlyItsOwnDisable(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		state      policy.KeyState
		disabledAt time.Time // what the call's answer stamped (zero: it disabled nothing)
		disabled   bool
	}{
		{"its own 403", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, DisabledAt: t0, VerdictAt: t0}, t0, false},
		{"an ejection after it", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, DisabledAt: t0, VerdictAt: t0.Add(time.Second)}, t0, false},
		{"a 401 after it", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, DisabledAt: t0.Add(time.Second), VerdictAt: t0.Add(time.Second)}, t0, true},
		{"a quota verdict after it", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledQuota, DisabledAt: t0.Add(time.Second)}, t0, true},
		{"disabled before the 403", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, DisabledAt: t0}, time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRig(t, oneKey).entry("k")
			e.RT.Update(func(policy.KeyState) policy.KeyState { return tt.state })
			blockModel(e, "m-a", 403, t0.Add(2*time.Second), tt.disabledAt)
			if s := e.RT.State(); s.Disabled != tt.disabled {
				t.Errorf("disabled %v, want %v (%+v)", s.Disabled, tt.disabled, s)
			}
		})
	}
}

// A 403 on a key an earlier verdict disabled (an exhausted quota) does not
// lift that disable when its body says model_not_found: the 403 disabled
// nothing.
func TestModelNotFoundKeepsAnEarlierDisable(t *testing.T) {
	r := newRig(t, oneKey)
	res, k := r.send("m-a", "", func(string) []*extprocv3.ProcessingRequest {
		// Another request's exhausted quota parks the key while this one waits for its answer.
		r.entry("k").RT.Update(func(s policy.KeyState) policy.KeyState {
			return policy.NextState(s, policy.Outcome{Kind: policy.OutcomeQuota, Status: 429}, policy.EjectionSettings{}, r.clock.Now())
		})
		return []*extprocv3.ProcessingRequest{respHeaders(false, ":status", "403", "content-type", "application/json"), respBody(`{"error":{"code":"model_not_found"}}`, true)}
	})
	if k != "k" || res.call.ErrorCode != policy.ClassAuth {
		t.Fatalf("request on %q, class %q", k, res.call.ErrorCode)
	}
	if s := r.entry("k").RT.State(); !s.Disabled {
		t.Errorf("the key is back after a 403 model_not_found: %+v", s)
	}
}

// A block for a model lasts until the key's next probe.
func TestModelBlockLiftedByProbe(t *testing.T) {
	r := newRig(t, oneKey)
	r.send("m-a", "", func(string) []*extprocv3.ProcessingRequest {
		return []*extprocv3.ProcessingRequest{respHeaders(false, ":status", "404", "content-type", "application/json"), respBody(`{"error":{"code":"model_not_found"}}`, true)}
	})
	if _, k := r.send("m-a", "", answer("200")); k != "" {
		t.Fatalf("m-a served by %q after model_not_found", k)
	}
	r.clock.Advance(time.Second)
	r.entry("k").RT.Update(func(s policy.KeyState) policy.KeyState { return policy.ProbeResult(s, true, "", r.clock.Now()) })
	if _, k := r.send("m-a", "", answer("200")); k != "k" {
		t.Errorf("m-a not served after a passing probe")
	}
}

// The access log's error code (Envoy's json_to_metadata) blocks the model
// as the body would.
func TestModelBlockFromAccessLog(t *testing.T) {
	f := newALSFixture(t, Config{})
	x, id := f.forward(t)
	if _, err := x.handle(responseHeaders("404", false)); err != nil {
		t.Fatal(err)
	}
	x.finish()
	f.s.accessLogs(batch(entry(id, 404, usageMeta(map[string]*structpb.Value{metaErrorCode: structpb.NewStringValue("model_not_found")}))))
	m := f.key().RT.Model("gpt-4o-mini") // k0's rule: gpt-4 → gpt-4o-mini
	if m == nil || !m.Blocked(f.key().RT.State().ProbedAt) {
		t.Errorf("gpt-4o-mini not blocked for k0 after model_not_found")
	}
}

// After an ejection a key's share of traffic grows linearly over
// ejection.slow_start: with two keys in round robin it takes half of its
// full share halfway through.
func TestSlowStart(t *testing.T) {
	r := newRig(t, "settings: {strategy: round_robin, ejection: {slow_start: 40s, base: 10s}}\nkeys:\n  a: {provider: openai, secret: sk-test-a}\n  b: {provider: openai, secret: sk-test-b}\n")
	for fails, i := 0, 0; fails < 3; i++ { // b fails three times in a row: ejected for 10s
		if i == 10 {
			t.Fatal("b was not chosen three times in ten requests")
		}
		if _, k := r.send("gpt-4o", "", func(k string) []*extprocv3.ProcessingRequest {
			if k == "b" {
				return answer("503")(k)
			}
			return answer("200")(k)
		}); k == "b" {
			fails++
		}
	}
	s := r.entry("b").RT.State()
	if !s.EjectedUntil.Equal(t0.Add(10*time.Second)) || !s.SlowStartFrom.Equal(s.EjectedUntil) {
		t.Fatalf("b's state %+v, want ejected until t0+10s with slow start from then", s)
	}
	const n = 400
	for _, at := range []struct {
		since time.Duration // after the ejection's end
		share float64       // of b's full share (one half)
	}{{0, 0}, {10 * time.Second, 0.25}, {20 * time.Second, 0.5}, {30 * time.Second, 0.75}, {40 * time.Second, 1}} {
		r.clock.Set(t0.Add(10*time.Second + at.since))
		b := 0
		for range n {
			if _, k := r.send("gpt-4o", "", answer("200")); k == "b" {
				b++
			}
		}
		if got := float64(b) / n / 0.5; math.Abs(got-at.share) > 0.06 {
			t.Errorf("%v into the slow start: b's share %.3f of its full share, want %.2f", at.since, got, at.share)
		}
	}
}

// The client gets the pool's headroom (sums over the eligible keys, the
// earliest reset), not the chosen key's headers.
func TestPoolHeadroomHeaders(t *testing.T) {
	r := newRig(t, twoKeys)
	answers := map[string][]string{
		"a": {"x-ratelimit-limit-requests", "10", "x-ratelimit-remaining-requests", "7", "x-ratelimit-reset-requests", "20s",
			"x-ratelimit-limit-tokens", "1000", "x-ratelimit-remaining-tokens", "900", "x-ratelimit-reset-tokens", "6s"},
		"b": {"x-ratelimit-limit-requests", "10", "x-ratelimit-remaining-requests", "3", "x-ratelimit-reset-requests", "5s",
			"anthropic-ratelimit-requests-remaining", "1"},
	}
	var res exchangeResult
	for range 3 { // a, b, a
		res, _ = r.send("m-a", "", func(k string) []*extprocv3.ProcessingRequest { return answer("200", answers[k]...)(k) })
	}
	var mut *extprocv3.HeaderMutation
	for _, rep := range res.replies {
		if h := rep.GetResponseHeaders(); h != nil {
			mut = h.GetResponse().GetHeaderMutation()
		}
	}
	got := map[string]string{}
	for _, h := range mut.GetSetHeaders() {
		got[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	want := map[string]string{
		"x-ratelimit-limit-requests": "20", "x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "5s",
		"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6s",
	}
	if len(got) != len(want) {
		t.Errorf("response headers set %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if rm := mut.GetRemoveHeaders(); !slices.Contains(rm, "anthropic-ratelimit-requests-remaining") {
		t.Errorf("the key's own headers are not removed: %v", rm)
	}
	// b has spent its requests: the pool is a alone.
	r.send("m-a", "", func(k string) []*extprocv3.ProcessingRequest {
		return answer("200", "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "5s")(k)
	})
	if h := r.entry("b").RT.Model("m-a").Headroom(r.clock.Now()); h.Requests.Remaining != 0 {
		t.Fatalf("b's m-a headroom %+v", h)
	}
}

// The decision path's headroom check does not allocate.
func TestAdmitsAllocs(t *testing.T) {
	r := newRig(t, twoKeys)
	r.send("m-a", "", answer("200", "x-ratelimit-remaining-requests", "7", "x-ratelimit-reset-requests", "20s"))
	x := newExchange(r.srv)
	x.snap = r.store.Read()
	x.settings = x.snap.Settings()
	x.call.ModelOriginal = "m-a"
	e := r.entry("a")
	now := r.clock.Now()
	if n := testing.AllocsPerRun(100, func() {
		x.admits(e, 100, now)
		take(e, "m-a", 100, now)
	}); n != 0 {
		t.Errorf("admits+take: %v allocations", n)
	}
}
