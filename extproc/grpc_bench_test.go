package extproc

import (
	"io"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkProcessOverGRPC is one request's ext_proc exchange as Envoy runs
// it over loopback gRPC: open the stream, request headers, request body
// (1 KB), half-close. It reports p50 and p99 of the exchange besides the mean.
func BenchmarkProcessOverGRPC(b *testing.B) {
	st := benchStore(b, 10, "round_robin")
	s, _ := New(Config{Store: st})
	client := extprocv3.NewExternalProcessorClient(loopback(b, func(srv *grpc.Server) {
		extprocv3.RegisterExternalProcessorServer(srv, s)
	}))

	body := []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 80) + `"}]}`)
	hdrs, bodyMsg := chatRequest(body)
	durations := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		stream, err := client.Process(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range []*extprocv3.ProcessingRequest{hdrs, bodyMsg} {
			if err := stream.Send(m); err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		stream.CloseSend()
		if _, err := stream.Recv(); err != io.EOF {
			b.Fatalf("end of stream: %v", err)
		}
		durations = append(durations, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(durations, func(i, j int) bool { return durations[i] < durations[j] })
	b.ReportMetric(float64(durations[len(durations)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkGRPCUnaryBaseline is the floor BenchmarkProcessOverGRPC is read
// against: one trivial unary call (the gRPC health check) over the same
// loopback transport.
func BenchmarkGRPCUnaryBaseline(b *testing.B) {
	client := healthpb.NewHealthClient(loopback(b, func(srv *grpc.Server) {
		healthpb.RegisterHealthServer(srv, health.NewServer())
	}))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Check(b.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}

// loopback serves a gRPC server with the services register adds on
// 127.0.0.1:0 and returns a client connection to it, both closed at the end.
func loopback(b testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	b.Helper()
	srv := grpc.NewServer()
	register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(lis)
	b.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}
