package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"

	"github.com/keymux/keymux/envoy/emulator"
)

// exchange is the messages of one request, as Envoy sends them.
type exchange struct {
	msgs []*extprocv3.ProcessingRequest
	rid  *corev3.HeaderValue // the request headers' x-request-id (worker copies: set per request)
	id   [36]byte            // rid's value: the worker, then a sequence number
}

// worker is a copy of x for worker w whose requests each carry their own
// x-request-id, as Envoy gives every request a fresh one (a processor
// that joins a request's messages by it sees distinct ids, not one id
// shared by every open request).
func (x exchange) worker(w int) *exchange {
	c := &exchange{msgs: slices.Clone(x.msgs)}
	c.msgs[0] = proto.Clone(x.msgs[0]).(*extprocv3.ProcessingRequest)
	for _, h := range c.msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
		if h.GetKey() == "x-request-id" {
			c.rid = h
		}
	}
	copy(c.id[:], fmt.Sprintf("%08x-0000-4000-8000-000000000000", w))
	return c
}

// next gives the worker's next request its x-request-id (seq in hex).
func (x *exchange) next(seq uint64) {
	const hexDigits = "0123456789abcdef"
	for i := len(x.id) - 1; i >= len(x.id)-12; i-- {
		x.id[i] = hexDigits[seq&0xf]
		seq >>= 4
	}
	x.rid.RawValue = x.id[:]
}

func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

// chatBody is a 1 KB chat-completions request body.
func chatBody() []byte {
	head := `{"model":"gpt-4","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"`
	tail := `"}],"temperature":0.2,"max_tokens":64}`
	return []byte(head + strings.Repeat("x", 1024-len(head)-len(tail)) + tail)
}

// newExchange is a chat completion through Envoy with a buffered request
// body: request headers (with the headers the official OpenAI SDKs send),
// the body, then the upstream's response headers.
func newExchange() exchange {
	body := chatBody()
	reqHeaders := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":authority", "gateway.local:10000"), hv(":path", "/v1/chat/completions"), hv(":method", "POST"), hv(":scheme", "http"),
			hv("authorization", "Bearer "+clientToken), hv("content-type", "application/json"),
			hv("content-length", strconv.Itoa(len(body))), hv("x-request-id", "7f1c2a9e-3b4d-4e5f-8a6b-0c1d2e3f4a5b"),
			hv("user-agent", "OpenAI/Python 1.82.0"), hv("accept", "application/json"), hv("accept-encoding", "gzip, deflate"),
			hv("x-stainless-lang", "python"), hv("x-stainless-package-version", "1.82.0"), hv("x-stainless-os", "Linux"),
			hv("x-stainless-arch", "x64"), hv("x-stainless-runtime", "CPython"), hv("x-stainless-runtime-version", "3.12.3"),
			hv("x-stainless-async", "false"), hv("x-stainless-retry-count", "0"), hv("x-stainless-read-timeout", "600"),
			hv("x-forwarded-proto", "http"),
		}},
	}}}
	reqBody := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}
	respHeaders := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":status", "200"), hv("content-type", "application/json"), hv("content-length", strconv.Itoa(respBodyBytes)),
		}},
	}}}
	return exchange{msgs: []*extprocv3.ProcessingRequest{reqHeaders, reqBody, respHeaders}}
}

const (
	respHeadersMsg = 2   // the index of the response headers in exchange.msgs
	respBodyBytes  = 512 // the upstream's response body (its content-length)
)

// run plays one request on s: a Process stream, each message answered
// by a reply of its kind, half-close, end of stream; then, when s plays
// Envoy's access logger, the request's entry.
func (x *exchange) run(ctx context.Context, s *server) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := emulator.Request{Start: time.Now()}
	var md metadataBytes
	stream, err := openProcess(ctx, s.conn)
	if err != nil {
		return err
	}
	for i, m := range x.msgs {
		if i == respHeadersMsg {
			r.RequestEnd = time.Now() // the upstream received the request; its response begins
			r.ResponseStart = r.RequestEnd
		}
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		if err := stream.SendMsg(&frame{b}); err != nil {
			return fmt.Errorf("send %s: %w", kindName(m), err)
		}
		var reply frame
		if err := stream.RecvMsg(&reply); err != nil {
			return fmt.Errorf("reply to %s: %w", kindName(m), err)
		}
		dm, err := readReply(m, reply.b)
		if err != nil {
			return err
		}
		if err := md.add(dm); err != nil {
			return fmt.Errorf("reply to %s: dynamic metadata: %w", kindName(m), err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if err := stream.RecvMsg(new(frame)); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after half-close: want end of stream, got %v", err)
	}
	r.End = time.Now()
	s.logRequest(*x, &r, &md)
	return nil
}

// checkReply checks that resp is a reply of req's kind (not an immediate
// response: keymux refusing the request would measure the wrong path).
func checkReply(req *extprocv3.ProcessingRequest, resp *extprocv3.ProcessingResponse) error {
	ok := false
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		ok = resp.GetRequestHeaders() != nil
	case *extprocv3.ProcessingRequest_RequestBody:
		ok = resp.GetRequestBody() != nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		ok = resp.GetResponseHeaders() != nil
	}
	if !ok {
		if ir := resp.GetImmediateResponse(); ir != nil {
			return fmt.Errorf("reply to %s: immediate response %d: %s", kindName(req), ir.GetStatus().GetCode(), ir.GetBody())
		}
		return fmt.Errorf("reply to %s: got %T", kindName(req), resp.GetResponse())
	}
	return nil
}

func kindName(m *extprocv3.ProcessingRequest) string {
	return strings.TrimPrefix(fmt.Sprintf("%T", m.GetRequest()), "*ext_procv3.ProcessingRequest_")
}

// phase sends requests from conc workers until d has passed or n requests
// (0: no limit) were sent, and returns each request's latency and the
// phase's wall time. The first error ends the phase.
func phase(ctx context.Context, s *server, x exchange, conc int, d time.Duration, n int) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deadline := time.Now().Add(d)
	var sent atomic.Int64
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := range conc {
		wg.Go(func() {
			var lat []time.Duration
			wx := x.worker(w)
			for seq := uint64(0); ctx.Err() == nil && time.Now().Before(deadline) && (n == 0 || sent.Add(1) <= int64(n)); seq++ {
				wx.next(seq)
				t0 := time.Now()
				if err := wx.run(ctx, s); err != nil {
					mu.Lock()
					if firstErr == nil && ctx.Err() == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					break
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	wall := time.Since(start)
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return all, wall, firstErr
}

// result is one server's latencies and wall time at one concurrency,
// summed over the rounds.
type result struct {
	lat  []time.Duration
	wall time.Duration
	cpu  time.Duration // the server process's CPU time over the phases (-1: unknown)
	self time.Duration // this process's (the client's) CPU time over the phases (-1: unknown)
}

func (r *result) add(lat []time.Duration, wall, cpu, self time.Duration) {
	r.lat = append(r.lat, lat...)
	r.wall += wall
	if self < 0 || r.self < 0 {
		r.self = -1
	} else {
		r.self += self
	}
	if cpu < 0 || r.cpu < 0 {
		r.cpu = -1
		return
	}
	r.cpu += cpu
}

// cpuPerRequest is the server's CPU time per request in µs, "-" when unknown.
func (r *result) cpuPerRequest() string { return perRequest(r.cpu, len(r.lat)) }

// clientCPUPerRequest is the client's (this process's) CPU time per
// request in µs while it drove the server, "-" when unknown.
func (r *result) clientCPUPerRequest() string { return perRequest(r.self, len(r.lat)) }

// perRequest is cpu over n requests in µs, "-" when unknown.
func perRequest(cpu time.Duration, n int) string {
	if cpu < 0 || n == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(cpu)/float64(time.Microsecond)/float64(n), 'f', 0, 64)
}

// selfCPU is this process's CPU time (user + system), -1 when unknown.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// quantile is the q-quantile (nearest rank) of r's latencies.
func (r *result) quantile(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := slices.Clone(r.lat)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// throughput is requests per second.
func (r *result) throughput() float64 {
	if r.wall <= 0 {
		return 0
	}
	return float64(len(r.lat)) / r.wall.Seconds()
}

// startKeymux builds keymux when o names no binary, starts the probe stub
// it forwards to and `keymux serve` on a configuration of o.keys keys, with
// extra arguments and, when pprof, a pprof listener (its address returned).
// stop ends them all and removes their files.
func startKeymux(ctx context.Context, o options, extra []string, pprof bool, stderr io.Writer) (km *server, pprofAddr string, stop func() error, err error) {
	var cleanups []func() error
	stop = func() error {
		var errs error
		for i := len(cleanups) - 1; i >= 0; i-- {
			errs = errors.Join(errs, cleanups[i]())
		}
		return errs
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, stop())
		}
	}()
	dir, err := os.MkdirTemp("", "extprocload-")
	if err != nil {
		return nil, "", stop, err
	}
	cleanups = append(cleanups, func() error { return os.RemoveAll(dir) })
	bin := o.keymux
	if bin == "" {
		if bin, err = buildKeymux(ctx, dir, stderr); err != nil {
			return nil, "", stop, err
		}
	}
	upstream, stopStub, err := probeStub()
	if err != nil {
		return nil, "", stop, err
	}
	cleanups = append(cleanups, func() error { stopStub(); return nil })
	cfg, err := writeConfig(dir, o.keys, upstream)
	if err != nil {
		return nil, "", stop, err
	}
	args := append([]string{"serve", "--config", cfg, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--allow-upstream", upstream, "--log-level", "warn"}, extra...)
	if pprof {
		if pprofAddr, err = freeAddr(); err != nil {
			return nil, "", stop, err
		}
		args = append(args, "--pprof", pprofAddr)
	}
	if km, err = startServer(ctx, "keymux", bin, args, stderr, o.readyWithin, o.accessLog); err != nil {
		return nil, "", stop, err
	}
	cleanups = append(cleanups, km.stop)
	return km, pprofAddr, stop, nil
}

func runLoad(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	levels, _ := o.levels()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	km, pprofAddr, stopKeymux, err := startKeymux(ctx, o, strings.Fields(o.keymuxArgs), o.cpuProfile != "" || o.allocProfile != "", stderr)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopKeymux()) }()
	noop, err := startServer(ctx, "noop", self, []string{"-noop", "-grpc", "127.0.0.1:0"}, stderr, o.readyWithin, o.accessLog)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, noop.stop()) }()

	x := newExchange()
	servers := []*server{km, noop}
	for _, s := range servers {
		if o.warmup == 0 {
			break
		}
		if _, _, err := phase(ctx, s, x, 1, time.Hour, o.warmup); err != nil {
			return fmt.Errorf("warm-up of %s: %w", s.name, err)
		}
	}
	var prof chan error
	if o.cpuProfile != "" {
		perRound := 2 * o.duration
		total := time.Duration(len(levels)*o.rounds) * perRound
		prof = make(chan error, 1)
		secs := max(int(total.Round(time.Second)/time.Second), 1)
		go func() { prof <- fetchProfile(ctx, pprofAddr, fmt.Sprintf("profile?seconds=%d", secs), o.cpuProfile) }()
	}
	results := make(map[string][]result, len(servers))
	for _, s := range servers {
		results[s.name] = make([]result, len(levels))
	}
	for li, c := range levels {
		for range o.rounds {
			for _, s := range servers {
				cpu0, self0 := s.cpuTime(), selfCPU()
				lat, wall, err := phase(ctx, s, x, c, o.duration, o.requests)
				if err != nil {
					return fmt.Errorf("%s at concurrency %d: %w", s.name, c, err)
				}
				cpu, self := s.cpuTime()-cpu0, selfCPU()-self0
				if cpu0 < 0 {
					cpu = -1
				}
				if self0 < 0 {
					self = -1
				}
				results[s.name][li].add(lat, wall, cpu, self)
			}
		}
	}
	if prof != nil {
		if err := <-prof; err != nil {
			return err
		}
	}
	if o.allocProfile != "" {
		if err := fetchProfile(ctx, pprofAddr, "allocs", o.allocProfile); err != nil {
			return err
		}
	}
	writeTable(stdout, levels, results["keymux"], results["noop"])
	return km.checkJoin(ctx, stdout)
}

// fetchProfile saves the profile /debug/pprof/NAME from keymux's --pprof
// endpoint.
func fetchProfile(ctx context.Context, addr, name, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/"+name, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", name, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeTable prints the Markdown table of keymux against the no-op server.
func writeTable(w io.Writer, levels []int, km, noop []result) {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return strconv.FormatFloat(a/b, 'f', 2, 64)
	}
	fmt.Fprintln(w, "| concurrency | requests keymux / no-op | keymux p50 / p99 (ms) | no-op p50 / p99 (ms) | ratio p50 / p99 | keymux / no-op req/s | throughput ratio | CPU µs/request keymux / no-op | client CPU µs/request with keymux / with no-op |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for i, c := range levels {
		k, n := &km[i], &noop[i]
		kp50, kp99, np50, np99 := k.quantile(.5), k.quantile(.99), n.quantile(.5), n.quantile(.99)
		fmt.Fprintf(w, "| %d | %d / %d | %s / %s | %s / %s | %s / %s | %.0f / %.0f | %s | %s / %s | %s / %s |\n", c, len(k.lat), len(n.lat),
			ms(kp50), ms(kp99), ms(np50), ms(np99), ratio(float64(kp50), float64(np50)), ratio(float64(kp99), float64(np99)),
			k.throughput(), n.throughput(), ratio(k.throughput(), n.throughput()), k.cpuPerRequest(), n.cpuPerRequest(), k.clientCPUPerRequest(), n.clientCPUPerRequest())
	}
}
