package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestJavaScriptClient runs examples/clients/js (the official npm `openai`
// package, unmodified) against the gateway: a completion and a stream with
// usage.
func TestJavaScriptClient(t *testing.T) {
	g := startGateway(t, threeKeys+`
rules:
  k2-mini: {key: k2, from: gpt-4, to: gpt-4o-mini}
`)
	out := g.runJS(script("index.mjs"))
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "Hello from mock (model gpt-4") || !strings.HasSuffix(lines[len(lines)-1], "tokens)") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	reqs := g.requests()
	if len(reqs) != 2 || reqs[0].Stream || !reqs[1].Stream {
		t.Fatalf("mock saw %d requests (want a completion then a stream)", len(reqs))
	}
	for _, r := range reqs {
		if strings.Contains(r.AuthValue, "km-js-client") {
			t.Errorf("the client's token reached the upstream")
		}
	}
}

type script string

// runJS runs a script of examples/clients/js (the official npm openai
// package, unmodified) against the gateway with the client token
// km-js-client, and returns its standard output.
func (g *gateway) runJS(name script) []byte {
	g.t.Helper()
	const dir = "../examples/clients/js"
	if _, err := os.Stat(dir + "/node_modules/openai/package.json"); err != nil {
		g.t.Fatalf("the npm openai package is not installed: run `npm ci --prefix examples/clients/js` (make test does): %v", err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		g.t.Fatalf("node is required for the JavaScript client tests: %v", err)
	}
	ctx, cancel := context.WithTimeout(g.t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, string(name))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KEYMUX_URL="+g.url+"/v1", "KEYMUX_TOKEN=km-js-client")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		g.t.Fatalf("node %s: %v\n%s%s", name, err, out, stderr.String())
	}
	return out
}
