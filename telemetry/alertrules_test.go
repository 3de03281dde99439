package telemetry

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keymux/keymux/policy"
)

// ruleFile is the Prometheus rule file format (the fields keymux uses).
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

var (
	metricRefRE = regexp.MustCompile(`\b((?:keymux|gen_ai)_[a-z_]+)\b`)
	alertRefRE  = regexp.MustCompile(`alert="([^"]*)"`)
	classRefRE  = regexp.MustCompile(`class="([^"]*)"`)
	alertNameRE = regexp.MustCompile(`^Keymux[A-Z][A-Za-z]+$`)
)

// TestAlertRules checks examples/prometheus/alerts.yaml: its structure, and
// that every series it names is one keymux exports (after a known sequence).
func TestAlertRules(t *testing.T) {
	raw, err := os.ReadFile("../examples/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(raw, &rf); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}

	tel := newTel(t, Config{Now: func() time.Time { return t0 }})
	tel.SetKeyHealth(healthFn)
	tel.SetConfigInfo(func() ConfigInfo { return ConfigInfo{Generation: 1, Source: "file"} })
	replay(tel, sequence())
	tel.End(withUsage(call("k1", "gpt-4o", 401, time.Millisecond, t0), 1, 1))
	exported := map[string]bool{}
	for k := range scrape(t, tel) {
		name, _, _ := strings.Cut(k, "{")
		exported[name] = true
		for _, suf := range []string{"_count", "_sum"} {
			if base, ok := strings.CutSuffix(name, suf); ok {
				exported[base+"_bucket"] = true
			}
		}
	}

	if len(rf.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	var names []string
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: empty name or no rules", g.Name)
		}
		for _, r := range g.Rules {
			if !alertNameRE.MatchString(r.Alert) {
				t.Errorf("alert name %q: want KeymuxSomething", r.Alert)
			}
			if slices.Contains(names, r.Alert) {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			names = append(names, r.Alert)
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" && s != "info" {
				t.Errorf("%s: severity %q", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description are required", r.Alert)
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "{") != strings.Count(r.Expr, "}") {
				t.Errorf("%s: unbalanced brackets in %q", r.Alert, r.Expr)
			}
			refs := metricRefRE.FindAllStringSubmatch(r.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("%s: expression names no keymux metric", r.Alert)
			}
			for _, m := range refs {
				if !exported[m[1]] {
					t.Errorf("%s: %s is not a metric keymux exports", r.Alert, m[1])
				}
			}
			for _, m := range alertRefRE.FindAllStringSubmatch(r.Expr, -1) {
				if m[1] != AlertErrorRate && m[1] != AlertUsage {
					t.Errorf("%s: unknown alert label value %q", r.Alert, m[1])
				}
			}
			for _, m := range classRefRE.FindAllStringSubmatch(r.Expr, -1) {
				if !slices.Contains(policy.ErrorClasses(), m[1]) && m[1] != ClassLocal {
					t.Errorf("%s: unknown class %q", r.Alert, m[1])
				}
			}
		}
	}
	for _, want := range []string{"KeymuxHighErrorRate", "KeymuxKeyUsageHigh"} {
		if !slices.Contains(names, want) {
			t.Errorf("the seed's alert %s is missing", want)
		}
	}
}
