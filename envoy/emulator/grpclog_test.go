package emulator

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// alsMsg is one StreamAccessLogsMessage with the index of its stream.
type alsMsg struct {
	stream int
	msg    *alsv3.StreamAccessLogsMessage
}

// fakeALS is a real AccessLogService: it records every message.
type fakeALS struct {
	alsv3.UnimplementedAccessLogServiceServer
	addr string
	got  chan alsMsg
	// breakAfter: end each stream with an error after this many messages (0: never).
	breakAfter int
	mu         sync.Mutex
	streams    int
}

func startALS(t *testing.T, breakAfter int) *fakeALS {
	t.Helper()
	a := &fakeALS{got: make(chan alsMsg, 256), breakAfter: breakAfter}
	a.addr = serveGRPC(t, "tcp", "127.0.0.1:0", func(srv *grpc.Server) { alsv3.RegisterAccessLogServiceServer(srv, a) })
	return a
}

func (a *fakeALS) StreamAccessLogs(s grpc.ClientStreamingServer[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]) error {
	a.mu.Lock()
	a.streams++
	n := a.streams
	a.mu.Unlock()
	for i := 1; ; i++ {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		a.got <- alsMsg{stream: n, msg: m}
		if a.breakAfter > 0 && i >= a.breakAfter {
			return status.Error(codes.Unavailable, "als going away")
		}
	}
}

// next waits for the next message.
func (a *fakeALS) next(t *testing.T) alsMsg {
	t.Helper()
	select {
	case m := <-a.got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no access log message")
	}
	return alsMsg{}
}

// none checks that no message arrives for a while.
func (a *fakeALS) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-a.got:
		t.Fatalf("unexpected access log message %v", m.msg)
	case <-time.After(d):
	}
}

// withALS adds an http_grpc access logger to cluster "als" at a.addr.
func withALS(a *fakeALS, o options, edit func(*grpcalsv3.HttpGrpcAccessLogConfig)) options {
	prevHCM, prevCfg := o.hcm, o.cfg
	o.hcm = func(h *hcmv3.HttpConnectionManager) {
		if prevHCM != nil {
			prevHCM(h)
		}
		c := &grpcalsv3.HttpGrpcAccessLogConfig{
			CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
				LogName: "keymux",
				GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "als"}}},
				TransportApiVersion: corev3.ApiVersion_V3,
				BufferSizeBytes:     wrapperspb.UInt32(1), // one message per entry
				BufferFlushInterval: durationpb.New(time.Hour),
			},
			AdditionalRequestHeadersToLog: []string{"x-extra", "x-absent"},
		}
		if edit != nil {
			edit(c)
		}
		tc, err := anypb.New(c)
		if err != nil {
			panic(err)
		}
		h.AccessLog = append(h.AccessLog, &accesslogv3.AccessLog{
			Name: "envoy.access_loggers.http_grpc", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: tc}})
	}
	o.cfg = func(c *Config) {
		if prevCfg != nil {
			prevCfg(c)
		}
		c.Bootstrap.Node = &corev3.Node{Id: "envoy-1", Cluster: "gateway"}
		c.Bootstrap.StaticResources.Clusters = append(c.Bootstrap.StaticResources.Clusters, &clusterv3.Cluster{
			Name: "als", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "als"},
		})
		c.ClusterAddrs["als"] = a.addr
	}
	return o
}

func entries(m alsMsg) []*accesslogdata.HTTPAccessLogEntry {
	return m.msg.GetHttpLogs().GetLogEntry()
}

// TestGRPCAccessLogEntry: one request, one entry, with the fields Envoy's
// http_grpc logger fills and the first message's identifier.
func TestGRPCAccessLogEntry(t *testing.T) {
	als := startALS(t, 0)
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		r := continueReply(req)
		r.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			"keymux": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"key_id": structpb.NewStringValue("k1")}}),
		}}
		return []*extprocsvc.ProcessingResponse{r}
	}))
	ev := start(t, proc.addr, withALS(als, options{}, nil))
	res := do(t, ev, "POST", "/v1/chat?x=1", strings.NewReader("hello"), map[string]string{"x-extra": "e1", "user-agent": "ua/1"})
	if res.status != 200 {
		t.Fatalf("status %d", res.status)
	}
	m := als.next(t)
	id := m.msg.GetIdentifier()
	if id.GetLogName() != "keymux" || id.GetNode().GetId() != "envoy-1" || id.GetNode().GetCluster() != "gateway" {
		t.Fatalf("identifier %v", id)
	}
	es := entries(m)
	if len(es) != 1 {
		t.Fatalf("%d entries, want 1", len(es))
	}
	e := es[0]
	up := ev.a.only(t)
	c, rq, rs := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	for _, ck := range []struct {
		name      string
		got, want any
	}{
		{"method", rq.GetRequestMethod(), corev3.RequestMethod_POST},
		{"path", rq.GetPath(), "/v1/chat?x=1"},
		{"authority", rq.GetAuthority(), ev.em.Addr()},
		{"scheme", rq.GetScheme(), "http"},
		{"user agent", rq.GetUserAgent(), "ua/1"},
		{"request id", rq.GetRequestId(), up.Header.Get("X-Request-Id")},
		{"stream id", c.GetStreamId(), up.Header.Get("X-Request-Id")},
		{"request headers", rq.GetRequestHeaders(), map[string]string{"x-extra": "e1"}},
		{"request body bytes", rq.GetRequestBodyBytes(), uint64(5)},
		{"response code", rs.GetResponseCode().GetValue(), uint32(200)},
		{"details", rs.GetResponseCodeDetails(), "via_upstream"},
		{"response body bytes", rs.GetResponseBodyBytes(), uint64(len("upstream says hi"))},
		{"cluster", c.GetUpstreamCluster(), "upstream_a"},
		{"route", c.GetRouteName(), "default"},
		{"upstream address", net.JoinHostPort(c.GetUpstreamRemoteAddress().GetSocketAddress().GetAddress(), strconv.FormatUint(uint64(c.GetUpstreamRemoteAddress().GetSocketAddress().GetPortValue()), 10)), ev.a.addr()},
		{"attempts", c.GetUpstreamRequestAttemptCount(), uint32(1)},
		{"key_id", c.GetMetadata().GetFilterMetadata()["keymux"].GetFields()["key_id"].GetStringValue(), "k1"},
		{"protocol", e.GetProtocolVersion(), accesslogdata.HTTPAccessLogEntry_HTTP11},
		{"log type", c.GetAccessLogType(), accesslogdata.AccessLogType_DownstreamEnd},
	} {
		if !equalAny(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	// Timings: each present and in the order the exchange happened.
	order := []*durationpb.Duration{c.GetTimeToFirstUpstreamTxByte(), c.GetTimeToFirstUpstreamRxByte(),
		c.GetTimeToFirstDownstreamTxByte(), c.GetTimeToLastDownstreamTxByte(), c.GetDuration()}
	for i, d := range order {
		if d == nil {
			t.Fatalf("timing %d missing: %v", i, c)
		}
		if i > 0 && d.AsDuration() < order[i-1].AsDuration() {
			t.Errorf("timing %d (%v) before timing %d (%v)", i, d.AsDuration(), i-1, order[i-1].AsDuration())
		}
	}
	if rq.GetRequestHeadersBytes() == 0 || rs.GetResponseHeadersBytes() == 0 {
		t.Errorf("header bytes %d / %d", rq.GetRequestHeadersBytes(), rs.GetResponseHeadersBytes())
	}
	if f := c.GetResponseFlags(); f.GetUpstreamConnectionFailure() || f.GetDownstreamConnectionTermination() {
		t.Errorf("flags on a good request: %v", f)
	}
}

func equalAny(a, b any) bool {
	am, ok1 := a.(map[string]string)
	bm, ok2 := b.(map[string]string)
	if ok1 || ok2 {
		if len(am) != len(bm) {
			return false
		}
		for k, v := range am {
			if bm[k] != v {
				return false
			}
		}
		return true
	}
	return a == b
}

// TestGRPCAccessLogFailures: the router's local replies, which the
// processor never sees, reach the access log with Envoy's flags.
func TestGRPCAccessLogFailures(t *testing.T) {
	type flags = accesslogdata.ResponseFlags
	for _, tc := range []struct {
		name    string
		o       func(t *testing.T) options
		hdr     map[string]string
		status  uint32
		details string
		flag    func(*flags) bool
		reason  bool // upstream_transport_failure_reason set
	}{
		{name: "connect failure", status: 503, details: "upstream_reset_before_response_started{connection_failure}",
			flag: (*flags).GetUpstreamConnectionFailure, reason: true,
			o: func(t *testing.T) options {
				a := closedAddr(t)
				return options{cfg: func(c *Config) { c.ClusterAddrs["upstream_a"] = a }}
			}},
		{name: "reset before headers", status: 503, details: "upstream_reset_before_response_started{connection_termination}",
			flag: (*flags).GetUpstreamConnectionTermination,
			o: func(t *testing.T) options {
				a := resettingUpstream(t)
				return options{cfg: func(c *Config) { c.ClusterAddrs["upstream_a"] = a }}
			}},
		{name: "route timeout", status: 504, details: "upstream_response_timeout", flag: (*flags).GetUpstreamRequestTimeout,
			o: func(*testing.T) options { return options{hcm: shortRouteTimeout, upstream: slowUpstream} }},
		{name: "cluster not found", status: 503, details: "cluster_not_found", flag: (*flags).GetNoClusterFound,
			hdr: map[string]string{"x-cluster": "nowhere"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			als := startALS(t, 0)
			proc := startProc(t, continueAll)
			var o options
			if tc.o != nil {
				o = tc.o(t)
			}
			ev := start(t, proc.addr, withALS(als, o, nil))
			if res := do(t, ev, "GET", "/x", nil, tc.hdr); res.status != int(tc.status) {
				t.Fatalf("status %d, want %d", res.status, tc.status)
			}
			es := entries(als.next(t))
			if len(es) != 1 {
				t.Fatalf("%d entries", len(es))
			}
			c, rs := es[0].GetCommonProperties(), es[0].GetResponse()
			if rs.GetResponseCode().GetValue() != tc.status || rs.GetResponseCodeDetails() != tc.details {
				t.Errorf("response %d %q, want %d %q", rs.GetResponseCode().GetValue(), rs.GetResponseCodeDetails(), tc.status, tc.details)
			}
			if !tc.flag(c.GetResponseFlags()) {
				t.Errorf("flags %v", c.GetResponseFlags())
			}
			if got := c.GetUpstreamTransportFailureReason() != ""; got != tc.reason {
				t.Errorf("upstream_transport_failure_reason %q", c.GetUpstreamTransportFailureReason())
			}
		})
	}
}

// TestGRPCAccessLogBatching: entries wait for buffer_size_bytes or the
// flush; one flush is one message; only a stream's first message carries
// the identifier.
func TestGRPCAccessLogBatching(t *testing.T) {
	als := startALS(t, 0)
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, withALS(als, options{}, func(c *grpcalsv3.HttpGrpcAccessLogConfig) {
		c.CommonConfig.BufferSizeBytes = wrapperspb.UInt32(1 << 20)
	}))
	g := ev.em.grpcLogs[0]
	for range 3 {
		do(t, ev, "GET", "/x", nil, nil)
		waitAdded(t, g)
	}
	als.none(t, 100*time.Millisecond)
	g.flush()
	m := als.next(t)
	if n := len(entries(m)); n != 3 || m.msg.GetIdentifier() == nil {
		t.Fatalf("first flush: %d entries, identifier %v; want 3 with identifier", n, m.msg.GetIdentifier())
	}
	do(t, ev, "GET", "/x", nil, nil)
	waitAdded(t, g)
	g.flush()
	m2 := als.next(t)
	if n := len(entries(m2)); n != 1 || m2.msg.GetIdentifier() != nil || m2.stream != m.stream {
		t.Fatalf("second flush: %d entries, identifier %v, stream %d/%d", n, m2.msg.GetIdentifier(), m2.stream, m.stream)
	}
}

// waitAdded waits until the logger took one more entry (the client may
// have its response before the access log is written).
func waitAdded(t *testing.T, g *grpcAccessLogger) {
	t.Helper()
	select {
	case <-g.added:
	case <-time.After(10 * time.Second):
		t.Fatal("no access log entry added")
	}
}

// TestGRPCAccessLogFlushInterval: without a manual flush, the timer sends.
func TestGRPCAccessLogFlushInterval(t *testing.T) {
	als := startALS(t, 0)
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, withALS(als, options{}, func(c *grpcalsv3.HttpGrpcAccessLogConfig) {
		c.CommonConfig.BufferSizeBytes = wrapperspb.UInt32(1 << 20)
		c.CommonConfig.BufferFlushInterval = durationpb.New(50 * time.Millisecond)
	}))
	do(t, ev, "GET", "/x", nil, nil)
	do(t, ev, "GET", "/x", nil, nil)
	got := 0
	for got < 2 {
		got += len(entries(als.next(t)))
	}
	if got != 2 {
		t.Fatalf("%d entries, want 2", got)
	}
}

// TestGRPCAccessLogReconnect: when the server ends the stream, the next
// flush opens a new one, which starts with the identifier again.
func TestGRPCAccessLogReconnect(t *testing.T) {
	als := startALS(t, 1) // every stream ends after its first message
	proc := startProc(t, continueAll)
	ev := start(t, proc.addr, withALS(als, options{}, nil))
	do(t, ev, "GET", "/x", nil, nil)
	m1 := als.next(t)
	// Wait until the logger saw the stream end, so the next entry is not
	// sent into the closing stream (Envoy would lose that one too).
	deadline := time.Now().Add(10 * time.Second)
	for {
		do(t, ev, "GET", "/x", nil, nil)
		m := als.next2(t, time.Second)
		if m != nil {
			if m.stream == m1.stream || m.msg.GetIdentifier().GetLogName() != "keymux" {
				t.Fatalf("after the break: stream %d (first %d), identifier %v", m.stream, m1.stream, m.msg.GetIdentifier())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no message on a new stream")
		}
	}
}

// next2 waits up to d for a message; nil when none came.
func (a *fakeALS) next2(t *testing.T, d time.Duration) *alsMsg {
	t.Helper()
	select {
	case m := <-a.got:
		return &m
	case <-time.After(d):
		return nil
	}
}

// TestAccessLogSender: a client playing Envoy itself sends the emulator's
// entry for its request, batched and flushed on the interval, the first
// message of the stream with the identifier.
func TestAccessLogSender(t *testing.T) {
	a := startALS(t, 0)
	conn, err := grpc.NewClient(a.addr, (&cluster{connectTimeout: 5 * time.Second}).grpcDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := NewAccessLogSender(conn, "keymux", 0, 0); err == nil {
		t.Error("a zero flush interval is accepted")
	}
	s, err := NewAccessLogSender(conn, "keymux", 20*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := &Request{
		Start: start, RequestEnd: start.Add(2 * time.Millisecond), ResponseStart: start.Add(30 * time.Millisecond), End: start.Add(31 * time.Millisecond),
		RequestHeaders: (&headerMap{fields: []field{{":authority", "gw.local"}, {":path", "/v1/chat/completions"}, {":method", "POST"},
			{"x-request-id", "r1"}, {"user-agent", "OpenAI/Python 1.82.0"}}}).proto(),
		ResponseHeaders: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", Value: "503"}}},
		Status:          503, ResponseFlags: "UF,URX", BytesReceived: 1024, BytesSent: 12, Attempts: 2, Protocol: "HTTP/1.1",
		UpstreamCluster: "keymux_upstream_https", RouteName: "keymux_upstream_https",
		Metadata: map[string]*structpb.Struct{"keymux": {Fields: map[string]*structpb.Value{"call_id": structpb.NewStringValue("c1")}}},
	}
	s.Log(HTTPAccessLogEntry(r))
	m := a.next(t)
	if id := m.msg.GetIdentifier(); id.GetLogName() != "keymux" {
		t.Errorf("identifier %v, want log_name keymux", id)
	}
	es := entries(m)
	if len(es) != 1 {
		t.Fatalf("%d entries, want 1", len(es))
	}
	e := es[0]
	cp := e.GetCommonProperties()
	for _, d := range []struct {
		name string
		got  *durationpb.Duration
		want time.Duration
	}{
		{"time_to_last_rx_byte", cp.GetTimeToLastRxByte(), 2 * time.Millisecond},
		{"time_to_first_upstream_tx_byte", cp.GetTimeToFirstUpstreamTxByte(), 2 * time.Millisecond},
		{"time_to_first_upstream_rx_byte", cp.GetTimeToFirstUpstreamRxByte(), 30 * time.Millisecond},
		{"time_to_first_downstream_tx_byte", cp.GetTimeToFirstDownstreamTxByte(), 30 * time.Millisecond},
		{"time_to_last_downstream_tx_byte", cp.GetTimeToLastDownstreamTxByte(), 31 * time.Millisecond},
		{"duration", cp.GetDuration(), 31 * time.Millisecond},
	} {
		if d.got.AsDuration() != d.want {
			t.Errorf("%s = %v, want %v", d.name, d.got.AsDuration(), d.want)
		}
	}
	rf := cp.GetResponseFlags()
	if !cp.GetStartTime().AsTime().Equal(start) || !rf.GetUpstreamConnectionFailure() || !rf.GetUpstreamRetryLimitExceeded() ||
		cp.GetUpstreamRequestAttemptCount() != 2 || cp.GetUpstreamCluster() != "keymux_upstream_https" || cp.GetStreamId() != "r1" ||
		cp.GetMetadata().GetFilterMetadata()["keymux"].GetFields()["call_id"].GetStringValue() != "c1" {
		t.Errorf("common properties %v", cp)
	}
	req, resp := e.GetRequest(), e.GetResponse()
	if req.GetPath() != "/v1/chat/completions" || req.GetAuthority() != "gw.local" || req.GetRequestMethod() != corev3.RequestMethod_POST ||
		req.GetUserAgent() != "OpenAI/Python 1.82.0" || req.GetRequestBodyBytes() != 1024 || e.GetProtocolVersion() != accesslogdata.HTTPAccessLogEntry_HTTP11 {
		t.Errorf("request %v", req)
	}
	if resp.GetResponseCode().GetValue() != 503 || resp.GetResponseBodyBytes() != 12 {
		t.Errorf("response %v", resp)
	}
	if n := s.Dropped(); n != 0 {
		t.Errorf("dropped %d", n)
	}
}
