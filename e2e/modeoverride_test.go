package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/wait"
)

// An Envoy without the access logger (keymux run with --usage-from-body then
// asks for response bodies) that does not take keymux's mode override (allow_mode_override off)
// sends no response body: calls still count as successes, without token
// usage, and nothing is reported as a cut stream.
func TestWithoutModeOverride(t *testing.T) {
	y, err := os.ReadFile("../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(y), "allow_mode_override: true") {
		t.Fatal("envoy.yaml no longer sets allow_mode_override: true; update this test")
	}
	// Drop the http_grpc access logger (from its comment to its last line).
	start := strings.Index(string(y), "          # Every request's entry, streamed to keymux's AccessLogService")
	end := strings.Index(string(y), "                buffer_flush_interval: 0.1s\n")
	if start < 0 || end < start {
		t.Fatal("envoy.yaml's http_grpc access logger not found; update this test")
	}
	y = append(y[:start:start], y[end+len("                buffer_flush_interval: 0.1s\n"):]...)
	path := filepath.Join(t.TempDir(), "envoy-no-override.yaml")
	os.WriteFile(path, []byte(strings.Replace(string(y), "allow_mode_override: true", "allow_mode_override: false", 1)), 0o600)
	g := startGateway(t, threeKeys, "--envoy", path, "--usage-from-body")
	for range 3 {
		if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	}
	var st struct {
		Total     int     `json:"total_calls"`
		Successes int     `json:"successful_calls"`
		ErrorRate float64 `json:"error_rate"`
		TopKeys   []struct {
			Usage  uint64 `json:"usage"`
			Errors uint64 `json:"errors"`
		} `json:"top_keys"`
	}
	// A call is booked when its ext_proc stream ends, just after the client
	// has its answer.
	wait.Until(t, 5*time.Second, "3 calls booked on /stats", func() bool {
		if err := json.Unmarshal(g.getAdmin("/stats"), &st); err != nil {
			t.Fatal(err)
		}
		return st.Total >= 3
	})
	if st.Total != 3 || st.Successes != 3 || st.ErrorRate != 0 {
		t.Fatalf("stats %+v, want 3 successful calls", st)
	}
	for _, k := range st.TopKeys {
		if k.Usage != 0 || k.Errors != 0 {
			t.Errorf("key stats %+v: no usage can be read and nothing failed", k)
		}
	}
}
