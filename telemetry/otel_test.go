package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

var otelEnv = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
	"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_INSECURE",
}

func clearOTelEnv(t *testing.T, set map[string]string) {
	t.Helper()
	for _, k := range otelEnv {
		t.Setenv(k, set[k])
	}
}

// collector is a fake OTLP receiver (HTTP and gRPC) that keeps what it got.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	colmetricpb.UnimplementedMetricsServiceServer
	mu      sync.Mutex
	traces  []*coltracepb.ExportTraceServiceRequest
	metrics []*colmetricpb.ExportMetricsServiceRequest
}

func (c *collector) Export(_ context.Context, r *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	c.traces = append(c.traces, r)
	c.mu.Unlock()
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type metricsServer struct {
	colmetricpb.UnimplementedMetricsServiceServer
	c *collector
}

func (m metricsServer) Export(_ context.Context, r *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	m.c.mu.Lock()
	m.c.metrics = append(m.c.metrics, r)
	m.c.mu.Unlock()
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/v1/traces":
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		c.traces = append(c.traces, &req)
		b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(b)
	case "/v1/metrics":
		var req colmetricpb.ExportMetricsServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		c.metrics = append(c.metrics, &req)
		b, _ := proto.Marshal(&colmetricpb.ExportMetricsServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

// spans returns "name|service.name|keymux.key.id" of every exported span.
func (c *collector) spans() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, req := range c.traces {
		for _, rs := range req.GetResourceSpans() {
			var svc string
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					var key string
					for _, a := range s.GetAttributes() {
						if a.GetKey() == string(AttrKeyID) {
							key = a.GetValue().GetStringValue()
						}
					}
					out = append(out, s.GetName()+"|"+svc+"|"+key)
				}
			}
		}
	}
	return out
}

// metricNames returns the names of every exported metric.
func (c *collector) metricNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, req := range c.metrics {
		for _, rm := range req.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					if !slices.Contains(out, m.GetName()) {
						out = append(out, m.GetName())
					}
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestSetupOTelOff(t *testing.T) {
	tests := map[string]map[string]string{
		"nothing set":             {},
		"sdk disabled":            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		"both none":               {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		"metrics prometheus only": {"OTEL_METRICS_EXPORTER": "prometheus"},
	}
	for name, env := range tests {
		t.Run(name, func(t *testing.T) {
			clearOTelEnv(t, env)
			tp, mp, shutdown, err := SetupOTel(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := tp.(tracenoop.TracerProvider); !ok {
				t.Errorf("tracer provider %T, want no-op", tp)
			}
			if _, ok := mp.(metricnoop.MeterProvider); !ok {
				t.Errorf("meter provider %T, want no-op", mp)
			}
			if err := shutdown(t.Context()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			// Telemetry treats them as absent: no traceparent.
			tel := newTel(t, Config{TracerProvider: tp, MeterProvider: mp})
			if got := tel.Begin(&Call{TraceParent: clientTP}); got != "" {
				t.Errorf("Begin with no-op providers = %q", got)
			}
			if len(tel.meters) != 1 {
				t.Errorf("%d instrument sets, want 1 (Prometheus only)", len(tel.meters))
			}
		})
	}
}

func TestSetupOTelExports(t *testing.T) {
	for _, proto := range []string{"http/protobuf", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			col := &collector{}
			var endpoint string
			if proto == "grpc" {
				lis, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				srv := grpc.NewServer()
				coltracepb.RegisterTraceServiceServer(srv, col)
				colmetricpb.RegisterMetricsServiceServer(srv, metricsServer{c: col})
				go func() { _ = srv.Serve(lis) }()
				t.Cleanup(srv.Stop)
				endpoint = "http://" + lis.Addr().String()
			} else {
				srv := httptest.NewServer(col)
				t.Cleanup(srv.Close)
				endpoint = srv.URL
			}
			clearOTelEnv(t, map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL": proto,
				"OTEL_EXPORTER_OTLP_INSECURE": "true",
				"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test",
			})
			tp, mp, shutdown, err := SetupOTel(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			tel := newTel(t, Config{TracerProvider: tp, MeterProvider: mp})
			if len(tel.meters) != 2 {
				t.Fatalf("%d instrument sets, want 2 (Prometheus and OTLP)", len(tel.meters))
			}
			c := call("k1", "gpt-4o", 200, 10*time.Millisecond, t0)
			c.TraceParent = clientTP
			if got := tel.Begin(c); len(got) != 55 {
				t.Fatalf("Begin = %q, want a traceparent", got)
			}
			tel.End(c)
			if err := tel.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := shutdown(ctx); err != nil {
				t.Fatalf("otel shutdown: %v", err)
			}
			if got, want := col.spans(), []string{"chat gpt-4o|keymux|k1"}; !slices.Equal(got, want) {
				t.Errorf("exported spans %q, want %q", got, want)
			}
			names := col.metricNames()
			for _, want := range []string{MetricRequests, MetricDuration, MetricOverhead, MetricInFlight, MetricCallLogDropped} {
				if !slices.Contains(names, want) {
					t.Errorf("metric %s not exported over OTLP (got %q)", want, names)
				}
			}
		})
	}
}
