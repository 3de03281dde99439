package emulator

import (
	"context"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keymux/keymux/envoy"
)

// retryEnv is the emulator on testdata/retry.yaml: a downstream processor
// (down), the upstream ext_proc processors of upstream_a (up) and of the
// second filter of upstream_b (up2), and recording upstreams a and b.
type retryEnv struct {
	*env
	down, up, up2 *fakeProc
	mu            sync.Mutex
	sleeps        []time.Duration
}

func (re *retryEnv) backoffs() []time.Duration {
	re.mu.Lock()
	defer re.mu.Unlock()
	return slices.Clone(re.sleeps)
}

type retryOpts struct {
	down, up, up2 replier
	a, b          http.HandlerFunc
	addrA         string // replaces upstream_a's address (a closed port)
	hcm           func(*hcmv3.HttpConnectionManager)
}

func startRetry(t *testing.T, o retryOpts) *retryEnv {
	t.Helper()
	for _, r := range []*replier{&o.down, &o.up, &o.up2} {
		if *r == nil {
			*r = continueAll
		}
	}
	re := &retryEnv{down: startProc(t, o.down), up: startProc(t, o.up), up2: startProc(t, o.up2)}
	ev := &env{a: startUpstream(t, o.a), b: startUpstream(t, o.b), log: newSyncBuffer()}
	addrA := ev.a.addr()
	if o.addrA != "" {
		addrA = o.addrA
	}
	b := loadFixture(t, "retry.yaml")
	if o.hcm != nil {
		editHCM(t, b, o.hcm)
	}
	em, err := New(Config{
		Bootstrap:  b,
		ListenAddr: "127.0.0.1:0",
		ClusterAddrs: map[string]string{
			"extproc": re.down.addr, "extproc_up": re.up.addr, "extproc_up2": re.up2.addr,
			"upstream_a": addrA, "upstream_b": ev.b.addr(),
		},
		AccessLog: ev.log,
		Logger:    testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The back-off waits no time and its jitter is the largest possible.
	em.sleep = func(_ context.Context, d time.Duration) bool {
		re.mu.Lock()
		defer re.mu.Unlock()
		re.sleeps = append(re.sleeps, d)
		return true
	}
	em.randN = func(n uint64) uint64 { return n - 1 }
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	ev.em = em
	re.env = ev
	return re
}

// byAttempt answers each upstream attempt with the status listed for its
// x-envoy-attempt-count (200 beyond the list) and says which attempt it was.
func byAttempt(codes ...int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.Header.Get("x-envoy-attempt-count"))
		code := http.StatusOK
		if n >= 1 && n <= len(codes) {
			code = codes[n-1]
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte("attempt " + strconv.Itoa(n)))
	}
}

// seen lists, stream by stream, header key of every message of the given
// kind p received ("-" when absent).
func seen(p *fakeProc, kind, key string) []string {
	p.mu.Lock()
	streams := slices.Clone(p.streams)
	p.mu.Unlock()
	var out []string
	for _, ps := range streams {
		for _, m := range ps.messages() {
			if kindOf(m) == kind {
				v, ok := headerOf(m, key)
				if !ok {
					v = "-"
				}
				out = append(out, v)
			}
		}
	}
	return out
}

func statusesSeen(p *fakeProc) []string { return seen(p, "response_headers", ":status") }

func requestHeaderSeen(p *fakeProc, key string) []string { return seen(p, "request_headers", key) }

func bodies(rs []recorded) []string {
	var out []string
	for _, r := range rs {
		out = append(out, string(r.Body))
	}
	return out
}

func headerValues(rs []recorded, key string) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Header.Get(key))
	}
	return out
}

func equal[T comparable](t *testing.T, what string, got, want []T) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

// A retriable status is retried with the body replayed; each attempt has
// its own upstream ext_proc stream, and the downstream processor sees only
// the response of the last attempt.
func TestRetryRetriableStatusReplaysBody(t *testing.T) {
	re := startRetry(t, retryOpts{a: byAttempt(429)})
	res := do(t, re.env, "POST", "/v1/chat", strings.NewReader(`{"model":"m"}`), map[string]string{"content-type": "application/json"})
	if res.status != 200 || res.body != "attempt 2" {
		t.Fatalf("client got %d %q, want 200 %q", res.status, res.body, "attempt 2")
	}
	if got := res.header.Get("x-envoy-attempt-count"); got != "2" {
		t.Fatalf("response x-envoy-attempt-count %q, want 2", got)
	}
	rs := re.a.requests()
	equal(t, "upstream bodies", bodies(rs), []string{`{"model":"m"}`, `{"model":"m"}`})
	equal(t, "upstream x-envoy-attempt-count", headerValues(rs, "x-envoy-attempt-count"), []string{"1", "2"})
	equal(t, "upstream content-length", headerValues(rs, "content-length"), []string{"13", "13"})
	if n := re.up.streamCount(); n != 2 {
		t.Fatalf("upstream ext_proc streams = %d, want one per attempt (2)", n)
	}
	equal(t, "upstream ext_proc attempt counts", requestHeaderSeen(re.up, "x-envoy-attempt-count"), []string{"1", "2"})
	equal(t, "upstream ext_proc response statuses", statusesSeen(re.up), []string{"429", "200"})
	equal(t, "downstream ext_proc response statuses", statusesSeen(re.down), []string{"200"})
	equal(t, "downstream ext_proc attempt count header", requestHeaderSeen(re.down, "x-envoy-attempt-count"), []string{"-"})
	equal(t, "back-offs", re.backoffs(), []time.Duration{99 * time.Millisecond})
	equal(t, "access log", re.accessLog(t, 1), []string{"200 flags=- attempts=2 details=via_upstream"})
}

// Every attempt failing: num_retries + 1 attempts, the last response goes
// to the client, URX in the access log, the back-off doubles.
func TestRetryLimitExceeded(t *testing.T) {
	re := startRetry(t, retryOpts{a: byAttempt(503, 503, 503)})
	res := do(t, re.env, "GET", "/", nil, nil)
	if res.status != 503 || res.body != "attempt 3" {
		t.Fatalf("client got %d %q, want 503 %q", res.status, res.body, "attempt 3")
	}
	if n := len(re.a.requests()); n != 3 {
		t.Fatalf("upstream attempts = %d, want 3", n)
	}
	equal(t, "back-offs", re.backoffs(), []time.Duration{99 * time.Millisecond, 199 * time.Millisecond})
	equal(t, "downstream ext_proc response statuses", statusesSeen(re.down), []string{"503"})
	equal(t, "access log", re.accessLog(t, 1), []string{"503 flags=URX attempts=3 details=via_upstream"})
}

// A status the policy does not name goes back as it came, after one attempt.
func TestRetryNotOnOtherStatus(t *testing.T) {
	for _, code := range []int{400, 404, 413, 401} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			re := startRetry(t, retryOpts{a: byAttempt(code)})
			res := do(t, re.env, "POST", "/", strings.NewReader("x"), nil)
			if res.status != code {
				t.Fatalf("client got %d, want %d", res.status, code)
			}
			if n := len(re.a.requests()); n != 1 {
				t.Fatalf("upstream attempts = %d, want 1", n)
			}
			equal(t, "access log", re.accessLog(t, 1), []string{strconv.Itoa(code) + " flags=- attempts=1 details=via_upstream"})
		})
	}
}

// The x-envoy-retry-on, x-envoy-retriable-status-codes and
// x-envoy-max-retries headers set by the downstream ext_proc turn retries
// on for a route without a policy; the router consumes them.
func TestRetryHeadersFromExtProc(t *testing.T) {
	down := onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{HeaderMutation: mut([]*corev3.HeaderValueOption{
			setRaw("x-envoy-retry-on", "retriable-status-codes"),
			setRaw("x-envoy-retriable-status-codes", "418,429"),
			setRaw("x-envoy-max-retries", "1"),
		})})}
	})
	re := startRetry(t, retryOpts{down: down, a: byAttempt(418, 429, 429)})
	res := do(t, re.env, "GET", "/nopolicy", nil, nil)
	if res.status != 429 || res.body != "attempt 2" {
		t.Fatalf("client got %d %q, want 429 %q", res.status, res.body, "attempt 2")
	}
	rs := re.a.requests()
	if len(rs) != 2 {
		t.Fatalf("upstream attempts = %d, want 2", len(rs))
	}
	for _, k := range []string{"x-envoy-retry-on", "x-envoy-retriable-status-codes", "x-envoy-max-retries"} {
		if v := rs[0].Header.Get(k); v != "" {
			t.Fatalf("upstream got %s: %q, want it consumed by the router", k, v)
		}
	}
	equal(t, "back-offs (default base 25ms)", re.backoffs(), []time.Duration{24 * time.Millisecond})
	equal(t, "access log", re.accessLog(t, 1), []string{"429 flags=URX attempts=2 details=via_upstream"})
}

// A connection refused is retried (connect-failure) and the access log
// names the attempt count; when every attempt fails the reply says so.
func TestRetryConnectFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	_ = ln.Close()
	re := startRetry(t, retryOpts{addrA: closed})
	res := do(t, re.env, "GET", "/", nil, nil)
	if res.status != 503 || !strings.HasPrefix(res.body, "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure") {
		t.Fatalf("client got %d %q, want 503 with the retried connect failure", res.status, res.body)
	}
	if got := res.header.Get("x-envoy-attempt-count"); got != "3" {
		t.Fatalf("response x-envoy-attempt-count %q, want 3", got)
	}
	if n := re.up.streamCount(); n != 3 {
		t.Fatalf("upstream ext_proc streams = %d, want 3 (one per attempt)", n)
	}
	equal(t, "upstream ext_proc response statuses", statusesSeen(re.up), nil)
	equal(t, "access log", re.accessLog(t, 1), []string{"503 flags=UF,URX attempts=3 details=upstream_reset_before_response_started{connection_failure}"})
}

// A connection closed before the response headers is retried (5xx covers
// resets); the second attempt's answer reaches the client.
func TestRetryResetBeforeHeaders(t *testing.T) {
	re := startRetry(t, retryOpts{a: func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-envoy-attempt-count") == "1" {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close()
			}
			return
		}
		_, _ = w.Write([]byte("fine"))
	}})
	res := do(t, re.env, "POST", "/", strings.NewReader("payload"), nil)
	if res.status != 200 || res.body != "fine" {
		t.Fatalf("client got %d %q, want 200 fine", res.status, res.body)
	}
	equal(t, "upstream bodies", bodies(re.a.requests()), []string{"payload", "payload"})
	equal(t, "access log", re.accessLog(t, 1), []string{"200 flags=- attempts=2 details=via_upstream"})
}

// The per-try timeout (here from x-envoy-upstream-rq-per-try-timeout-ms)
// ends a slow attempt and the next one answers.
func TestRetryPerTryTimeout(t *testing.T) {
	re := startRetry(t, retryOpts{a: func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-envoy-attempt-count") == "1" {
			<-r.Context().Done()
			return
		}
		_, _ = w.Write([]byte("fast"))
	}})
	res := do(t, re.env, "GET", "/", nil, map[string]string{"x-envoy-upstream-rq-per-try-timeout-ms": "50"})
	if res.status != 200 || res.body != "fast" {
		t.Fatalf("client got %d %q, want 200 fast", res.status, res.body)
	}
	rs := re.a.requests()
	equal(t, "upstream attempts", headerValues(rs, "x-envoy-attempt-count"), []string{"1", "2"})
	equal(t, "x-envoy-expected-rq-timeout-ms", headerValues(rs, "x-envoy-expected-rq-timeout-ms"), []string{"50", "50"})
	equal(t, "x-envoy-upstream-rq-per-try-timeout-ms upstream", headerValues(rs, "x-envoy-upstream-rq-per-try-timeout-ms"), []string{"", ""})
	equal(t, "access log", re.accessLog(t, 1), []string{"200 flags=- attempts=2 details=via_upstream"})
}

// A body beyond the route's buffer limit cannot be replayed: no retry.
func TestRetryBodyOverBufferLimit(t *testing.T) {
	re := startRetry(t, retryOpts{b: byAttempt(503, 503)})
	big := strings.Repeat("b", 65)
	res := do(t, re.env, "POST", "/small", strings.NewReader(big), nil)
	if res.status != 503 {
		t.Fatalf("client got %d, want 503", res.status)
	}
	equal(t, "upstream bodies", bodies(re.b.requests()), []string{big})
	equal(t, "access log", re.accessLog(t, 1), []string{"503 flags=- attempts=1 details=via_upstream"})

	small := strings.Repeat("s", 64)
	res = do(t, re.env, "POST", "/small", strings.NewReader(small), nil)
	if res.status != 200 {
		t.Fatalf("client got %d for a body within the limit, want 200 after two retries", res.status)
	}
	equal(t, "upstream bodies", bodies(re.b.requests()), []string{big, small, small, small})
}

// Once the response started downstream, a failure ends it: no retry.
func TestNoRetryAfterResponseStarted(t *testing.T) {
	re := startRetry(t, retryOpts{a: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-length", "100")
		_, _ = w.Write([]byte("partial"))
		http.NewResponseController(w).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = c.Close()
		}
	}})
	req, err := http.NewRequestWithContext(t.Context(), "GET", re.em.URL()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	if n := len(re.a.requests()); n != 1 {
		t.Fatalf("upstream attempts = %d, want 1", n)
	}
	equal(t, "access log", re.accessLog(t, 1), []string{"200 flags=UR attempts=1 details=via_upstream"})
}

// The upstream ext_proc changes each attempt's headers and body; the
// router replays the body as it received it (not the previous attempt's
// mutation), while header mutations stay in the router's header map, so
// the second attempt's processor sees the first one's credentials.
func TestUpstreamExtProcMutatesEachAttempt(t *testing.T) {
	up := func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		switch kindOf(req) {
		case "request_headers":
			n, _ := headerOf(req, "x-envoy-attempt-count")
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("authorization", "Bearer key-"+n)}),
			})}, nil
		case "request_body":
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				BodyMutation: &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{
					Body: []byte(strings.ToUpper(string(req.GetRequestBody().GetBody())))}},
			})}, nil
		}
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	}
	re := startRetry(t, retryOpts{up: up, a: byAttempt(429)})
	res := do(t, re.env, "POST", "/", strings.NewReader("original"), map[string]string{"authorization": "Bearer client"})
	if res.status != 200 {
		t.Fatalf("client got %d, want 200", res.status)
	}
	rs := re.a.requests()
	equal(t, "upstream authorization", headerValues(rs, "authorization"), []string{"Bearer key-1", "Bearer key-2"})
	equal(t, "upstream bodies", bodies(rs), []string{"ORIGINAL", "ORIGINAL"})
	equal(t, "authorization seen by the upstream ext_proc", requestHeaderSeen(re.up, "authorization"), []string{"Bearer client", "Bearer key-1"})
	var seenBodies []string
	re.up.mu.Lock()
	streams := slices.Clone(re.up.streams)
	re.up.mu.Unlock()
	for _, ps := range streams {
		for _, m := range ps.messages() {
			if kindOf(m) == "request_body" {
				seenBodies = append(seenBodies, string(m.GetRequestBody().GetBody()))
			}
		}
	}
	equal(t, "bodies seen by the upstream ext_proc", seenBodies, []string{"original", "original"})
}

// An upstream ext_proc cannot re-route: clear_route_cache is ignored, and
// a retry goes to the same cluster although the path now matches another
// route.
func TestUpstreamExtProcClearRouteCacheIgnored(t *testing.T) {
	up := onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
			HeaderMutation:  mut([]*corev3.HeaderValueOption{setRaw(":path", "/chain")}),
			ClearRouteCache: true,
		})}
	})
	re := startRetry(t, retryOpts{up: up, a: byAttempt(503)})
	res := do(t, re.env, "GET", "/", nil, nil)
	if res.status != 200 {
		t.Fatalf("client got %d, want 200", res.status)
	}
	rs := re.a.requests()
	var paths []string
	for _, r := range rs {
		paths = append(paths, r.Path)
	}
	equal(t, "upstream_a paths", paths, []string{"/chain", "/chain"})
	if n := len(re.b.requests()); n != 0 {
		t.Fatalf("upstream_b got %d requests, want 0 (no re-route)", n)
	}
}

// Envoy ≥ 1.37: a local reply made in the upstream filter chain (the
// second upstream ext_proc failing) reaches the upstream ext_proc before
// it, and goes to the client without reaching the downstream processor.
func TestUpstreamLocalReplyReachesEarlierUpstreamExtProc(t *testing.T) {
	up2 := func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		return nil, status.Error(codes.Unavailable, "down")
	}
	re := startRetry(t, retryOpts{up2: up2})
	res := do(t, re.env, "GET", "/chain", nil, nil)
	if res.status != 500 {
		t.Fatalf("client got %d, want 500", res.status)
	}
	if n := len(re.b.requests()); n != 0 {
		t.Fatalf("upstream_b got %d requests, want 0", n)
	}
	equal(t, "first upstream ext_proc response statuses", statusesSeen(re.up), []string{"500"})
	equal(t, "downstream ext_proc response statuses", statusesSeen(re.down), nil)
	equal(t, "access log", re.accessLog(t, 1), []string{"500 flags=- attempts=1 details=ext_proc_error_gRPC_error_14"})
}

// The http_grpc access log entry carries the attempt count and URX when
// the retries ran out.
func TestGRPCAccessLogRetries(t *testing.T) {
	als := startALS(t, 0)
	proc := startProc(t, continueAll)
	o := options{
		upstream: func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) },
		hcm: func(h *hcmv3.HttpConnectionManager) {
			for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
				if r.GetName() == "default" {
					r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "gateway-error", NumRetries: wrapperspb.UInt32(2)}
				}
			}
		},
	}
	ev := start(t, proc.addr, withALS(als, o, nil))
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 503 {
		t.Fatalf("status %d, want 503", res.status)
	}
	if n := len(ev.a.requests()); n != 3 {
		t.Fatalf("upstream attempts = %d, want 3", n)
	}
	es := entries(als.next(t))
	if len(es) != 1 {
		t.Fatalf("%d entries", len(es))
	}
	c := es[0].GetCommonProperties()
	if c.GetUpstreamRequestAttemptCount() != 3 || !c.GetResponseFlags().GetUpstreamRetryLimitExceeded() {
		t.Fatalf("attempt count %d, flags %v; want 3 and URX", c.GetUpstreamRequestAttemptCount(), c.GetResponseFlags())
	}
}

// The back-off is Envoy's fully jittered exponential one: a draw below an
// interval that doubles from base_interval up to max_interval.
func TestRetryBackoff(t *testing.T) {
	st := newRetryState(&routev3.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
		BaseInterval: durationpb.New(100 * time.Millisecond), MaxInterval: durationpb.New(250 * time.Millisecond)}}, &headerMap{})
	var got, bounds []time.Duration
	for range 4 {
		got = append(got, st.backoff(func(n uint64) uint64 {
			bounds = append(bounds, time.Duration(n)*time.Millisecond)
			return n - 1
		}))
	}
	equal(t, "draw bounds", bounds, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond, 250 * time.Millisecond})
	equal(t, "back-offs", got, []time.Duration{99 * time.Millisecond, 199 * time.Millisecond, 249 * time.Millisecond, 249 * time.Millisecond})
}

// Which outcomes each retry_on condition retries (wouldRetryFromHeaders and
// wouldRetryFromReset).
func TestRetryConditions(t *testing.T) {
	status := func(code string, extra ...string) *headerMap {
		h := &headerMap{}
		h.add(":status", code)
		for i := 0; i+1 < len(extra); i += 2 {
			h.add(extra[i], extra[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		on, codes string
		h         *headerMap
		want      bool
	}{
		{"5xx", "", status("500"), true},
		{"5xx", "", status("429"), false},
		{"gateway-error", "", status("500"), false},
		{"gateway-error", "", status("504"), true},
		{"retriable-4xx", "", status("409"), true},
		{"retriable-4xx", "", status("429"), false},
		{"retriable-status-codes", "429", status("429"), true},
		{"retriable-status-codes", "", status("429"), false},
		{"connect-failure, reset", "", status("503"), false},
		{"5xx", "", status("503", "x-envoy-ratelimited", "true"), false},
		{"envoy-ratelimited", "", status("429", "x-envoy-ratelimited", "true"), true},
	} {
		h := &headerMap{}
		h.add("x-envoy-retry-on", tc.on)
		if tc.codes != "" {
			h.add("x-envoy-retriable-status-codes", tc.codes)
		}
		st := newRetryState(&routev3.RetryPolicy{}, h)
		if got := st.wouldRetryHeaders(tc.h); got != tc.want {
			t.Errorf("retry_on %q codes %q on %s: %v, want %v", tc.on, tc.codes, tc.h.value(":status"), got, tc.want)
		}
	}
	for _, tc := range []struct {
		on      string
		reason  resetReason
		started bool
		want    bool
	}{
		{"connect-failure", resetConnectFailure, false, true},
		{"connect-failure", resetTermination, true, false},
		{"reset", resetTermination, true, true},
		{"5xx", resetLocal, true, true},
		{"gateway-error", resetConnectFailure, false, true},
		{"reset-before-request", resetConnectFailure, false, true},
		{"reset-before-request", resetTermination, true, false},
		{"refused-stream", resetTermination, true, false},
		{"retriable-status-codes", resetTermination, true, false},
	} {
		h := &headerMap{}
		h.add("x-envoy-retry-on", tc.on)
		if got := newRetryState(nil, h).wouldRetryReset(tc.reason, tc.started); got != tc.want {
			t.Errorf("retry_on %q reset %d started %v: %v, want %v", tc.on, tc.reason, tc.started, got, tc.want)
		}
	}
}

// x-envoy-max-retries counts only when some retry_on applies; without any
// retry_on there is no retry state, yet the headers are consumed.
func TestRetryStateFromHeaders(t *testing.T) {
	h := &headerMap{}
	h.add("x-envoy-max-retries", "5")
	h.add("x-envoy-retriable-status-codes", "429")
	if st := newRetryState(nil, h); st != nil {
		t.Fatalf("retry state %+v without retry_on, want none", st)
	}
	if len(h.fields) != 0 {
		t.Fatalf("headers left: %v", h.fields)
	}
	h.add("x-envoy-retry-on", "bogus, 5xx")
	h.add("x-envoy-max-retries", "5")
	st := newRetryState(&routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(1)}, h)
	if st == nil || st.on != retryOn5xx || st.remaining != 5 {
		t.Fatalf("retry state %+v, want 5xx with 5 retries", st)
	}
}

// New refuses upstream filter chains and retry policies it cannot run.
func TestNewRefusesUpstreamAndRetryConfig(t *testing.T) {
	for _, tc := range []struct {
		name, edit, want string
	}{
		{"codec not last", "- name: envoy.filters.http.upstream_codec\n          typed_config:\n            \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n        - name: upstream_second",
			`cluster "upstream_b": upstream http_filters[1] "envoy.filters.http.upstream_codec": upstream_codec must be last`},
		{"retry_on not emulated", `retry_on: "5xx,connect-failure,retriable-status-codes"`,
			`retry_policy.retry_on "retriable-headers" is not emulated`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile("testdata/retry.yaml")
			if err != nil {
				t.Fatal(err)
			}
			s := string(data)
			switch tc.name {
			case "codec not last":
				s = strings.Replace(s, "- name: upstream_second", tc.edit, 1)
			default:
				s = strings.Replace(s, tc.edit, `retry_on: "5xx,retriable-headers"`, 1)
			}
			b := &bootstrapv3.Bootstrap{}
			if err := envoy.Unmarshal([]byte(s), b); err != nil {
				t.Fatal(err)
			}
			_, err = New(Config{Bootstrap: b, ListenAddr: "127.0.0.1:0"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
		})
	}
}

// The route timeout covers all the attempts and is not retried: the second
// attempt hangs, the timeout ends the request with 504 UT, no third try.
func TestRetryRouteTimeoutEndsRetries(t *testing.T) {
	re := startRetry(t, retryOpts{
		a: func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("x-envoy-attempt-count") == "1" {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			<-r.Context().Done()
		},
		hcm: func(h *hcmv3.HttpConnectionManager) {
			for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
				if r.GetName() == "retried" {
					r.GetRoute().Timeout = durationpb.New(200 * time.Millisecond)
				}
			}
		},
	})
	res := do(t, re.env, "GET", "/", nil, nil)
	if res.status != 504 || res.body != "upstream request timeout" {
		t.Fatalf("client got %d %q, want 504 upstream request timeout", res.status, res.body)
	}
	if n := len(re.a.requests()); n != 2 {
		t.Fatalf("upstream attempts = %d, want 2", n)
	}
	equal(t, "access log", re.accessLog(t, 1), []string{"504 flags=UT attempts=2 details=upstream_response_timeout"})
}
