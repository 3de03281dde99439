package e2e

// The Grafana dashboard against a real Prometheus (issue 13): keymux dev
// --consul serves a known mix of answers (successes, an upstream 5xx, an
// upstream 429, a local refusal; a refused configuration entry), a real
// Prometheus scrapes its admin /metrics and evaluates
// examples/prometheus/alerts.yaml, and then every query of
// examples/grafana/keymux.json, its variables substituted as Grafana would,
// must return at least one series with a number through Prometheus's HTTP API.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/promtest"
	"github.com/keymux/keymux/testutil/wait"
)

const (
	dashboardPath = "../examples/grafana/keymux.json"
	alertsPath    = "../examples/prometheus/alerts.yaml"
	// dashPromWait bounds how long Prometheus may take to scrape and
	// evaluate what the test needs (the scrape interval is 1s).
	dashPromWait = 30 * time.Second
	// dashRateInterval stands for Grafana's $__rate_interval and
	// $__interval: wide enough for every scrape of the test.
	dashRateInterval = "1m"
)

// grafanaDashboard is the part of the dashboard JSON the test reads.
type grafanaDashboard struct {
	Templating struct {
		List []grafanaVariable `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaVariable struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."}
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

type grafanaPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's panels
}

// dashQuery is one panel target's query.
type dashQuery struct {
	panel, refID, expr string
}

func (q dashQuery) String() string { return fmt.Sprintf("%q %s: %s", q.panel, q.refID, q.expr) }

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// queries lists every panel target, rows' nested panels included.
func (d grafanaDashboard) queries() []dashQuery {
	var out []dashQuery
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, dashQuery{p.Title, tg.RefID, tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

var (
	labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)
	grafanaVarRE  = regexp.MustCompile(`\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]`)
)

// dashVars resolves the dashboard's variables in order, as Grafana does
// with "All" selected: a query variable's label_values(selector, label) is
// asked from Prometheus (it must list something) and stands for its
// allValue, else for the alternation of its values. Grafana's interval
// variables stand for dashRateInterval. It returns the values each query
// variable listed.
func dashVars(t *testing.T, p *promtest.Prometheus, d grafanaDashboard) (subst func(string) string, listed map[string][]string) {
	t.Helper()
	vals := map[string]string{"__rate_interval": dashRateInterval, "__interval": dashRateInterval, "__range": dashRateInterval}
	listed = map[string][]string{}
	subst = func(s string) string {
		return grafanaVarRE.ReplaceAllStringFunc(s, func(m string) string {
			name := strings.Trim(m, "${}[]")
			if v, ok := vals[name]; ok {
				return v
			}
			return m
		})
	}
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			continue // panels name it as their datasource, never in a query
		case "query":
		default:
			t.Fatalf("variable %s: type %q, the test knows datasource and query", v.Name, v.Type)
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("variable %s: query %s: %v", v.Name, v.Query, err)
			}
			q = obj.Query
		}
		m := labelValuesRE.FindStringSubmatch(subst(q))
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
		}
		var got []string
		wait.For(t, dashPromWait, "variable "+v.Name+" to list values", func() error {
			var err error
			got, err = p.LabelValues(t.Context(), m[2], m[1])
			if err == nil && len(got) == 0 {
				err = fmt.Errorf("label_values(%s, %s) is empty", m[1], m[2])
			}
			return err
		})
		listed[v.Name] = got
		if v.IncludeAll && v.AllValue != "" {
			vals[v.Name] = v.AllValue
			continue
		}
		quoted := make([]string, len(got))
		for i, s := range got {
			quoted[i] = regexp.QuoteMeta(s)
		}
		vals[v.Name] = "(" + strings.Join(quoted, "|") + ")"
	}
	return subst, listed
}

// dashKeyDoc is an openai_compatible key on the mock serving one model; its
// secret is "sk-test-<id>".
func dashKeyDoc(mockURL, id, model string) []byte {
	return fmt.Appendf(nil, `{"provider":"openai_compatible","base_url":%q,"secret":"sk-test-%s","models":[%q]}`, mockURL+"/v1", id, model)
}

func TestDashboardQueriesOnRealPrometheus(t *testing.T) {
	d := loadDashboard(t)
	queries := d.queries()
	if len(queries) < 20 {
		t.Fatalf("%s: %d queries, want the whole dashboard (20 or more)", dashboardPath, len(queries))
	}

	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const prefix = "dashboard/"
	a.Put(prefix+"settings", []byte(consulRoundRobin))
	// One key per model, so that each answer lands on a known key.
	a.Put(prefix+"keys/k1", dashKeyDoc(mock.URL(), "k1", "gpt-4o"))
	a.Put(prefix+"keys/k2", dashKeyDoc(mock.URL(), "k2", "gpt-4.1"))
	a.Put(prefix+"keys/k3", dashKeyDoc(mock.URL(), "k3", "gpt-4o-mini"))
	// k4 shares gpt-4o with k1 and its upstream answers 503: each request
	// on k4 is retried on k1 (keymux_retries_total) until k4 is ejected.
	a.Put(prefix+"keys/k4", dashKeyDoc(mock.URL(), "k4", "gpt-4o"))
	mock.SetDefault("sk-test-k4", mockBehaviourStatus(503))
	// A refused entry: keymux_config_refused and _refusals_total count it.
	a.Put(prefix+"keys/bad", []byte(`{"provider":"no-such-provider","base_url":"http://127.0.0.1:1/v1","secret":"sk-test-bad"}`))
	g := startConsulGateway(t, mock, prefix, "", true)
	target := strings.TrimPrefix(g.admin, "http://")
	prom := promtest.Start(t, promtest.Options{Targets: []string{target}, RuleFiles: []string{alertsPath}})

	// Each round: 3 successes on k1, an upstream 500 on k2, an upstream 429
	// on k3 (the first round; k3 then cools down for 30 s and keymux answers
	// 503 for its model), and a request for a model no key serves (refused
	// locally).
	type req struct {
		model  string
		script int // the upstream answer scripted for the key (0 = OK)
		cred   string
		status [2]int // per round
	}
	reqs := []req{
		{"gpt-4o", 0, "sk-test-k1", [2]int{200, 200}},
		{"gpt-4o", 0, "sk-test-k1", [2]int{200, 200}},
		{"gpt-4o", 0, "sk-test-k1", [2]int{200, 200}},
		{"gpt-4.1", 500, "sk-test-k2", [2]int{500, 500}},
		{"gpt-4o-mini", 429, "sk-test-k3", [2]int{429, 503}}, // round 2: k3 cools down, no key left
		{"no-such-model", 0, "", [2]int{404, 404}},
	}
	round := func(n int) {
		t.Helper()
		for _, r := range reqs {
			if r.script == 429 {
				mock.Script(r.cred, mockBehaviour429("30"))
			} else if r.script != 0 {
				mock.Script(r.cred, mockBehaviourStatus(r.script))
			}
			got := g.send(r.model)
			if got.Status != r.status[n] {
				t.Fatalf("round %d: %s: %v, want status %d", n+1, r.model, got, r.status[n])
			}
		}
	}
	// scraped waits until Prometheus holds the requests keymux counted.
	scraped := func(n int) {
		t.Helper()
		want := fmt.Sprint(n * len(reqs))
		wait.For(t, dashPromWait, "Prometheus to scrape "+want+" requests", func() error {
			s, err := prom.Query(t.Context(), `sum(keymux_requests_total{job="`+promtest.Job+`"})`)
			if err == nil && (len(s) != 1 || s[0].Value != want) {
				err = fmt.Errorf("sum(keymux_requests_total) = %+v", s)
			}
			return err
		})
	}
	// Two rounds, each scraped: rates need an increase between samples.
	round(0)
	scraped(1)
	round(1)
	scraped(2)

	// The alert rules work on keymux's real series: half of the requests
	// failed (threshold 0.2), so KeymuxHighErrorRate is pending (for: 5m).
	wait.For(t, dashPromWait, "KeymuxHighErrorRate to be pending", func() error {
		s, err := prom.Query(t.Context(), `ALERTS{alertname="KeymuxHighErrorRate"}`)
		if err == nil && (len(s) != 1 || s[0].Metric["alertstate"] != "pending" || s[0].Metric["instance"] != target) {
			err = fmt.Errorf("ALERTS = %+v, want one pending for %s", s, target)
		}
		return err
	})

	subst, listed := dashVars(t, prom, d)
	for name, want := range map[string][]string{"job": {promtest.Job}, "instance": {target}, "key": {"k1", "k2", "k3", "k4"}} {
		if got := listed[name]; !slices.Equal(got, want) {
			t.Errorf("variable %s lists %v, want %v", name, got, want)
		}
	}

	// Every query: at least one series, one of them a number. Prometheus
	// evaluates the alert rules on its own schedule, so the queries are
	// retried until all pass or dashPromWait ends.
	pending := map[dashQuery]string{} // query → what it returned last
	for _, q := range queries {
		expr := subst(q.expr)
		if strings.ContainsAny(expr, "$[") && grafanaVarRE.MatchString(expr) {
			t.Errorf("%v: a variable is left after substitution: %s", q, expr)
			continue
		}
		pending[dashQuery{q.panel, q.refID, expr}] = "not run"
	}
	deadline := time.Now().Add(dashPromWait)
	for len(pending) > 0 && time.Now().Before(deadline) {
		for q := range pending {
			s, err := prom.Query(t.Context(), q.expr)
			switch {
			case err != nil:
				pending[q] = err.Error()
			case !slices.ContainsFunc(s, promtest.Series.Finite):
				pending[q] = fmt.Sprintf("%d series, none a number: %+v", len(s), s)
			default:
				delete(pending, q)
			}
		}
		if len(pending) > 0 {
			time.Sleep(promtest.Interval / 2)
		}
	}
	var failed []string
	for q, last := range pending {
		failed = append(failed, fmt.Sprintf("%v\n    → %s", q, last))
	}
	sort.Strings(failed)
	for _, f := range failed {
		t.Errorf("dashboard query returns no data: %s", f)
	}

	// And every keymux metric /metrics exports has a panel.
	exported := map[string]bool{}
	for series := range scrapeMetrics(t, g.getAdmin("/metrics")) {
		name, _, _ := strings.Cut(series, "{")
		name = strings.TrimSuffix(strings.TrimSuffix(name, "_count"), "_sum") // histograms
		if strings.HasPrefix(name, "keymux_") || strings.HasPrefix(name, "gen_ai_") {
			exported[name] = true
		}
	}
	if len(exported) < 20 {
		t.Errorf("/metrics exports %d keymux metrics (%v), want all of them (20 or more)", len(exported), exported)
	}
	for _, name := range slices.Sorted(maps.Keys(exported)) {
		if !slices.ContainsFunc(queries, func(q dashQuery) bool { return strings.Contains(q.expr, name) }) {
			t.Errorf("metric %s is on /metrics but in no panel of %s", name, dashboardPath)
		}
	}
}
