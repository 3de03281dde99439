package e2e

import (
	"testing"
)

// The affinity strategy keeps a session on one key (provider prompt caches
// stay warm) and spreads sessions over the pool.
func TestAffinityKeepsSessionsOnOneKey(t *testing.T) {
	g := startGateway(t, `
settings: {strategy: affinity}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3}
`)
	keyOf := map[string]string{}
	used := map[string]bool{}
	sessions := []struct{ header, body string }{
		{"", `{"model":"gpt-4o","user":"alice","messages":[]}`},
		{"", `{"model":"gpt-4o","prompt_cache_key":"doc-42","user":"bob","messages":[]}`},
		{"session-7", `{"model":"gpt-4o","messages":[]}`},
	}
	for u := range 30 {
		sessions = append(sessions, struct{ header, body string }{"", `{"model":"gpt-4o","user":"user-` + string(rune('a'+u)) + `","messages":[]}`})
	}
	for round := range 3 {
		for i, s := range sessions {
			h := map[string]string{}
			if s.header != "" {
				h["x-keymux-affinity"] = s.header
			}
			before := len(g.requests())
			if resp, b := g.do("POST", "/v1/chat/completions", h, s.body); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			cred := g.requests()[before].Credential
			used[cred] = true
			if round == 0 {
				keyOf[s.body+s.header] = cred
			} else if keyOf[s.body+s.header] != cred {
				t.Fatalf("session %d moved from %s to %s in round %d", i, keyOf[s.body+s.header], cred, round)
			}
		}
	}
	for _, r := range g.requests() {
		if r.Header.Get("x-keymux-affinity") != "" {
			t.Fatalf("the affinity hint reached the upstream")
		}
	}
	if len(used) != 3 {
		t.Errorf("33 sessions used keys %v, want all three", used)
	}
}
