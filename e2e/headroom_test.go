package e2e

// Provider headroom and per-(key, model) state end to end (issue 13):
// the mock upstream sends OpenAI's x-ratelimit-* headers per key and
// model, Envoy (the emulator) carries them to keymux over real gRPC, and
// keymux's choices, the client's response headers and /stats follow.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/wait"
)

// twoModelKeys is two keys serving two models, in strict rotation.
const twoModelKeys = `
settings:
  strategy: round_robin
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, models: [gpt-4o, gpt-4o-mini]}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2, models: [gpt-4o, gpt-4o-mini]}
`

// chatFor sends a chat completion for model (with extra body members) and
// returns the response, its body and the key that served it ("" when no
// upstream request was made).
func (g *gateway) chatFor(model, extra string) (*http.Response, []byte, string) {
	g.t.Helper()
	n := len(g.requests())
	resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"},
		`{"model":"`+model+`"`+extra+`,"messages":[{"role":"user","content":"hi"}]}`)
	reqs := g.requests()
	if len(reqs) == n {
		return resp, b, ""
	}
	return resp, b, strings.TrimPrefix(reqs[len(reqs)-1].Credential, "sk-test-")
}

// A key that answers x-ratelimit-remaining-requests: 0 with a reset is not
// chosen again until that reset, and no 429 is needed to learn it.
func TestHeadroomSpentKeyWaitsForReset(t *testing.T) {
	const reset = 3 * time.Second
	g := startGateway(t, twoModelKeys)
	g.mock.SetDefault("sk-test-k1", mockupstream.Behaviour{Path: chatPath, Headers: map[string]string{
		"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset.String()}})
	start := time.Now() // keymux computes the reset after this
	resp, b, key := g.chatFor("gpt-4o", "")
	if resp.StatusCode != 200 || key != "k1" {
		t.Fatalf("first request: %d on %q, want 200 on k1: %s", resp.StatusCode, key, b)
	}
	learned := time.Now() // keymux computed the reset before this
	// Every request answered before start+reset was decided before the
	// reset: none may go to k1.
	n := 0
	for time.Since(start) < reset-500*time.Millisecond && n < 10 {
		resp, b, key := g.chatFor("gpt-4o", "")
		if time.Since(start) >= reset {
			break // too slow to tell
		}
		if resp.StatusCode != 200 || key != "k2" {
			t.Fatalf("request %d before the reset: %d on %q, want 200 on k2: %s", n, resp.StatusCode, key, b)
		}
		n++
	}
	if n < 2 {
		t.Fatalf("only %d requests before the reset: the machine is too slow for this test", n)
	}
	// gpt-4o-mini has its own budget on k1.
	if _, _, key := g.chatFor("gpt-4o-mini", ""); key == "" {
		t.Fatal("gpt-4o-mini not served")
	}
	time.Sleep(time.Until(learned.Add(reset)))
	g.mock.SetDefault("sk-test-k1", mockupstream.Behaviour{})
	seen := map[string]bool{}
	for range 2 {
		_, _, key := g.chatFor("gpt-4o", "")
		seen[key] = true
	}
	if !seen["k1"] || !seen["k2"] {
		t.Errorf("after the reset the rotation serves %v, want k1 and k2", seen)
	}
	for _, r := range g.requests() {
		if r.Status == 429 {
			t.Errorf("the upstream answered 429 to %s", r.Credential)
		}
	}
}

// A 429 for one model cools the key for that model only; a "Request too
// large" 429 is the client's: it reaches the client as the provider sent
// it and the key stays in rotation.
func TestPerModelCooldownAndRequestTooLarge(t *testing.T) {
	g := startGateway(t, `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, models: [gpt-4o, gpt-4o-mini]}
`)
	const tooLarge = `{"error":{"message":"Request too large for gpt-4o in organization org-mock on tokens per min (TPM): Limit 30000, Requested 50012.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	g.mock.Script("sk-test-k1", mockupstream.Behaviour{Status: 429, Path: chatPath, Model: "gpt-4o", Body: tooLarge, Headers: map[string]string{
		"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "30000",
		"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms"}})
	resp, b, key := g.chatFor("gpt-4o", `,"max_tokens":50000`)
	if resp.StatusCode != 429 || key != "k1" || string(b) != tooLarge {
		t.Fatalf("too large: %d on %q: %s; want the provider's 429 as is", resp.StatusCode, key, b)
	}
	if resp, b, key := g.chatFor("gpt-4o", ""); resp.StatusCode != 200 || key != "k1" {
		t.Fatalf("after a request-too-large 429: %d on %q: %s; want k1 still serving", resp.StatusCode, key, b)
	}

	g.mock.Script("sk-test-k1", mockupstream.Behaviour{Status: 429, Path: chatPath, Model: "gpt-4o", RetryAfter: "30"})
	if resp, b, _ := g.chatFor("gpt-4o", ""); resp.StatusCode != 429 {
		t.Fatalf("rate limit: %d: %s", resp.StatusCode, b)
	}
	if resp, b, key := g.chatFor("gpt-4o-mini", ""); resp.StatusCode != 200 || key != "k1" {
		t.Errorf("gpt-4o-mini after a 429 on gpt-4o: %d on %q: %s; want k1", resp.StatusCode, key, b)
	}
	resp, b, key = g.chatFor("gpt-4o", "")
	if resp.StatusCode != 503 || key != "" || !strings.Contains(string(b), "keys_cooling_down") {
		t.Errorf("gpt-4o while k1 cools down for it: %d on %q: %s; want 503 keys_cooling_down", resp.StatusCode, key, b)
	}
	got := g.modelStates()
	want := map[string]string{"k1": "healthy", "k1/gpt-4o": "cooling_down", "k1/gpt-4o-mini": "healthy"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("/stats key states %v, want %v", got, want)
	}
	metrics := string(g.getAdmin("/metrics"))
	for _, series := range []string{`keymux_key_model_state{key="k1",model="gpt-4o",state="cooling_down"`, `keymux_key_headroom_requests{key="k1",model="gpt-4o-mini"`} {
		if !strings.Contains(metrics, series) {
			t.Errorf("/metrics has no %s…}", series)
		}
	}
}

// The client gets the pool's headroom: the sums over the eligible keys
// (and the earliest reset), not the chosen key's own headers.
func TestClientSeesPoolHeadroom(t *testing.T) {
	g := startGateway(t, twoModelKeys)
	g.mock.SetDefault("sk-test-k1", mockupstream.Behaviour{Path: chatPath, Headers: map[string]string{
		"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "70", "x-ratelimit-reset-requests": "50s",
		"x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "40s"}})
	g.mock.SetDefault("sk-test-k2", mockupstream.Behaviour{Path: chatPath, Headers: map[string]string{
		"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "30", "x-ratelimit-reset-requests": "30s",
		"x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "20s"}})
	var resp *http.Response
	for _, want := range []string{"k1", "k2", "k1"} {
		var key string
		resp, _, key = g.chatFor("gpt-4o", "")
		if resp.StatusCode != 200 || key != want {
			t.Fatalf("%d on %q, want 200 on %s", resp.StatusCode, key, want)
		}
	}
	h := resp.Header
	for name, want := range map[string]string{
		"x-ratelimit-limit-requests": "200", "x-ratelimit-remaining-requests": "100",
		"x-ratelimit-limit-tokens": "20000", "x-ratelimit-remaining-tokens": "14000",
	} {
		if got := h.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%s] (the pool's, not k1's)", name, got, want)
		}
	}
	for name, limit := range map[string]time.Duration{"x-ratelimit-reset-requests": 30 * time.Second, "x-ratelimit-reset-tokens": 20 * time.Second} {
		d, err := time.ParseDuration(h.Get(name))
		if err != nil || d <= limit-10*time.Second || d > limit {
			t.Errorf("%s = %q, want k2's earlier reset (just under %v)", name, h.Get(name), limit)
		}
	}
}

// After an ejection a key is re-admitted gradually: its share of traffic
// grows linearly over ejection.slow_start (measured per second).
func TestSlowStartShareGrows(t *testing.T) {
	const slow = 4 * time.Second
	g := startGateway(t, `
settings:
  strategy: round_robin
  ejection: {consecutive_failures: 1, base: 1s, slow_start: 4s}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
`)
	g.mock.Script("sk-test-k2", mockupstream.Behaviour{Status: 503, Path: chatPath})
	start := time.Now()
	for i := 0; ; i++ { // until k2 has answered its 503 (Envoy retries it on k1)
		if resp, b, _ := g.chatFor("gpt-4o", ""); resp.StatusCode != 200 {
			t.Fatalf("%d: %s", resp.StatusCode, b)
		}
		if reqs := g.requests(); len(reqs) >= 2 && reqs[len(reqs)-2].Credential == "sk-test-k2" {
			break
		}
		if i == 3 {
			t.Fatal("k2 never answered its 503")
		}
	}
	ejectedAt := time.Now() // k2 comes back 1s after a moment in [start, ejectedAt]
	// Count k2's share per second, from the ejection's end to the end of
	// the slow start and one second beyond.
	type bucket struct{ k2, all int }
	var buckets [6]bucket
	end := ejectedAt.Add(time.Second + time.Duration(len(buckets))*time.Second)
	for time.Now().Before(end) {
		resp, _, key := g.chatFor("gpt-4o", "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d during the slow start", resp.StatusCode)
		}
		i := int(time.Since(ejectedAt.Add(time.Second)) / time.Second)
		if i < 0 || i >= len(buckets) {
			continue
		}
		buckets[i].all++
		if key == "k2" {
			buckets[i].k2++
		}
	}
	shares := make([]float64, len(buckets))
	for i, b := range buckets {
		if b.all < 10 {
			t.Fatalf("second %d: only %d requests: too slow to measure", i, b.all)
		}
		shares[i] = float64(b.k2) / float64(b.all)
	}
	t.Logf("k2's share of traffic per second after the ejection (full share 0.5): %.2f (ejected %v after the start)", shares, ejectedAt.Sub(start).Round(time.Millisecond))
	// The share in second i lies between the slow start's value at the
	// second's start and at its end (within 0.1 for the count): the window
	// starts in [start+1s, ejectedAt+1s].
	lead := ejectedAt.Sub(start).Seconds()
	for i, s := range shares {
		lo := 0.5 * min(max(float64(i)/slow.Seconds(), 0), 1)
		hi := 0.5 * min(max((float64(i+1)+lead)/slow.Seconds(), 0), 1)
		if s < lo-0.1 || s > hi+0.1 {
			t.Errorf("second %d: k2's share %.2f, want within [%.2f, %.2f]", i, s, lo, hi)
		}
	}
	if shares[0] >= shares[3] || shares[5] < 0.4 {
		t.Errorf("the share does not grow to the full half: %.2f", shares)
	}
}

// modelStates reads /stats: each key's state by id, and its state per
// model by "id/model".
func (g *gateway) modelStates() map[string]string {
	g.t.Helper()
	var st struct {
		Keys []struct {
			ID     string `json:"id"`
			State  string `json:"state"`
			Models []struct {
				Model string `json:"model"`
				State string `json:"state"`
			} `json:"models"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(g.getAdmin("/stats"), &st); err != nil {
		g.t.Fatal(err)
	}
	got := map[string]string{}
	for _, k := range st.Keys {
		got[k.ID] = k.State
		for _, m := range k.Models {
			got[k.ID+"/"+m.Model] = m.State
		}
	}
	return got
}

// A 404 model_not_found (its error code read by Envoy's json_to_metadata
// into the access log: the body never reaches keymux) takes the key out of
// that model's pool; the key keeps serving its other models.
func TestModelNotFoundLeavesOtherModels(t *testing.T) {
	g := startGateway(t, twoModelKeys)
	g.mock.Script("sk-test-k1", mockupstream.Behaviour{Status: 404, Path: chatPath, Model: "gpt-4o"})
	resp, b, key := g.chatFor("gpt-4o", "")
	if resp.StatusCode != 404 || key != "k1" || !strings.Contains(string(b), "model_not_found") {
		t.Fatalf("%d on %q: %s; want k1's 404 model_not_found", resp.StatusCode, key, b)
	}
	wait.Until(t, 5*time.Second, "k1 out of gpt-4o's pool on /stats", func() bool {
		return g.modelStates()["k1/gpt-4o"] == "model_unavailable"
	})
	for range 3 {
		if resp, b, key := g.chatFor("gpt-4o", ""); resp.StatusCode != 200 || key != "k2" {
			t.Fatalf("gpt-4o: %d on %q: %s; want k2 only", resp.StatusCode, key, b)
		}
	}
	seen := map[string]bool{}
	for range 2 {
		_, _, key := g.chatFor("gpt-4o-mini", "")
		seen[key] = true
	}
	if !seen["k1"] || !seen["k2"] {
		t.Errorf("gpt-4o-mini served by %v, want k1 and k2", seen)
	}
	if st := g.modelStates(); st["k1"] != "healthy" {
		t.Errorf("k1 is %q, want healthy (out of one model's pool only)", st["k1"])
	}
}
