package emulator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keymux/keymux/envoy"
)

// ---- scripted ext_proc server ----

// procStream is one Process stream as the fake processor sees it.
type procStream struct {
	mu   sync.Mutex
	msgs []*extprocsvc.ProcessingRequest
	end  error // what Recv returned last: io.EOF or a status error
	got  chan *extprocsvc.ProcessingRequest
	done chan struct{}
	send func(*extprocsvc.ProcessingResponse) error // for repliers that answer in steps
}

func (ps *procStream) messages() []*extprocsvc.ProcessingRequest {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]*extprocsvc.ProcessingRequest(nil), ps.msgs...)
}

// endCode is how the stream ended for the server: "EOF" or a gRPC code name.
func (ps *procStream) endCode(t testing.TB) string {
	t.Helper()
	select {
	case <-ps.done:
	case <-time.After(10 * time.Second):
		t.Fatal("ext_proc stream did not end")
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if errors.Is(ps.end, io.EOF) {
		return "EOF"
	}
	return status.Code(ps.end).String()
}

// replier scripts the processor: it is called for every message received
// and returns the replies to send (none: stay silent). An error return ends
// the stream with that status.
type replier func(ps *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error)

type fakeProc struct {
	extprocsvc.UnimplementedExternalProcessorServer
	addr    string
	reply   replier
	mu      sync.Mutex
	streams []*procStream
	opened  chan *procStream
}

func startProc(t testing.TB, reply replier) *fakeProc {
	t.Helper()
	return startProcOn(t, "tcp", "127.0.0.1:0", reply)
}

func startProcOn(t testing.TB, network, address string, reply replier) *fakeProc {
	t.Helper()
	p := &fakeProc{reply: reply, opened: make(chan *procStream, 64)}
	p.addr = serveGRPC(t, network, address, func(srv *grpc.Server) { extprocsvc.RegisterExternalProcessorServer(srv, p) })
	return p
}

// serveGRPC serves the services register adds on a new listener until the
// test ends; it returns the listener's address.
func serveGRPC(t testing.TB, network, address string, register func(*grpc.Server)) string {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func (p *fakeProc) Process(stream grpc.BidiStreamingServer[extprocsvc.ProcessingRequest, extprocsvc.ProcessingResponse]) error {
	ps := &procStream{got: make(chan *extprocsvc.ProcessingRequest, 256), done: make(chan struct{})}
	p.mu.Lock()
	p.streams = append(p.streams, ps)
	p.mu.Unlock()
	select {
	case p.opened <- ps:
	default: // nobody waits for streams beyond the first 64
	}
	defer close(ps.done)
	ps.send = stream.Send
	for {
		req, err := stream.Recv()
		if err != nil {
			ps.mu.Lock()
			ps.end = err
			ps.mu.Unlock()
			return nil
		}
		ps.mu.Lock()
		ps.msgs = append(ps.msgs, req)
		ps.mu.Unlock()
		select {
		case ps.got <- req:
		default:
		}
		resps, err := p.reply(ps, req)
		if err != nil {
			ps.mu.Lock()
			ps.end = err
			ps.mu.Unlock()
			if errors.Is(err, errOKClose) {
				return nil
			}
			return err
		}
		for _, r := range resps {
			if err := stream.Send(r); err != nil {
				return nil
			}
		}
	}
}

func (p *fakeProc) streamCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.streams)
}

// stream waits for the n-th stream (0-based order of opening).
func (p *fakeProc) firstStream(t testing.TB) *procStream {
	t.Helper()
	select {
	case ps := <-p.opened:
		return ps
	case <-time.After(10 * time.Second):
		t.Fatal("no ext_proc stream opened")
		return nil
	}
}

// ---- reply builders ----

func kindOf(req *extprocsvc.ProcessingRequest) string {
	switch req.GetRequest().(type) {
	case *extprocsvc.ProcessingRequest_RequestHeaders:
		return "request_headers"
	case *extprocsvc.ProcessingRequest_RequestBody:
		return "request_body"
	case *extprocsvc.ProcessingRequest_RequestTrailers:
		return "request_trailers"
	case *extprocsvc.ProcessingRequest_ResponseHeaders:
		return "response_headers"
	case *extprocsvc.ProcessingRequest_ResponseBody:
		return "response_body"
	case *extprocsvc.ProcessingRequest_ResponseTrailers:
		return "response_trailers"
	}
	return "?"
}

// continueReply is the plain "continue" answer to req.
func continueReply(req *extprocsvc.ProcessingRequest) *extprocsvc.ProcessingResponse {
	return replyWith(req, &extprocsvc.CommonResponse{})
}

// replyWith answers req with a CommonResponse of the matching kind.
func replyWith(req *extprocsvc.ProcessingRequest, cr *extprocsvc.CommonResponse) *extprocsvc.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocsvc.ProcessingRequest_RequestHeaders:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocsvc.HeadersResponse{Response: cr}}}
	case *extprocsvc.ProcessingRequest_ResponseHeaders:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocsvc.HeadersResponse{Response: cr}}}
	case *extprocsvc.ProcessingRequest_RequestBody:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_RequestBody{RequestBody: &extprocsvc.BodyResponse{Response: cr}}}
	case *extprocsvc.ProcessingRequest_ResponseBody:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_ResponseBody{ResponseBody: &extprocsvc.BodyResponse{Response: cr}}}
	case *extprocsvc.ProcessingRequest_RequestTrailers:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocsvc.TrailersResponse{}}}
	case *extprocsvc.ProcessingRequest_ResponseTrailers:
		return &extprocsvc.ProcessingResponse{Response: &extprocsvc.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocsvc.TrailersResponse{}}}
	}
	return nil
}

func setRaw(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)}}
}

func mut(set []*corev3.HeaderValueOption, remove ...string) *extprocsvc.HeaderMutation {
	return &extprocsvc.HeaderMutation{SetHeaders: set, RemoveHeaders: remove}
}

// continueAll answers every message with "continue".
func continueAll(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
	return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
}

// onKind answers the messages of one kind with f, every other with continue.
func onKind(kind string, f func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse) replier {
	return func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		if kindOf(req) == kind {
			return f(req), nil
		}
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	}
}

func headerOf(req *extprocsvc.ProcessingRequest, key string) (string, bool) {
	var hm *corev3.HeaderMap
	if h := req.GetRequestHeaders(); h != nil {
		hm = h.GetHeaders()
	}
	if h := req.GetResponseHeaders(); h != nil {
		hm = h.GetHeaders()
	}
	for _, hv := range hm.GetHeaders() {
		if hv.GetKey() == key {
			return string(hv.GetRawValue()), true
		}
	}
	return "", false
}

// ---- upstream ----

type recorded struct {
	Method, Path, Host string
	Header             http.Header
	Body               []byte
	ContentLength      int64
	TransferEncoding   []string
}

type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func startUpstream(t testing.TB, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("content-type", "text/plain")
			_, _ = io.WriteString(w, "upstream says hi")
		}
	}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, recorded{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Header: r.Header.Clone(), Body: body, ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding})
		u.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) requests() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recorded(nil), u.reqs...)
}

func (u *upstream) only(t testing.TB) recorded {
	t.Helper()
	rs := u.requests()
	if len(rs) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(rs))
	}
	return rs[0]
}

// ---- emulator ----

type env struct {
	em  *Emulator
	a   *upstream
	b   *upstream
	log *syncBuffer
}

// syncBuffer collects access log lines and signals each write.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	signal chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{signal: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func loadFixture(t testing.TB, name string) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := envoy.LoadBootstrap("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// editHCM rewrites the listener's HTTP connection manager in place.
func editHCM(t testing.TB, b *bootstrapv3.Bootstrap, edit func(*hcmv3.HttpConnectionManager)) {
	t.Helper()
	nf := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	var hcm hcmv3.HttpConnectionManager
	if err := nf.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	edit(&hcm)
	a, err := anypb.New(&hcm)
	if err != nil {
		t.Fatal(err)
	}
	nf.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
}

// editExtProc rewrites the (first) ext_proc filter config of a bootstrap.
func editExtProc(t testing.TB, b *bootstrapv3.Bootstrap, edit func(*extprocv3.ExternalProcessor)) {
	t.Helper()
	editHCM(t, b, func(hcm *hcmv3.HttpConnectionManager) {
		for _, hf := range hcm.GetHttpFilters() {
			var ep extprocv3.ExternalProcessor
			if hf.GetTypedConfig().UnmarshalTo(&ep) != nil {
				continue
			}
			edit(&ep)
			a, err := anypb.New(&ep)
			if err != nil {
				t.Fatal(err)
			}
			hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}
			return
		}
		t.Fatal("no ext_proc filter in fixture")
	})
}

type options struct {
	fixture  string
	extProc  func(*extprocv3.ExternalProcessor)
	hcm      func(*hcmv3.HttpConnectionManager)
	upstream http.HandlerFunc
	cfg      func(*Config)
}

// start runs the emulator on the basic fixture with the processor at
// procAddr and two recording upstreams.
func start(t testing.TB, procAddr string, o options) *env {
	t.Helper()
	if o.fixture == "" {
		o.fixture = "basic.yaml"
	}
	b := loadFixture(t, o.fixture)
	if o.extProc != nil {
		editExtProc(t, b, o.extProc)
	}
	if o.hcm != nil {
		editHCM(t, b, o.hcm)
	}
	ev := &env{a: startUpstream(t, o.upstream), b: startUpstream(t, nil), log: newSyncBuffer()}
	cfg := Config{
		Bootstrap:    b,
		ListenAddr:   "127.0.0.1:0",
		ClusterAddrs: map[string]string{"extproc": procAddr, "upstream_a": ev.a.addr(), "upstream_b": ev.b.addr()},
		AccessLog:    ev.log,
		Logger:       testLogger(),
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	em, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	ev.em = em
	return ev
}

type result struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, ev *env, method, path string, body io.Reader, hdr map[string]string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ev.em.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return roundTrip(t, req)
}

func roundTrip(t testing.TB, req *http.Request) result {
	t.Helper()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, string(b)}
}

// accessLog waits for n access log lines (written after the response).
func (ev *env) accessLog(t testing.TB, n int) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s := ev.log.String()
		lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
		if s != "" && len(lines) >= n {
			return lines
		}
		select {
		case <-ev.log.signal:
		case <-timeout:
			t.Fatalf("access log has %q, want %d lines", s, n)
		}
	}
}

var contextCanceled = context.Canceled

func contextWithCancel(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithCancel(t.Context())
}

// testLogger prints the emulator's debug log when EMU_DEBUG is set.
func testLogger() *slog.Logger {
	if os.Getenv("EMU_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startUpstreamRaw starts a plain upstream (no recording) and returns its address.
func startUpstreamRaw(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// lastStream is the most recently opened stream of p.
func lastStream(t testing.TB, p *fakeProc) *procStream {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.streams) == 0 {
		t.Fatal("no stream")
	}
	return p.streams[len(p.streams)-1]
}
