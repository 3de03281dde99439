package e2e

// Observability acceptance (issue 5): one known sequence of calls through
// the emulated Envoy, then /metrics (parsed with the Prometheus text
// parser), /stats, the call log and every log line are checked against it.
// jaeger_test.go runs the same sequence with traces exported to a real
// Jaeger and reads them back.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keymux/keymux/telemetry"
	"github.com/keymux/keymux/testutil/wait"
)

// The secrets of the telemetry run: no log line, call log record, span,
// metric or /stats body may contain any of them.
const (
	telSecretK1    = "sk-test-tel-k1-secret"
	telSecretK2    = "sk-test-tel-k2-secret"
	telSecretK3    = "sk-test-tel-k3-secret"
	telClientToken = "km-test-tel-client-token"
	telWrongToken  = "km-test-tel-wrong-token"
	telClientID    = "team-a"
)

var telSecrets = []string{telSecretK1, telSecretK2, telSecretK3, telClientToken, telWrongToken}

// telTraceID is the client's trace; every call of the sequence carries a
// traceparent in it, each with its own client span id.
const telTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"

// telConfig: one key per model so the sequence is deterministic; k2 serves
// gpt-4o-mini through a switch rule (request and response models differ);
// k3 is the one made to fail.
const telConfig = `
settings:
  strategy: round_robin
  retry: {max_attempts: 1}     # each key's failure reaches the client (retries: retry_test.go)
  auth: {mode: client_keys}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: ` + telSecretK1 + `, models: [gpt-4o]}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: ` + telSecretK2 + `, models: [gpt-4o-mini-2024-07-18]}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: ` + telSecretK3 + `, models: [gpt-4.1]}
rules:
  mini: {key: k2, from: gpt-4o-mini, to: gpt-4o-mini-2024-07-18}
clients:
  ` + telClientID + `: {name: Team A, token_sha256: "{{CLIENT_SHA}}"}
`

// telCall is one call of the known sequence and what it must produce.
type telCall struct {
	name      string
	method    string
	path      string
	token     string // "" = no credentials
	model     string // requested
	final     string // sent upstream ("" = not forwarded)
	key       string
	rule      string
	script    int    // upstream status the mock is scripted to answer (0 = OK)
	status    int    // what the client gets
	errType   string // error.type / call log "error" ("" = success)
	errClass  string // keymux_errors_total class
	spanID    string // the client's span id in its traceparent
	in, out   int64  // usage the client saw (OK upstream calls)
	upstream  bool   // forwarded to a key
	requestID string // x-request-id the upstream saw
	upTP      string // traceparent the upstream saw
}

func (c *telCall) local() bool { return !c.upstream }

// telSequence is the known sequence: 5 OK on known keys (3 on k1, 2 on k2
// with a longer prompt, so k2 leads top_keys), 2 upstream 500 and 1
// upstream 429 on k3, one local answer (GET /v1/models, not a call in
// /stats), 2 local 401 refusals (a wrong token and none).
func telSequence() []*telCall {
	ok1 := func(n string) *telCall {
		return &telCall{name: n, model: "gpt-4o", final: "gpt-4o", key: "k1", status: 200}
	}
	ok2 := func(n string) *telCall {
		return &telCall{name: n, model: "gpt-4o-mini", final: "gpt-4o-mini-2024-07-18", key: "k2", rule: "mini", status: 200}
	}
	calls := []*telCall{
		ok1("ok k1 #1"), ok2("ok k2 #1"), ok1("ok k1 #2"), ok2("ok k2 #2"), ok1("ok k1 #3"),
		{name: "500 k3 #1", model: "gpt-4.1", final: "gpt-4.1", key: "k3", script: 500, status: 500, errType: "server", errClass: "server"},
		{name: "500 k3 #2", model: "gpt-4.1", final: "gpt-4.1", key: "k3", script: 500, status: 500, errType: "server", errClass: "server"},
		{name: "429 k3", model: "gpt-4.1", final: "gpt-4.1", key: "k3", script: 429, status: 429, errType: "rate_limited", errClass: "rate_limited"},
		{name: "model list", method: "GET", path: "/v1/models", status: 200},
		{name: "401 wrong token", token: telWrongToken, model: "gpt-4o", status: 401, errType: "invalid_api_key", errClass: "local"},
		{name: "401 no token", token: "-", model: "gpt-4o", status: 401, errType: "missing_api_key", errClass: "local"},
	}
	for i, c := range calls {
		c.spanID = fmt.Sprintf("00f067aa0ba9%04x", i+1)
		c.upstream = c.key != ""
		if c.method == "" {
			c.method, c.path = "POST", "/v1/chat/completions"
		}
		switch c.token {
		case "":
			c.token = telClientToken
		case "-":
			c.token = ""
		}
	}
	return calls
}

// telRun is one gateway run of the known sequence.
type telRun struct {
	g       *gateway
	calls   []*telCall
	callLog string // path
}

func (r *telRun) call(name string) *telCall {
	for _, c := range r.calls {
		if c.name == name {
			return c
		}
	}
	panic("no call " + name)
}

// tokens sums the usage of the OK calls on key.
func (r *telRun) tokens(key string) (in, out int64, n int) {
	for _, c := range r.calls {
		if c.key == key && c.errType == "" {
			in, out, n = in+c.in, out+c.out, n+1
		}
	}
	return
}

// startTelemetryRun starts keymux dev on telConfig with a call log (and
// debug logging, so that every log line the request path can write is in
// the secret grep), runs the sequence and waits until every exchange has
// reached the call log (End ran for all of them).
func startTelemetryRun(t *testing.T) *telRun {
	t.Helper()
	callLog := filepath.Join(t.TempDir(), "calls.jsonl")
	cfg := strings.ReplaceAll(telConfig, "{{CLIENT_SHA}}", sha256hex(telClientToken))
	g := startGateway(t, cfg, "--call-log", callLog, "--log-level", "debug")
	r := &telRun{g: g, calls: telSequence(), callLog: callLog}
	// A long prompt for k2: its usage must exceed k1's so that top_keys
	// ordering by usage differs from ordering by id.
	long := strings.Repeat("Tell me about observability of LLM gateways. ", 20)
	for _, c := range r.calls {
		if c.script != 0 {
			b := mockBehaviourStatus(c.script)
			if c.script == 429 {
				b = mockBehaviour429("30")
			}
			g.mock.Script(secretOf(c.key), b)
		}
		prompt := "Hello"
		if c.key == "k2" {
			prompt = long
		}
		h := map[string]string{"traceparent": "00-" + telTraceID + "-" + c.spanID + "-01"}
		if c.token != "" {
			h["authorization"] = "Bearer " + c.token
		}
		if c.errClass == "local" {
			// Not on a kept-alive connection: the emulator may reset the
			// connection of a POST it refused before reading its body
			// ("http: panic serving …: invalid concurrent Body.Read call"
			// at debug level), which would fail the next request on it.
			h["connection"] = "close"
		}
		body := ""
		if c.method == "POST" {
			h["content-type"] = "application/json"
			body = fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]}`, c.model, prompt)
		}
		resp, b := g.do(c.method, c.path, h, body)
		if resp.StatusCode != c.status {
			t.Fatalf("%s: status %d, want %d: %s", c.name, resp.StatusCode, c.status, b)
		}
		if c.upstream && c.errType == "" {
			var doc struct {
				Model string `json:"model"`
				Usage struct {
					Prompt     int64 `json:"prompt_tokens"`
					Completion int64 `json:"completion_tokens"`
				} `json:"usage"`
			}
			if err := json.Unmarshal(b, &doc); err != nil || doc.Usage.Prompt <= 0 || doc.Usage.Completion <= 0 {
				t.Fatalf("%s: response without usage (%v): %s", c.name, err, b)
			}
			if doc.Model != c.final {
				t.Fatalf("%s: response model %q, want %q", c.name, doc.Model, c.final)
			}
			c.in, c.out = doc.Usage.Prompt, doc.Usage.Completion
		}
	}
	// The chat requests the mock got (active health probes are GETs of
	// /v1/models and may interleave) are the upstream calls, in order.
	var chats []int
	reqs := g.mock.Requests()
	for i, rq := range reqs {
		if rq.Method == "POST" && strings.HasSuffix(rq.Path, "/chat/completions") {
			chats = append(chats, i)
		}
	}
	var up []*telCall
	for _, c := range r.calls {
		if c.upstream {
			up = append(up, c)
		}
	}
	if len(chats) != len(up) {
		t.Fatalf("mock saw %d chat requests, want %d", len(chats), len(up))
	}
	for i, c := range up {
		rq := reqs[chats[i]]
		if rq.Credential != secretOf(c.key) || rq.Model != c.final {
			t.Fatalf("%s: upstream got model %q with key %s, want %q with %s", c.name, rq.Model, keyOfSecret(rq.Credential), c.final, c.key)
		}
		c.requestID, c.upTP = rq.Header.Get("x-request-id"), rq.Header.Get("traceparent")
	}
	in1, _, _ := r.tokens("k1")
	in2, _, _ := r.tokens("k2")
	if in2 <= in1 {
		t.Fatalf("precondition: k2's prompt tokens %d must exceed k1's %d", in2, in1)
	}
	wait.Until(t, 10*time.Second, "every call in the call log", func() bool { return len(readCallLog(t, callLog)) >= len(r.calls) })
	return r
}

func secretOf(key string) string {
	return map[string]string{"k1": telSecretK1, "k2": telSecretK2, "k3": telSecretK3}[key]
}

func keyOfSecret(s string) string {
	for _, k := range []string{"k1", "k2", "k3"} {
		if secretOf(k) == s {
			return k
		}
	}
	return "(unknown credential)"
}

func readCallLog(t *testing.T, path string) []telemetry.CallRecord {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	lines = lines[:len(lines)-1] // "" after the last newline, or a line being written
	out := make([]telemetry.CallRecord, 0, len(lines))
	for _, line := range lines {
		var rec telemetry.CallRecord
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			t.Fatalf("call log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// checkCallLog: one record per exchange with the seed's fields, the status,
// client id and the client's trace id.
func (r *telRun) checkCallLog(t *testing.T) {
	t.Helper()
	got := readCallLog(t, r.callLog)
	canon := func(rec telemetry.CallRecord) string {
		rec.Time, rec.ResponseTimeMS, rec.RequestID = "", 0, ""
		b, _ := json.Marshal(rec)
		return string(b)
	}
	var gotC, wantC []string
	for _, rec := range got {
		if _, err := time.Parse(time.RFC3339Nano, rec.Time); err != nil || rec.ResponseTimeMS < 0 {
			t.Errorf("call log record: time %q (%v), response time %v ms", rec.Time, err, rec.ResponseTimeMS)
		}
		gotC = append(gotC, canon(rec))
	}
	for _, c := range r.calls {
		w := telemetry.CallRecord{
			KeyID: c.key, ModelFinal: c.final, Success: c.errType == "", Status: c.status,
			TraceID: telTraceID, Error: c.errType,
		}
		if c.path == "/v1/chat/completions" {
			w.Operation = "chat"
		} else {
			w.Operation = "list_models"
		}
		if c.upstream {
			w.ModelOriginal = c.model
		}
		if c.token == telClientToken {
			w.ClientID = telClientID
		}
		if c.upstream && c.errType == "" {
			in, out := c.in, c.out
			w.InputTokens, w.OutputTokens = &in, &out
		}
		wantC = append(wantC, canon(w))
	}
	sort.Strings(gotC)
	sort.Strings(wantC)
	if !slices.Equal(gotC, wantC) {
		t.Errorf("call log records (time, response time and request id aside):\n got %s\nwant %s",
			strings.Join(gotC, "\n     "), strings.Join(wantC, "\n     "))
	}
	// The request id of an upstream call is the one Envoy sent upstream.
	for _, rec := range got {
		if rec.KeyID == "" {
			continue
		}
		found := false
		for _, c := range r.calls {
			found = found || (c.upstream && c.requestID != "" && c.requestID == rec.RequestID)
		}
		if !found {
			t.Errorf("call log record %s/%d: request id %q is none the upstream saw", rec.KeyID, rec.Status, rec.RequestID)
		}
	}
}

// scrapeMetrics parses /metrics with the Prometheus text parser into
// "name{label="v",...}" → value, labels sorted, empty labels left out (as
// the exposition leaves them out); histograms give _count and _sum.
func scrapeMetrics(t *testing.T, body []byte) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				if lp.GetValue() != "" {
					ls = append(ls, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
				}
			}
			sort.Strings(ls)
			sel := ""
			if len(ls) > 0 {
				sel = "{" + strings.Join(ls, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[name+sel] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name+sel] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[name+sel] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"+sel] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"+sel] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// checkMetrics: every series of the listed families, exactly.
func (r *telRun) checkMetrics(t *testing.T, body []byte) {
	t.Helper()
	m := scrapeMetrics(t, body)
	in1, out1, n1 := r.tokens("k1")
	in2, out2, n2 := r.tokens("k2")
	usage := func(model, final, typ string) string {
		return fmt.Sprintf(`{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model=%q,gen_ai_response_model=%q,gen_ai_token_type=%q}`, model, final, typ)
	}
	want := map[string]float64{
		`keymux_requests_total{key="k1",model="gpt-4o",status_class="2xx"}`:      3,
		`keymux_requests_total{key="k2",model="gpt-4o-mini",status_class="2xx"}`: 2,
		`keymux_requests_total{key="k3",model="gpt-4.1",status_class="5xx"}`:     2,
		`keymux_requests_total{key="k3",model="gpt-4.1",status_class="4xx"}`:     1,
		`keymux_requests_total{status_class="4xx"}`:                              2, // the 401 refusals: no key, no model
		`keymux_requests_total{status_class="2xx"}`:                              1, // GET /v1/models, answered by keymux

		`keymux_errors_total{class="server",key="k3"}`:       2,
		`keymux_errors_total{class="rate_limited",key="k3"}`: 1,
		`keymux_errors_total{class="local"}`:                 2,

		`keymux_tokens_total{key="k1",type="input"}`:  float64(in1),
		`keymux_tokens_total{key="k1",type="output"}`: float64(out1),
		`keymux_tokens_total{key="k2",type="input"}`:  float64(in2),
		`keymux_tokens_total{key="k2",type="output"}`: float64(out2),

		`gen_ai_client_token_usage_count` + usage("gpt-4o", "gpt-4o", "input"):                       float64(n1),
		`gen_ai_client_token_usage_sum` + usage("gpt-4o", "gpt-4o", "input"):                         float64(in1),
		`gen_ai_client_token_usage_count` + usage("gpt-4o", "gpt-4o", "output"):                      float64(n1),
		`gen_ai_client_token_usage_sum` + usage("gpt-4o", "gpt-4o", "output"):                        float64(out1),
		`gen_ai_client_token_usage_count` + usage("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "input"):  float64(n2),
		`gen_ai_client_token_usage_sum` + usage("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "input"):    float64(in2),
		`gen_ai_client_token_usage_count` + usage("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "output"): float64(n2),
		`gen_ai_client_token_usage_sum` + usage("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "output"):   float64(out2),

		// Durations: calls only (the model list is not one).
		`keymux_request_duration_seconds_count{key="k1",model="gpt-4o",status_class="2xx"}`:      3,
		`keymux_request_duration_seconds_count{key="k2",model="gpt-4o-mini",status_class="2xx"}`: 2,
		`keymux_request_duration_seconds_count{key="k3",model="gpt-4.1",status_class="5xx"}`:     2,
		`keymux_request_duration_seconds_count{key="k3",model="gpt-4.1",status_class="4xx"}`:     1,
		`keymux_request_duration_seconds_count{status_class="4xx"}`:                              2,
		// Every exchange spent time in keymux's request phases.
		`keymux_extproc_overhead_microseconds_count`: float64(len(r.calls)),

		`keymux_requests_in_flight`:    0,
		`keymux_calllog_dropped_total`: 0,

		`keymux_key_up{key="k1"}`:                                                         1,
		`keymux_key_up{key="k2"}`:                                                         1,
		`keymux_key_up{key="k3"}`:                                                         1, // the 429 cools it down for gpt-4.1 alone
		`keymux_key_state{key="k1",state="healthy"}`:                                      1,
		`keymux_key_state{key="k2",state="healthy"}`:                                      1,
		`keymux_key_state{key="k3",state="healthy"}`:                                      1,
		`keymux_key_model_state{key="k1",model="gpt-4o",state="healthy"}`:                 1,
		`keymux_key_model_state{key="k2",model="gpt-4o-mini-2024-07-18",state="healthy"}`: 1,
		`keymux_key_model_state{key="k3",model="gpt-4.1",state="cooling_down"}`:           1,

		// Without the 2 anonymous 401s, 3 of 8 calls failed: over the 0.2
		// threshold, but with fewer than AlertMinCalls calls.
		`keymux_error_ratio`:                         0.375,
		`keymux_alert_threshold{alert="error_rate"}`: 0.2,
		`keymux_alert_threshold{alert="usage"}`:      10000,
		`keymux_alert_active{alert="error_rate"}`:    0,
	}
	families := map[string]bool{}
	for k := range want {
		name, _, _ := strings.Cut(k, "{")
		families[name] = true
	}
	got := map[string]float64{}
	for k, v := range m {
		name, _, _ := strings.Cut(k, "{")
		if families[name] {
			got[k] = v
		}
	}
	const eps = 1e-9
	for _, k := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[k]
		if !ok {
			t.Errorf("/metrics: series %s missing", k)
			continue
		}
		if math.Abs(g-want[k]) > eps {
			t.Errorf("/metrics: %s = %v, want %v", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("/metrics: unexpected series %s = %v", k, got[k])
		}
	}
	// The config gauges: one generation series for the file source.
	var gens []string
	for k, v := range m {
		if strings.HasPrefix(k, "keymux_config_generation{") {
			gens = append(gens, k)
			if v < 1 || !strings.Contains(k, `source="file`) {
				t.Errorf("/metrics: %s = %v, want >= 1 for the file source", k, v)
			}
		}
	}
	if len(gens) != 1 {
		t.Errorf("/metrics: config generation series %q, want one", gens)
	}
	if v, ok := m["keymux_config_stale"]; !ok || v != 0 {
		t.Errorf("/metrics: keymux_config_stale = %v (present %v), want 0", v, ok)
	}
	// Some latency was recorded for the calls.
	if s := m[`keymux_request_duration_seconds_sum{key="k1",model="gpt-4o",status_class="2xx"}`]; s <= 0 {
		t.Errorf("/metrics: k1 duration sum %v, want > 0", s)
	}
}

// checkStats: /stats equals the sequence under telemetry's counting rules:
// total_calls counts every exchange but keymux's own successful answers
// (the model list), so 5 OK + 3 upstream failures + 2 refusals = 10, 5
// successful, error rate 50 %; top_keys are upstream keys only, by usage
// (tokens) then id, with their failed calls.
func (r *telRun) checkStats(t *testing.T, body []byte, window string) {
	t.Helper()
	var st telemetry.Stats
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("/stats: %v\n%s", err, body)
	}
	in1, out1, _ := r.tokens("k1")
	in2, out2, _ := r.tokens("k2")
	want := telemetry.Stats{
		Window:          window,
		TotalCalls:      10,
		SuccessfulCalls: 5,
		ErrorRate:       50,
		TopKeys: []telemetry.KeyUsage{
			{ID: "k2", Usage: uint64(in2 + out2), Errors: 0},
			{ID: "k1", Usage: uint64(in1 + out1), Errors: 0},
			{ID: "k3", Usage: 0, Errors: 3},
		},
		Models: map[string]uint64{"gpt-4o": 3, "gpt-4o-mini": 2, "gpt-4.1": 3},
	}
	if st.Window != want.Window || st.TotalCalls != want.TotalCalls || st.SuccessfulCalls != want.SuccessfulCalls || st.ErrorRate != want.ErrorRate {
		t.Errorf("/stats?window=%s: window %q total_calls %d successful_calls %d error_rate %v, want %q %d %d %v",
			window, st.Window, st.TotalCalls, st.SuccessfulCalls, st.ErrorRate, want.Window, want.TotalCalls, want.SuccessfulCalls, want.ErrorRate)
	}
	if !slices.Equal(st.TopKeys, want.TopKeys) {
		t.Errorf("/stats?window=%s: top_keys %+v, want %+v", window, st.TopKeys, want.TopKeys)
	}
	if !maps.Equal(st.Models, want.Models) {
		t.Errorf("/stats?window=%s: models %v, want %v", window, st.Models, want.Models)
	}
	if l := st.LatencyMS; l.P50 < 0 || l.P50 > l.P95 || l.P95 > l.P99 {
		t.Errorf("/stats?window=%s: latency %+v, want 0 <= p50 <= p95 <= p99", window, l)
	}
	// Key health (not windowed): requests chosen, errors, tokens.
	type kh struct {
		id, state         string
		req, errs, tokens uint64
		until             bool
	}
	var gotKeys []kh
	for _, k := range st.Keys {
		gotKeys = append(gotKeys, kh{k.ID, k.State, k.Requests, k.Errors, k.Tokens, !k.Until.IsZero()})
	}
	wantKeys := []kh{
		{"k1", "healthy", 3, 0, uint64(in1 + out1), false},
		{"k2", "healthy", 2, 0, uint64(in2 + out2), false},
		{"k3", "healthy", 3, 3, 0, false}, // cooling down for gpt-4.1 alone
	}
	if !slices.Equal(gotKeys, wantKeys) {
		t.Errorf("/stats?window=%s: keys %+v, want %+v", window, gotKeys, wantKeys)
	}
}

// checkAlertLogged: the error-rate alert leaves out the two anonymous 401
// refusals, so it saw 8 calls (3 failed): fewer than AlertMinCalls, no
// warning line, although /stats counts 5 failures in 10 calls.
func (r *telRun) checkAlertLogged(t *testing.T) {
	t.Helper()
	for line := range strings.Lines(r.g.stderr.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "alert threshold crossed" && rec["alert"] == telemetry.AlertErrorRate {
			t.Errorf("the error-rate alert fired on anonymous refusals: %s", line)
		}
	}
}

// haystack is one text of the run searched for secrets; marker is a
// non-secret string it must contain, so that the search provably looked at
// the real thing.
type haystack struct {
	name, text, marker string
}

// checkNoSecrets: no configured upstream secret, no client token (valid or
// not) anywhere.
func checkNoSecrets(t *testing.T, hay []haystack) {
	t.Helper()
	for _, h := range hay {
		if !strings.Contains(h.text, h.marker) {
			t.Errorf("%s: does not contain %q: the secret search would be vacuous (%d bytes)", h.name, h.marker, len(h.text))
		}
		for _, s := range telSecrets {
			if i := strings.Index(h.text, s); i >= 0 {
				lo, hi := max(0, i-80), min(len(h.text), i+len(s)+80)
				t.Errorf("%s contains a secret (%s…): …%s…", h.name, s[:10], h.text[lo:hi])
			}
		}
	}
}

// adminText fetches an admin endpoint.
func (g *gateway) adminText(path string) string { return string(g.getAdmin(path)) }

// TestTelemetryMetricsStatsCallLog runs the known sequence with tracing
// off (OTEL_SDK_DISABLED): /metrics, /stats, the call log, the alert line
// and the secret grep do not depend on OpenTelemetry export.
func TestTelemetryMetricsStatsCallLog(t *testing.T) {
	t.Setenv("OTEL_SDK_DISABLED", "true")
	r := startTelemetryRun(t)

	metrics := r.g.getAdmin("/metrics")
	r.checkMetrics(t, metrics)
	stats := r.g.getAdmin("/stats")
	r.checkStats(t, stats, "all")
	r.checkStats(t, r.g.getAdmin("/stats?window=5m"), "5m")
	r.checkCallLog(t)
	r.checkAlertLogged(t)

	// Without a tracer keymux leaves the client's traceparent alone: the
	// upstream sees the client's own span as parent.
	for _, c := range r.calls {
		if c.upstream {
			if want := "00-" + telTraceID + "-" + c.spanID + "-01"; c.upTP != want {
				t.Errorf("%s: upstream traceparent %q, want the client's %q", c.name, c.upTP, want)
			}
		}
	}

	// A bad window is refused.
	resp, err := http.Get(r.g.admin + "/stats?window=forever")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("/stats?window=forever: %d, want 400", resp.StatusCode)
	}

	callLog, err := os.ReadFile(r.callLog)
	if err != nil {
		t.Fatal(err)
	}
	checkNoSecrets(t, []haystack{
		{"gateway stderr (logs and access log)", r.g.stderr.String(), "k3"},
		{"call log", string(callLog), `"key_id":"k1"`},
		{"/metrics", string(metrics), `key="k2"`},
		{"/stats", string(stats), `"k3"`},
		{"/status", r.g.adminText("/status"), `"k1"`},
	})
}
