package emulator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestMessageOrder: a POST with a body, request body BUFFERED and response
// body BUFFERED: headers → body → response headers → response body, with
// the end_of_stream flags, protocol_config on the first message only, and
// a half-close at the end.
func TestMessageOrder(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.ProcessingMode.ResponseBodyMode = extprocv3.ProcessingMode_BUFFERED
	}})
	res := do(t, ev, "POST", "/v1/chat", strings.NewReader(`{"model":"m"}`), map[string]string{"Content-Type": "application/json"})
	if res.status != 200 || res.body != "upstream says hi" {
		t.Fatalf("got %d %q", res.status, res.body)
	}
	ps := proc.firstStream(t)
	if code := ps.endCode(t); code != "EOF" {
		t.Fatalf("stream end seen by the server: %s, want EOF (half-close)", code)
	}
	msgs := ps.messages()
	var kinds []string
	for _, m := range msgs {
		kinds = append(kinds, kindOf(m))
	}
	want := "request_headers,request_body,response_headers,response_body"
	if strings.Join(kinds, ",") != want {
		t.Fatalf("messages %v, want %s", kinds, want)
	}
	if msgs[0].GetRequestHeaders().GetEndOfStream() {
		t.Error("request_headers end_of_stream true on a request with a body")
	}
	if !msgs[1].GetRequestBody().GetEndOfStream() || string(msgs[1].GetRequestBody().GetBody()) != `{"model":"m"}` {
		t.Errorf("request_body = %v", msgs[1].GetRequestBody())
	}
	if !msgs[3].GetResponseBody().GetEndOfStream() || string(msgs[3].GetResponseBody().GetBody()) != "upstream says hi" {
		t.Errorf("response_body = %v", msgs[3].GetResponseBody())
	}
	pc := msgs[0].GetProtocolConfig()
	if pc == nil || pc.GetRequestBodyMode() != extprocv3.ProcessingMode_BUFFERED || pc.GetResponseBodyMode() != extprocv3.ProcessingMode_BUFFERED {
		t.Errorf("protocol_config on the first message = %v", pc)
	}
	for i, m := range msgs[1:] {
		if m.GetProtocolConfig() != nil {
			t.Errorf("protocol_config on message %d", i+1)
		}
	}
	// Header map: lower-case, pseudo-headers, raw_value, HCM additions.
	for _, k := range []string{":authority", ":path", ":method", ":scheme", "x-request-id", "x-forwarded-proto", "content-type", "content-length"} {
		if _, ok := headerOf(msgs[0], k); !ok {
			t.Errorf("request_headers lacks %s", k)
		}
	}
	for _, hv := range msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
		if hv.GetValue() != "" || hv.GetKey() != strings.ToLower(hv.GetKey()) {
			t.Errorf("header %q: value %q (want lower-case key, empty value, raw_value)", hv.GetKey(), hv.GetValue())
		}
	}
	if v, _ := headerOf(msgs[0], ":method"); v != "POST" {
		t.Errorf(":method = %q", v)
	}
	if v, _ := headerOf(msgs[2], ":status"); v != "200" {
		t.Errorf("response :status = %q", v)
	}
}

// TestNoBodyRequest: end_of_stream on request_headers, and no body message
// even in BUFFERED mode.
func TestNoBodyRequest(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{})
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	ps := proc.firstStream(t)
	ps.endCode(t)
	msgs := ps.messages()
	if len(msgs) != 2 || kindOf(msgs[0]) != "request_headers" || kindOf(msgs[1]) != "response_headers" {
		t.Fatalf("messages %v", msgs)
	}
	if !msgs[0].GetRequestHeaders().GetEndOfStream() {
		t.Error("end_of_stream false on a body-less request")
	}
	if msgs[1].GetResponseHeaders().GetEndOfStream() {
		t.Error("response end_of_stream true on a response with a body")
	}
}

// TestLazyStream: every phase SKIP/NONE → the stream is never opened.
func TestLazyStream(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.ProcessingMode = &extprocv3.ProcessingMode{RequestHeaderMode: extprocv3.ProcessingMode_SKIP, ResponseHeaderMode: extprocv3.ProcessingMode_SKIP}
	}})
	if res := do(t, ev, "POST", "/x", strings.NewReader("abc"), nil); res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	ev.accessLog(t, 1)
	if n := proc.streamCount(); n != 0 {
		t.Fatalf("%d streams opened, want 0", n)
	}
}

// TestBufferedBodyContentLength: BUFFERED with headers sent keeps
// content-length, and a mutated body whose length differs from it is a 500.
func TestBufferedBodyContentLength(t *testing.T) {
	newBody := []byte(`{"model":"switched-model"}`)
	tests := []struct {
		name     string
		headers  *extprocsvc.HeaderMutation
		body     *extprocsvc.BodyMutation
		status   int
		wantBody string
		wantCL   int64
	}{
		{
			name:     "body changed with matching content-length",
			headers:  mut([]*corev3.HeaderValueOption{setRaw("content-length", strconv.Itoa(len(newBody)))}),
			body:     &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: newBody}},
			status:   200,
			wantBody: string(newBody),
			wantCL:   int64(len(newBody)),
		},
		{
			name:   "body changed without updating content-length",
			body:   &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: newBody}},
			status: 500,
		},
		{
			name:     "body changed and content-length removed: chunked",
			headers:  mut(nil, "content-length"),
			body:     &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: newBody}},
			status:   200,
			wantBody: string(newBody),
			wantCL:   -1,
		},
		{
			name:   "clear_body with the old content-length",
			body:   &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_ClearBody{ClearBody: true}},
			status: 500,
		},
		{
			name:     "clear_body with content-length 0",
			headers:  mut([]*corev3.HeaderValueOption{setRaw("content-length", "0")}),
			body:     &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_ClearBody{ClearBody: true}},
			status:   200,
			wantBody: "",
			wantCL:   0,
		},
		{
			name:     "no body mutation keeps the body",
			status:   200,
			wantBody: `{"model":"m"}`,
			wantCL:   13,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, onKind("request_body", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
				return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{HeaderMutation: tc.headers, BodyMutation: tc.body})}
			}))
			ev := start(t, proc.addr, options{})
			res := do(t, ev, "POST", "/v1/chat", strings.NewReader(`{"model":"m"}`), nil)
			if res.status != tc.status {
				t.Fatalf("status %d, want %d (%q)", res.status, tc.status, res.body)
			}
			if tc.status != 200 {
				if len(ev.a.requests()) != 0 {
					t.Fatal("upstream reached after a 500")
				}
				return
			}
			r := ev.a.only(t)
			if string(r.Body) != tc.wantBody || r.ContentLength != tc.wantCL {
				t.Fatalf("upstream body %q content-length %d, want %q %d", r.Body, r.ContentLength, tc.wantBody, tc.wantCL)
			}
		})
	}
}

// TestStreamedContentLength: in STREAMED the content-length is removed and
// a processor's attempt to set it is ignored.
func TestStreamedContentLength(t *testing.T) {
	proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		switch kindOf(req) {
		case "request_headers":
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("content-length", "3"), setRaw("x-seen", "1")}),
			})}, nil
		case "request_body":
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
				// Header mutations in a STREAMED body reply are ignored.
				HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-late", "1")}),
				BodyMutation:   &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: []byte(strings.ToUpper(string(req.GetRequestBody().GetBody())))}},
			})}, nil
		}
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	})
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_STREAMED
	}})
	if res := do(t, ev, "POST", "/x", strings.NewReader("hello world"), nil); res.status != 200 {
		t.Fatalf("status %d %q", res.status, res.body)
	}
	r := ev.a.only(t)
	if string(r.Body) != "HELLO WORLD" || r.ContentLength != -1 || r.Header.Get("X-Seen") != "1" || r.Header.Get("X-Late") != "" {
		t.Fatalf("upstream body %q content-length %d x-seen %q x-late %q", r.Body, r.ContentLength, r.Header.Get("X-Seen"), r.Header.Get("X-Late"))
	}
	// The processor saw the original content-length in request_headers.
	if v, _ := headerOf(proc.firstStream(t).messages()[0], "content-length"); v != "11" {
		t.Fatalf("request_headers content-length %q, want 11", v)
	}
}

// TestMessageTimeout: no reply within message_timeout → 504 (fail closed)
// or continue unmodified (failure_mode_allow).
func TestMessageTimeout(t *testing.T) {
	for _, tc := range []struct {
		failOpen bool
		status   int
	}{{false, 504}, {true, 200}} {
		t.Run("failure_mode_allow="+strconv.FormatBool(tc.failOpen), func(t *testing.T) {
			proc := startProc(t, onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse { return nil }))
			ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
				ep.MessageTimeout = durationpb.New(50 * time.Millisecond)
				ep.FailureModeAllow = tc.failOpen
			}})
			res := do(t, ev, "GET", "/x", nil, nil)
			if res.status != tc.status {
				t.Fatalf("status %d, want %d", res.status, tc.status)
			}
			if tc.failOpen && len(ev.a.requests()) != 1 {
				t.Fatal("fail-open did not continue to the upstream")
			}
			// The stream is closed (reset) after a timeout.
			if code := proc.firstStream(t).endCode(t); code != "Canceled" && code != "EOF" {
				t.Fatalf("stream end %s", code)
			}
		})
	}
}

// TestOverrideMessageTimeout only extends the timer (within
// max_message_timeout); the real reply must still come.
func TestOverrideMessageTimeout(t *testing.T) {
	release := make(chan struct{})
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{{OverrideMessageTimeout: durationpb.New(10 * time.Second)}}
	}))
	_ = release
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.MessageTimeout = durationpb.New(50 * time.Millisecond)
		ep.MaxMessageTimeout = durationpb.New(200 * time.Millisecond)
	}})
	// 10s is above max_message_timeout: ignored, the 50ms timer fires.
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 504 {
		t.Fatalf("status %d, want 504", res.status)
	}
}

// TestSpuriousReply: a reply of the wrong kind → 500, or continue when
// failure_mode_allow.
func TestSpuriousReply(t *testing.T) {
	wrong := func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{{Response: &extprocsvc.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocsvc.HeadersResponse{}}}}
	}
	for _, tc := range []struct {
		failOpen bool
		status   int
	}{{false, 500}, {true, 200}} {
		t.Run("failure_mode_allow="+strconv.FormatBool(tc.failOpen), func(t *testing.T) {
			proc := startProc(t, onKind("request_headers", wrong))
			ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) { ep.FailureModeAllow = tc.failOpen }})
			if res := do(t, ev, "GET", "/x", nil, nil); res.status != tc.status {
				t.Fatalf("status %d, want %d", res.status, tc.status)
			}
		})
	}
	t.Run("body reply to a headers message", func(t *testing.T) {
		proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{{Response: &extprocsvc.ProcessingResponse_RequestBody{RequestBody: &extprocsvc.BodyResponse{}}}}
		}))
		ev := start(t, proc.addr, options{})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 500 {
			t.Fatalf("status %d, want 500", res.status)
		}
	})
	t.Run("empty reply", func(t *testing.T) {
		proc := startProc(t, onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{{}}
		}))
		ev := start(t, proc.addr, options{})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 500 {
			t.Fatalf("status %d, want 500", res.status)
		}
	})
}

// TestRepliesAfterCompletionIgnored: after an immediate response, further
// replies change nothing.
func TestRepliesAfterCompletionIgnored(t *testing.T) {
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{
			{Response: &extprocsvc.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocsvc.ImmediateResponse{Status: &typev3.HttpStatus{Code: 403}, Body: []byte("no")}}},
			continueReply(req),
			{Response: &extprocsvc.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocsvc.HeadersResponse{}}},
		}
	}))
	ev := start(t, proc.addr, options{})
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 403 || res.body != "no" {
		t.Fatalf("got %d %q", res.status, res.body)
	}
}

// TestFailureModeAllow: the server ends with a gRPC error, or cannot be
// reached: 500 (status_on_error) fail-closed, continue fail-open.
func TestFailureModeAllow(t *testing.T) {
	grpcErr := func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		return nil, status.Error(codes.Internal, "boom")
	}
	tests := []struct {
		name          string
		unreachable   bool
		failOpen      bool
		statusOnError uint32
		want          int
	}{
		{name: "grpc error fail-closed", want: 500},
		{name: "grpc error status_on_error", statusOnError: 503, want: 503},
		{name: "grpc error fail-open", failOpen: true, want: 200},
		{name: "unreachable fail-closed", unreachable: true, want: 500},
		{name: "unreachable fail-open", unreachable: true, failOpen: true, want: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := "127.0.0.1:1"
			if !tc.unreachable {
				addr = startProc(t, grpcErr).addr
			}
			ev := start(t, addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
				ep.FailureModeAllow = tc.failOpen
				if tc.statusOnError != 0 {
					ep.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode(tc.statusOnError)}
				}
			}})
			res := do(t, ev, "POST", "/x", strings.NewReader("payload"), map[string]string{"X-Client": "c"})
			if res.status != tc.want {
				t.Fatalf("status %d, want %d", res.status, tc.want)
			}
			if tc.want == 200 {
				r := ev.a.only(t)
				if string(r.Body) != "payload" || r.Header.Get("X-Client") != "c" {
					t.Fatalf("fail-open changed the request: %q %v", r.Body, r.Header)
				}
			}
		})
	}
	t.Run("server closes OK: continue unmodified", func(t *testing.T) {
		proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
			return nil, errOKClose
		})
		ev := start(t, proc.addr, options{})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 200 {
			t.Fatalf("status %d", res.status)
		}
	})
}

// errOKClose ends a fake stream with status OK (handler returns nil).
var errOKClose = errors.New("close the stream with OK")

// TestClearRouteCache: re-routing only with a header mutation in the same
// reply, from a headers or a BUFFERED body reply.
func TestClearRouteCache(t *testing.T) {
	tests := []struct {
		name  string
		kind  string
		cr    *extprocsvc.CommonResponse
		wantB bool
	}{
		{"clear without header mutation: route unchanged", "request_headers", &extprocsvc.CommonResponse{ClearRouteCache: true}, false},
		{"header mutation without clear: route unchanged", "request_headers", &extprocsvc.CommonResponse{HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-route", "b")})}, false},
		{"header mutation with clear: re-routed", "request_headers", &extprocsvc.CommonResponse{ClearRouteCache: true, HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-route", "b")})}, true},
		{"from a BUFFERED body reply: re-routed", "request_body", &extprocsvc.CommonResponse{ClearRouteCache: true, HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-route", "b")})}, true},
		{"empty header mutation with clear: re-routed on unchanged headers", "request_headers", &extprocsvc.CommonResponse{ClearRouteCache: true, HeaderMutation: &extprocsvc.HeaderMutation{}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, onKind(tc.kind, func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
				return []*extprocsvc.ProcessingResponse{replyWith(req, tc.cr)}
			}))
			ev := start(t, proc.addr, options{})
			if res := do(t, ev, "POST", "/x", strings.NewReader("b"), nil); res.status != 200 {
				t.Fatalf("status %d", res.status)
			}
			a, b := len(ev.a.requests()), len(ev.b.requests())
			if tc.wantB != (b == 1) || a+b != 1 {
				t.Fatalf("upstream_a got %d, upstream_b got %d; want b=%v", a, b, tc.wantB)
			}
		})
	}
	t.Run("route_cache_action RETAIN ignores clear_route_cache", func(t *testing.T) {
		proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{ClearRouteCache: true, HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-route", "b")})})}
		}))
		ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) { ep.RouteCacheAction = extprocv3.ExternalProcessor_RETAIN }})
		do(t, ev, "GET", "/x", nil, nil)
		if len(ev.a.requests()) != 1 {
			t.Fatal("RETAIN re-routed")
		}
	})
	t.Run("cluster_header picks the cluster", func(t *testing.T) {
		proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{ClearRouteCache: true, HeaderMutation: mut([]*corev3.HeaderValueOption{setRaw("x-cluster", "upstream_b")})})}
		}))
		ev := start(t, proc.addr, options{})
		res := do(t, ev, "GET", "/x", nil, nil)
		if res.status != 200 || len(ev.b.requests()) != 1 {
			t.Fatalf("cluster_header did not pick upstream_b: %d %q", res.status, res.body)
		}
	})
}

// TestModeOverride: honoured only with allow_mode_override, only in a reply
// to a headers message, and only when in allowed_override_modes (if set).
func TestModeOverride(t *testing.T) {
	streamed := &extprocv3.ProcessingMode{ResponseBodyMode: extprocv3.ProcessingMode_STREAMED}
	tests := []struct {
		name     string
		on       string // which reply carries the override
		allow    bool
		allowed  []*extprocv3.ProcessingMode
		wantBody bool // the processor receives response_body messages
	}{
		{"on request_headers reply: applied", "request_headers", true, nil, true},
		{"on response_headers reply: applied", "response_headers", true, nil, true},
		{"on a body reply: ignored", "request_body", true, nil, false},
		{"without allow_mode_override: ignored", "request_headers", false, nil, false},
		{"not in allowed_override_modes: ignored", "request_headers", true, []*extprocv3.ProcessingMode{{ResponseBodyMode: extprocv3.ProcessingMode_BUFFERED}}, false},
		{"in allowed_override_modes: applied", "request_headers", true, []*extprocv3.ProcessingMode{streamed}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
				r := continueReply(req)
				if kindOf(req) == tc.on {
					r.ModeOverride = streamed
				}
				return []*extprocsvc.ProcessingResponse{r}, nil
			})
			ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
				ep.AllowModeOverride = tc.allow
				ep.AllowedOverrideModes = tc.allowed
			}})
			res := do(t, ev, "POST", "/x", strings.NewReader("req"), nil)
			if res.status != 200 || res.body != "upstream says hi" {
				t.Fatalf("got %d %q", res.status, res.body)
			}
			ps := proc.firstStream(t)
			ps.endCode(t)
			got := false
			for _, m := range ps.messages() {
				if kindOf(m) == "response_body" {
					got = true
				}
			}
			if got != tc.wantBody {
				t.Fatalf("response_body messages: %v, want %v", got, tc.wantBody)
			}
		})
	}
}

// TestModeOverrideRequestBodyNone: a request_headers reply that turns the
// request body (configured BUFFERED) to NONE lets a body far beyond the
// buffer limit stream to the upstream whole, its content-length kept and
// no request_body message sent; without allow_mode_override Envoy buffers
// it and answers 413 (basic.yaml's listener limit is 4096 bytes).
func TestModeOverrideRequestBodyNone(t *testing.T) {
	body := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allow_mode_override=%v", allow), func(t *testing.T) {
			proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
				r := continueReply(req)
				if kindOf(req) == "request_headers" {
					r.ModeOverride = &extprocv3.ProcessingMode{RequestBodyMode: extprocv3.ProcessingMode_NONE}
				}
				return []*extprocsvc.ProcessingResponse{r}, nil
			})
			ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = allow }})
			res := do(t, ev, "POST", "/x", strings.NewReader(body), nil)
			if !allow {
				if res.status != 413 || len(ev.a.requests()) != 0 {
					t.Fatalf("got %d, upstream %d requests; want 413 and none", res.status, len(ev.a.requests()))
				}
				return
			}
			if res.status != 200 {
				t.Fatalf("got %d %q", res.status, res.body)
			}
			up := ev.a.only(t)
			if string(up.Body) != body || up.ContentLength != int64(len(body)) || len(up.TransferEncoding) != 0 {
				t.Fatalf("upstream got %d bytes, content-length %d, transfer-encoding %v", len(up.Body), up.ContentLength, up.TransferEncoding)
			}
			ps := proc.firstStream(t)
			ps.endCode(t)
			for _, m := range ps.messages() {
				if kindOf(m) == "request_body" {
					t.Fatal("a request_body message was sent after the override to NONE")
				}
			}
		})
	}
}

// TestStreamedChunks: STREAMED request body, chunks pipelined (the second
// chunk is sent before the first is answered), one reply per chunk, applied
// in order.
func TestStreamedChunks(t *testing.T) {
	proc := startProc(t, func(ps *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		if kindOf(req) != "request_body" {
			return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
		}
		// Hold the replies until the last chunk arrived, then answer all
		// of them in order: proves pipelining.
		if !req.GetRequestBody().GetEndOfStream() {
			return nil, nil
		}
		var out []*extprocsvc.ProcessingResponse
		for _, m := range ps.messages() {
			if b := m.GetRequestBody(); b != nil {
				out = append(out, replyWith(m, &extprocsvc.CommonResponse{BodyMutation: &extprocsvc.BodyMutation{
					Mutation: &extprocsvc.BodyMutation_Body{Body: []byte("[" + strings.ToUpper(string(b.GetBody())) + "]")},
				}}))
			}
		}
		return out, nil
	})
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_STREAMED
	}})
	pr, pw := io.Pipe()
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", ev.em.URL()+"/x", pr)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			done <- result{status: -1, body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	ps := proc.firstStream(t)
	waitKind := func(kind string) *extprocsvc.ProcessingRequest {
		t.Helper()
		for {
			select {
			case m := <-ps.got:
				if kindOf(m) == kind {
					return m
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no %s", kind)
			}
		}
	}
	for _, chunk := range []string{"one", "two", "three"} {
		if _, err := pw.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
		if m := waitKind("request_body"); string(m.GetRequestBody().GetBody()) != chunk || m.GetRequestBody().GetEndOfStream() {
			t.Fatalf("chunk %q eos %v, want %q", m.GetRequestBody().GetBody(), m.GetRequestBody().GetEndOfStream(), chunk)
		}
	}
	pw.Close()
	if m := waitKind("request_body"); !m.GetRequestBody().GetEndOfStream() {
		t.Fatal("last chunk without end_of_stream")
	}
	res := <-done
	if res.status != 200 {
		t.Fatalf("status %d %q", res.status, res.body)
	}
	if r := ev.a.only(t); string(r.Body) != "[ONE][TWO][THREE][]" {
		t.Fatalf("upstream body %q", r.Body)
	}
}

// TestStreamedResponse: response body STREAMED (switched on by a mode
// override, as keymux does for SSE): each upstream chunk goes through the
// processor and reaches the client in order.
func TestStreamedResponse(t *testing.T) {
	proc := startProc(t, func(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		switch kindOf(req) {
		case "response_headers":
			r := replyWith(req, &extprocsvc.CommonResponse{HeaderMutation: mut(nil, "content-length")})
			r.ModeOverride = &extprocv3.ProcessingMode{ResponseBodyMode: extprocv3.ProcessingMode_STREAMED}
			return []*extprocsvc.ProcessingResponse{r}, nil
		case "response_body":
			return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{BodyMutation: &extprocsvc.BodyMutation{
				Mutation: &extprocsvc.BodyMutation_Body{Body: []byte(strings.ToUpper(string(req.GetResponseBody().GetBody())))},
			}})}, nil
		}
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	})
	ev := start(t, proc.addr, options{
		extProc: func(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = true },
		upstream: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("content-type", "text/event-stream")
			for _, ev := range []string{"data: a\n\n", "data: b\n\n"} {
				_, _ = io.WriteString(w, ev)
				w.(http.Flusher).Flush()
			}
		},
	})
	res := do(t, ev, "GET", "/x", nil, nil)
	if res.status != 200 || res.body != "DATA: A\n\nDATA: B\n\n" {
		t.Fatalf("got %d %q", res.status, res.body)
	}
	ps := proc.firstStream(t)
	if code := ps.endCode(t); code != "EOF" {
		t.Fatalf("stream end %s", code)
	}
	var last *extprocsvc.HttpBody
	for _, m := range ps.messages() {
		if b := m.GetResponseBody(); b != nil {
			last = b
		}
	}
	if last == nil || !last.GetEndOfStream() {
		t.Fatalf("last response_body %v, want end_of_stream", last)
	}
}

// TestDynamicMetadata: only receiving namespaces are kept; the access log
// sees them.
func TestDynamicMetadata(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{
		"keymux": map[string]any{"key_id": "k1", "model_final": "gpt-x"},
		"other":  map[string]any{"x": "leak"},
	})
	if err != nil {
		t.Fatal(err)
	}
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		r := continueReply(req)
		r.DynamicMetadata = md
		return []*extprocsvc.ProcessingResponse{r}
	}))
	ev := start(t, proc.addr, options{})
	do(t, ev, "GET", "/x", nil, nil)
	line := ev.accessLog(t, 1)[0]
	if want := "GET /x 200 upstream_a key=k1 model=gpt-x other=-"; line != want {
		t.Fatalf("access log %q, want %q", line, want)
	}
	t.Run("no receiving namespaces: nothing kept", func(t *testing.T) {
		ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) { ep.MetadataOptions = nil }})
		do(t, ev, "GET", "/x", nil, nil)
		if line := ev.accessLog(t, 1)[0]; line != "GET /x 200 upstream_a key=- model=- other=-" {
			t.Fatalf("access log %q", line)
		}
	})
}

// TestClientAbort: the client goes away while the processor holds the
// request: the server sees codes.Canceled.
func TestClientAbort(t *testing.T) {
	proc := startProc(t, onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse { return nil }))
	ev := start(t, proc.addr, options{})
	ctx, cancel := contextWithCancel(t)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", ev.em.URL()+"/x", nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	ps := proc.firstStream(t)
	<-ps.got // request_headers arrived and is left unanswered
	cancel()
	if err := <-errc; !errors.Is(err, contextCanceled) {
		t.Fatalf("client error %v", err)
	}
	if code := ps.endCode(t); code != "Canceled" {
		t.Fatalf("server saw %s, want Canceled", code)
	}
	if len(ev.a.requests()) != 0 {
		t.Fatal("aborted request reached the upstream")
	}
}

// TestImmediateResponse: status (<200 → 200), headers through the mutation
// checker, body, default content-type.
func TestImmediateResponse(t *testing.T) {
	tests := []struct {
		name     string
		imm      *extprocsvc.ImmediateResponse
		status   int
		body     string
		header   map[string]string
		noHeader []string
	}{
		{
			name: "status body headers",
			imm: &extprocsvc.ImmediateResponse{
				Status:  &typev3.HttpStatus{Code: 429},
				Body:    []byte(`{"error":{"message":"slow down"}}`),
				Headers: mut([]*corev3.HeaderValueOption{setRaw("content-type", "application/json"), setRaw("retry-after", "3"), setRaw("x-envoy-thing", "no")}),
			},
			status:   429,
			body:     `{"error":{"message":"slow down"}}`,
			header:   map[string]string{"Content-Type": "application/json", "Retry-After": "3"},
			noHeader: []string{"X-Envoy-Thing"},
		},
		{
			name:   "default content-type",
			imm:    &extprocsvc.ImmediateResponse{Status: &typev3.HttpStatus{Code: 401}, Body: []byte("denied")},
			status: 401,
			body:   "denied",
			header: map[string]string{"Content-Type": "text/plain"},
		},
		{
			name:   "status below 200 becomes 200",
			imm:    &extprocsvc.ImmediateResponse{Status: &typev3.HttpStatus{Code: 100}, Body: []byte("x")},
			status: 200,
			body:   "x",
		},
		{
			name:   "no status is 200",
			imm:    &extprocsvc.ImmediateResponse{},
			status: 200,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, onKind("request_headers", func(*extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
				return []*extprocsvc.ProcessingResponse{{Response: &extprocsvc.ProcessingResponse_ImmediateResponse{ImmediateResponse: tc.imm}}}
			}))
			ev := start(t, proc.addr, options{})
			res := do(t, ev, "GET", "/x", nil, nil)
			if res.status != tc.status || res.body != tc.body {
				t.Fatalf("got %d %q, want %d %q", res.status, res.body, tc.status, tc.body)
			}
			for k, v := range tc.header {
				if res.header.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, res.header.Get(k), v)
				}
			}
			for _, k := range tc.noHeader {
				if v := res.header.Get(k); v != "" {
					t.Errorf("header %s = %q, want dropped", k, v)
				}
			}
			if len(ev.a.requests()) != 0 {
				t.Fatal("upstream reached")
			}
			ps := proc.firstStream(t)
			ps.endCode(t)
			if n := len(ps.messages()); n != 1 {
				t.Fatalf("%d messages after an immediate response, want 1", n)
			}
		})
	}
}

// TestBufferLimit: a BUFFERED request body over the limit is a 413 and the
// processor sees only the headers; a BUFFERED response body over it, a 500.
func TestBufferLimit(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{})
	big := strings.Repeat("x", 4097) // per_connection_buffer_limit_bytes: 4096
	res := do(t, ev, "POST", "/x", strings.NewReader(big), nil)
	if res.status != 413 {
		t.Fatalf("status %d, want 413", res.status)
	}
	// The 413 comes from Envoy's filter manager: the processor never sees the
	// body, nor the local reply (TestLocalRepliesSkipExtProc).
	ps := proc.firstStream(t)
	ps.endCode(t)
	if msgs := ps.messages(); len(msgs) != 1 || kindOf(msgs[0]) != "request_headers" {
		t.Fatalf("processor saw %d messages", len(msgs))
	}
	if res := do(t, ev, "POST", "/x", strings.NewReader(big[:4096]), nil); res.status != 200 {
		t.Fatalf("body at the limit: %d", res.status)
	}

	t.Run("response", func(t *testing.T) {
		ev := start(t, proc.addr, options{
			extProc: func(ep *extprocv3.ExternalProcessor) {
				ep.ProcessingMode.ResponseBodyMode = extprocv3.ProcessingMode_BUFFERED
			},
			upstream: func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, big) },
		})
		if res := do(t, ev, "GET", "/x", nil, nil); res.status != 500 {
			t.Fatalf("status %d, want 500", res.status)
		}
	})
}

// TestContinueAndReplace: the body mutation of a headers reply becomes the
// whole body, content-length goes, nothing more is sent for that direction.
func TestContinueAndReplace(t *testing.T) {
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{
			Status:       extprocsvc.CommonResponse_CONTINUE_AND_REPLACE,
			BodyMutation: &extprocsvc.BodyMutation{Mutation: &extprocsvc.BodyMutation_Body{Body: []byte("replaced")}},
		})}
	}))
	ev := start(t, proc.addr, options{})
	if res := do(t, ev, "POST", "/x", strings.NewReader("original"), nil); res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	if r := ev.a.only(t); string(r.Body) != "replaced" || r.ContentLength != -1 {
		t.Fatalf("upstream body %q content-length %d", r.Body, r.ContentLength)
	}
	ps := proc.firstStream(t)
	ps.endCode(t)
	for _, m := range ps.messages() {
		if kindOf(m) == "request_body" {
			t.Fatal("request_body sent after CONTINUE_AND_REPLACE")
		}
	}
}

// TestAttributes: sent once per direction, only when configured.
func TestAttributes(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.RequestAttributes = []string{"request.path", "request.method"}
	}})
	do(t, ev, "POST", "/attr", strings.NewReader("b"), nil)
	ps := proc.firstStream(t)
	ps.endCode(t)
	msgs := ps.messages()
	a := msgs[0].GetAttributes()[extProcAttributesKey]
	if a.GetFields()["request.path"].GetStringValue() != "/attr" || a.GetFields()["request.method"].GetStringValue() != "POST" {
		t.Fatalf("attributes %v", msgs[0].GetAttributes())
	}
	for i, m := range msgs[1:] {
		if len(m.GetAttributes()) != 0 {
			t.Fatalf("attributes again on message %d (%s)", i+1, kindOf(m))
		}
	}
}

// TestDirectResponse: a direct_response carries the route's
// response_headers_to_add; ext_proc does not send it to the processor.
func TestDirectResponse(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{})
	res := do(t, ev, "GET", "/direct", nil, nil)
	if res.status != 404 || res.body != `{"error":"not here"}` || res.header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %q %v", res.status, res.body, res.header)
	}
	ps := proc.firstStream(t)
	ps.endCode(t)
	if msgs := ps.messages(); len(msgs) != 1 || kindOf(msgs[0]) != "request_headers" {
		t.Fatalf("messages %d", len(msgs))
	}
}

var _ = wrapperspb.Bool
var _ = mutationrulesv3.HeaderMutationRules{}

// TestMessageTimeoutWhileOpening: a processor that accepts TCP but never
// speaks HTTP/2: the message timer already runs while the stream opens.
func TestMessageTimeoutWhileOpening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 64)
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		close(conns)
		for c := range conns {
			_ = c.Close()
		}
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case conns <- c: // held open, silent
			default:
				_ = c.Close()
			}
		}
	}()
	ev := start(t, ln.Addr().String(), options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.MessageTimeout = durationpb.New(100 * time.Millisecond)
	}})
	if res := do(t, ev, "GET", "/x", nil, nil); res.status != 504 {
		t.Fatalf("status %d, want 504", res.status)
	}
}

// TestOverrideMessageTimeoutExtends: within max_message_timeout the server
// gets more time for the outstanding message; its real reply still counts.
func TestOverrideMessageTimeoutExtends(t *testing.T) {
	release := make(chan struct{})
	proc := startProc(t, func(ps *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
		if kindOf(req) != "request_headers" {
			return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
		}
		if err := ps.send(&extprocsvc.ProcessingResponse{OverrideMessageTimeout: durationpb.New(5 * time.Second)}); err != nil {
			return nil, err
		}
		<-release // the real reply, once the test lets it go
		return []*extprocsvc.ProcessingResponse{continueReply(req)}, nil
	})
	ev := start(t, proc.addr, options{extProc: func(ep *extprocv3.ExternalProcessor) {
		ep.MessageTimeout = durationpb.New(100 * time.Millisecond)
		ep.MaxMessageTimeout = durationpb.New(10 * time.Second)
	}})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", ev.em.URL()+"/x", nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	ps := proc.firstStream(t)
	<-ps.got
	// Wait well past the 100ms message_timeout before the real reply.
	select {
	case st := <-done:
		t.Fatalf("answered %d before the real reply: the extension was not applied", st)
	case <-time.After(400 * time.Millisecond):
	}
	close(release)
	if st := <-done; st != 200 {
		t.Fatalf("status %d after the real reply, want 200", st)
	}
}

// TestEarlyResponse: the upstream answers before the STREAMED request body
// is finished; response_headers reach the processor while request chunks
// are still flowing.
func TestEarlyResponse(t *testing.T) {
	proc := startProc(t, continueAll)
	early := startUpstreamRaw(t, func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(202)
		w.(http.Flusher).Flush() // answer before reading the body
		_, _ = io.Copy(io.Discard, r.Body)
	})
	ev2 := start(t, proc.addr, options{
		extProc: func(ep *extprocv3.ExternalProcessor) {
			ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_STREAMED
		},
		cfg: func(c *Config) { c.ClusterAddrs["upstream_a"] = early },
	})
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", ev2.em.URL()+"/x", pr)
	type rt struct {
		resp *http.Response
		err  error
	}
	got := make(chan rt, 1)
	go func() {
		resp, err := http.DefaultTransport.RoundTrip(req)
		got <- rt{resp, err}
	}()
	if _, err := pw.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	var r rt
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no early response")
	}
	if r.err != nil || r.resp.StatusCode != 202 {
		t.Fatalf("early response %v %v", r.resp, r.err)
	}
	pw.Close()
	_, _ = io.Copy(io.Discard, r.resp.Body)
	r.resp.Body.Close()
	ps := lastStream(t, proc)
	ps.endCode(t)
	var kinds []string
	for _, m := range ps.messages() {
		k := kindOf(m)
		if b := m.GetRequestBody(); b != nil && b.GetEndOfStream() {
			k += "(eos)"
		}
		kinds = append(kinds, k)
	}
	seq := strings.Join(kinds, ",")
	rh, eos := strings.Index(seq, "response_headers"), strings.Index(seq, "request_body(eos)")
	if !strings.HasPrefix(seq, "request_headers,") || rh < 0 || eos < rh {
		t.Fatalf("message order %s: response_headers must come before the end of the request body", seq)
	}
}
