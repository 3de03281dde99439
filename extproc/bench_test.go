package extproc

import (
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/deep"
)

// benchStore builds a store with n openai keys, a rule on k0 and one client.
func benchStore(b testing.TB, n int, strategy string) *store.Store {
	b.Helper()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "settings:\n  strategy: %s\n  auth: {mode: client_keys}\nkeys:\n", strategy)
	for i := range n {
		fmt.Fprintf(&cfg, "  k%d: {provider: openai, secret: sk-bench-%d}\n", i, i)
	}
	fmt.Fprintf(&cfg, "rules:\n  r0: {key: k0, from: gpt-4, to: gpt-4o-mini}\nclients:\n  c1: {name: bench, token_sha256: %q}\n", tokenSHA("km-bench-token"))
	return newTestStore(b, cfg.String())
}

// chatRequest is the request-headers and request-body messages Envoy sends
// for a chat completion with body, with the headers the official SDKs and
// Envoy add.
func chatRequest(body []byte) (hdrs, bodyMsg *extprocv3.ProcessingRequest) {
	hdrs = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":authority", "gw.local"), hv(":path", "/v1/chat/completions"), hv(":method", "POST"), hv(":scheme", "http"),
			hv("authorization", "Bearer km-bench-token"), hv("content-type", "application/json"),
			hv("content-length", fmt.Sprint(len(body))), hv("x-request-id", "bench"),
			// What the official SDKs and Envoy add besides.
			hv("user-agent", "OpenAI/Go 3.98.0"), hv("accept", "application/json"), hv("accept-encoding", "gzip"),
			hv("x-stainless-lang", "go"), hv("x-stainless-os", "Linux"), hv("x-stainless-arch", "x64"),
			hv("x-stainless-runtime", "go"), hv("x-stainless-retry-count", "0"), hv("x-forwarded-proto", "http"),
		}},
	}}}
	bodyMsg = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}
	return hdrs, bodyMsg
}

// BenchmarkDecisionPath measures keymux's work for one chat request: the
// request-headers message (route, client auth) and the request-body message
// (body scan, key selection, model rule, byte patch, mutations), as the
// Process loop runs them, without the gRPC transport.
func BenchmarkDecisionPath(b *testing.B) {
	body16k := []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 1365) + `"}],"temperature":0.2}`)
	body1k := []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 80) + `"}]}`)
	for _, strategy := range []string{"round_robin", "weighted_by_usage", "adjust_by_error_rate"} {
		for _, n := range []int{10, 1000, 10000} {
			for _, body := range []struct {
				name string
				b    []byte
			}{{"1KB", body1k}, {"16KB", body16k}} {
				if n != 10 && body.name != "1KB" {
					continue
				}
				b.Run(fmt.Sprintf("%s/keys=%d/body=%s", strategy, n, body.name), func(b *testing.B) {
					st := benchStore(b, n, strategy)
					s, _ := New(Config{Store: st})
					hdrs, bodyMsg := chatRequest(body.b)
					b.SetBytes(int64(len(body.b)))
					b.ReportAllocs()
					b.ResetTimer()
					// The process's CPU time per request besides the wall
					// time: on a shared machine it moves far less with the
					// load.
					cpu0 := cpuTime()
					defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
					for b.Loop() {
						x := newExchange(s)
						if _, err := x.handle(hdrs); err != nil {
							b.Fatal(err)
						}
						resp, err := x.handle(bodyMsg)
						if err != nil || resp.GetRequestBody() == nil {
							b.Fatalf("unexpected reply %v %v", resp, err)
						}
						// The call leaves the attempts registry, as at the
						// end of its stream (booking is not measured).
						x.unshare()
						x.releaseReplies()
					}
				})
			}
		}
	}
}

// BenchmarkBodyFullSize runs the request-body message at the default
// max_body_bytes (8 MiB): a flat chat body (accepted: scan, key, rule,
// model patch) and a body nested millions of levels deep (refused with 400
// at max_json_depth, after a scan that stops at the limit).
func BenchmarkBodyFullSize(b *testing.B) {
	const size = policy.DefaultMaxBodyBytes
	flat := []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("x", size-100) + `"}]}`)
	for _, bc := range []struct {
		name   string
		body   []byte
		status int // 0: forwarded
	}{{"flat_8MiB", flat, 0}, {"nested_8MiB", deep.Body(size), 400}} {
		b.Run(bc.name, func(b *testing.B) {
			st := benchStore(b, 10, "round_robin")
			s, _ := New(Config{Store: st})
			hdrs, bodyMsg := chatRequest(bc.body)
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				x := newExchange(s)
				if _, err := x.handle(hdrs); err != nil {
					b.Fatal(err)
				}
				resp, err := x.handle(bodyMsg)
				if err != nil {
					b.Fatal(err)
				}
				if got := int(resp.GetImmediateResponse().GetStatus().GetCode()); got != bc.status || (bc.status == 0 && resp.GetRequestBody() == nil) {
					b.Fatalf("status %d, want %d", got, bc.status)
				}
			}
		})
	}
}
