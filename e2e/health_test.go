package e2e

import (
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/wait"
)

// A key the upstream stops accepting (401) is taken out of rotation by the
// request path, and the scheduled recovery probe brings it back once the
// upstream accepts it again: no key stays out for good.
func TestDisabledKeyComesBackThroughRecoveryProbe(t *testing.T) {
	g := startGateway(t, `
settings:
  strategy: round_robin
  health: {interval: 1s, timeout: 500ms}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
`)
	g.mock.SetDefault("sk-test-k1", mockBehaviourStatus(401))
	for range 2 { // one of these reaches k1 and disables it
		g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, `{"model":"gpt-4o","messages":[]}`)
	}
	g.mock.SetDefault("sk-test-k1", mockupstream.Behaviour{})
	disabledAt := time.Now()
	n := len(g.mock.Requests())
	for range 4 {
		resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, `{"model":"gpt-4o","messages":[]}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	}
	for _, r := range g.mock.Requests()[n:] {
		if r.Credential == "sk-test-k1" && r.Path == "/v1/chat/completions" {
			if time.Since(disabledAt) < 500*time.Millisecond {
				t.Fatalf("k1 served a chat right after its 401")
			}
		}
	}
	// The recovery probe (GET /v1/models with k1) passes and k1 is back.
	wait.Until(t, 10*time.Second, "k1 back in rotation after its recovery probe", func() bool {
		g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, `{"model":"gpt-4o","messages":[]}`)
		reqs := g.mock.Requests()
		last := reqs[len(reqs)-1]
		return last.Credential == "sk-test-k1" && last.Path == "/v1/chat/completions"
	})
	probed := false
	for _, r := range g.mock.Requests() {
		if r.Credential == "sk-test-k1" && r.Method == "GET" && r.Path == "/v1/models" && r.Time.After(disabledAt) {
			probed = true
		}
	}
	if !probed {
		t.Fatalf("k1 came back without a recovery probe")
	}
}
