package promtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/wait"
)

// TestStartScrapeQuery: a real Prometheus scrapes a fake /metrics, evaluates
// a recording rule, and Query, LabelValues and Targets read both back.
func TestStartScrapeQuery(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "# TYPE demo_total counter\ndemo_total{key=\"k1\"} %d\ndemo_total{key=\"k2\"} 7\n", n.Add(1))
	}))
	t.Cleanup(srv.Close)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte("groups:\n- name: t\n  rules:\n  - record: demo:sum\n    expr: sum(demo_total)\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(srv.URL, "http://")
	p := Start(t, Options{Targets: []string{target}, RuleFiles: []string{rules}})

	wait.For(t, 30*time.Second, "the recording rule over two scrapes", func() error {
		s, err := p.Query(t.Context(), `demo:sum`)
		if err != nil {
			return err
		}
		if len(s) != 1 || !s[0].Finite() || s[0].Value == "0" {
			return fmt.Errorf("demo:sum = %+v", s)
		}
		return nil
	})
	s, err := p.Query(t.Context(), `demo_total{key="k2"}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Value != "7" || s[0].Metric["job"] != Job || s[0].Metric["instance"] != target || s[0].Metric["key"] != "k2" {
		t.Errorf(`demo_total{key="k2"} = %+v, want one series 7 with job %q instance %q`, s, Job, target)
	}
	if s, err := p.Query(t.Context(), `scalar(demo_total{key="k2"}) / 0 - 1`); err != nil || len(s) != 1 || s[0].Finite() {
		t.Errorf("a scalar +Inf: %+v, %v; want one non-finite series", s, err)
	}
	if _, err := p.Query(t.Context(), `sum(`); err == nil || !strings.Contains(err.Error(), "bad_data") {
		t.Errorf("a bad query: err %v, want the API's bad_data", err)
	}
	keys, err := p.LabelValues(t.Context(), "key", "demo_total")
	if err != nil || !slices.Equal(keys, []string{"k1", "k2"}) {
		t.Errorf("LabelValues(key, demo_total) = %v, %v; want [k1 k2]", keys, err)
	}
	targets, err := p.Targets(t.Context())
	if err != nil || len(targets) != 1 || targets[0].ScrapeURL != srv.URL+"/metrics" || targets[0].Health != "up" {
		t.Errorf("Targets = %+v, %v; want %s/metrics up", targets, err, srv.URL)
	}
}

// TestMissingBinaryFails: without the binary the error names the install
// command (a test fails with it, it never skips).
func TestMissingBinaryFails(t *testing.T) {
	t.Setenv(EnvPrometheus, "")
	t.Setenv("PATH", t.TempDir())
	_, err := Binary()
	if err == nil || !strings.Contains(err.Error(), "install it with `tools/install-prometheus.sh`") {
		t.Errorf("Binary() with an empty $PATH: %v", err)
	}
	t.Setenv(EnvPrometheus, filepath.Join(t.TempDir(), "nope"))
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "$"+EnvPrometheus) {
		t.Errorf("Binary() with a missing $%s: %v", EnvPrometheus, err)
	}
}
