package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/wait"
)

type statusDoc struct {
	Source     string `json:"source"`
	Generation uint64 `json:"generation"`
	Refused    []struct {
		Path   string `json:"path"`
		Reason string `json:"reason"`
	} `json:"refused"`
}

func (g *gateway) status() statusDoc {
	g.t.Helper()
	var s statusDoc
	if err := json.Unmarshal(g.getAdmin("/status"), &s); err != nil {
		g.t.Fatal(err)
	}
	return s
}

// A bad edit of the config file is refused alone: the entry's last good
// version keeps serving and /status names the entry and the reason; a broken
// file keeps the whole previous config; a good edit applies.
func TestConfigFileReload(t *testing.T) {
	g := startGateway(t, threeKeys)
	served := func(n int) map[string]int {
		t.Helper()
		before := len(g.requests())
		for range n {
			if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
		}
		out := map[string]int{}
		for _, r := range g.requests()[before:] {
			out[r.Credential]++
		}
		return out
	}
	gen := g.status().Generation

	g.writeConfig(strings.Replace(threeKeys, "k3: {provider: openai_compatible", "k3: {provider: nope", 1))
	wait.Until(t, 10*time.Second, "a refusal on /status", func() bool { return len(g.status().Refused) > 0 })
	st := g.status()
	if len(st.Refused) != 1 || !strings.HasSuffix(st.Refused[0].Path, "keys/k3") || !strings.Contains(st.Refused[0].Reason, `unknown provider "nope"`) {
		t.Fatalf("refused = %+v, want keys/k3 with the unknown provider", st.Refused)
	}
	if strings.Contains(string(g.getAdmin("/status")), "sk-test-k3") {
		t.Fatalf("/status shows a secret")
	}
	if got := served(6); got["sk-test-k3"] != 2 || got["sk-test-k1"] != 2 {
		t.Fatalf("after a bad entry the last good pool should serve in rotation, got %v", got)
	}

	g.writeConfig("keys: [this is: not: valid")
	wait.Until(t, 10*time.Second, "the broken file refused on /status", func() bool {
		for _, r := range g.status().Refused {
			if strings.HasSuffix(r.Path, "keymux.yaml") {
				return true
			}
		}
		return false
	})
	if got := served(3); len(got) != 3 {
		t.Fatalf("a broken file must keep the previous config serving, got %v", got)
	}

	g.writeConfig(strings.Replace(threeKeys, "  k3: {provider: openai_compatible, base_url: \"{{MOCK}}/v1\", secret: sk-test-k3}\n", "", 1))
	wait.Until(t, 10*time.Second, "a new generation without refusals", func() bool { s := g.status(); return len(s.Refused) == 0 && s.Generation > gen })
	if got := served(4); got["sk-test-k3"] != 0 || got["sk-test-k1"] != 2 || got["sk-test-k2"] != 2 {
		t.Fatalf("after removing k3: %v", got)
	}
}
