package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/fakeclock"
)

// call builds a synthetic upstream call that ended at end after lat.
func call(key, model string, status int, lat time.Duration, end time.Time) *Call {
	return &Call{
		RequestID: "req-" + key, Start: end.Add(-lat), End: end, Overhead: 40 * time.Microsecond,
		Method: "POST", Path: "/v1/chat/completions", Operation: "chat", ClientID: "team-a",
		KeyID: key, Provider: "openai", UpstreamHost: "api.openai.test", Strategy: "round_robin",
		ModelOriginal: model, ModelFinal: model, Status: status,
	}
}

func local(status int, code, model string, end time.Time) *Call {
	return &Call{
		RequestID: "req-local", Start: end.Add(-time.Millisecond), End: end, Overhead: 40 * time.Microsecond,
		Method: "POST", Path: "/v1/chat/completions", Operation: "chat",
		ModelOriginal: model, Status: status, Local: true, ErrorCode: code,
	}
}

func withUsage(c *Call, in, out int64) *Call {
	c.UsageKnown, c.InputTokens, c.OutputTokens = true, in, out
	return c
}

// sequence is the known sequence of calls the exact tests replay (now = t0):
//
//	1 k1 gpt-4o        200  100ms  usage 100/50   t0-20m
//	2 k1 gpt-4o        200  200ms  usage 10/5     t0-2m
//	3 k2 gpt-4o-mini   429   20ms  rate_limited   t0-1m
//	4 k2 gpt-4o-mini   200  300ms  cut            t0-30s
//	5 k3 text-emb…     500   50ms  server         t0-2h
//	6 local 401 invalid_api_key (no model)        t0-10s
//	7 local 404 model_not_found "nope"            t0-10s
//	8 local 200 GET /v1/models (not a call)       t0-10s
//	9 k1 gpt-4o        400   30ms  usage 7/0      t0-5s
func sequence() []*Call {
	c3 := call("k2", "gpt-4o-mini", 429, 20*time.Millisecond, t0.Add(-time.Minute))
	c3.ErrorCode = policy.ClassRateLimited
	c4 := call("k2", "gpt-4o-mini", 200, 300*time.Millisecond, t0.Add(-30*time.Second))
	c4.Truncated, c4.ErrorCode, c4.Stream = true, policy.ClassStreamCut, true
	c5 := call("k3", "text-embedding-3-small", 500, 50*time.Millisecond, t0.Add(-2*time.Hour))
	c5.Operation, c5.ErrorCode = "embeddings", policy.ClassServer
	c8 := local(200, "", "", t0.Add(-10*time.Second))
	c8.Method, c8.Path, c8.Operation = "GET", "/v1/models", "list_models"
	c9 := withUsage(call("k1", "gpt-4o", 400, 30*time.Millisecond, t0.Add(-5*time.Second)), 7, 0)
	c9.ErrorCode = policy.ClassClient
	return []*Call{
		withUsage(call("k1", "gpt-4o", 200, 100*time.Millisecond, t0.Add(-20*time.Minute)), 100, 50),
		withUsage(call("k1", "gpt-4o", 200, 200*time.Millisecond, t0.Add(-2*time.Minute)), 10, 5),
		c3,
		c4,
		c5,
		local(401, "invalid_api_key", "", t0.Add(-10*time.Second)),
		local(404, "model_not_found", "nope", t0.Add(-10*time.Second)),
		c8,
		c9,
	}
}

// replay runs the sequence: Begin for upstream calls (the request path
// calls it once a key is chosen), End for all.
func replay(tel *Telemetry, calls []*Call) {
	for _, c := range calls {
		if !c.Local {
			tel.Begin(c)
		}
		tel.End(c)
	}
}

func healthFn() []KeyHealth {
	return []KeyHealth{
		{ID: "k1", State: "healthy", Requests: 3, Errors: 0, Tokens: 172, Models: []ModelHealth{{Model: "gpt-4o", State: "healthy",
			Requests: &HeadroomBudget{Limit: 100, Remaining: 40, Reset: t0.Add(20 * time.Second)}, Tokens: &HeadroomBudget{Remaining: 9000}}}},
		{ID: "k2", State: "cooling_down", Until: t0.Add(30 * time.Second), Requests: 2, Errors: 2, Cooldowns: 2, RateLimitHeaderErrors: 3,
			Models: []ModelHealth{{Model: "gpt-4o-mini", State: "no_headroom", Until: t0.Add(30 * time.Second), Requests: &HeadroomBudget{Remaining: 0}}}},
		{ID: "k3", State: "ejected", Until: t0.Add(time.Minute), Requests: 1, Errors: 1, Ejections: 1},
	}
}

func TestMetricsExact(t *testing.T) {
	clk := fakeclock.New(t0)
	tel := newTel(t, Config{Now: clk.Now})
	tel.SetKeyHealth(healthFn)
	tel.SetConfigInfo(func() ConfigInfo {
		return ConfigInfo{Generation: 7, Source: "consul", Stale: true, StaleSince: t0.Add(-90 * time.Second), Refused: 2,
			Counters: &SourceCounters{Refusals: 5, ReadErrors: 3}}
	})
	tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.5, Usage: 10000} })

	// In flight: Begin without End.
	pending := call("k1", "gpt-4o", 200, time.Second, t0)
	tel.Begin(pending)
	if got := scrape(t, tel)["keymux_requests_in_flight"]; got != 1 {
		t.Fatalf("in flight after Begin = %v, want 1", got)
	}
	tel.End(pending)
	// pending counts as one more k1 2xx request; the sequence comes on top.
	replay(tel, sequence())

	m := scrape(t, tel)
	want := map[string]float64{
		`keymux_requests_in_flight`:                                                         0,
		`keymux_requests_total{key="k1",model="gpt-4o",status_class="2xx"}`:                 3,
		`keymux_requests_total{key="k1",model="gpt-4o",status_class="4xx"}`:                 1,
		`keymux_requests_total{key="k2",model="gpt-4o-mini",status_class="4xx"}`:            1,
		`keymux_requests_total{key="k2",model="gpt-4o-mini",status_class="2xx"}`:            1,
		`keymux_requests_total{key="k3",model="text-embedding-3-small",status_class="5xx"}`: 1,
		`keymux_requests_total{status_class="4xx"}`:                                         1, // 401, no model
		`keymux_requests_total{model="other",status_class="4xx"}`:                           1, // 404 "nope", folded
		`keymux_requests_total{status_class="2xx"}`:                                         1, // GET /v1/models

		`keymux_errors_total{class="client",key="k1"}`:       1,
		`keymux_errors_total{class="rate_limited",key="k2"}`: 1,
		`keymux_errors_total{class="stream_cut",key="k2"}`:   1,
		`keymux_errors_total{class="server",key="k3"}`:       1,
		`keymux_errors_total{class="local"}`:                 2,

		`keymux_tokens_total{key="k1",type="input"}`:  117,
		`keymux_tokens_total{key="k1",type="output"}`: 55,

		`gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o",gen_ai_token_type="input"}`:  3,
		`gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o",gen_ai_token_type="input"}`:    117,
		`gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o",gen_ai_token_type="output"}`:   55,
		`gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o",gen_ai_token_type="output"}`: 3,

		`keymux_request_duration_seconds_count{key="k1",model="gpt-4o",status_class="2xx"}`: 3,
		`keymux_request_duration_seconds_sum{key="k1",model="gpt-4o",status_class="2xx"}`:   1.3,
		`keymux_extproc_overhead_microseconds_count`:                                        10,
		`keymux_extproc_overhead_microseconds_sum`:                                          400,

		`keymux_key_up{key="k1"}`:                         1,
		`keymux_key_up{key="k2"}`:                         0,
		`keymux_key_up{key="k3"}`:                         0,
		`keymux_key_state{key="k1",state="healthy"}`:      1,
		`keymux_key_state{key="k2",state="cooling_down"}`: 1,
		`keymux_key_state{key="k3",state="ejected"}`:      1,
		`keymux_key_cooldowns_total{key="k2"}`:            2,
		`keymux_key_ejections_total{key="k3"}`:            1,
		`keymux_key_ejections_total{key="k2"}`:            0,

		`keymux_key_model_state{key="k1",model="gpt-4o",state="healthy"}`:          1,
		`keymux_key_model_state{key="k2",model="gpt-4o-mini",state="no_headroom"}`: 1,
		`keymux_key_headroom_requests{key="k1",model="gpt-4o"}`:                    40,
		`keymux_key_headroom_requests{key="k2",model="gpt-4o-mini"}`:               0,
		`keymux_key_headroom_tokens{key="k1",model="gpt-4o"}`:                      9000,
		`keymux_ratelimit_header_errors_total{key="k2"}`:                           3,
		`keymux_ratelimit_header_errors_total{key="k1"}`:                           0,

		`keymux_config_generation{source="consul"}`: 7,
		`keymux_config_stale`:                       1,
		`keymux_config_stale_duration_seconds`:      90,
		`keymux_config_refused`:                     2,
		`keymux_config_refusals_total`:              5,
		`keymux_config_read_errors_total`:           3,

		`keymux_calllog_dropped_total`:               0,
		`keymux_alert_threshold{alert="error_rate"}`: 0.5,
		`keymux_alert_threshold{alert="usage"}`:      10000,
		`keymux_alert_active{alert="error_rate"}`:    0, // 4 of 6 calls in 5m failed (the anonymous 401 left out), but fewer than AlertMinCalls
		`keymux_error_ratio`:                         float64(4) / 6,
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("missing series %s", k)
			continue
		}
		if diff := got - v; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	// No other series in the families asserted exhaustively.
	for _, fam := range []string{"keymux_requests_total", "keymux_errors_total", "keymux_tokens_total", "keymux_key_state", "keymux_key_up", "keymux_alert_active"} {
		for _, k := range series(m, fam) {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected series %s = %v", k, m[k])
			}
		}
	}
}

const wantStatsAll = `{
  "window": "all",
  "total_calls": 8,
  "successful_calls": 2,
  "error_rate": 75,
  "top_keys": [
    {"id": "k1", "usage": 172, "errors": 1},
    {"id": "k2", "usage": 0, "errors": 2},
    {"id": "k3", "usage": 0, "errors": 1}
  ],
  "models": {"gpt-4o": 3, "gpt-4o-mini": 2, "text-embedding-3-small": 1, "other": 1},
  "latency_ms": {"p50": 50, "p95": 288, "p99": 288},
  "keys": [
    {"id": "k1", "state": "healthy", "requests": 3, "errors": 0, "tokens": 172, "ejections": 0, "cooldowns": 0, "ratelimit_header_errors": 0,
     "models": [{"model": "gpt-4o", "state": "healthy", "requests": {"limit": 100, "remaining": 40, "reset": "2026-01-02T03:10:50Z"}, "tokens": {"remaining": 9000}}]},
    {"id": "k2", "state": "cooling_down", "until": "2026-01-02T03:11:00Z", "requests": 2, "errors": 2, "tokens": 0, "ejections": 0, "cooldowns": 2, "ratelimit_header_errors": 3,
     "models": [{"model": "gpt-4o-mini", "state": "no_headroom", "until": "2026-01-02T03:11:00Z", "requests": {"remaining": 0}}]},
    {"id": "k3", "state": "ejected", "until": "2026-01-02T03:11:30Z", "requests": 1, "errors": 1, "tokens": 0, "ejections": 1, "cooldowns": 0, "ratelimit_header_errors": 0}
  ],
  "retries": []
}`

func TestStatsExact(t *testing.T) {
	clk := fakeclock.New(t0)
	tel := newTel(t, Config{Now: clk.Now})
	tel.SetKeyHealth(healthFn)
	replay(tel, sequence())

	keys := `[
    {"id": "k1", "state": "healthy", "requests": 3, "errors": 0, "tokens": 172, "ejections": 0, "cooldowns": 0, "ratelimit_header_errors": 0,
     "models": [{"model": "gpt-4o", "state": "healthy", "requests": {"limit": 100, "remaining": 40, "reset": "2026-01-02T03:10:50Z"}, "tokens": {"remaining": 9000}}]},
    {"id": "k2", "state": "cooling_down", "until": "2026-01-02T03:11:00Z", "requests": 2, "errors": 2, "tokens": 0, "ejections": 0, "cooldowns": 2, "ratelimit_header_errors": 3,
     "models": [{"model": "gpt-4o-mini", "state": "no_headroom", "until": "2026-01-02T03:11:00Z", "requests": {"remaining": 0}}]},
    {"id": "k3", "state": "ejected", "until": "2026-01-02T03:11:30Z", "requests": 1, "errors": 1, "tokens": 0, "ejections": 1, "cooldowns": 0, "ratelimit_header_errors": 0}
  ]`
	tests := []struct {
		query string
		want  string
	}{
		{"", wantStatsAll},
		{"?window=all", wantStatsAll},
		// 5m: minute buckets from 03:05 (calls 2, 3, 4, 6, 7, 9).
		{"?window=5m", `{"window": "5m", "total_calls": 6, "successful_calls": 1, "error_rate": 83.33,
		  "top_keys": [{"id": "k1", "usage": 22, "errors": 1}, {"id": "k2", "usage": 0, "errors": 2}],
		  "models": {"gpt-4o": 2, "gpt-4o-mini": 2, "other": 1},
		  "latency_ms": {"p50": 30, "p95": 288, "p99": 288}, "keys": ` + keys + `, "retries": []}`},
		// 1h: adds call 1, not call 5 (2h ago).
		{"?window=1h", `{"window": "1h", "total_calls": 7, "successful_calls": 2, "error_rate": 71.43,
		  "top_keys": [{"id": "k1", "usage": 172, "errors": 1}, {"id": "k2", "usage": 0, "errors": 2}],
		  "models": {"gpt-4o": 3, "gpt-4o-mini": 2, "other": 1},
		  "latency_ms": {"p50": 100, "p95": 288, "p99": 288}, "keys": ` + keys + `, "retries": []}`},
		// 24h, the longest: everything.
		{"?window=24h", strings.Replace(wantStatsAll, `"all"`, `"24h"`, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			code, body := getStats(t, tel, tt.query)
			if code != 200 {
				t.Fatalf("status %d: %s", code, body)
			}
			jsonEqual(t, "/stats"+tt.query, body, tt.want)
		})
	}

	// Later, the 5m window is empty; all time is unchanged.
	clk.Set(t0.Add(10 * time.Minute))
	_, body := getStats(t, tel, "?window=5m")
	jsonEqual(t, "/stats?window=5m 10 minutes later", body, `{"window": "5m", "total_calls": 0, "successful_calls": 0,
	  "error_rate": 0, "top_keys": [], "models": {}, "latency_ms": {"p50": 0, "p95": 0, "p99": 0}, "keys": `+keys+`, "retries": []}`)
	_, body = getStats(t, tel, "")
	jsonEqual(t, "/stats all 10 minutes later", body, wantStatsAll)
}

func TestStatsEmpty(t *testing.T) {
	tel := newTel(t, Config{Now: func() time.Time { return t0 }})
	_, body := getStats(t, tel, "")
	// Exact bytes: the empty document, no nulls.
	want := `{
  "window": "all",
  "total_calls": 0,
  "successful_calls": 0,
  "error_rate": 0,
  "top_keys": [],
  "models": {},
  "latency_ms": {
    "p50": 0,
    "p95": 0,
    "p99": 0
  },
  "keys": [],
  "retries": []
}
`
	if body != want {
		t.Errorf("empty /stats:\n%s\nwant\n%s", body, want)
	}
}

func TestStatsBadWindow(t *testing.T) {
	tel := newTel(t, Config{})
	for _, q := range []string{"abc", "30s", "25h", "-5m", "0", "1d",
		"9223372036854775807ns", "99999999999h", "1e3h", "5m-5m", "ALL"} {
		t.Run(q, func(t *testing.T) {
			code, body := getStats(t, tel, "?window="+q)
			if code != 400 {
				t.Fatalf("status %d, want 400", code)
			}
			shown := q
			if len(shown) > 16 {
				shown = shown[:16] + "…" // the error shows at most 16 bytes of the value
			}
			want, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("bad window %q: want all or a duration between 1m and 24h, e.g. 5m or 1h", shown)})
			jsonEqual(t, "error", body, string(want))
		})
	}
}

// TestStatsRingReuse: a minute bucket is reused 24h later without mixing.
func TestStatsRingReuse(t *testing.T) {
	clk := fakeclock.New(t0)
	tel := newTel(t, Config{Now: clk.Now})
	tel.End(withUsage(call("k1", "m1", 200, 10*time.Millisecond, t0), 1, 1))
	day := t0.Add(24 * time.Hour)
	clk.Set(day)
	tel.End(withUsage(call("k2", "m1", 500, 20*time.Millisecond, day), 3, 0))

	st := tel.Stats(24 * time.Hour)
	if st.TotalCalls != 1 || st.SuccessfulCalls != 0 || len(st.TopKeys) != 1 || st.TopKeys[0] != (KeyUsage{ID: "k2", Usage: 3, Errors: 1}) {
		t.Errorf("24h window a day later = %+v, want only the k2 call", st)
	}
	if st.LatencyMS != (Latency{20, 20, 20}) {
		t.Errorf("latency = %+v, want 20/20/20", st.LatencyMS)
	}
	all := tel.Stats(0)
	if all.TotalCalls != 2 || all.SuccessfulCalls != 1 || all.ErrorRate != 50 {
		t.Errorf("all time = %+v, want 2 calls, 1 ok, 50%%", all)
	}
	// A late call older than its bucket's minute only counts in all time.
	tel.End(withUsage(call("k3", "m1", 200, time.Millisecond, t0), 1, 0))
	if got := tel.Stats(24 * time.Hour).TotalCalls; got != 1 {
		t.Errorf("late call leaked into the window: %d calls", got)
	}
}

func TestLatencyBuckets(t *testing.T) {
	tests := []struct {
		ms   uint64
		want float64
	}{
		{0, 0}, {1, 1}, {15, 15}, {16, 16}, {31, 31}, {32, 32}, {33, 32}, {100, 100}, {101, 100},
		{200, 200}, {300, 288}, {1000, 992}, {60000, 59392}, {1 << 30, 16252928},
	}
	for _, tt := range tests {
		got := latLower(latIndex(tt.ms))
		if got != tt.want {
			t.Errorf("bucket(%d ms) = %v, want %v", tt.ms, got, tt.want)
		}
		if tt.ms < 1<<24 && (got > float64(tt.ms) || float64(tt.ms)-got > float64(tt.ms)/16) {
			t.Errorf("bucket(%d ms) = %v: more than 6.25%% below", tt.ms, got)
		}
	}
	// Every index maps back to itself.
	for i := range latBuckets {
		if j := latIndex(uint64(latLower(i))); j != i {
			t.Fatalf("latIndex(latLower(%d)) = %d", i, j)
		}
	}
}

func TestModelFolding(t *testing.T) {
	tel := newTel(t, Config{Now: func() time.Time { return t0 }})
	// Refused names are never admitted.
	for i := range 5 {
		tel.End(local(404, "model_not_found", fmt.Sprintf("junk-%d", i), t0))
	}
	for i := range MaxModels + 3 {
		tel.End(call("k1", fmt.Sprintf("m%03d", i), 200, time.Millisecond, t0))
	}
	st := tel.Stats(0)
	if len(st.Models) != MaxModels+1 {
		t.Fatalf("%d model names in /stats, want %d", len(st.Models), MaxModels+1)
	}
	if st.Models[OtherModel] != 5+3 || st.Models["m000"] != 1 || st.Models["m099"] != 1 {
		t.Errorf("other=%d m000=%d m099=%d, want 8 1 1", st.Models[OtherModel], st.Models["m000"], st.Models["m099"])
	}
	m := scrape(t, tel)
	if got := m[`keymux_requests_total{key="k1",model="other",status_class="2xx"}`]; got != 3 {
		t.Errorf("folded upstream requests = %v, want 3", got)
	}
	if n := len(series(m, "keymux_requests_total")); n != MaxModels+2 {
		t.Errorf("%d requests series, want %d", n, MaxModels+2)
	}
}

// TestModelFilter: with a filter, only the names it accepts become labels:
// names made up by clients, even forwarded by a key that serves any model,
// cannot fill the set before the configured models are seen.
func TestModelFilter(t *testing.T) {
	tel := newTel(t, Config{Now: func() time.Time { return t0 }})
	tel.SetModelFilter(func(m string) bool { return m == "gpt-4o" || m == "gpt-4o-mini" })
	for i := range MaxModels + 5 {
		tel.End(call("k1", fmt.Sprintf("junk-%03d", i), 200, time.Millisecond, t0))
	}
	tel.End(call("k1", "gpt-4o", 200, time.Millisecond, t0))
	rewritten := call("k1", "gpt-4o", 200, time.Millisecond, t0)
	rewritten.ModelFinal = "gpt-4o-mini"
	tel.End(withUsage(rewritten, 3, 4))
	tel.End(local(503, "keys_cooling_down", "gpt-4o-mini", t0))
	st := tel.Stats(0)
	want := map[string]uint64{OtherModel: MaxModels + 5, "gpt-4o": 2, "gpt-4o-mini": 1}
	if len(st.Models) != len(want) || st.Models[OtherModel] != want[OtherModel] || st.Models["gpt-4o"] != 2 || st.Models["gpt-4o-mini"] != 1 {
		t.Fatalf("/stats models %v, want %v", st.Models, want)
	}
	m := scrape(t, tel)
	for series, n := range map[string]float64{
		`keymux_requests_total{key="k1",model="other",status_class="2xx"}`:  MaxModels + 5,
		`keymux_requests_total{key="k1",model="gpt-4o",status_class="2xx"}`: 2,
		`gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o-mini",gen_ai_token_type="input"}`: 1,
	} {
		if m[series] != n {
			t.Errorf("%s = %v, want %v", series, m[series], n)
		}
	}
}

// TestInvalidUTF8Labels: strings that are not UTF-8 become labels with
// U+FFFD, and /metrics keeps answering.
func TestInvalidUTF8Labels(t *testing.T) {
	tel := newTel(t, Config{Now: func() time.Time { return t0 }})
	bad := call("k\xff", "gpt-4o\xff", 200, time.Millisecond, t0)
	bad.Operation, bad.Provider = "chat\xc3", "openai\xfe"
	tel.End(withUsage(bad, 1, 2))
	tel.End(local(400, "invalid_value", "m\xed\xa0\x80", t0))
	m := scrape(t, tel) // fails the test unless the registry gathers
	if got := m["keymux_requests_total{key=\"k\ufffd\",model=\"gpt-4o\ufffd\",status_class=\"2xx\"}"]; got != 1 {
		t.Errorf("cleaned series = %v, want 1; series: %v", got, series(m, "keymux_requests_total"))
	}
	if code, body := getStats(t, tel, ""); code != 200 || !utf8.ValidString(body) {
		t.Errorf("/stats: %d %q", code, body)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		c    Call
		want outcome
	}{
		{"ok", Call{KeyID: "k", Status: 200}, outcome{counted: true, upstream: true}},
		{"models list", Call{Local: true, Status: 200}, outcome{}},
		{"anonymous refusal", Call{Local: true, Status: 401, ErrorCode: "invalid_api_key"}, outcome{counted: true, failed: true, anonymous: true, class: ClassLocal, errType: "invalid_api_key"}},
		{"anonymous, no credentials", Call{Local: true, Status: 401, ErrorCode: "missing_api_key"}, outcome{counted: true, failed: true, anonymous: true, class: ClassLocal, errType: "missing_api_key"}},
		{"401 of an identified client", Call{Local: true, Status: 401, ClientID: "c1", ErrorCode: "invalid_api_key"}, outcome{counted: true, failed: true, class: ClassLocal, errType: "invalid_api_key"}},
		{"anonymous 404", Call{Local: true, Status: 404, ErrorCode: "unknown_url"}, outcome{counted: true, failed: true, class: ClassLocal, errType: "unknown_url"}},
		{"client refused a model", Call{Local: true, Status: 403, ClientID: "c1", ErrorCode: "model_not_allowed"}, outcome{counted: true, failed: true, class: ClassLocal, errType: "model_not_allowed"}},
		{"forbidden jwt claim", Call{Local: true, Status: 403, ErrorCode: "insufficient_permissions"}, outcome{counted: true, failed: true, class: ClassLocal, errType: "insufficient_permissions"}},
		{"local no code", Call{Local: true, Status: 503}, outcome{counted: true, failed: true, class: ClassLocal, errType: ClassLocal}},
		{"class given", Call{KeyID: "k", Status: 403, ErrorCode: policy.ClassRateLimited}, outcome{counted: true, failed: true, upstream: true, class: policy.ClassRateLimited, errType: policy.ClassRateLimited}},
		{"408 timeout", Call{KeyID: "k", Status: 408, ErrorCode: policy.ClassTimeout}, outcome{counted: true, failed: true, upstream: true, class: policy.ClassTimeout, errType: policy.ClassTimeout}},
		{"404 upstream", Call{KeyID: "k", Status: 404, ErrorCode: policy.ClassClient}, outcome{counted: true, failed: true, upstream: true, class: policy.ClassClient, errType: policy.ClassClient}},
		{"no response", Call{KeyID: "k", ErrorCode: policy.ClassStreamCut}, outcome{counted: true, failed: true, upstream: true, class: policy.ClassStreamCut, errType: policy.ClassStreamCut}},
		{"cut 200", Call{KeyID: "k", Status: 200, Truncated: true, ErrorCode: policy.ClassStreamCut}, outcome{counted: true, failed: true, upstream: true, class: policy.ClassStreamCut, errType: policy.ClassStreamCut}},
		{"no class", Call{KeyID: "k", Status: 500}, outcome{counted: true, failed: true, upstream: true, class: ClassUnknown, errType: ClassUnknown}},
		{"101 is a success", Call{KeyID: "k", Status: 101}, outcome{counted: true, upstream: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(&tt.c); got != tt.want {
				t.Errorf("classify = %+v, want %+v", got, tt.want)
			}
		})
	}
	for status, want := range map[int]string{0: "none", 100: "1xx", 204: "2xx", 304: "3xx", 499: "4xx", 599: "5xx", 600: "other", -1: "other"} {
		if got := statusClass(status); got != want {
			t.Errorf("statusClass(%d) = %q, want %q", status, got, want)
		}
	}
}

func TestAlerts(t *testing.T) {
	t.Run("error rate fires once and resolves", func(t *testing.T) {
		var logs syncBuffer
		tel := newTel(t, Config{Logger: jsonLogger(&logs), Now: func() time.Time { return t0 }})
		tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.2, Usage: 0} })
		ok := func() { tel.End(call("k1", "m", 200, time.Millisecond, t0)) }
		bad := func() { tel.End(call("k1", "m", 500, time.Millisecond, t0)) }
		for range 7 {
			ok()
		}
		for range 2 {
			bad()
		}
		if logs.String() != "" {
			t.Fatalf("alert before %d calls: %s", AlertMinCalls, logs.String())
		}
		bad() // 3 of 10 = 0.3 > 0.2
		want := `{"level":"WARN","msg":"alert threshold crossed","alert":"error_rate","value":0.3,"threshold":0.2,"window":"5m0s","calls":10}` + "\n"
		if logs.String() != want {
			t.Fatalf("log after crossing:\n%s\nwant\n%s", logs.String(), want)
		}
		if got := scrape(t, tel)[`keymux_alert_active{alert="error_rate"}`]; got != 1 {
			t.Errorf("keymux_alert_active = %v, want 1", got)
		}
		bad() // 4 of 11: still firing, no new line
		for range 8 {
			ok() // 4 of 19 > 0.2
		}
		if logs.String() != want {
			t.Fatalf("logged again while firing:\n%s", logs.String())
		}
		ok() // 4 of 20 = 0.2: resolved
		want += `{"level":"INFO","msg":"alert resolved","alert":"error_rate","value":0.2,"threshold":0.2,"window":"5m0s","calls":20}` + "\n"
		if logs.String() != want {
			t.Fatalf("log after resolving:\n%s\nwant\n%s", logs.String(), want)
		}
		m := scrape(t, tel)
		if m[`keymux_alert_active{alert="error_rate"}`] != 0 || m[`keymux_error_ratio`] != 0.2 {
			t.Errorf("active=%v ratio=%v, want 0 and 0.2", m[`keymux_alert_active{alert="error_rate"}`], m[`keymux_error_ratio`])
		}
	})
	t.Run("anonymous refusals do not count", func(t *testing.T) {
		var logs syncBuffer
		tel := newTel(t, Config{Logger: jsonLogger(&logs), Now: func() time.Time { return t0 }})
		tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.2, Usage: 0} })
		for range 8 {
			tel.End(call("k1", "m", 200, time.Millisecond, t0))
		}
		// A scanner without a token: 50 anonymous 401s, and one unknown token.
		for range 50 {
			tel.End(local(401, "missing_api_key", "", t0))
		}
		tel.End(local(401, "invalid_api_key", "m", t0))
		if logs.String() != "" {
			t.Fatalf("anonymous refusals raised the alert: %s", logs.String())
		}
		m := scrape(t, tel)
		if m[`keymux_alert_active{alert="error_rate"}`] != 0 || m[`keymux_error_ratio`] != 0 {
			t.Errorf("active=%v ratio=%v, want 0 and 0", m[`keymux_alert_active{alert="error_rate"}`], m[`keymux_error_ratio`])
		}
		// They stay visible as local errors and in /stats.
		if got := m[`keymux_errors_total{class="local"}`]; got != 51 {
			t.Errorf(`keymux_errors_total{class="local"} = %v, want 51`, got)
		}
		if st := tel.Stats(AlertWindow); st.TotalCalls != 59 || st.SuccessfulCalls != 8 {
			t.Errorf("/stats calls %d/%d, want 59 with 8 successful", st.TotalCalls, st.SuccessfulCalls)
		}
		// Identified failures still count: 8 ok + 2 refused for a model
		// (403, client known) = 10 calls, 0.2 failed: not above; one more fires.
		refusal := func() {
			c := local(403, "model_not_allowed", "m", t0)
			c.ClientID = "c1"
			tel.End(c)
		}
		refusal()
		refusal()
		if logs.String() != "" {
			t.Fatalf("alert at 2 of 10: %s", logs.String())
		}
		refusal()
		want := `{"level":"WARN","msg":"alert threshold crossed","alert":"error_rate","value":0.2727272727272727,"threshold":0.2,"window":"5m0s","calls":11}` + "\n"
		if logs.String() != want {
			t.Fatalf("log:\n%s\nwant\n%s", logs.String(), want)
		}
	})
	t.Run("usage per key fires once", func(t *testing.T) {
		var logs syncBuffer
		tel := newTel(t, Config{Logger: jsonLogger(&logs), Now: func() time.Time { return t0 }})
		tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.2, Usage: 100} })
		for range 3 {
			tel.End(withUsage(call("k1", "m", 200, time.Millisecond, t0), 40, 20))
			tel.End(withUsage(call("k2", "m", 200, time.Millisecond, t0), 1, 1))
		}
		want := `{"level":"WARN","msg":"alert threshold crossed","alert":"usage","value":120,"threshold":100,"key_id":"k1"}` + "\n"
		if logs.String() != want {
			t.Fatalf("logs:\n%s\nwant\n%s", logs.String(), want)
		}
		m := scrape(t, tel)
		if m[`keymux_alert_active{alert="usage",key="k1"}`] != 1 {
			t.Errorf("usage alert gauge for k1 = %v, want 1", m[`keymux_alert_active{alert="usage",key="k1"}`])
		}
		if _, ok := m[`keymux_alert_active{alert="usage",key="k2"}`]; ok {
			t.Errorf("usage alert series for k2, which never crossed")
		}
	})
	t.Run("defaults until SetAlerts", func(t *testing.T) {
		tel := newTel(t, Config{})
		if got := tel.thresholds(); got != DefaultAlerts || got != (Alerts{ErrorRate: 0.2, Usage: 10000}) {
			t.Errorf("thresholds = %+v", got)
		}
	})
}

// blockingWriter blocks every Write until released, signalling entry.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	buf     strings.Builder
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestCallLogDropsWhenFull(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	tel := newTel(t, Config{CallLog: w, CallLogQueue: 1, Now: func() time.Time { return t0 }})
	tel.End(call("k1", "m", 200, time.Millisecond, t0)) // taken by the writer, which blocks
	<-w.entered
	tel.End(call("k2", "m", 200, time.Millisecond, t0)) // fills the queue
	tel.End(call("k3", "m", 200, time.Millisecond, t0)) // dropped
	tel.End(call("k4", "m", 200, time.Millisecond, t0)) // dropped
	if got := tel.CallLogDropped(); got != 2 {
		t.Errorf("CallLogDropped = %d, want 2", got)
	}
	if got := scrape(t, tel)["keymux_calllog_dropped_total"]; got != 2 {
		t.Errorf("keymux_calllog_dropped_total = %v, want 2", got)
	}
	close(w.release)
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	lines := strings.Split(strings.TrimSpace(w.buf.String()), "\n")
	w.mu.Unlock()
	if len(lines) != 2 || !strings.Contains(lines[0], `"key_id":"k1"`) || !strings.Contains(lines[1], `"key_id":"k2"`) {
		t.Errorf("call log = %q, want the k1 and k2 lines", lines)
	}
	// After Shutdown, records are dropped and counted.
	tel.End(call("k5", "m", 200, time.Millisecond, t0))
	if got := tel.CallLogDropped(); got != 3 {
		t.Errorf("CallLogDropped after shutdown = %d, want 3", got)
	}
}

func TestCallLogLines(t *testing.T) {
	var buf syncBuffer
	tel := newTel(t, Config{CallLog: &buf, Now: func() time.Time { return t0 }})
	c1 := withUsage(call("k1", "gpt-4o", 200, 1234567*time.Microsecond/1000, t0), 12, 34)
	c1.ModelFinal, c1.TraceParent = "gpt-4o-mini", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	c1.Start = time.Date(2026, 1, 2, 3, 10, 28, 765433000, time.UTC)
	c1.End = c1.Start.Add(1234567 * time.Nanosecond)
	c2 := local(401, "invalid_api_key", "", t0)
	c2.ClientID = ""
	c3 := call("k2", "gpt-4o", 502, 2*time.Second, t0)
	c3.ErrorCode = policy.ClassServer
	for _, c := range []*Call{c1, c2, c3} {
		tel.End(c)
	}
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := `{"key_id":"k1","time":"2026-01-02T03:10:28.765433Z","model_original":"gpt-4o","model_final":"gpt-4o-mini","response_time_ms":1.235,"success":true,"status":200,"operation":"chat","client_id":"team-a","trace_id":"0af7651916cd43dd8448eb211c80319c","request_id":"req-k1","input_tokens":12,"output_tokens":34}
{"key_id":"","time":"2026-01-02T03:10:29.999Z","model_original":"","model_final":"","response_time_ms":1,"success":false,"status":401,"operation":"chat","request_id":"req-local","error":"invalid_api_key"}
{"key_id":"k2","time":"2026-01-02T03:10:28Z","model_original":"gpt-4o","model_final":"gpt-4o","response_time_ms":2000,"success":false,"status":502,"operation":"chat","client_id":"team-a","request_id":"req-k2","error":"server"}
`
	if got := buf.String(); got != want {
		t.Errorf("call log:\n%s\nwant\n%s", got, want)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{CallLogQueue: -1}); err == nil || !strings.Contains(err.Error(), "CallLogQueue -1") {
		t.Errorf("New(CallLogQueue: -1) = %v, want an error naming the field", err)
	}
}

func TestShutdownBounded(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	defer close(w.release)
	tel, err := New(Config{CallLog: w})
	if err != nil {
		t.Fatal(err)
	}
	tel.End(call("k1", "m", 200, time.Millisecond, t0))
	<-w.entered
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := tel.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with a stuck writer = %v, want context.Canceled", err)
	}
}

// TestNoSecretAnywhere: a fake secret in fields telemetry must not export
// appears in no output: logs, call log, spans, metrics, /stats.
func TestNoSecretAnywhere(t *testing.T) {
	const secret = "sk-test-LEAK-0123456789abcdef"
	var logs, calls syncBuffer
	sr, tp := newRecorder()
	tel := newTel(t, Config{Logger: jsonLogger(&logs), CallLog: &calls, TracerProvider: tp, Now: func() time.Time { return t0 }})
	tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.01, Usage: 1} })
	tel.SetKeyHealth(healthFn)
	seq := sequence()
	for i := range 12 {
		seq = append(seq, call("k1", "gpt-4o", 500, time.Millisecond, t0.Add(-time.Duration(i)*time.Second)))
	}
	for _, c := range seq {
		c.Path += "?api-key=" + secret
		c.TraceState = "" // carried by design; never holds keymux's secrets
	}
	replay(tel, seq)
	_ = tel.Shutdown(t.Context())
	if !strings.Contains(logs.String(), "alert threshold crossed") {
		t.Fatalf("the run logged no alert; the grep would be weak: %s", logs.String())
	}
	outputs := map[string]string{
		"log":      logs.String(),
		"call log": calls.String(),
		"metrics":  scrapeText(t, tel),
		"spans":    dumpSpans(sr),
	}
	_, outputs["stats"] = getStats(t, tel, "")
	for _, name := range slices.Sorted(maps.Keys(outputs)) {
		if outputs[name] == "" {
			t.Errorf("%s output empty", name)
		}
		if strings.Contains(outputs[name], secret) || strings.Contains(outputs[name], "LEAK") {
			t.Errorf("secret found in %s", name)
		}
	}
}

func TestNop(t *testing.T) {
	var o Observer = Nop{}
	if tp := o.Begin(&Call{}); tp != "" {
		t.Errorf("Nop.Begin = %q", tp)
	}
	o.End(&Call{})
	_ = io.Discard
}
