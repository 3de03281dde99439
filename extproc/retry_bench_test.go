package extproc

import (
	"context"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// BenchmarkRetryAttempt is the keymux time one extra upstream attempt
// adds, over loopback gRPC as Envoy runs it: per request, the router-level
// exchange chooses a key, the upstream filter's first attempt gets a 429,
// and the timed part is the retry's own exchange (its stream: request
// headers with another key chosen and its credentials set, the replayed
// body with the new key's model rule, the response headers fed to the key).
// It reports the retry's p50 and p99 besides the mean per request.
func BenchmarkRetryAttempt(b *testing.B) {
	rb := newRetryBench(b)
	client := extprocv3.NewExternalProcessorClient(loopback(b, func(srv *grpc.Server) {
		extprocv3.RegisterExternalProcessorServer(srv, rb.s)
	}))
	upCtx := metadata.AppendToOutgoingContext(b.Context(), FilterMetadataKey, FilterUpstream)

	body, hdrs, bodyMsg := rb.body, rb.hdrs, rb.bodyMsg
	retried := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	for b.Loop() {
		rid := rb.next()
		router, err := client.Process(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		var fwd *extprocv3.HeaderMutation
		for _, m := range []*extprocv3.ProcessingRequest{hdrs, bodyMsg} {
			if err := router.Send(m); err != nil {
				b.Fatal(err)
			}
			r, err := router.Recv()
			if err != nil {
				b.Fatal(err)
			}
			fwd = r.GetRequestBody().GetResponse().GetHeaderMutation()
		}
		call, auth := mutated(fwd, HeaderCall), mutated(fwd, "authorization")
		if call == "" || mutated(fwd, hdrMaxRetries) != "2" {
			b.Fatalf("router-level reply without a call id or 2 retries: %v", fwd)
		}
		attempt(b, client, upCtx, body, "429", hdrRequestID, rid, HeaderCall, call, "authorization", auth)
		t0 := time.Now()
		attempt(b, client, upCtx, body, "200", hdrRequestID, rid, "authorization", auth)
		retried = append(retried, time.Since(t0))
		router.CloseSend()
		if _, err := router.Recv(); err != io.EOF {
			b.Fatalf("end of stream: %v", err)
		}
	}
	b.StopTimer()
	sort.Slice(retried, func(i, j int) bool { return retried[i] < retried[j] })
	b.ReportMetric(float64(retried[len(retried)/2].Microseconds()), "retry-p50-µs")
	b.ReportMetric(float64(retried[len(retried)*99/100].Microseconds()), "retry-p99-µs")
}

// attempt runs one upstream attempt's stream: its request headers (kv),
// body and response headers with status.
func attempt(b *testing.B, client extprocv3.ExternalProcessorClient, ctx context.Context, body []byte, status string, kv ...string) {
	b.Helper()
	stream, err := client.Process(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range attemptMsgs(body, status, kv...) {
		if err := stream.Send(m); err != nil {
			b.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if r.GetImmediateResponse() != nil {
			b.Fatalf("attempt answered locally: %v", r.GetImmediateResponse())
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		b.Fatalf("end of attempt stream: %v", err)
	}
}

// attemptMsgs are the messages of one upstream attempt's stream: its
// request headers (kv), body and response headers with status.
func attemptMsgs(body []byte, status string, kv ...string) []*extprocv3.ProcessingRequest {
	hs := append([]string{":method", "POST", ":path", "/v1/chat/completions"}, kv...)
	return []*extprocv3.ProcessingRequest{
		reqHeaders(false, hs...), reqBody(string(body), true), respHeaders(true, ":status", status, "retry-after", "1"),
	}
}

// retryBench is the setup both retry benchmarks share: ten keys, a fake
// clock that moves past each 429's cooldown, a 1 KB chat request whose
// x-request-id next changes.
type retryBench struct {
	s             *Server
	clock         atomic.Int64
	body          []byte
	hdrs, bodyMsg *extprocv3.ProcessingRequest
	n             int
}

func newRetryBench(b *testing.B) *retryBench {
	rb := &retryBench{body: []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 80) + `"}]}`)}
	base := time.Now()
	rb.s, _ = New(Config{Store: benchStore(b, 10, "round_robin"), UsageFromBody: true,
		Now: func() time.Time { return base.Add(time.Duration(rb.clock.Load())) }})
	rb.hdrs, rb.bodyMsg = chatRequest(rb.body)
	return rb
}

// next prepares the next request and returns its x-request-id.
func (rb *retryBench) next() string {
	rb.n++
	rb.clock.Add(int64(2 * time.Second))
	rid := "bench-" + strconv.Itoa(rb.n)
	for _, v := range rb.hdrs.GetRequestHeaders().GetHeaders().GetHeaders() {
		if v.Key == hdrRequestID {
			v.RawValue = []byte(rid)
		}
	}
	return rid
}

// BenchmarkRetryAttemptHandler is BenchmarkRetryAttempt without the gRPC
// transport: keymux's own work for the retry's three messages.
func BenchmarkRetryAttemptHandler(b *testing.B) {
	rb := newRetryBench(b)
	run := func(msgs []*extprocv3.ProcessingRequest) {
		st := newStream(b, msgs...)
		st.ctx = metadata.NewIncomingContext(st.ctx, metadata.Pairs(FilterMetadataKey, FilterUpstream))
		if err := rb.s.Process(st); err != nil || len(st.out) != len(msgs) || st.out[0].GetImmediateResponse() != nil {
			b.Fatalf("attempt: %v, %d replies", err, len(st.out))
		}
	}
	var retried time.Duration
	b.ReportAllocs()
	for b.Loop() {
		rid := rb.next()
		st := newStream(b, rb.hdrs, rb.bodyMsg)
		st.upstream = func(r *extprocv3.ProcessingResponse) []*extprocv3.ProcessingRequest {
			fwd := r.GetRequestBody().GetResponse().GetHeaderMutation()
			if fwd == nil {
				return nil
			}
			auth := mutated(fwd, "authorization")
			run(attemptMsgs(rb.body, "429", hdrRequestID, rid, HeaderCall, mutated(fwd, HeaderCall), "authorization", auth))
			t0 := time.Now()
			run(attemptMsgs(rb.body, "200", hdrRequestID, rid, "authorization", auth))
			retried += time.Since(t0)
			return nil
		}
		if err := rb.s.Process(st); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(retried)/float64(b.N)/float64(time.Microsecond), "retry-µs/op")
}

// mutated is the value a header mutation sets for name ("" if none).
func mutated(m *extprocv3.HeaderMutation, name string) string {
	for _, h := range m.GetSetHeaders() {
		if h.GetHeader().GetKey() == name {
			return headerValue(h.GetHeader())
		}
	}
	return ""
}
