package emulator

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// resettingUpstream accepts connections and closes each one before any
// response byte.
func resettingUpstream(t *testing.T) string {
	t.Helper()
	return startUpstreamRaw(t, func(w http.ResponseWriter, _ *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = c.Close()
		}
	})
}

// shortRouteTimeout sets the default route's timeout to 100ms.
func shortRouteTimeout(hcm *hcmv3.HttpConnectionManager) {
	routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
	routes[len(routes)-1].GetRoute().Timeout = durationpb.New(100 * time.Millisecond)
}

// shortPerTryTimeout gives the default route a retry policy whose attempts
// time out after 100ms (one retry).
func shortPerTryTimeout(hcm *hcmv3.HttpConnectionManager) {
	routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
	routes[len(routes)-1].GetRoute().RetryPolicy = &routev3.RetryPolicy{
		RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1), PerTryTimeout: durationpb.New(100 * time.Millisecond)}
}

// defaultRouteOnly narrows the default route to /only: other paths match no
// route.
func defaultRouteOnly(hcm *hcmv3.HttpConnectionManager) {
	routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
	routes[len(routes)-1].GetMatch().PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/only"}
}

// slowUpstream answers after 5s, or not at all when the request goes away.
func slowUpstream(_ http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(5 * time.Second):
	}
}

// heldSSE sends one SSE event, then the last one once release is closed.
func heldSSE(release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release: // blocks until the test has read the first event
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}
}

// TestLocalRepliesSkipExtProc: a reply Envoy generates itself (router,
// direct_response, filter manager, ext_proc's own errors and immediate
// responses) is never sent to the processor on the response path: the
// processor sees its request messages, then only the end of its stream.
func TestLocalRepliesSkipExtProc(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reply    replier
		o        func(t *testing.T) options
		method   string
		path     string
		body     string
		hdr      map[string]string
		status   int
		wantMsgs []string
	}{
		{name: "connect failure", status: 503, wantMsgs: []string{"request_headers"},
			o: func(t *testing.T) options {
				a := closedAddr(t)
				return options{cfg: func(c *Config) { c.ClusterAddrs["upstream_a"] = a }}
			}},
		{name: "reset before headers", status: 503, wantMsgs: []string{"request_headers"},
			o: func(t *testing.T) options {
				a := resettingUpstream(t)
				return options{cfg: func(c *Config) { c.ClusterAddrs["upstream_a"] = a }}
			}},
		{name: "route timeout", status: 504, wantMsgs: []string{"request_headers"},
			o: func(*testing.T) options { return options{hcm: shortRouteTimeout, upstream: slowUpstream} }},
		{name: "per-try timeout", status: 504, wantMsgs: []string{"request_headers"},
			o: func(*testing.T) options { return options{hcm: shortPerTryTimeout, upstream: slowUpstream} }},
		{name: "no healthy upstream", status: 503, hdr: map[string]string{"x-cluster": "empty"}, wantMsgs: []string{"request_headers"},
			o: func(*testing.T) options {
				return options{cfg: func(c *Config) {
					c.Bootstrap.StaticResources.Clusters = append(c.Bootstrap.StaticResources.Clusters, &clusterv3.Cluster{
						Name: "empty", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}})
				}}
			}},
		{name: "cluster not found", status: 503, hdr: map[string]string{"x-cluster": "nowhere"}, wantMsgs: []string{"request_headers"}},
		{name: "no route", status: 404, wantMsgs: []string{"request_headers"},
			o: func(*testing.T) options { return options{hcm: defaultRouteOnly} }},
		{name: "direct_response", path: "/direct", status: 404, wantMsgs: []string{"request_headers"}},
		{name: "request buffer overflow", method: "POST", body: strings.Repeat("x", 4097), status: 413, wantMsgs: []string{"request_headers"}},
		{name: "ext_proc error", status: 500, wantMsgs: []string{"request_headers"},
			reply: func(*procStream, *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
				return nil, status.Error(codes.Internal, "processor failed")
			}},
		{name: "immediate response", status: 429, wantMsgs: []string{"request_headers"},
			reply: onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
				return []*extprocsvc.ProcessingResponse{{Response: &extprocsvc.ProcessingResponse_ImmediateResponse{
					ImmediateResponse: &extprocsvc.ImmediateResponse{Status: &typev3.HttpStatus{Code: 429}}}}}
			})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reply := tc.reply
			if reply == nil {
				reply = continueAll
			}
			proc := startProc(t, reply)
			var o options
			if tc.o != nil {
				o = tc.o(t)
			}
			ev := start(t, proc.addr, o)
			method, path := tc.method, tc.path
			if method == "" {
				method = "GET"
			}
			if path == "" {
				path = "/x"
			}
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			res := do(t, ev, method, path, body, tc.hdr)
			if res.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", res.status, tc.status, res.body)
			}
			ps := proc.firstStream(t)
			ps.endCode(t)
			var kinds []string
			for _, m := range ps.messages() {
				kinds = append(kinds, kindOf(m))
			}
			if strings.Join(kinds, ",") != strings.Join(tc.wantMsgs, ",") {
				t.Fatalf("processor saw %v, want %v", kinds, tc.wantMsgs)
			}
		})
	}
}

// TestStreamEndsAfterLastResponse (Envoy >= 1.37): with response body NONE
// the Process stream ends right after the response-headers reply, while the
// response body is still flowing.
func TestStreamEndsAfterLastResponse(t *testing.T) {
	release := make(chan struct{})
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{upstream: heldSSE(release)})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", ev.em.URL()+"/x", strings.NewReader(`{}`))
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ps := proc.firstStream(t)
	if code := ps.endCode(t); code != "EOF" {
		t.Fatalf("stream ended with %s, want a half-close (EOF) while the body is open", code)
	}
	close(release)
	released = true
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "data: first\n\ndata: [DONE]\n\n" {
		t.Fatalf("body %q %v", b, err)
	}
	var kinds []string
	for _, m := range ps.messages() {
		kinds = append(kinds, kindOf(m))
	}
	if strings.Join(kinds, ",") != "request_headers,request_body,response_headers" {
		t.Fatalf("messages %v", kinds)
	}
}
