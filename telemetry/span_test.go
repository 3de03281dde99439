package telemetry

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/keymux/keymux/policy"
)

func newRecorder() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	sr := tracetest.NewSpanRecorder()
	return sr, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithSampler(sdktrace.AlwaysSample()))
}

// dumpSpans renders every ended span (name, attributes, status, events).
func dumpSpans(sr *tracetest.SpanRecorder) string {
	var b strings.Builder
	for _, s := range sr.Ended() {
		fmt.Fprintf(&b, "%s kind=%v status=%v %q\n", s.Name(), s.SpanKind(), s.Status().Code, s.Status().Description)
		for _, a := range s.Attributes() {
			fmt.Fprintf(&b, "  %s=%s\n", a.Key, a.Value.Emit())
		}
		for _, e := range s.Events() {
			fmt.Fprintf(&b, "  event %s\n", e.Name)
			for _, a := range e.Attributes {
				fmt.Fprintf(&b, "    %s=%s\n", a.Key, a.Value.Emit())
			}
		}
	}
	return b.String()
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

const (
	clientTraceID = "0af7651916cd43dd8448eb211c80319c"
	clientSpanID  = "b7ad6b7169203331"
	clientTP      = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

var tpRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$`)

func TestSpans(t *testing.T) {
	okCall := func() *Call {
		c := withUsage(call("k1", "gpt-4o", 200, 100*time.Millisecond, t0), 11, 22)
		c.ModelFinal, c.RuleID, c.UpstreamHost = "gpt-4o-mini", "r1", "llm.internal.test:8443"
		c.TraceParent, c.TraceState = clientTP, "vendor=v1"
		return c
	}
	failCall := func() *Call {
		c := call("k2", "gpt-4o", 503, 50*time.Millisecond, t0)
		c.Provider, c.UpstreamHost, c.ErrorCode = "azure", "acme.openai.azure.test", policy.ClassServer
		c.TraceParent = clientTP
		return c
	}
	cutCall := func() *Call {
		c := call("k3", "claude-x", 200, 50*time.Millisecond, t0)
		c.Provider, c.Truncated, c.ErrorCode, c.Stream = "anthropic", true, policy.ClassStreamCut, true
		return c
	}
	tests := []struct {
		name       string
		call       func() *Call
		begin      bool
		wantName   string
		wantKind   trace.SpanKind
		wantParent bool
		wantAttrs  map[string]string
		wantStatus codes.Code
		wantDesc   string
	}{
		{
			name: "success", call: okCall, begin: true,
			wantName: "chat gpt-4o", wantKind: trace.SpanKindClient, wantParent: true,
			wantAttrs: map[string]string{
				"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
				"gen_ai.request.stream": "false", "server.address": "llm.internal.test", "server.port": "8443",
				"keymux.key.id": "k1", "keymux.rule.id": "r1", "keymux.strategy": "round_robin", "keymux.client.id": "team-a",
				"keymux.request.id":     "req-k1",
				"gen_ai.response.model": "gpt-4o-mini", "http.response.status_code": "200",
				"gen_ai.usage.input_tokens": "11", "gen_ai.usage.output_tokens": "22",
			},
			wantStatus: codes.Unset,
		},
		{
			name: "upstream 503", call: failCall, begin: true,
			wantName: "chat gpt-4o", wantKind: trace.SpanKindClient, wantParent: true,
			wantAttrs: map[string]string{
				"gen_ai.operation.name": "chat", "gen_ai.provider.name": "azure.ai.openai", "gen_ai.request.model": "gpt-4o",
				"gen_ai.request.stream": "false", "server.address": "acme.openai.azure.test",
				"keymux.key.id": "k2", "keymux.strategy": "round_robin", "keymux.client.id": "team-a", "keymux.request.id": "req-k2",
				"gen_ai.response.model": "gpt-4o", "http.response.status_code": "503", "error.type": "server",
			},
			wantStatus: codes.Error, wantDesc: "upstream call failed: status 503 server",
		},
		{
			name: "stream cut, no parent", call: cutCall, begin: true,
			wantName: "chat claude-x", wantKind: trace.SpanKindClient,
			wantAttrs: map[string]string{
				"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-x",
				"gen_ai.request.stream": "true", "server.address": "api.openai.test",
				"keymux.key.id": "k3", "keymux.strategy": "round_robin", "keymux.client.id": "team-a", "keymux.request.id": "req-k3",
				"gen_ai.response.model": "claude-x", "http.response.status_code": "200", "error.type": "stream_cut",
			},
			wantStatus: codes.Error, wantDesc: "upstream response cut: status 200 stream_cut",
		},
		{
			name: "local refusal without Begin",
			call: func() *Call {
				c := local(403, "model_not_allowed", "gpt-4o", t0)
				c.TraceParent, c.ClientID = clientTP, "team-b"
				return c
			},
			wantName: "chat gpt-4o", wantKind: trace.SpanKindInternal, wantParent: true,
			wantAttrs: map[string]string{
				"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
				"keymux.client.id": "team-b", "keymux.request.id": "req-local",
				"http.response.status_code": "403", "error.type": "model_not_allowed",
			},
			wantStatus: codes.Error, wantDesc: "refused by keymux: status 403 model_not_allowed",
		},
		{
			name: "unknown path",
			call: func() *Call {
				c := local(404, "not_found", "", t0)
				c.Operation, c.Method = "", "PUT"
				return c
			},
			wantName: "PUT", wantKind: trace.SpanKindInternal,
			wantAttrs: map[string]string{
				"keymux.request.id": "req-local", "http.response.status_code": "404", "error.type": "not_found",
			},
			wantStatus: codes.Error, wantDesc: "refused by keymux: status 404 not_found",
		},
		{
			name: "models list",
			call: func() *Call {
				c := local(200, "", "", t0)
				c.Operation = "list_models"
				return c
			},
			wantName: "list_models", wantKind: trace.SpanKindInternal,
			wantAttrs: map[string]string{
				"gen_ai.operation.name": "list_models", "keymux.request.id": "req-local", "http.response.status_code": "200",
			},
			wantStatus: codes.Unset,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sr, tp := newRecorder()
			tel := newTel(t, Config{TracerProvider: tp})
			c := tt.call()
			var upstreamTP string
			if tt.begin {
				upstreamTP = tel.Begin(c)
				if len(sr.Started()) != 1 || len(sr.Ended()) != 0 {
					t.Fatalf("after Begin: %d started, %d ended; want 1, 0", len(sr.Started()), len(sr.Ended()))
				}
			}
			tel.End(c)
			spans := sr.Ended()
			if len(spans) != 1 {
				t.Fatalf("%d spans ended, want 1", len(spans))
			}
			s := spans[0]
			if s.Name() != tt.wantName || s.SpanKind() != tt.wantKind {
				t.Errorf("span %q kind %v, want %q %v", s.Name(), s.SpanKind(), tt.wantName, tt.wantKind)
			}
			if !s.StartTime().Equal(c.Start) || !s.EndTime().Equal(c.End) {
				t.Errorf("span %v..%v, want %v..%v", s.StartTime(), s.EndTime(), c.Start, c.End)
			}
			if tt.wantParent {
				if s.Parent().TraceID().String() != clientTraceID || s.Parent().SpanID().String() != clientSpanID || !s.Parent().IsRemote() {
					t.Errorf("parent = %v/%v remote=%v, want the client's %s/%s", s.Parent().TraceID(), s.Parent().SpanID(), s.Parent().IsRemote(), clientTraceID, clientSpanID)
				}
				if s.SpanContext().TraceID().String() != clientTraceID {
					t.Errorf("trace id %v, want the client's", s.SpanContext().TraceID())
				}
			} else if s.Parent().IsValid() {
				t.Errorf("unexpected parent %v", s.Parent())
			}
			if got := attrMap(s.Attributes()); !mapsEqual(got, tt.wantAttrs) {
				t.Errorf("attributes:\n got %v\nwant %v", got, tt.wantAttrs)
			}
			if s.Status().Code != tt.wantStatus || s.Status().Description != tt.wantDesc {
				t.Errorf("status %v %q, want %v %q", s.Status().Code, s.Status().Description, tt.wantStatus, tt.wantDesc)
			}
			var exc []string
			for _, e := range s.Events() {
				if e.Name == "exception" {
					exc = append(exc, attrMap(e.Attributes)["exception.message"])
				}
			}
			if tt.wantStatus == codes.Error {
				if len(exc) != 1 || exc[0] != tt.wantDesc {
					t.Errorf("exception events %q, want one with %q", exc, tt.wantDesc)
				}
			} else if len(exc) != 0 {
				t.Errorf("exception events on success: %q", exc)
			}
			if tt.begin {
				want := "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
				if upstreamTP != want {
					t.Errorf("Begin returned %q, want %q", upstreamTP, want)
				}
				if tt.wantParent && s.SpanContext().TraceState().String() != strings.TrimSpace(c.TraceState) {
					t.Errorf("trace state %q, want %q", s.SpanContext().TraceState().String(), c.TraceState)
				}
			}
			if c.Data != nil {
				t.Errorf("c.Data = %v after End, want nil", c.Data)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestBeginWithoutTracer(t *testing.T) {
	for name, tp := range map[string]trace.TracerProvider{"nil": nil, "noop": tracenoop.NewTracerProvider()} {
		t.Run(name, func(t *testing.T) {
			tel := newTel(t, Config{TracerProvider: tp})
			c := call("k1", "gpt-4o", 200, time.Millisecond, t0)
			c.TraceParent = clientTP
			if got := tel.Begin(c); got != "" {
				t.Errorf("Begin = %q, want \"\" without a TracerProvider", got)
			}
			if got := tel.inFlight.Load(); got != 1 {
				t.Errorf("in flight %d, want 1", got)
			}
			tel.End(c)
			tel.End(c) // a second End must not drive in-flight negative
			if got := tel.inFlight.Load(); got != 0 {
				t.Errorf("in flight %d after End, want 0", got)
			}
		})
	}
}

func TestSampledOutParent(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	tel := newTel(t, Config{TracerProvider: tp})
	c := call("k1", "gpt-4o", 200, time.Millisecond, t0)
	c.TraceParent = "00-" + clientTraceID + "-" + clientSpanID + "-00"
	got := tel.Begin(c)
	m := tpRE.FindStringSubmatch(got)
	if m == nil || m[1] != clientTraceID || m[2] == clientSpanID || !strings.HasSuffix(got, "-00") {
		t.Errorf("Begin = %q, want a new unsampled span of the client's trace", got)
	}
	tel.End(c)
	if len(sr.Ended()) != 0 {
		t.Errorf("%d spans recorded for an unsampled trace", len(sr.Ended()))
	}
}

func TestNames(t *testing.T) {
	pinned := map[attribute.Key]string{
		AttrGenAIOperationName: "gen_ai.operation.name", AttrGenAIProviderName: "gen_ai.provider.name",
		AttrGenAIRequestModel: "gen_ai.request.model", AttrGenAIRequestStream: "gen_ai.request.stream",
		AttrGenAIResponseModel: "gen_ai.response.model", AttrGenAIUsageInputTokens: "gen_ai.usage.input_tokens",
		AttrGenAIUsageOutputTokens: "gen_ai.usage.output_tokens", AttrGenAITokenType: "gen_ai.token.type",
		AttrServerAddress: "server.address", AttrServerPort: "server.port",
		AttrHTTPResponseStatusCode: "http.response.status_code", AttrErrorType: "error.type",
		AttrKeyID: "keymux.key.id", AttrRuleID: "keymux.rule.id", AttrStrategy: "keymux.strategy",
		AttrClientID: "keymux.client.id", AttrRequestID: "keymux.request.id",
	}
	for k, v := range pinned {
		if string(k) != v {
			t.Errorf("attribute %q, pinned %q", k, v)
		}
	}
	for in, want := range map[string]string{
		"openai": "openai", "openai_compatible": "openai", "azure": "azure.ai.openai",
		"anthropic": "anthropic", "huggingface": "huggingface", "other": "other",
	} {
		if got := ProviderName(in); got != want {
			t.Errorf("ProviderName(%q) = %q, want %q", in, got, want)
		}
	}
	for _, tt := range []struct{ op, model, method, want string }{
		{"chat", "gpt-4o", "POST", "chat gpt-4o"},
		{"embeddings", "", "POST", "embeddings"},
		{"", "gpt-4o", "POST", "POST"},
		{"", "", "", "keymux"},
	} {
		if got := SpanName(tt.op, tt.model, tt.method); got != tt.want {
			t.Errorf("SpanName(%q, %q, %q) = %q, want %q", tt.op, tt.model, tt.method, got, tt.want)
		}
	}
}

// TestMetricNames pins the Prometheus names of every keymux series.
func TestMetricNames(t *testing.T) {
	sr, tp := newRecorder()
	_ = sr
	tel := newTel(t, Config{TracerProvider: tp})
	tel.SetKeyHealth(healthFn)
	tel.SetConfigInfo(func() ConfigInfo { return ConfigInfo{Generation: 1, Source: "file"} })
	tel.SetAlerts(func() Alerts { return Alerts{ErrorRate: 0.2, Usage: 1} })
	replay(tel, sequence())
	m := scrape(t, tel)
	var got []string
	for k := range m {
		name, _, _ := strings.Cut(k, "{")
		if strings.HasPrefix(name, "keymux_") || strings.HasPrefix(name, "gen_ai_") {
			if !slices.Contains(got, name) {
				got = append(got, name)
			}
		}
	}
	slices.Sort(got)
	want := []string{
		"gen_ai_client_token_usage_count", "gen_ai_client_token_usage_sum",
		"keymux_alert_active", "keymux_alert_threshold", "keymux_calllog_dropped_total",
		"keymux_config_generation", "keymux_config_refused", "keymux_config_stale", "keymux_config_stale_duration_seconds",
		"keymux_error_ratio", "keymux_errors_total",
		"keymux_extproc_overhead_microseconds_count", "keymux_extproc_overhead_microseconds_sum",
		"keymux_key_cooldowns_total", "keymux_key_ejections_total",
		"keymux_key_headroom_requests", "keymux_key_headroom_tokens", "keymux_key_model_state", "keymux_key_state", "keymux_key_up",
		"keymux_ratelimit_header_errors_total",
		"keymux_request_duration_seconds_count", "keymux_request_duration_seconds_sum",
		"keymux_requests_in_flight", "keymux_requests_total", "keymux_tokens_total",
	}
	if !slices.Equal(got, want) {
		t.Errorf("metric names:\n got %q\nwant %q", got, want)
	}
}

func FuzzBeginTraceParent(f *testing.F) {
	f.Add(clientTP, "vendor=v1")
	f.Add("00-"+clientTraceID+"-"+clientSpanID+"-00", "")
	f.Add("00-00000000000000000000000000000000-"+clientSpanID+"-01", "")
	f.Add("ff-"+clientTraceID+"-"+clientSpanID+"-01", "a=b,c=d")
	f.Add("01-"+clientTraceID+"-"+clientSpanID+"-01-extra", "=,")
	f.Add("garbage", "x")
	sr, tp := newRecorder()
	tel, err := New(Config{TracerProvider: tp})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, traceparent, tracestate string) {
		c := &Call{Operation: "chat", ModelOriginal: "m", KeyID: "k", Start: t0, End: t0, Status: 200,
			TraceParent: traceparent, TraceState: tracestate}
		got := tel.Begin(c)
		m := tpRE.FindStringSubmatch(got)
		if m == nil {
			t.Fatalf("Begin(%q) = %q: not a traceparent", traceparent, got)
		}
		parent := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), &parentCarrier{traceparent, tracestate}))
		if parent.IsValid() && m[1] != parent.TraceID().String() {
			t.Fatalf("Begin(%q) = %q: not in the parent's trace", traceparent, got)
		}
		tel.End(c)
		sr.Reset()
	})
}
