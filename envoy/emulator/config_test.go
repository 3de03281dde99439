package emulator

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keymux/keymux/envoy"
)

// fixtureWith loads a testdata bootstrap after textual edits of its YAML:
// what the tests observe is what the YAML says.
func fixtureWith(t *testing.T, name string, oldNew ...string) *bootstrapv3.Bootstrap {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			t.Fatalf("fixture %s has no %q", name, oldNew[i])
		}
		s = strings.Replace(s, oldNew[i], oldNew[i+1], 1)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := envoy.Unmarshal([]byte(s), b); err != nil {
		t.Fatal(err)
	}
	return b
}

func startWith(t *testing.T, b *bootstrapv3.Bootstrap, procAddr string, up http.HandlerFunc) *env {
	t.Helper()
	ev := &env{a: startUpstream(t, up), b: startUpstream(t, nil), log: newSyncBuffer()}
	em, err := New(Config{
		Bootstrap:    b,
		ListenAddr:   "127.0.0.1:0",
		ClusterAddrs: map[string]string{"extproc": procAddr, "upstream_a": ev.a.addr(), "upstream_b": ev.b.addr()},
		AccessLog:    ev.log,
	})
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

// TestBehaviourFollowsYAML changes failure_mode_allow, a processing mode and
// message_timeout in the fixture and observes each difference.
func TestBehaviourFollowsYAML(t *testing.T) {
	failing := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		return nil, status.Error(codes.Unavailable, "processor down")
	})
	slow := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		if kindOf(req) == "request_headers" {
			time.Sleep(300 * time.Millisecond) // a slow processor, not a readiness wait
		}
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	})
	echo := startProc(t, continueAll)

	t.Run("failure_mode_allow", func(t *testing.T) {
		closed := startWith(t, fixtureWith(t, "basic.yaml"), failing.addr, nil)
		open := startWith(t, fixtureWith(t, "basic.yaml", "message_timeout: 5s", "message_timeout: 5s\n              failure_mode_allow: true"), failing.addr, nil)
		if got := do(t, closed, "GET", "/x", nil, nil).status; got != 500 {
			t.Fatalf("as shipped: %d, want 500", got)
		}
		if got := do(t, open, "GET", "/x", nil, nil).status; got != 200 {
			t.Fatalf("failure_mode_allow: true: %d, want 200", got)
		}
	})
	t.Run("message_timeout", func(t *testing.T) {
		long := startWith(t, fixtureWith(t, "basic.yaml"), slow.addr, nil)
		short := startWith(t, fixtureWith(t, "basic.yaml", "message_timeout: 5s", "message_timeout: 0.05s"), slow.addr, nil)
		if got := do(t, long, "GET", "/x", nil, nil).status; got != 200 {
			t.Fatalf("message_timeout 5s: %d, want 200", got)
		}
		if got := do(t, short, "GET", "/x", nil, nil).status; got != 504 {
			t.Fatalf("message_timeout 50ms: %d, want 504", got)
		}
	})
	t.Run("request_body_mode", func(t *testing.T) {
		buffered := startWith(t, fixtureWith(t, "basic.yaml"), echo.addr, nil)
		streamed := startWith(t, fixtureWith(t, "basic.yaml", "request_body_mode: BUFFERED", "request_body_mode: STREAMED"), echo.addr, nil)
		none := startWith(t, fixtureWith(t, "basic.yaml", "request_body_mode: BUFFERED", "request_body_mode: NONE"), echo.addr, nil)
		for _, c := range []struct {
			name   string
			ev     *env
			wantCL int64
		}{{"BUFFERED", buffered, 7}, {"STREAMED", streamed, -1}, {"NONE", none, 7}} {
			if got := do(t, c.ev, "POST", "/x", strings.NewReader("payload"), nil).status; got != 200 {
				t.Fatalf("%s: %d", c.name, got)
			}
			if r := c.ev.a.only(t); r.ContentLength != c.wantCL || string(r.Body) != "payload" {
				t.Fatalf("%s: upstream content-length %d body %q, want %d", c.name, r.ContentLength, r.Body, c.wantCL)
			}
		}
		if n := countKind(echo, "request_body"); n != 3 { // BUFFERED: 1; STREAMED: data + empty eos (or 1); NONE: 0
			if n != 2 {
				t.Fatalf("request_body messages over the three modes: %d", n)
			}
		}
	})
}

func countKind(p *fakeProc, kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, ps := range p.streams {
		for _, m := range ps.messages() {
			if kindOf(m) == kind {
				n++
			}
		}
	}
	return n
}

// TestSSEPassThroughNONE: with response body NONE the first SSE event
// reaches the client before the upstream finishes.
func TestSSEPassThroughNONE(t *testing.T) {
	release := make(chan struct{})
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{upstream: heldSSE(release)})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", ev.em.URL()+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content-type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		var ev strings.Builder
		for {
			line, err := br.ReadString('\n')
			ev.WriteString(line)
			if err != nil || line == "\n" {
				first <- ev.String()
				return
			}
		}
	}()
	select {
	case got := <-first:
		if got != "data: first\n\n" {
			t.Fatalf("first event %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first SSE event not delivered while the upstream is still open: the emulator buffers")
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: [DONE]\n\n" {
		t.Fatalf("rest %q %v", rest, err)
	}
}

// TestUnixSocketProcessor: the ext_proc cluster on a unix socket
// (pipe address or a "unix:" override).
func TestUnixSocketProcessor(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "extproc.sock")
	proc := startProcOn(t, "unix", sock, continueAll)
	ev := start(t, "unix:"+sock, options{})
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	if proc.streamCount() != 1 {
		t.Fatal("processor on the unix socket not used")
	}
}

// TestCloseWaits: Close with a request held by the processor returns, the
// processor sees its stream cancelled, and the client gets an answer or an
// error instead of hanging.
func TestCloseWaits(t *testing.T) {
	proc := startProc(t, onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse { return nil }))
	ev := start(t, proc.addr, options{})
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", ev.em.URL()+"/x", nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	ps := proc.firstStream(t)
	<-ps.got
	done := make(chan error, 1)
	go func() { done <- ev.em.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if code := ps.endCode(t); code != "Canceled" {
		t.Fatalf("server saw %s", code)
	}
	<-errc
	if err := ev.em.Start(t.Context()); err != ErrClosed {
		t.Fatalf("Start after Close: %v", err)
	}
}

// TestDynamicForwardProxyTLS: x-keymux-upstream https routes to the TLS
// dynamic forward proxy cluster; the upstream is :authority, SNI is its host,
// the certificate is verified (Config.UpstreamTLS roots here).
func TestDynamicForwardProxyTLS(t *testing.T) {
	cert, pool := selfSigned(t, "localhost")
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "tls:"+r.TLS.ServerName+":"+r.Host+":"+r.URL.Path+":"+r.Header.Get("X-Keymux-Upstream"))
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted case logs a handshake error
	up.StartTLS()
	t.Cleanup(up.Close)
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	authority := "localhost:" + port

	route := func(scheme string) replier {
		return onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				ClearRouteCache: true,
				HeaderMutation: mut([]*corev3.HeaderValueOption{
					setRaw(":authority", authority), setRaw(":path", "/v1/models"), setRaw("x-keymux-upstream", scheme),
				}),
			})}
		})
	}
	allowAll := func(ep *extprocv3.ExternalProcessor) {
		ep.MutationRules = &mutationrulesv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true)}
	}
	t.Run("verified", func(t *testing.T) {
		proc := startProc(t, route("https"))
		ev := start(t, proc.addr, options{extProc: allowAll, cfg: func(c *Config) { c.UpstreamTLS = &tls.Config{RootCAs: pool} }})
		res := do(t, ev, "GET", "/x", nil, nil)
		if want := "tls:localhost:" + authority + ":/v1/models:"; res.status != 200 || res.body != want {
			t.Fatalf("got %d %q, want %q", res.status, res.body, want)
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		proc := startProc(t, route("https"))
		other, _ := selfSigned(t, "localhost")
		_ = other
		_, otherPool := selfSigned(t, "localhost")
		ev := start(t, proc.addr, options{extProc: allowAll, cfg: func(c *Config) { c.UpstreamTLS = &tls.Config{RootCAs: otherPool} }})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 503 {
			t.Fatalf("status %d, want 503", res.status)
		}
	})
	t.Run("plain http", func(t *testing.T) {
		plain := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "plain:"+r.Host) })
		proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				ClearRouteCache: true,
				HeaderMutation:  mut([]*corev3.HeaderValueOption{setRaw(":authority", plain.addr()), setRaw("x-keymux-upstream", "http")}),
			})}
		}))
		ev := start(t, proc.addr, options{extProc: allowAll})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 200 || res.body != "plain:"+plain.addr() {
			t.Fatalf("got %d %q", res.status, res.body)
		}
		if r := plain.only(t); r.Header.Get("X-Keymux-Upstream") != "" {
			t.Fatal("request_headers_to_remove did not drop x-keymux-upstream")
		}
	})
	t.Run(":authority dropped without allow_all_routing", func(t *testing.T) {
		proc := startProc(t, route("https"))
		ev := start(t, proc.addr, options{cfg: func(c *Config) { c.UpstreamTLS = &tls.Config{RootCAs: pool} }})
		// The route changes (x-keymux-upstream) but the authority stays the
		// client's: the forward proxy connects there, not to the TLS upstream.
		res := doHost(t, ev, "GET", "/x", "127.0.0.1:1", nil)
		if res.status != 503 {
			t.Fatalf("status %d, want 503", res.status)
		}
	})
}

func selfSigned(t *testing.T, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// TestShippedEnvoyYAML runs ../envoy.yaml as written: a scripted processor
// routes the request (as keymux does, in its request-body reply) to a local
// upstream through keymux_upstream_http.
func TestShippedEnvoyYAML(t *testing.T) {
	b, err := envoy.LoadBootstrap("../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","usage":{"total_tokens":3}}`)
	})
	newBody := []byte(`{"model":"gpt-final","messages":[]}`)
	md, _ := structpb.NewStruct(map[string]any{"keymux": map[string]any{"key_id": "k1", "model_original": "gpt-orig", "model_final": "gpt-final", "client_id": "c1"}})
	route := true
	// The forward-proxy clusters' upstream ext_proc filter opens a stream of
	// its own per attempt, whose headers carry the upstream's authority: it
	// is answered with a plain continue.
	var attemptMu sync.Mutex
	attempt := map[*procStream]bool{}
	proc := startProc(t, func(ps *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		attemptMu.Lock()
		defer attemptMu.Unlock()
		if a, _ := headerOf(req, ":authority"); a == up.addr() {
			attempt[ps] = true
		}
		if kindOf(req) != "request_body" || !route || attempt[ps] {
			return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
		}
		r := replyWith(req, &extprocsvc.CommonResponse{
			ClearRouteCache: true,
			HeaderMutation: mut([]*corev3.HeaderValueOption{
				setRaw(":authority", up.addr()),
				setRaw(":path", "/v1/chat/completions"),
				setRaw("x-keymux-upstream", "http"),
				setRaw("authorization", "Bearer sk-test-k1"),
				setRaw("content-length", strconv.Itoa(len(newBody))),
			}, "authorization", "x-api-key"),
			BodyMutation: &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: newBody}},
		})
		r.DynamicMetadata = md
		return []*extprocsvc.ProcessingResponse{r}, nil
	})
	alog := newSyncBuffer()
	em, err := New(Config{Bootstrap: b, ListenAddr: "127.0.0.1:0", ClusterAddrs: map[string]string{"keymux_extproc": proc.addr}, AccessLog: alog, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	ev := &env{em: em, log: alog}

	res := do(t, ev, "POST", "/v1/chat/completions", strings.NewReader(`{"model":"gpt-orig","messages":[]}`), map[string]string{"Authorization": "Bearer client-token", "X-Api-Key": "client-key"})
	if res.status != 200 || res.body != `{"id":"x","usage":{"total_tokens":3}}` {
		t.Fatalf("got %d %q", res.status, res.body)
	}
	r := up.only(t)
	if r.Path != "/v1/chat/completions" || r.Host != up.addr() || string(r.Body) != string(newBody) ||
		r.Header.Get("Authorization") != "Bearer sk-test-k1" || r.Header.Get("X-Api-Key") != "" || r.Header.Get("X-Keymux-Upstream") != "" {
		t.Fatalf("upstream got %+v", r)
	}
	// HCM and router behaviour of the shipped config: use_remote_address,
	// x-request-id, suppress_envoy_headers.
	if r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" || r.Header.Get("X-Request-Id") == "" ||
		r.Header.Get("X-Envoy-Expected-Rq-Timeout-Ms") != "" {
		t.Fatalf("upstream headers %v", r.Header)
	}
	var entry map[string]any
	if err := json.Unmarshal([]byte(ev.accessLog(t, 1)[0]), &entry); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"key_id": "k1", "model_original": "gpt-orig", "model_final": "gpt-final", "client_id": "c1", "upstream_cluster": "keymux_upstream_http", "status": float64(200), "upstream_attempts": float64(1), "upstream_host": up.addr()} {
		if entry[k] != want {
			t.Errorf("access log %s = %v, want %v", k, entry[k], want)
		}
	}

	t.Run("not routed: JSON 404", func(t *testing.T) {
		route = false
		defer func() { route = true }()
		res := do(t, ev, "POST", "/v1/chat/completions", strings.NewReader(`{}`), nil)
		if res.status != 404 || res.header.Get("Content-Type") != "application/json" || !strings.Contains(res.body, `"code":"not_found"`) {
			t.Fatalf("got %d %v %q", res.status, res.header, res.body)
		}
	})
	t.Run("normalize_path before ext_proc", func(t *testing.T) {
		route = false
		defer func() { route = true }()
		do(t, ev, "GET", "/v1/../admin//x", nil, nil)
		ps := lastStream(t, proc)
		ps.endCode(t)
		if p, _ := headerOf(ps.messages()[0], ":path"); p != "/admin/x" {
			t.Fatalf(":path sent to the processor %q, want /admin/x", p)
		}
	})
	t.Run("client-sent x-keymux-upstream is stripped early", func(t *testing.T) {
		route = false
		defer func() { route = true }()
		res := doHost(t, ev, "GET", "/v1/models", up.addr(), map[string]string{"X-Keymux-Upstream": "http"})
		if res.status != 404 {
			t.Fatalf("status %d: a client picked the forward proxy itself", res.status)
		}
	})
}

// TestClientAbortMidStream: the client goes away in the middle of an SSE
// response: the upstream request is cancelled, and so is a STREAMED ext_proc
// stream.
func TestClientAbortMidStream(t *testing.T) {
	upGone := make(chan struct{})
	proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		r := continueReply(req)
		if kindOf(req) == "response_headers" {
			r.ModeOverride = &extprocv3.ProcessingMode{ResponseBodyMode: extprocv3.ProcessingMode_STREAMED}
		}
		return []*extprocsvc.ProcessingResponse{r}, nil
	})
	ev := start(t, proc.addr, options{
		extProc: func(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = true },
		upstream: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("content-type", "text/event-stream")
			_, _ = io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done() // only a cancel ends this upstream
			close(upGone)
		},
	})
	ctx, cancel := contextWithCancel(t)
	req, _ := http.NewRequestWithContext(ctx, "GET", ev.em.URL()+"/x", nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("data: first\n\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "data: first\n\n" {
		t.Fatalf("first event %q %v", buf, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-upGone:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request not cancelled after the client went away")
	}
	if code := proc.firstStream(t).endCode(t); code != "Canceled" {
		t.Fatalf("ext_proc stream end %s, want Canceled", code)
	}
	if line := ev.accessLog(t, 1)[0]; !strings.HasPrefix(line, "GET /x 200 upstream_a") {
		t.Fatalf("access log %q", line)
	}
}

// TestBufferedPartial: within the limit it behaves as BUFFERED; beyond it
// the first limit bytes go with end_of_stream=false and the rest follows
// unprocessed.
func TestBufferedPartial(t *testing.T) {
	proc := startProc(t, onKind("request_body", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		b := req.GetRequestBody()
		return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{BodyMutation: &extprocsvc.BodyMutation{
			Mutation: &extprocsvc.BodyMutation_Body{Body: []byte("<" + strconv.Itoa(len(b.GetBody())) + "," + strconv.FormatBool(b.GetEndOfStream()) + ">")},
		}})}
	}))
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_BUFFERED_PARTIAL
	}})
	for _, c := range []struct {
		size int
		want string
	}{{10, "<10,true>"}, {5000, "<4096,false>" + strings.Repeat("x", 5000-4096)}} {
		if res := do(t, ev, "POST", "/x", strings.NewReader(strings.Repeat("x", c.size)), nil); res.status != 200 {
			t.Fatalf("size %d: status %d", c.size, res.status)
		}
		rs := ev.a.requests()
		if got := string(rs[len(rs)-1].Body); got != c.want {
			t.Fatalf("size %d: upstream body %q, want %q", c.size, got, c.want)
		}
	}
}

// TestShippedUnixVariant: envoy-unix.yaml with its socket redirected.
func TestShippedUnixVariant(t *testing.T) {
	b, err := envoy.LoadBootstrap("../envoy-unix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "x.sock")
	proc := startProcOn(t, "unix", sock, continueAll)
	em, err := New(Config{Bootstrap: b, ListenAddr: "127.0.0.1:0", ClusterAddrs: map[string]string{"keymux_extproc": "unix:" + sock}, AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	if res := do(t, &env{em: em}, "GET", "/v1/models", nil, nil); res.status != 404 {
		t.Fatalf("status %d, want the not-routed 404", res.status)
	}
	if proc.streamCount() != 1 {
		t.Fatal("processor on the unix socket not used")
	}
}

// TestPerRouteFilterConfig: a filter disabled in http_filters runs only on
// routes whose FilterConfig turns it on; ExtProcPerRoute can disable it or
// override its processing mode.
func TestPerRouteFilterConfig(t *testing.T) {
	proc := startProc(t, continueAll)
	enableOnDefault := `                route: { cluster: upstream_a, timeout: 30s }
                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config: {}`
	b := fixtureWith(t, "basic.yaml",
		"          - name: envoy.filters.http.ext_proc\n", "          - name: envoy.filters.http.ext_proc\n            disabled: true\n",
		"                route: { cluster: upstream_a, timeout: 30s }", enableOnDefault)
	ev := startWith(t, b, proc.addr, nil)
	do(t, ev, "GET", "/direct", nil, nil)
	if n := proc.streamCount(); n != 0 {
		t.Fatalf("disabled filter opened %d streams on a route that does not enable it", n)
	}
	do(t, ev, "GET", "/x", nil, nil)
	if n := proc.streamCount(); n != 1 {
		t.Fatalf("enabled route: %d streams, want 1", n)
	}

	t.Run("ExtProcPerRoute", func(t *testing.T) {
		proc := startProc(t, continueAll)
		b := fixtureWith(t, "basic.yaml",
			"                route: { cluster: upstream_a, timeout: 30s }", `                route: { cluster: upstream_a, timeout: 30s }
                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      processing_mode: { request_header_mode: SKIP, response_header_mode: SEND }`,
			"                route: { cluster: upstream_b }", `                route: { cluster: upstream_b }
                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    disabled: true`)
		ev := startWith(t, b, proc.addr, nil)
		do(t, ev, "GET", "/x", nil, map[string]string{"X-Route": "b"})
		if n := proc.streamCount(); n != 0 {
			t.Fatalf("disabled per route: %d streams", n)
		}
		do(t, ev, "GET", "/x", nil, nil)
		ps := proc.firstStream(t)
		ps.endCode(t)
		if msgs := ps.messages(); len(msgs) != 1 || kindOf(msgs[0]) != "response_headers" {
			t.Fatalf("override: %d messages, first %s", len(msgs), kindOf(msgs[0]))
		}
	})
}

// TestNoGoroutineLeftAfterClose: after Close no goroutine runs emulator
// code, whatever the requests did (streamed bodies, aborts, timeouts).
func TestNoGoroutineLeftAfterClose(t *testing.T) {
	proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		r := continueReply(req)
		if kindOf(req) == "response_headers" {
			r.ModeOverride = &extprocv3.ProcessingMode{ResponseBodyMode: extprocv3.ProcessingMode_STREAMED}
		}
		return []*extprocsvc.ProcessingResponse{r}, nil
	})
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.AllowModeOverride = true
		ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_STREAMED
	}})
	for i := 0; i < 3; i++ {
		if res := do(t, ev, "POST", "/x", strings.NewReader("body"), nil); res.status != 200 {
			t.Fatalf("status %d", res.status)
		}
	}
	if err := ev.em.Close(); err != nil {
		t.Fatal(err)
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for {
		leaked := emulatorGoroutines()
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines still in emulator code after Close:\n%s", strings.Join(leaked, "\n\n"))
		}
		pollPause()
	}
}

func emulatorGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "emulator.TestNoGoroutineLeftAfterClose") || strings.Contains(g, "emulator.emulatorGoroutines") {
			continue
		}
		if strings.Contains(g, "keymux/envoy/emulator.(*") || strings.Contains(g, "keymux/envoy/emulator.New") {
			out = append(out, g)
		}
	}
	return out
}

func pollPause() { time.Sleep(10 * time.Millisecond) } // polling for goroutine exit, as goleak does

// TestUpstreamPassThrough: no automatic decompression, no redirect
// following, upstream status and headers reach the client.
func TestUpstreamPassThrough(t *testing.T) {
	gz := []byte{0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{upstream: func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/gzip":
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(gz)
		case "/redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/teapot":
			w.Header().Set("X-Upstream", "1")
			w.WriteHeader(418)
		}
	}})
	req, _ := http.NewRequestWithContext(t.Context(), "GET", ev.em.URL()+"/gzip", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	res := roundTrip(t, req)
	if res.status != 200 || res.header.Get("Content-Encoding") != "gzip" || res.body != string(gz) {
		t.Fatalf("gzip: %d %v %q", res.status, res.header, res.body)
	}
	if res := do(t, ev, "GET", "/redirect", nil, nil); res.status != 302 || res.header.Get("Location") != "/elsewhere" {
		t.Fatalf("redirect: %d %v", res.status, res.header)
	}
	if res := do(t, ev, "GET", "/teapot", nil, nil); res.status != 418 || res.header.Get("X-Upstream") != "1" || res.header.Get("Server") != "envoy" {
		t.Fatalf("teapot: %d %v", res.status, res.header)
	}
	if n := len(ev.a.requests()); n != 3 {
		t.Fatalf("upstream got %d requests (a redirect was followed?)", n)
	}
}
