package examples_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/keymux/keymux/testutil/promtest"
)

// TestPromtool runs the real promtool on examples/prometheus/: the alert
// rules and the compose stack's Prometheus configuration are valid, and the
// rules' unit tests (alerts_test.yaml: the error-rate and usage thresholds,
// firing and not) pass.
func TestPromtool(t *testing.T) {
	promtool := promtest.Promtool(t)
	cases := []struct {
		name string
		args []string
		want string // in promtool's output
	}{
		{"check rules", []string{"check", "rules", "alerts.yaml"}, "SUCCESS: 9 rules found"},
		{"test rules", []string{"test", "rules", "alerts_test.yaml"}, "SUCCESS"},
		{"check config", []string{"check", "config", "prometheus.yml"}, "SUCCESS: 9 rules found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), promtool, tc.args...)
			cmd.Dir = "prometheus"
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("promtool %s: %v, want output with %q:\n%s", strings.Join(tc.args, " "), err, tc.want, out)
			}
		})
	}
}
