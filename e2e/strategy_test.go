package e2e

import (
	"math"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
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

func TestAdjustByErrorRateShrinksAndRestoresShare(t *testing.T) {
	// Ejection is set out of reach so that only the strategy reacts; the
	// error window is 2s so that recovery is quick.
	g := startGateway(t, `
settings:
  strategy: adjust_by_error_rate
  ejection: {consecutive_failures: 100000, error_window: 2s}
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
	g.mock.SetDefault("sk-test-k1", mockupstream.Behaviour{})
	time.Sleep(2100 * time.Millisecond) // let the errors leave the 2s window
	recovered := shares(t, g, 240)
	// 240 picks at p = 1/3: σ ≈ 0.03; ±0.12 is 4σ.
	if math.Abs(recovered["sk-test-k1"]-1.0/3) > 0.12 {
		t.Errorf("recovered key share %.3f, want 0.333 ± 0.12 (all: %v)", recovered["sk-test-k1"], recovered)
	}
}
