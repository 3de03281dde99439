// Package promtest starts a real Prometheus for tests and queries it through
// its HTTP API; it also finds promtool.
//
// The binaries are the distribution's `prometheus` package, which
// tools/install-prometheus.sh installs on $PATH ($KEYMUX_PROMETHEUS_BIN and
// $KEYMUX_PROMTOOL_BIN override them). When one is missing the test FAILS
// with the command that installs it: tests that need Prometheus never skip.
//
// Every instance listens on a free loopback port, keeps its TSDB in
// t.TempDir(), scrapes its targets and evaluates its rule files every
// Interval, and is stopped by t.Cleanup.
package promtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/daemon"
	"github.com/keymux/keymux/testutil/toolbin"
)

// Environment variables that override the binaries the tests run.
const (
	EnvPrometheus = "KEYMUX_PROMETHEUS_BIN"
	EnvPromtool   = "KEYMUX_PROMTOOL_BIN"
)

// Interval is the scrape and rule evaluation interval of every instance.
const Interval = time.Second

// startTimeout bounds how long Prometheus may take to report ready.
const startTimeout = 60 * time.Second

// startAttempts is how often Start picks a new port when the one chosen
// was taken before Prometheus bound it.
const startAttempts = 3

const installCmd = "tools/install-prometheus.sh"

var (
	prometheusTool = toolbin.Tool{Name: "prometheus", EnvVar: EnvPrometheus, Install: installCmd,
		About: "installs the distribution's prometheus package"}
	promtoolTool = toolbin.Tool{Name: "promtool", EnvVar: EnvPromtool, Install: installCmd,
		About: "installs the distribution's prometheus package, which ships promtool"}
)

// Binary returns the path of the prometheus binary, or an error that says
// how to install it.
func Binary() (string, error) { return prometheusTool.Path() }

// Promtool returns the path of promtool, failing t with the command that
// installs it when it is missing.
func Promtool(t testing.TB) string {
	t.Helper()
	p, err := promtoolTool.Path()
	if err != nil {
		t.Fatalf("promtest: %v", err)
	}
	return p
}

// Options is what one Prometheus scrapes and evaluates.
type Options struct {
	// Targets are host:port addresses scraped at /metrics (job "keymux").
	Targets []string
	// RuleFiles are rule files loaded for evaluation (absolute, or relative
	// to the test's working directory).
	RuleFiles []string
}

// Job is the job label of the scraped targets.
const Job = "keymux"

// Prometheus is one running Prometheus server.
type Prometheus struct {
	port int
	proc *daemon.Process
	http *http.Client
}

// Start runs Prometheus with opts and waits until /-/ready answers 200. It
// is stopped when the test ends; its output is logged if the test failed.
func Start(t testing.TB, opts Options) *Prometheus {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("promtest: %v", err)
	}
	dir := t.TempDir()
	cfg, err := config(opts)
	if err != nil {
		t.Fatalf("promtest: %v", err)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatalf("promtest: %v", err)
	}
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		p := &Prometheus{port: daemon.FreePort(t), http: &http.Client{Timeout: 10 * time.Second}}
		p.proc, err = daemon.Start("prometheus", bin,
			"--config.file="+cfgPath,
			"--storage.tsdb.path="+filepath.Join(dir, "data-"+strconv.Itoa(attempt)),
			"--web.listen-address="+p.addr(),
			"--log.level=warn",
		)
		if err != nil {
			t.Fatalf("promtest: %v", err)
		}
		err = p.proc.WaitReady(startTimeout, func(ctx context.Context) bool {
			code, _, err := daemon.Get(ctx, p.http, p.URL()+"/-/ready")
			return err == nil && code == http.StatusOK
		})
		if err == nil {
			t.Cleanup(func() {
				p.Stop()
				if t.Failed() {
					t.Logf("prometheus output:\n%s", p.Output())
				}
			})
			return p
		}
		p.Stop()
		lastErr = err
		if !p.proc.AddrInUse() {
			break
		}
	}
	t.Fatalf("promtest: %v", lastErr)
	return nil
}

// config renders the configuration file of opts (JSON is YAML).
func config(opts Options) ([]byte, error) {
	rules := make([]string, 0, len(opts.RuleFiles))
	for _, f := range opts.RuleFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		rules = append(rules, abs)
	}
	type static struct {
		Targets []string `json:"targets"`
	}
	type scrape struct {
		JobName       string   `json:"job_name"`
		StaticConfigs []static `json:"static_configs"`
	}
	doc := struct {
		Global struct {
			ScrapeInterval     string `json:"scrape_interval"`
			ScrapeTimeout      string `json:"scrape_timeout"`
			EvaluationInterval string `json:"evaluation_interval"`
		} `json:"global"`
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []scrape `json:"scrape_configs"`
	}{RuleFiles: rules}
	doc.Global.ScrapeInterval = Interval.String()
	doc.Global.ScrapeTimeout = Interval.String()
	doc.Global.EvaluationInterval = Interval.String()
	if len(opts.Targets) > 0 {
		doc.ScrapeConfigs = []scrape{{JobName: Job, StaticConfigs: []static{{Targets: opts.Targets}}}}
	}
	return json.MarshalIndent(doc, "", "  ")
}

func (p *Prometheus) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// URL is the server's base URL, "http://127.0.0.1:PORT".
func (p *Prometheus) URL() string { return "http://" + p.addr() }

// Stop ends Prometheus (SIGTERM, then SIGKILL) and waits for it.
func (p *Prometheus) Stop() { p.proc.Stop() }

// Output is what Prometheus printed so far.
func (p *Prometheus) Output() string { return p.proc.Output() }

// Series is one element of an instant vector: its labels and value (the
// value as Prometheus prints it: "NaN", "+Inf" and "1.5" alike).
type Series struct {
	Metric map[string]string
	Value  string
}

// Finite reports whether the value is a number (not NaN or ±Inf).
func (s Series) Finite() bool {
	f, err := strconv.ParseFloat(s.Value, 64)
	return err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
}

// apiResponse is the envelope of every /api/v1 answer.
type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

// api GETs /api/v1/<path>?q and returns its data, or the API's error.
func (p *Prometheus) api(ctx context.Context, path string, q url.Values) (json.RawMessage, error) {
	code, body, err := daemon.Get(ctx, p.http, p.URL()+"/api/v1/"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("/api/v1/%s: status %d: %w", path, code, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("/api/v1/%s: %s: %s", path, r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// Query evaluates expr now and returns its series. A scalar or string
// result is one series without labels; a range vector is an error.
func (p *Prometheus) Query(ctx context.Context, expr string) ([]Series, error) {
	data, err := p.api(ctx, "query", url.Values{"query": {expr}})
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	switch d.ResultType {
	case "vector":
		var v []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return nil, fmt.Errorf("query %q: %w", expr, err)
		}
		out := make([]Series, len(v))
		for i, s := range v {
			out[i] = Series{Metric: s.Metric, Value: fmt.Sprint(s.Value[1])}
		}
		return out, nil
	case "scalar", "string":
		var v [2]any
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return nil, fmt.Errorf("query %q: %w", expr, err)
		}
		return []Series{{Value: fmt.Sprint(v[1])}}, nil
	}
	return nil, fmt.Errorf("query %q: result type %q, want an instant vector", expr, d.ResultType)
}

// LabelValues returns the values of label on the series matching match
// (what Grafana's label_values(match, label) lists).
func (p *Prometheus) LabelValues(ctx context.Context, label, match string) ([]string, error) {
	data, err := p.api(ctx, "label/"+url.PathEscape(label)+"/values", url.Values{"match[]": {match}})
	if err != nil {
		return nil, fmt.Errorf("label values %s of %s: %w", label, match, err)
	}
	var out []string
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("label values %s of %s: %w", label, match, err)
	}
	return out, nil
}

// Target is one scrape target as /api/v1/targets reports it.
type Target struct {
	ScrapeURL  string `json:"scrapeUrl"`
	Health     string `json:"health"`
	LastError  string `json:"lastError"`
	LastScrape string `json:"lastScrape"`
}

// Targets returns the active scrape targets.
func (p *Prometheus) Targets(ctx context.Context) ([]Target, error) {
	data, err := p.api(ctx, "targets", url.Values{"state": {"active"}})
	if err != nil {
		return nil, err
	}
	var d struct {
		Active []Target `json:"activeTargets"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("targets: %w", err)
	}
	return d.Active, nil
}
