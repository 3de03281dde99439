package e2e

import (
	"strings"
	"testing"

	"github.com/keymux/keymux/examples/mockupstream"
)

// A key's failure stays inside the gateway: Envoy retries the request
// (the route's retry_policy) and keymux's upstream ext_proc filter puts
// another key of the same host on the retry, re-applying that key's model
// rule to the body. Client errors go back as they came, after one attempt.
func TestRetryOnAnotherKey(t *testing.T) {
	const body = `{"messages":[{"role":"user","content":"h\u00e9llo"}],  "model" :  "gpt-4", "temperature":0.25}`
	mini := strings.Replace(body, `"gpt-4"`, `"gpt-4o-mini"`, 1) // k2's rule
	cases := []struct {
		name     string
		b        mockupstream.Behaviour
		status   int // what the client gets
		attempts int
	}{
		{"429 rate limit", mockBehaviour429("30"), 200, 2},
		{"401 invalid key", mockBehaviourStatus(401), 200, 2},
		{"503 unavailable", mockBehaviourStatus(503), 200, 2},
		{"400 bad request", mockBehaviourStatus(400), 400, 1},
		{"404 not found", mockBehaviourStatus(404), 404, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, threeKeys+`
rules:
  k2-mini: {key: k2, from: gpt-4, to: gpt-4o-mini}
`)
			// Round robin: walk the rotation until k1 served, so that k2
			// (whose rule rewrites the model) is chosen next.
			for i := 0; ; i++ {
				resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, body)
				if resp.StatusCode != 200 {
					t.Fatalf("warm-up %d: status %d: %s", i, resp.StatusCode, b)
				}
				if reqs := g.requests(); reqs[len(reqs)-1].Credential == "sk-test-k1" {
					break
				}
				if i == 3 {
					t.Fatal("k1 never served a request")
				}
			}
			warm := len(g.requests())
			g.mock.Script("sk-test-k2", tc.b)
			resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			reqs := g.requests()[warm:]
			if len(reqs) != tc.attempts {
				t.Fatalf("upstream attempts %d, want %d", len(reqs), tc.attempts)
			}
			first := reqs[0]
			if first.Credential != "sk-test-k2" || first.Status != tc.b.Status || string(first.Body) != mini {
				t.Errorf("first attempt: key %s status %d body %s; want sk-test-k2, %d, %s", first.Credential, first.Status, first.Body, tc.b.Status, mini)
			}
			for _, r := range reqs {
				if v := r.Header.Get("X-Keymux-Call") + r.Header.Get("X-Envoy-Max-Retries"); v != "" {
					t.Errorf("%s: keymux's retry headers reached the upstream: %v", r.Credential, r.Header)
				}
				if r.ContentLength != int64(len(r.Body)) {
					t.Errorf("%s: content-length %d for %d bytes", r.Credential, r.ContentLength, len(r.Body))
				}
			}
			if tc.attempts == 1 {
				return
			}
			retry := reqs[1]
			if retry.Credential == "sk-test-k2" || !strings.HasPrefix(retry.Credential, "sk-test-k") || retry.Status != 200 {
				t.Errorf("retry: key %s status %d, want another key and 200", retry.Credential, retry.Status)
			}
			// Neither k1 nor k3 has a rule: the body is the client's again.
			if string(retry.Body) != body {
				t.Errorf("retry body\n got %s\nwant %s", retry.Body, body)
			}
		})
	}
}
