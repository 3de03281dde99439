package jaegertest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestBinaryMissingSaysHowToBuild(t *testing.T) {
	_, err := binaryIn(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "tools/build.sh jaeger") {
		t.Fatalf("error %v, want one naming `tools/build.sh jaeger`", err)
	}
	t.Setenv(EnvBinary, "/nonexistent/jaeger")
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), EnvBinary) {
		t.Fatalf("error %v, want one naming $%s", err, EnvBinary)
	}
}

// TestRoundTrip sends one span over each OTLP protocol and reads both back
// through the query API: parent, kind, tags, status and service.
func TestRoundTrip(t *testing.T) {
	j := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	grpcExp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(j.OTLPGRPCEndpoint()))
	if err != nil {
		t.Fatal(err)
	}
	httpExp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(j.OTLPHTTPEndpoint()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		exp  sdktrace.SpanExporter
		tid  string
	}{
		{"grpc", grpcExp, "0af7651916cd43dd8448eb211c80319c"},
		{"http", httpExp, "1af7651916cd43dd8448eb211c80319d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tc.exp),
				sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "jaegertest-"+tc.name))))
			defer tp.Shutdown(context.Background())
			tid, _ := trace.TraceIDFromHex(tc.tid)
			parent, _ := trace.SpanIDFromHex("b7ad6b7169203331")
			pctx := trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: tid, SpanID: parent, TraceFlags: trace.FlagsSampled, Remote: true}))
			_, span := tp.Tracer("jaegertest").Start(pctx, "op "+tc.name, trace.WithSpanKind(trace.SpanKindClient),
				trace.WithAttributes(attribute.String("a.string", "v"), attribute.Int("a.int", 42)))
			span.SetStatus(codes.Error, "boom")
			span.End()
			if err := tp.ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}

			tr, err := j.WaitTrace(ctx, tc.tid, func(tr *Trace) bool { return len(tr.Spans) == 1 })
			if err != nil {
				t.Fatal(err)
			}
			s := &tr.Spans[0]
			if s.OperationName != "op "+tc.name || s.ParentSpanID() != "b7ad6b7169203331" || s.Kind() != "client" {
				t.Errorf("span %q parent %q kind %q", s.OperationName, s.ParentSpanID(), s.Kind())
			}
			if s.TagString("a.string") != "v" || s.TagString("a.int") != "42" || s.TagString("otel.status_code") != "ERROR" {
				t.Errorf("tags %+v", s.Tags)
			}
			if got := tr.Service(s); got != "jaegertest-"+tc.name {
				t.Errorf("service %q", got)
			}
			found, err := j.Find(ctx, "jaegertest-"+tc.name, "op "+tc.name, 10)
			if err != nil || len(found) != 1 || found[0].TraceID != tc.tid {
				t.Errorf("Find: %d traces, err %v", len(found), err)
			}
		})
	}
	if _, err := j.Trace(ctx, "00000000000000000000000000000abc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown trace: %v, want ErrNotFound", err)
	}
}
