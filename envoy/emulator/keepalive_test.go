package emulator

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// refusePOST answers every POST with an immediate 401 on request headers,
// before the request body was read; everything else continues.
func refusePOST(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
	if m, _ := headerOf(req, ":method"); req.GetRequestHeaders() != nil && m == http.MethodPost {
		return []*extprocsvc.ProcessingResponse{{Response: &extprocsvc.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &extprocsvc.ImmediateResponse{Status: &typev3.HttpStatus{Code: 401}, Body: []byte("denied")},
		}}}, nil
	}
	return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
}

// withBufferLimit sets the listener's per_connection_buffer_limit_bytes.
func withBufferLimit(n uint32) func(*Config) {
	return func(c *Config) {
		c.Bootstrap.GetStaticResources().GetListeners()[0].PerConnectionBufferLimitBytes = wrapperspb.UInt32(n)
	}
}

// rawConn is one client connection driven by hand, so that every request
// provably goes over the same keep-alive connection.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, ev *env) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(ev.em.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

// post sends a POST with size bytes of body (Content-Length, or chunked) and
// reads the response while the body is being written. The write error is
// returned apart: a server that closes the connection may cut it short.
func (rc *rawConn) post(t testing.TB, size int, chunked bool, extra string) (*http.Response, string, error) {
	t.Helper()
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST /x HTTP/1.1\r\nHost: test\r\n%s", extra)
	body := bytes.Repeat([]byte("b"), size)
	if chunked {
		req.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		for off := 0; off < size; off += 8 << 10 {
			end := min(off+8<<10, size)
			fmt.Fprintf(&req, "%x\r\n%s\r\n", end-off, body[off:end])
		}
		req.WriteString("0\r\n\r\n")
	} else {
		fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", size)
		req.Write(body)
	}
	return rc.exchange(t, req.Bytes(), http.MethodPost)
}

func (rc *rawConn) get(t testing.TB) (*http.Response, string, error) {
	t.Helper()
	return rc.exchange(t, []byte("GET /x HTTP/1.1\r\nHost: test\r\n\r\n"), http.MethodGet)
}

func (rc *rawConn) exchange(t testing.TB, raw []byte, method string) (*http.Response, string, error) {
	t.Helper()
	if err := rc.c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := rc.c.Write(raw)
		wrote <- err
	}()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s: reading the response: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the response body: %v", method, err)
	}
	return resp, string(b), <-wrote
}

// TestLocalReplyKeepAlive: a POST refused by an immediate response on request
// headers, before its body was read, leaves the keep-alive connection usable
// when the body fits in the buffer limit (the emulator reads it to its end,
// as Envoy buffers it while the processor decides): the next request on the
// same connection succeeds. It used to hit net/http's "invalid concurrent
// Body.Read call" panic (golang/go#68560) and reset the connection.
func TestLocalReplyKeepAlive(t *testing.T) {
	proc := startProc(t, refusePOST)
	ev := start(t, proc.addr, options{cfg: withBufferLimit(2 << 20)})
	iterations := 25
	if testing.Short() {
		iterations = 5
	}
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			rc := dialRaw(t, ev)
			for i := range iterations {
				for _, size := range []int{0, 100, 64 << 10, 1 << 20} {
					resp, body, werr := rc.post(t, size, chunked, "")
					if werr != nil {
						t.Fatalf("iteration %d size %d: writing the request: %v", i, size, werr)
					}
					if resp.StatusCode != 401 || body != "denied" || resp.Close {
						t.Fatalf("iteration %d size %d: got %d %q close=%v, want 401 \"denied\" keep-alive", i, size, resp.StatusCode, body, resp.Close)
					}
					resp, _, werr = rc.get(t)
					if werr != nil || resp.StatusCode != 200 || resp.Close {
						t.Fatalf("iteration %d size %d: next request got %d close=%v write error %v, want 200 keep-alive", i, size, resp.StatusCode, resp.Close, werr)
					}
				}
			}
		})
	}
}

// TestLocalReplyOverLimitCloses: a body that does not fit in the buffer limit
// is not read; the local reply carries "Connection: close" and the server
// then closes the connection cleanly (the client reads the whole reply).
// With "Expect: 100-continue" the body is never asked for (a 100 Continue
// would be read here in place of the 401).
func TestLocalReplyOverLimitCloses(t *testing.T) {
	proc := startProc(t, refusePOST)
	ev := start(t, proc.addr, options{}) // per_connection_buffer_limit_bytes: 4096
	tests := []struct {
		name    string
		size    int
		chunked bool
		extra   string
	}{
		{name: "content-length over the limit", size: 64 << 10},
		{name: "big content-length", size: 1 << 20},
		{name: "chunked over the limit", size: 64 << 10, chunked: true},
		{name: "expect 100-continue", size: 100, extra: "Expect: 100-continue\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, ev)
			var resp *http.Response
			var body string
			if tc.extra != "" {
				// Only the headers: the body would follow a 100 Continue.
				raw := fmt.Sprintf("POST /x HTTP/1.1\r\nHost: test\r\n%sContent-Length: %d\r\n\r\n", tc.extra, tc.size)
				var werr error
				resp, body, werr = rc.exchange(t, []byte(raw), http.MethodPost)
				if werr != nil {
					t.Fatal(werr)
				}
				// A client given a final answer instead of 100 Continue
				// never sends the body: it closes its side.
				if err := rc.c.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			} else {
				resp, body, _ = rc.post(t, tc.size, tc.chunked, "")
			}
			if resp.StatusCode != 401 || body != "denied" || !resp.Close {
				t.Fatalf("got %d %q close=%v, want 401 \"denied\" with Connection: close", resp.StatusCode, body, resp.Close)
			}
			var one [1]byte
			if n, err := rc.br.Read(one[:]); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("after the reply: read %d bytes, %v; want a clean EOF", n, err)
			}
		})
	}
}
