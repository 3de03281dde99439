package emulator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Envoy's defaults for CommonGrpcAccessLogConfig.
const (
	defaultALSFlushInterval = time.Second
	defaultALSBufferBytes   = 16384
)

// grpcAccessLogger is envoy.access_loggers.http_grpc: HTTPAccessLogEntry
// messages batched into StreamAccessLogsMessage and streamed to an
// AccessLogService, as Envoy's GrpcAccessLogger does:
//   - an entry is added to the pending message; when the message's
//     approximate size reaches buffer_size_bytes it is flushed at once, and
//     a timer flushes it every buffer_flush_interval;
//   - a flush sends the pending message on the open stream, opening one
//     first when there is none; the first message of every stream carries
//     the identifier (bootstrap node, log_name);
//   - the pending message is cleared by every flush, whatever happens to
//     it: when the stream cannot be opened, or breaks while the message is
//     in flight, the batch is lost (Envoy keeps no retry buffer); the next
//     flush opens a new stream;
//   - while the message is at or over buffer_size_bytes and a flush cannot
//     empty it, further entries are dropped.
//
// Envoy's flush never blocks the worker (gRPC writes are buffered); here a
// sender goroutine does the sending, so a batch flushed while the previous
// one is still being sent waits in a queue.
type grpcAccessLogger struct {
	cfg      *grpcalsv3.HttpGrpcAccessLogConfig
	logName  string
	node     *corev3.Node
	cc       *grpc.ClientConn
	interval time.Duration
	maxBytes int

	mu      sync.Mutex
	pending []*accesslogdata.HTTPAccessLogEntry
	size    int
	dropped int

	queue chan []*accesslogdata.HTTPAccessLogEntry
	added chan struct{} // one signal per entry added, for tests; never blocks
}

func (e *Emulator) newGRPCAccessLogger(c *grpcalsv3.HttpGrpcAccessLogConfig) (*grpcAccessLogger, error) {
	cc := c.GetCommonConfig()
	if cc == nil {
		return nil, errors.New("http_grpc: common_config is required")
	}
	if cc.GetLogName() == "" {
		return nil, errors.New("http_grpc: common_config.log_name is required")
	}
	eg := cc.GetGrpcService().GetEnvoyGrpc()
	if eg == nil {
		return nil, errors.New("http_grpc: only grpc_service.envoy_grpc is emulated")
	}
	if len(cc.GetFilterStateObjectsToLog()) > 0 || len(cc.GetCustomTags()) > 0 {
		return nil, errors.New("http_grpc: filter_state_objects_to_log and custom_tags are not emulated")
	}
	conn, err := e.grpcConn(eg.GetClusterName())
	if err != nil {
		return nil, fmt.Errorf("http_grpc: %w", err)
	}
	interval, maxBytes := defaultALSFlushInterval, defaultALSBufferBytes
	if d := cc.GetBufferFlushInterval(); d != nil {
		interval = d.AsDuration()
	}
	if b := cc.GetBufferSizeBytes(); b != nil {
		maxBytes = int(b.GetValue())
	}
	if interval <= 0 {
		return nil, errors.New("http_grpc: buffer_flush_interval must be positive")
	}
	return newGRPCLogger(c, conn, e.cfg.Bootstrap.GetNode(), interval, maxBytes), nil
}

func newGRPCLogger(c *grpcalsv3.HttpGrpcAccessLogConfig, conn *grpc.ClientConn, node *corev3.Node, interval time.Duration, maxBytes int) *grpcAccessLogger {
	return &grpcAccessLogger{
		cfg: c, logName: c.GetCommonConfig().GetLogName(), node: node, cc: conn,
		interval: interval, maxBytes: maxBytes,
		queue: make(chan []*accesslogdata.HTTPAccessLogEntry, 1024), added: make(chan struct{}, 64),
	}
}

// AccessLogSender is the sending half of envoy.access_loggers.http_grpc
// (see grpcAccessLogger): entries batched, flushed every flush interval or
// once a batch reaches the buffer size, and streamed to an
// AccessLogService, for a client that plays Envoy's side of ext_proc
// itself (cmd/extprocload) instead of going through the emulator.
type AccessLogSender struct{ l *grpcAccessLogger }

// NewAccessLogSender streams to the AccessLogService on conn, under
// logName, flushing every flush (Envoy's buffer_flush_interval) or at
// bufferBytes (buffer_size_bytes; 0: Envoy's default, 16 KiB); the
// identifier of each stream names node logName. Run sends.
func NewAccessLogSender(conn *grpc.ClientConn, logName string, flush time.Duration, bufferBytes int) (*AccessLogSender, error) {
	if flush <= 0 {
		return nil, errors.New("access log sender: the flush interval must be positive")
	}
	if bufferBytes == 0 {
		bufferBytes = defaultALSBufferBytes
	}
	c := &grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{LogName: logName}}
	return &AccessLogSender{newGRPCLogger(c, conn, &corev3.Node{Id: logName}, flush, bufferBytes)}, nil
}

// Run flushes on the timer and sends the batches until ctx ends, as
// Envoy's logger does; batches not yet sent then are lost.
func (s *AccessLogSender) Run(ctx context.Context) { s.l.run(ctx) }

// Log adds an entry to the pending batch (dropped, as Envoy drops it,
// while a full batch cannot be flushed).
func (s *AccessLogSender) Log(e *accesslogdata.HTTPAccessLogEntry) { s.l.add(e) }

// Dropped is the number of entries dropped so far.
func (s *AccessLogSender) Dropped() int {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return s.l.dropped
}

// Request is one request as Envoy's stream info holds it, for
// HTTPAccessLogEntry. A zero time is an event that did not happen.
type Request struct {
	Start         time.Time
	RequestEnd    time.Time // the request's last byte received, and sent upstream
	ResponseStart time.Time // the response's first byte received upstream, and sent downstream
	End           time.Time // the response's last byte sent downstream
	// The headers as Envoy sent them to the external processor.
	RequestHeaders, ResponseHeaders *corev3.HeaderMap
	Status                          int
	ResponseFlags                   string // Envoy's short names, comma-separated ("UF", "UF,URX")
	BytesReceived, BytesSent        int64  // request and response body bytes
	Attempts                        uint32 // upstream requests made
	Protocol                        string // downstream: "HTTP/1.1", …
	UpstreamHost, UpstreamCluster   string
	RouteName                       string
	// Metadata is the request's dynamic metadata by namespace: what the
	// external processor's replies set (the namespaces the filter
	// receives) and what other filters wrote (json_to_metadata's).
	Metadata map[string]*structpb.Struct
}

// HTTPAccessLogEntry is the entry envoy.access_loggers.http_grpc sends for
// r (no additional headers logged): the emulator's own entry for a
// request with r's account.
func HTTPAccessLogEntry(r *Request) *accesslogdata.HTTPAccessLogEntry {
	li := &logInfo{
		start: r.Start, end: r.End, firstUpstreamByte: r.ResponseStart,
		lastDownstreamRx: r.RequestEnd, firstUpstreamTx: r.RequestEnd, lastUpstreamTx: r.RequestEnd,
		lastUpstreamRx: r.End, firstDownstreamTx: r.ResponseStart, lastDownstreamTx: r.End,
		reqHeaders: fromProto(r.RequestHeaders), status: r.Status, responseFlags: r.ResponseFlags,
		bytesReceived: r.BytesReceived, bytesSent: r.BytesSent, attempts: r.Attempts, protocol: r.Protocol,
		upstreamHost: r.UpstreamHost, upstreamRemote: r.UpstreamHost, upstreamCluster: r.UpstreamCluster, routeName: r.RouteName,
	}
	if r.ResponseHeaders != nil {
		li.respHeaders = fromProto(r.ResponseHeaders)
	}
	for ns, s := range r.Metadata {
		li.setMetadata(ns, s)
	}
	return li.httpEntry(&grpcalsv3.HttpGrpcAccessLogConfig{})
}

// run flushes on the timer and sends batches until ctx ends; batches not
// yet sent then are lost, as when Envoy exits.
func (l *grpcAccessLogger) run(ctx context.Context) {
	var wg sync.WaitGroup // the timer and the streams' readers
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(l.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				l.flush()
			}
		}
	}()
	var s *alsStream
	for {
		select {
		case <-ctx.Done():
			if s != nil {
				s.cancel()
			}
			return
		case batch := <-l.queue:
			s = l.send(ctx, s, batch, &wg)
		}
	}
}

// alsStream is one open StreamAccessLogs stream.
type alsStream struct {
	stream grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
	cancel context.CancelFunc
	broken chan struct{} // closed when the server ended the stream
}

func (l *grpcAccessLogger) send(ctx context.Context, s *alsStream, batch []*accesslogdata.HTTPAccessLogEntry, wg *sync.WaitGroup) *alsStream {
	if s != nil {
		select {
		case <-s.broken:
			s.cancel()
			s = nil
		default:
		}
	}
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch}}}
	if s == nil {
		sctx, cancel := context.WithCancel(ctx)
		st, err := alsv3.NewAccessLogServiceClient(l.cc).StreamAccessLogs(sctx)
		if err != nil {
			cancel()
			return nil // the batch is lost
		}
		s = &alsStream{stream: st, cancel: cancel, broken: make(chan struct{})}
		wg.Add(1)
		go func(s *alsStream) {
			defer wg.Done()
			// The server sends nothing until it closes the stream.
			_ = s.stream.RecvMsg(new(alsv3.StreamAccessLogsResponse))
			close(s.broken)
		}(s)
		msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: l.node, LogName: l.logName}
	}
	if err := s.stream.Send(msg); err != nil {
		s.cancel()
		return nil
	}
	return s
}

// add appends an entry (GrpcAccessLogger::log).
func (l *grpcAccessLogger) add(entry *accesslogdata.HTTPAccessLogEntry) {
	l.mu.Lock()
	if l.maxBytes != 0 && l.size >= l.maxBytes {
		l.flushLocked()
		if l.size >= l.maxBytes {
			l.dropped++
			l.mu.Unlock()
			return
		}
	}
	l.pending = append(l.pending, entry)
	l.size += proto.Size(entry)
	select {
	case l.added <- struct{}{}:
	default:
	}
	if l.size >= l.maxBytes {
		l.flushLocked()
	}
	l.mu.Unlock()
}

func (l *grpcAccessLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *grpcAccessLogger) flushLocked() {
	if len(l.pending) == 0 {
		return
	}
	select {
	case l.queue <- l.pending:
		l.pending, l.size = nil, 0
	default: // the sender is behind: like a stream above its watermark, keep the batch
	}
}

func (l *grpcAccessLogger) log(li *logInfo) {
	l.add(li.httpEntry(l.cfg))
}

// httpEntry builds the HTTPAccessLogEntry Envoy's http_grpc logger fills
// (HttpGrpcAccessLog::emitLog and extractCommonAccessLogProperties).
func (li *logInfo) httpEntry(cfg *grpcalsv3.HttpGrpcAccessLogConfig) *accesslogdata.HTTPAccessLogEntry {
	li.mu.Lock()
	defer li.mu.Unlock()
	since := func(t time.Time) *durationpb.Duration {
		if t.IsZero() {
			return nil
		}
		return durationpb.New(t.Sub(li.start))
	}
	cp := &accesslogdata.AccessLogCommon{
		DownstreamRemoteAddress:        socketAddress(li.downstreamRemote),
		DownstreamDirectRemoteAddress:  socketAddress(li.downstreamRemote),
		DownstreamLocalAddress:         socketAddress(li.downstreamLocal),
		StartTime:                      timestamppb.New(li.start),
		TimeToLastRxByte:               since(li.lastDownstreamRx),
		TimeToFirstUpstreamTxByte:      since(li.firstUpstreamTx),
		TimeToLastUpstreamTxByte:       since(li.lastUpstreamTx),
		TimeToFirstUpstreamRxByte:      since(li.firstUpstreamByte),
		TimeToLastUpstreamRxByte:       since(li.lastUpstreamRx),
		TimeToFirstDownstreamTxByte:    since(li.firstDownstreamTx),
		TimeToLastDownstreamTxByte:     since(li.lastDownstreamTx),
		UpstreamRemoteAddress:          socketAddress(li.upstreamRemote),
		UpstreamLocalAddress:           socketAddress(li.upstreamLocal),
		UpstreamCluster:                li.upstreamCluster,
		ResponseFlags:                  responseFlagsProto(li.responseFlags),
		UpstreamTransportFailureReason: li.upstreamFailure,
		RouteName:                      li.routeName,
		Duration:                       since(li.end),
		UpstreamRequestAttemptCount:    li.attempts,
		AccessLogType:                  accesslogdata.AccessLogType_DownstreamEnd,
	}
	if len(li.metadata) > 0 {
		cp.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
		for ns, s := range li.metadata {
			cp.Metadata.FilterMetadata[ns] = proto.Clone(s).(*structpb.Struct)
		}
	}
	rh := li.reqHeaders
	if rh == nil {
		rh = &headerMap{}
	}
	cp.StreamId = rh.value("x-request-id")
	req := &accesslogdata.HTTPRequestProperties{
		Scheme:              rh.value(":scheme"),
		Authority:           rh.value(":authority"),
		Path:                rh.value(":path"),
		UserAgent:           rh.value("user-agent"),
		Referer:             rh.value("referer"),
		ForwardedFor:        rh.value("x-forwarded-for"),
		RequestId:           rh.value("x-request-id"),
		OriginalPath:        rh.value("x-envoy-original-path"),
		RequestHeadersBytes: uint64(rh.byteSize()),
		RequestBodyBytes:    uint64(li.bytesReceived),
		RequestHeaders:      headersToLog(rh, cfg.GetAdditionalRequestHeadersToLog()),
	}
	if m, ok := corev3.RequestMethod_value[rh.value(":method")]; ok {
		req.RequestMethod = corev3.RequestMethod(m)
	}
	resp := &accesslogdata.HTTPResponseProperties{
		ResponseCodeDetails: li.details,
		ResponseBodyBytes:   uint64(li.bytesSent),
	}
	if li.status != 0 {
		resp.ResponseCode = wrapperspb.UInt32(uint32(li.status))
	}
	if li.respHeaders != nil {
		resp.ResponseHeadersBytes = uint64(li.respHeaders.byteSize())
		resp.ResponseHeaders = headersToLog(li.respHeaders, cfg.GetAdditionalResponseHeadersToLog())
	}
	pv := accesslogdata.HTTPAccessLogEntry_PROTOCOL_UNSPECIFIED
	switch li.protocol {
	case "HTTP/1.0":
		pv = accesslogdata.HTTPAccessLogEntry_HTTP10
	case "HTTP/1.1":
		pv = accesslogdata.HTTPAccessLogEntry_HTTP11
	}
	return &accesslogdata.HTTPAccessLogEntry{CommonProperties: cp, ProtocolVersion: pv, Request: req, Response: resp}
}

// headersToLog is the additional_*_headers_to_log map (several values
// joined with ",").
func headersToLog(h *headerMap, names []string) map[string]string {
	if len(names) == 0 {
		return nil
	}
	out := map[string]string{}
	for _, n := range names {
		n = strings.ToLower(n)
		var vals []string
		for _, f := range h.fields {
			if f.key == n {
				vals = append(vals, f.value)
			}
		}
		if len(vals) > 0 {
			out[n] = strings.Join(vals, ",")
		}
	}
	return out
}

// socketAddress renders "host:port" as an Envoy address (nil when empty).
func socketAddress(hp string) *corev3.Address {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}
}

// responseFlagsProto maps the short response flags the emulator sets.
func responseFlagsProto(flags string) *accesslogdata.ResponseFlags {
	rf := &accesslogdata.ResponseFlags{}
	for _, f := range strings.Split(flags, ",") {
		switch f {
		case "UF":
			rf.UpstreamConnectionFailure = true
		case "UC":
			rf.UpstreamConnectionTermination = true
		case "UR":
			rf.UpstreamRemoteReset = true
		case "URX":
			rf.UpstreamRetryLimitExceeded = true
		case "UT":
			rf.UpstreamRequestTimeout = true
		case "SI":
			rf.StreamIdleTimeout = true
		case "DC":
			rf.DownstreamConnectionTermination = true
		case "LR":
			rf.LocalReset = true
		case "NR":
			rf.NoRouteFound = true
		case "NC":
			rf.NoClusterFound = true
		case "UH":
			rf.NoHealthyUpstream = true
		}
	}
	return rf
}
