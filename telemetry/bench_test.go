package telemetry

import (
	"io"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"", "all", "5m", "1h", "24h", "24h1ns", "59s", "1d", "-1m", "1e3h", "9223372036854775807ns", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseWindow(s)
		if err != nil {
			if d != 0 || len(err.Error()) > 200 {
				t.Fatalf("ParseWindow(%q) = %v, %v", s, d, err)
			}
			return
		}
		if d != 0 && (d < MinWindow || d > MaxWindow) {
			t.Fatalf("ParseWindow(%q) = %v: out of range", s, d)
		}
		if d == 0 && s != "" && s != "all" {
			t.Fatalf("ParseWindow(%q) = all time", s)
		}
	})
}

func benchCall() *Call {
	c := withUsage(call("k1", "gpt-4o", 200, 120*time.Millisecond, t0), 100, 50)
	c.TraceParent = clientTP
	return c
}

// BenchmarkBeginEnd measures one call through the Observer: Begin (the
// request path) and End (after the exchange), with the call log on.
func BenchmarkBeginEnd(b *testing.B) {
	for _, bc := range []struct {
		name   string
		traces bool
	}{{"no-tracing", false}, {"tracing", true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{CallLog: io.Discard, CallLogQueue: 1 << 16}
			if bc.traces {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
				b.Cleanup(func() { _ = tp.Shutdown(b.Context()) })
				cfg.TracerProvider = tp
			}
			tel, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = tel.Shutdown(b.Context()) })
			proto := benchCall()
			b.ReportAllocs()
			for b.Loop() {
				c := *proto
				tel.Begin(&c)
				tel.End(&c)
			}
		})
	}
}

// BenchmarkBegin measures the request-path half alone.
func BenchmarkBegin(b *testing.B) {
	for _, bc := range []struct {
		name   string
		traces bool
	}{{"no-tracing", false}, {"tracing", true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{}
			if bc.traces {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
				b.Cleanup(func() { _ = tp.Shutdown(b.Context()) })
				cfg.TracerProvider = tp
			}
			tel, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			proto := benchCall()
			b.ReportAllocs()
			for b.Loop() {
				c := *proto
				tel.Begin(&c)
				c.Data = nil
			}
		})
	}
}
