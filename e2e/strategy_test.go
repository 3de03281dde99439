package e2e

import (
	"math"
	"testing"
)

// shares sends n chat requests and returns each credential's share of them.
func shares(t *testing.T, g *gateway, n int) map[string]float64 {
	t.Helper()
	before := len(g.requests())
	for range n {
		resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, `{"model":"gpt-4o","messages":[]}`)
		if resp.StatusCode != 200 && resp.StatusCode != 500 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	}
	out := map[string]float64{}
	reqs := g.requests()[before:]
	for _, r := range reqs {
		out[r.Credential] += 1 / float64(len(reqs))
	}
	return out
}

func TestWeightedByUsageSharesFollowWeights(t *testing.T) {
	// Each pick has P(k) ∝ w_k/(u_k+1), u_k = requests k served so far. If
	// the long-run shares are a_k (u_k ≈ a_k·n), then a_k ∝ (w_k/a_k), so
	// a_k ∝ √w_k: weights 1, 2, 3 settle at 0.241, 0.341, 0.418. (The
	// per-pick formula itself is checked over 10,000 picks in policy.)
	g := startGateway(t, `
settings: {strategy: weighted_by_usage}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, weight: 1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2, weight: 2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3, weight: 3}
`)
	got := shares(t, g, 600)
	norm := 1 + math.Sqrt2 + math.Sqrt(3)
	const tolerance = 0.04 // absolute; the feedback keeps the spread small
	for k, want := range map[string]float64{"sk-test-k1": 1 / norm, "sk-test-k2": math.Sqrt2 / norm, "sk-test-k3": math.Sqrt(3) / norm} {
		if math.Abs(got[k]-want) > tolerance {
			t.Errorf("%s share %.3f, want %.3f ± %.2f (all: %v)", k, got[k], want, tolerance, got)
		}
	}
}

// The failing key's share shrinks through the real wiring. How it comes
// back once its errors leave the window is tested on a fake clock in
// extproc (TestErrorWindowShrinksAndRestoresShare), without waiting for
// the window here.
func TestAdjustByErrorRateShrinksShare(t *testing.T) {
	// Ejection is set out of reach so that only the strategy reacts.
	g := startGateway(t, `
settings:
  strategy: adjust_by_error_rate
  ejection: {consecutive_failures: 100000, error_window: 5m}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3}
`)
	g.mock.SetDefault("sk-test-k1", mockBehaviourStatus(500))
	warm := shares(t, g, 60) // k1 collects errors
	failing := shares(t, g, 150)
	// With e errors in the window k1 weighs 1/(e+1) against 1 and 1.
	if failing["sk-test-k1"] > 0.12 {
		t.Errorf("failing key kept a share of %.3f (warm-up %.3f), want < 0.12", failing["sk-test-k1"], warm["sk-test-k1"])
	}
}
