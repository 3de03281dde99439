package e2e

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/telemetry"
	"github.com/keymux/keymux/testutil/jaegertest"
	"github.com/keymux/keymux/testutil/wait"
)

// extprocOperation is the otelgrpc server span of every ext_proc stream
// (with --grpc-spans).
const extprocOperation = "envoy.service.ext_proc.v3.ExternalProcessor/Process"

// startJaegerRun starts a real Jaeger, points keymux's OpenTelemetry at it
// through the standard OTEL_* environment (protocol "grpc" or
// "http/protobuf") and returns it. Not parallel: t.Setenv.
func startJaegerRun(t *testing.T, protocol string) *jaegertest.Jaeger {
	t.Helper()
	j := jaegertest.Start(t)
	for k, v := range j.OTelEnv(protocol) {
		t.Setenv(k, v)
	}
	return j
}

// TestJaegerTraces is the observability acceptance with the real Jaeger:
// the known sequence carries a client traceparent (one trace id, one client
// span id per call); the trace read back through Jaeger's query API holds
// one keymux span per exchange, each the child of its client span, with
// the GenAI attributes, error spans for the failing upstream and the
// refusals; the upstream got keymux's span as parent; with --grpc-spans
// the otelgrpc server spans of the ext_proc streams are separate root
// traces. The same run's
// /metrics, /stats and call log match the sequence, and nothing of it —
// logs, call log, spans, metrics, /stats, /status — holds a secret.
func TestJaegerTraces(t *testing.T) {
	j := startJaegerRun(t, "grpc")
	r := startTelemetryRun(t, "--grpc-spans")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	tr, err := j.WaitTrace(ctx, telTraceID, func(tr *jaegertest.Trace) bool { return len(tr.Spans) >= len(r.calls) })
	if err != nil {
		t.Fatalf("keymux spans never reached Jaeger: %v\nstderr:\n%s", err, r.g.stderr.String())
	}
	mockPort := r.g.mock.URL()[strings.LastIndexByte(r.g.mock.URL(), ':')+1:]

	// Exactly one keymux span per exchange, the child of its client span;
	// no gRPC span in the client's trace.
	byParent := map[string]*jaegertest.Span{}
	for i := range tr.Spans {
		s := &tr.Spans[i]
		if svc := tr.Service(s); svc != telemetry.ServiceName {
			t.Errorf("span %q from service %q, want %q", s.OperationName, svc, telemetry.ServiceName)
		}
		if s.OperationName == extprocOperation {
			t.Errorf("an otelgrpc span joined the client's trace: %+v", s)
		}
		p := s.ParentSpanID()
		if byParent[p] != nil {
			t.Errorf("two spans with parent %s: %q and %q", p, byParent[p].OperationName, s.OperationName)
		}
		byParent[p] = s
	}
	if len(tr.Spans) != len(r.calls) {
		t.Errorf("trace %s has %d spans, want %d (one per exchange)", telTraceID, len(tr.Spans), len(r.calls))
	}

	for _, c := range r.calls {
		t.Run("span/"+c.name, func(t *testing.T) {
			s := byParent[c.spanID]
			if s == nil {
				t.Fatalf("no span whose parent is the client's span %s", c.spanID)
			}
			if s.TraceID != telTraceID {
				t.Errorf("trace id %s, want the client's %s", s.TraceID, telTraceID)
			}
			want := map[string]string{
				"gen_ai.operation.name":     "chat",
				"http.response.status_code": strconv.Itoa(c.status),
			}
			absent := []string{}
			var name, kind string
			switch {
			case c.upstream:
				name, kind = "chat "+c.model, "client"
				want["gen_ai.provider.name"] = "openai"
				want["gen_ai.request.model"] = c.model
				want["gen_ai.response.model"] = c.final
				want["gen_ai.request.stream"] = "false"
				want["server.address"] = "127.0.0.1"
				want["server.port"] = mockPort
				want["keymux.key.id"] = c.key
				want["keymux.strategy"] = "round_robin"
				want["keymux.client.id"] = telClientID
				want["keymux.request.id"] = c.requestID
				if c.rule != "" {
					want["keymux.rule.id"] = c.rule
				} else {
					absent = append(absent, "keymux.rule.id")
				}
				// The upstream got keymux's span as parent, in the client's trace.
				if tp := "00-" + telTraceID + "-" + s.SpanID + "-01"; c.upTP != tp {
					t.Errorf("upstream traceparent %q, want %q (keymux's span)", c.upTP, tp)
				}
			case c.path == "/v1/models":
				name, kind = "list_models", "internal"
				want["gen_ai.operation.name"] = "list_models"
				want["keymux.client.id"] = telClientID
				absent = append(absent, "keymux.key.id", "gen_ai.request.model")
			default: // refused before the body: no model, no key
				name, kind = "chat", "internal"
				absent = append(absent, "keymux.key.id", "keymux.client.id", "gen_ai.request.model", "server.address")
			}
			if c.errType == "" {
				if c.upstream {
					want["gen_ai.usage.input_tokens"] = strconv.FormatInt(c.in, 10)
					want["gen_ai.usage.output_tokens"] = strconv.FormatInt(c.out, 10)
				}
				absent = append(absent, "error.type", "error", "otel.status_code")
			} else {
				want["error.type"] = c.errType
				want["otel.status_code"] = "ERROR"
				want["error"] = "true"
				absent = append(absent, "gen_ai.usage.input_tokens")
				d := s.TagString("otel.status_description")
				if !strings.Contains(d, "status "+strconv.Itoa(c.status)) || !strings.Contains(d, c.errType) {
					t.Errorf("status description %q, want the status %d and %s", d, c.status, c.errType)
				}
				// RecordError: one exception event with the same message.
				var exceptions []string
				for _, l := range s.Logs {
					var event, msg string
					for _, f := range l.Fields {
						switch f.Key {
						case "event":
							event, _ = f.Value.(string)
						case "exception.message":
							msg, _ = f.Value.(string)
						}
					}
					if event == "exception" {
						exceptions = append(exceptions, msg)
					}
				}
				if len(exceptions) != 1 || exceptions[0] != d {
					t.Errorf("exception events %q, want one with %q", exceptions, d)
				}
			}
			if s.OperationName != name {
				t.Errorf("span name %q, want %q", s.OperationName, name)
			}
			if got := s.Kind(); got != kind {
				t.Errorf("span kind %q, want %q", got, kind)
			}
			for k, v := range want {
				if got, ok := s.Tag(k); !ok {
					t.Errorf("attribute %s missing, want %q", k, v)
				} else if s.TagString(k) != v {
					t.Errorf("attribute %s = %v, want %q", k, got, v)
				}
			}
			for _, k := range absent {
				if v, ok := s.Tag(k); ok {
					t.Errorf("attribute %s = %v, want none", k, v)
				}
			}
			if s.Duration <= 0 {
				t.Errorf("span duration %d µs", s.Duration)
			}
		})
	}

	// The otelgrpc server spans: one root trace per ext_proc stream, one
	// stream per exchange and one per upstream attempt (the upstream
	// filter's; no retries here), all outside the client's trace.
	streams := len(r.calls)
	for _, c := range r.calls {
		if !c.local() {
			streams++
		}
	}
	wait.Until(t, 15*time.Second, "one ext_proc server span per stream in Jaeger", func() bool {
		found, err := j.Find(ctx, telemetry.ServiceName, extprocOperation, 1000)
		return err == nil && len(found) >= streams
	})
	found, err := j.Find(ctx, telemetry.ServiceName, extprocOperation, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != streams {
		t.Errorf("%d ext_proc gRPC traces, want %d (one stream per exchange and per upstream attempt)", len(found), streams)
	}
	for _, gt := range found {
		if gt.TraceID == telTraceID {
			t.Errorf("an ext_proc gRPC span is in the client's trace")
		}
		for _, s := range gt.Spans {
			if s.OperationName == extprocOperation && (s.Kind() != "server" || s.ParentSpanID() != "") {
				t.Errorf("ext_proc span kind %q parent %q, want a root server span", s.Kind(), s.ParentSpanID())
			}
		}
	}

	// Same run: metrics, stats and the call log.
	metrics := r.g.getAdmin("/metrics")
	stats := r.g.getAdmin("/stats")
	t.Run("metrics", func(t *testing.T) { r.checkMetrics(t, metrics) })
	t.Run("stats", func(t *testing.T) { r.checkStats(t, stats, "all") })
	t.Run("calllog", func(t *testing.T) { r.checkCallLog(t) })
	t.Run("alert", func(t *testing.T) { r.checkAlertLogged(t) })

	// The grep: every span of the run (the client's trace and every
	// keymux trace Jaeger holds, gRPC ones included), every log line, the
	// call log, /metrics, /stats and /status.
	traceRaw, err := j.TraceRaw(ctx, telTraceID)
	if err != nil {
		t.Fatal(err)
	}
	allRaw, err := j.FindRaw(ctx, telemetry.ServiceName, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	callLog := readFile(t, r.callLog)
	t.Run("no secrets", func(t *testing.T) {
		checkNoSecrets(t, []haystack{
			{"gateway stderr (logs and access log)", r.g.stderr.String(), "k3"},
			{"call log", callLog, `"key_id":"k1"`},
			{"Jaeger: the client's trace", string(traceRaw), `"keymux.key.id"`},
			{"Jaeger: every keymux trace", string(allRaw), extprocOperation},
			{"/metrics", string(metrics), `key="k2"`},
			{"/stats", string(stats), `"k3"`},
			{"/status", r.g.adminText("/status"), `"k1"`},
		})
	})
}

// TestJaegerOTLPHTTP: the same export works over OTLP/HTTP (the autoexport
// default protocol); one call, its span read back with its parent.
func TestJaegerOTLPHTTP(t *testing.T) {
	j := startJaegerRun(t, "http/protobuf")
	g := startGateway(t, threeKeys)
	const traceID, parent = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b7"
	resp, body := g.do("POST", "/v1/chat/completions", map[string]string{
		"content-type": "application/json",
		"traceparent":  "00-" + traceID + "-" + parent + "-01",
	}, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := j.WaitTrace(ctx, traceID, func(tr *jaegertest.Trace) bool { return len(tr.Spans) >= 1 })
	if err != nil {
		t.Fatal(err)
	}
	s := tr.Spans[0]
	// The call's own upstream request (g.requests leaves out the health
	// probes, one of which may come after it).
	reqs := g.requests()
	last := reqs[len(reqs)-1]
	if len(tr.Spans) != 1 || s.OperationName != "chat gpt-4o" || s.ParentSpanID() != parent || s.Kind() != "client" {
		t.Errorf("%d spans; first %q parent %q kind %q, want one \"chat gpt-4o\" client span, parent %s", len(tr.Spans), s.OperationName, s.ParentSpanID(), s.Kind(), parent)
	}
	if want := "00-" + traceID + "-" + s.SpanID + "-01"; last.Header.Get("traceparent") != want {
		t.Errorf("upstream traceparent %q, want %q", last.Header.Get("traceparent"), want)
	}
	if key := s.TagString("keymux.key.id"); "sk-test-"+key != last.Credential {
		t.Errorf("span key %q, upstream credential of another key", key)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestJaegerFlushOnShutdown: with a batch delay far longer than the test,
// a span reaches Jaeger only through the bounded flush keymux runs when it
// stops. That flush exports everything keymux recorded: without
// --grpc-spans, no gRPC stream span is among it (keymux's own span covers
// the request).
func TestJaegerFlushOnShutdown(t *testing.T) {
	j := startJaegerRun(t, "grpc")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000") // 10 minutes
	const traceID, parent = "6bf92f3577b34da6a3ce929d0e0e4738", "20f067aa0ba902b7"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	t.Run("gateway", func(t *testing.T) {
		// The gateway stops when this subtest ends (its t.Cleanup).
		g := startGateway(t, threeKeys)
		resp, body := g.do("POST", "/v1/chat/completions", map[string]string{
			"content-type": "application/json",
			"traceparent":  "00-" + traceID + "-" + parent + "-01",
		}, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if _, err := j.Trace(ctx, traceID); !errors.Is(err, jaegertest.ErrNotFound) {
			t.Fatalf("trace before shutdown: %v, want not found (batched for 10 minutes)", err)
		}
	})
	tr, err := j.WaitTrace(ctx, traceID, func(tr *jaegertest.Trace) bool { return len(tr.Spans) >= 1 })
	if err != nil {
		t.Fatalf("after shutdown: %v", err)
	}
	if len(tr.Spans) != 1 || tr.Spans[0].OperationName != "chat gpt-4o" || tr.Spans[0].ParentSpanID() != parent {
		t.Errorf("trace after shutdown: %+v", tr.Spans)
	}
	if found, err := j.Find(ctx, telemetry.ServiceName, extprocOperation, 1000); err != nil || len(found) != 0 {
		t.Errorf("ext_proc stream spans without --grpc-spans: %d traces (%v), want none", len(found), err)
	}
}

// TestJaegerTraceparentCases: what keymux makes of the client's trace
// context. Without one (or with a malformed one) keymux's span is a new
// root and the upstream joins that trace; with an unsampled one keymux
// records nothing but still hands the upstream its own span id in the
// client's trace, unsampled.
func TestJaegerTraceparentCases(t *testing.T) {
	j := startJaegerRun(t, "grpc")
	g := startGateway(t, threeKeys)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const clientTrace, clientSpan = "7bf92f3577b34da6a3ce929d0e0e4739", "30f067aa0ba902b7"
	cases := []struct {
		name        string
		traceparent string // "" = none
		sampled     bool
		sameTrace   bool // the upstream stays in the client's trace
	}{
		{"unsampled parent", "00-" + clientTrace + "-" + clientSpan + "-00", false, true},
		{"no traceparent", "", true, false},
		{"malformed traceparent", "00-" + clientTrace + "-" + clientSpan, true, false},
		{"all-zero trace id", "00-00000000000000000000000000000000-" + clientSpan + "-01", true, false},
	}
	var sampledTraces []string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{"content-type": "application/json"}
			if tc.traceparent != "" {
				h["traceparent"] = tc.traceparent
			}
			resp, body := g.do("POST", "/v1/chat/completions", h, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			reqs := g.requests() // the calls, not the health probes
			up := reqs[len(reqs)-1].Header.Get("traceparent")
			parts := strings.Split(up, "-")
			if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 {
				t.Fatalf("upstream traceparent %q: not a W3C traceparent", up)
			}
			if tc.sameTrace != (parts[1] == clientTrace) {
				t.Errorf("upstream trace %s, client trace %s: same trace = %v, want %v", parts[1], clientTrace, parts[1] == clientTrace, tc.sameTrace)
			}
			if parts[2] == clientSpan || parts[2] == "0000000000000000" {
				t.Errorf("upstream parent span %s, want keymux's own span", parts[2])
			}
			if wantFlags := map[bool]string{true: "01", false: "00"}[tc.sampled]; parts[3] != wantFlags {
				t.Errorf("upstream trace flags %s, want %s", parts[3], wantFlags)
			}
			if !tc.sampled {
				return
			}
			sampledTraces = append(sampledTraces, parts[1])
			tr, err := j.WaitTrace(ctx, parts[1], func(tr *jaegertest.Trace) bool { return len(tr.Spans) >= 1 })
			if err != nil {
				t.Fatal(err)
			}
			s := tr.Spans[0]
			if len(tr.Spans) != 1 || s.SpanID != parts[2] || s.ParentSpanID() != "" || s.OperationName != "chat gpt-4o" || s.Kind() != "client" {
				t.Errorf("trace %s: %d spans, first %q id %s parent %q kind %q; want one root client span %s",
					parts[1], len(tr.Spans), s.OperationName, s.SpanID, s.ParentSpanID(), s.Kind(), parts[2])
			}
		})
	}
	// The unsampled call came first; the sampled ones after it are all in
	// Jaeger (spans are exported in order), the unsampled one is not.
	if len(sampledTraces) != 3 {
		t.Fatalf("%d sampled traces seen", len(sampledTraces))
	}
	if _, err := j.Trace(ctx, clientTrace); !errors.Is(err, jaegertest.ErrNotFound) {
		t.Errorf("unsampled client trace in Jaeger: %v, want not found", err)
	}
}
