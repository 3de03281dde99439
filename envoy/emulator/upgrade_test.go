package emulator

import (
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// wsEcho is an upstream WebSocket server: it says "hello" first, then
// echoes every message prefixed with "echo: ".
func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer func() { _ = c.CloseNow() }()
	if c.Write(r.Context(), websocket.MessageText, []byte("hello")) != nil {
		return
	}
	for {
		typ, b, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if c.Write(r.Context(), typ, append([]byte("echo: "), b...)) != nil {
			return
		}
	}
}

// noBodyOnUpgrade answers request headers with a mode override that turns
// the request body mode to NONE (what a processor must do on an upgrade),
// everything else with continue.
func noBodyOnUpgrade(_ *procStream, req *extprocsvc.ProcessingRequest) ([]*extprocsvc.ProcessingResponse, error) {
	resp := continueReply(req)
	if kindOf(req) == "request_headers" {
		resp.ModeOverride = &extprocv3.ProcessingMode{}
	}
	return []*extprocsvc.ProcessingResponse{resp}, nil
}

func allowOverride(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = true }

func withWebSocket(enabled *wrapperspb.BoolValue) func(*hcmv3.HttpConnectionManager) {
	return func(hcm *hcmv3.HttpConnectionManager) {
		hcm.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "WebSocket", Enabled: enabled}}
	}
}

// An upgrade no upgrade_configs entry allows gets the HCM's 403 before any
// filter runs, and the connection closes.
func TestUpgradeRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		hcm  func(*hcmv3.HttpConnectionManager)
	}{
		{"not configured", nil},
		{"disabled", withWebSocket(wrapperspb.Bool(false))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, noBodyOnUpgrade)
			ev := start(t, proc.addr, options{hcm: tc.hcm, upstream: wsEcho})
			_, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(ev.em.URL(), "http")+"/ws", nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden || !resp.Close {
				t.Fatalf("dial: %v, response %v; want a 403 that closes the connection", err, resp)
			}
			if line := ev.accessLog(t, 1)[0]; !strings.HasPrefix(line, "GET /ws 403 - ") {
				t.Errorf("access log %q", line)
			}
			if n := proc.streamCount(); n != 0 {
				t.Errorf("%d ext_proc streams, want none: the HCM refuses before the filters", n)
			}
			if n := len(ev.a.requests()); n != 0 {
				t.Errorf("upstream got %d requests", n)
			}
		})
	}
}

// An allowed upgrade: the processor sees the request headers (upgrade
// headers kept, end_of_stream false) and the 101's headers, never a body;
// then bytes flow both ways.
func TestUpgradeTunnel(t *testing.T) {
	proc := startProc(t, noBodyOnUpgrade)
	ev := start(t, proc.addr, options{hcm: withWebSocket(nil), upstream: wsEcho, extProc: allowOverride})
	c, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(ev.em.URL(), "http")+"/ws?x=1", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = c.CloseNow() }()
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Server") != "envoy" {
		t.Errorf("status %d, server %q", resp.StatusCode, resp.Header.Get("Server"))
	}
	if _, b, err := c.Read(t.Context()); err != nil || string(b) != "hello" {
		t.Fatalf("first message %q, %v", b, err)
	}
	for _, m := range []string{"one", strings.Repeat("x", 30000)} {
		if err := c.Write(t.Context(), websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
		if _, b, err := c.Read(t.Context()); err != nil || string(b) != "echo: "+m {
			t.Fatalf("echo of %.10q: %.20q, %v", m, b, err)
		}
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
	line := ev.accessLog(t, 1)[0]
	if !strings.HasPrefix(line, "GET /ws?x=1 101 upstream_a ") {
		t.Errorf("access log %q", line)
	}
	ps := proc.firstStream(t)
	ps.endCode(t)
	msgs := ps.messages()
	var kinds []string
	for _, m := range msgs {
		kinds = append(kinds, kindOf(m))
	}
	if strings.Join(kinds, ",") != "request_headers,response_headers" {
		t.Fatalf("messages %v, want the headers only", kinds)
	}
	if msgs[0].GetRequestHeaders().GetEndOfStream() || msgs[1].GetResponseHeaders().GetEndOfStream() {
		t.Error("end_of_stream true on an upgrade's headers: the upgraded stream follows")
	}
	for k, want := range map[string]string{"upgrade": "websocket", "connection": "Upgrade"} {
		if v, _ := headerOf(msgs[0], k); v != want {
			t.Errorf("request %s = %q, want %q", k, v, want)
		}
	}
	if v, _ := headerOf(msgs[1], ":status"); v != "101" {
		t.Errorf("response :status %q", v)
	}
	if r := ev.a.only(t); r.Header.Get("Upgrade") != "websocket" || r.Header.Get("Sec-Websocket-Key") == "" {
		t.Errorf("upstream request headers %v", r.Header)
	}
}

// A processor that leaves the request body BUFFERED on an upgrade (no
// override, or one the filter does not allow) stalls the stream in Envoy
// (until stream_idle_timeout): the emulator answers that timeout at once,
// and nothing reaches the upstream.
func TestUpgradeBufferedBodyStalls(t *testing.T) {
	proc := startProc(t, noBodyOnUpgrade) // allow_mode_override is off
	ev := start(t, proc.addr, options{hcm: withWebSocket(nil), upstream: wsEcho})
	_, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(ev.em.URL(), "http")+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("dial: %v, %v; want 408", err, resp)
	}
	if n := len(ev.a.requests()); n != 0 {
		t.Errorf("upstream got %d requests", n)
	}
}

// The route's upgrade_configs decides before the HCM's.
func TestUpgradeRouteOverride(t *testing.T) {
	proc := startProc(t, noBodyOnUpgrade)
	ev := start(t, proc.addr, options{upstream: wsEcho, extProc: allowOverride, hcm: func(hcm *hcmv3.HttpConnectionManager) {
		for _, r := range hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
			if r.GetName() == "default" {
				r.GetRoute().UpgradeConfigs = append(r.GetRoute().UpgradeConfigs, &routev3.RouteAction_UpgradeConfig{UpgradeType: "websocket"})
			}
		}
	}})
	c, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(ev.em.URL(), "http")+"/ws", nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("dial: %v", err)
	}
	_ = c.CloseNow()
}

// An h2c upgrade offer is no upgrade: the request is served as HTTP/1.1,
// without upgrade_configs.
func TestUpgradeH2CIgnored(t *testing.T) {
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, options{})
	res := do(t, ev, "GET", "/x", nil, map[string]string{"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"})
	if res.status != 200 || res.body != "upstream says hi" {
		t.Fatalf("got %d %q", res.status, res.body)
	}
	if r := ev.a.only(t); r.Header.Get("Upgrade") != "" {
		t.Errorf("upstream got Upgrade %q", r.Header.Get("Upgrade"))
	}
}
