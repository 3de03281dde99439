package extproc

import (
	"fmt"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/deep"
)

// benchStore builds a store with n openai keys, a rule on k0 and one client.
func benchStore(b testing.TB, n int, strategy string) *store.Store {
	return benchStoreWith(b, n, strategy, "", "")
}

// benchStoreWith is benchStore with extra settings (YAML flow fields) and
// each key's extra fields.
func benchStoreWith(b testing.TB, n int, strategy, settings, keyFields string) *store.Store {
	b.Helper()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "settings:\n  strategy: %s\n  auth: {mode: client_keys}\n%skeys:\n", strategy, settings)
	for i := range n {
		fmt.Fprintf(&cfg, "  k%d: {provider: openai, secret: sk-bench-%d%s}\n", i, i, keyFields)
	}
	fmt.Fprintf(&cfg, "rules:\n  r0: {key: k0, from: gpt-4, to: gpt-4o-mini}\nclients:\n  c1: {name: bench, token_sha256: %q}\n", tokenSHA("km-bench-token"))
	return newTestStore(b, cfg.String())
}

// benchPools are the decision path's pools besides the plain one of each
// strategy: request-dependent admission on every key proposed.
var benchPools = []struct {
	name, settings, keyFields string
	setup                     func(st *store.Store, now time.Time) // states of the keys
}{
	// Every key under an rpm limit it does not reach.
	{name: "limited", keyFields: ", limits: {rpm: 100000000}"},
	// Every key with headroom reported by the provider for both models.
	{name: "headroom", setup: func(st *store.Store, now time.Time) {
		h := policy.Headroom{Requests: policy.Budget{Known: true, Limit: 1e9, Remaining: 1e9, Reset: now.Add(time.Hour)},
			Tokens: policy.Budget{Known: true, Limit: 1e12, Remaining: 1e12, Reset: now.Add(time.Hour)}}
		for _, e := range st.Read().Pool("gpt-4").Entries {
			for _, m := range []string{"gpt-4", "gpt-4o-mini"} {
				e.RT.ModelFor(m).Observe(h, now)
			}
		}
	}},
	// A tenth of the keys halfway through their slow start.
	{name: "slow_start", settings: "  ejection: {slow_start: 1h}\n", setup: func(st *store.Store, now time.Time) {
		for i, e := range st.Read().Pool("gpt-4").Entries {
			if i%10 == 0 {
				e.RT.Update(func(s policy.KeyState) policy.KeyState { s.SlowStartFrom = now.Add(-30 * time.Minute); return s })
			}
		}
	}},
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
	run := func(b *testing.B, st *store.Store, body []byte) {
		s, _ := New(Config{Store: st})
		hdrs, bodyMsg := chatRequest(body)
		request := func() {
			x := newExchange(s)
			if _, err := x.handle(hdrs); err != nil {
				b.Fatal(err)
			}
			resp, err := x.handle(bodyMsg)
			if err != nil || resp.GetRequestBody() == nil {
				b.Fatalf("unexpected reply %v %v", resp, err)
			}
			// The call leaves the attempts registry, as at the end of its
			// stream (booking is not measured).
			x.unshare()
			x.releaseReplies()
		}
		// One request first: what a configuration's first request builds
		// once (the pool's eligible set, the affinity ring) is not the
		// decision path's per-request work; nor is collecting the garbage
		// of building the store (or of the previous case's 10,000 keys),
		// sweeping its spans and returning its pages to the OS, which
		// runtime.GC alone leaves to the timed loop.
		request()
		debug.FreeOSMemory()
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		b.ResetTimer()
		// The process's CPU time per request besides the wall time: on a
		// shared machine it moves far less with the load.
		cpu0 := cpuTime()
		defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
		for b.Loop() {
			request()
		}
	}
	for _, strategy := range policy.Strategies() {
		for _, n := range []int{10, 1000, 10000} {
			for _, body := range []struct {
				name string
				b    []byte
			}{{"1KB", body1k}, {"16KB", body16k}} {
				if n != 10 && body.name != "1KB" {
					continue
				}
				b.Run(fmt.Sprintf("%s/keys=%d/body=%s", strategy, n, body.name), func(b *testing.B) {
					run(b, benchStore(b, n, strategy), body.b)
				})
			}
		}
	}
	// Pools whose keys are admitted per request (round robin).
	for _, p := range benchPools {
		for _, n := range []int{10, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/keys=%d/body=1KB", p.name, n), func(b *testing.B) {
				st := benchStoreWith(b, n, "round_robin", p.settings, p.keyFields)
				if p.setup != nil {
					p.setup(st, time.Now())
				}
				run(b, st, body1k)
			})
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
