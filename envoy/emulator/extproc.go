package emulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	defaultMessageTimeout = 200 * time.Millisecond
	defaultDeferredClose  = 5 * time.Second
	extProcAttributesKey  = "envoy.filters.http.ext_proc"
	errorPrefix           = "ext_proc_error"
)

// extProcFilter is one configured envoy.filters.http.ext_proc instance.
type extProcFilter struct {
	name          string
	cfg           *extprocv3.ExternalProcessor
	conn          *grpc.ClientConn
	md            metadata.MD
	timeout       time.Duration
	maxTimeout    time.Duration
	deferredClose time.Duration
	checker       *checker
	receiving     map[string]bool
	statusOnError int
}

func (e *Emulator) newExtProcFilter(name string, c *extprocv3.ExternalProcessor) (*extProcFilter, error) {
	f := &extProcFilter{name: name, cfg: c, receiving: map[string]bool{}, statusOnError: http.StatusInternalServerError}
	switch {
	case c.GetHttpService() != nil:
		return nil, errors.New("ext_proc http_service is not emulated (gRPC only)")
	case c.GetObservabilityMode():
		return nil, errors.New("ext_proc observability_mode is not emulated")
	case c.GetSendBodyWithoutWaitingForHeaderResponse():
		return nil, errors.New("ext_proc send_body_without_waiting_for_header_response is not emulated")
	}
	if err := checkModeSupported(c.GetProcessingMode()); err != nil {
		return nil, err
	}
	gs := c.GetGrpcService()
	var err error
	switch {
	case gs.GetEnvoyGrpc() != nil:
		if f.conn, err = e.grpcConn(gs.GetEnvoyGrpc().GetClusterName()); err != nil {
			return nil, err
		}
	case gs.GetGoogleGrpc() != nil:
		target := gs.GetGoogleGrpc().GetTargetUri()
		if !strings.Contains(target, ":///") && !strings.HasPrefix(target, "unix:") {
			target = "passthrough:///" + target
		}
		if f.conn, err = grpc.NewClient(target, (&cluster{connectTimeout: 5 * time.Second}).grpcDialOptions()...); err != nil {
			return nil, fmt.Errorf("google_grpc %q: %w", target, err)
		}
		e.grpcConns["google_grpc:"+name] = f.conn
	default:
		return nil, errors.New("ext_proc needs grpc_service")
	}
	if auth := gs.GetEnvoyGrpc().GetAuthority(); auth != "" {
		f.md = metadata.Pairs(":authority", auth)
	}
	for _, hv := range gs.GetInitialMetadata() {
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		f.md = metadata.Join(f.md, metadata.Pairs(hv.GetKey(), v))
	}
	f.timeout = defaultMessageTimeout
	if c.GetMessageTimeout() != nil {
		f.timeout = c.GetMessageTimeout().AsDuration()
	}
	if c.GetMaxMessageTimeout() != nil {
		f.maxTimeout = c.GetMaxMessageTimeout().AsDuration()
	}
	f.deferredClose = defaultDeferredClose
	if c.GetDeferredCloseTimeout() != nil {
		f.deferredClose = c.GetDeferredCloseTimeout().AsDuration()
	}
	if f.checker, err = newChecker(c.GetMutationRules()); err != nil {
		return nil, err
	}
	for _, ns := range c.GetMetadataOptions().GetReceivingNamespaces().GetUntyped() {
		f.receiving[ns] = true
	}
	if s := c.GetStatusOnError(); s != nil && s.GetCode() != 0 {
		f.statusOnError = int(s.GetCode())
	}
	return f, nil
}

func checkModeSupported(m *extprocv3.ProcessingMode) error {
	for _, b := range []extprocv3.ProcessingMode_BodySendMode{m.GetRequestBodyMode(), m.GetResponseBodyMode()} {
		switch b {
		case extprocv3.ProcessingMode_NONE, extprocv3.ProcessingMode_BUFFERED,
			extprocv3.ProcessingMode_STREAMED, extprocv3.ProcessingMode_BUFFERED_PARTIAL:
		default:
			return fmt.Errorf("ext_proc body mode %s is not emulated", b)
		}
	}
	return nil
}

type direction int

const (
	dirRequest direction = iota
	dirResponse
)

func (d direction) String() string {
	if d == dirRequest {
		return "request"
	}
	return "response"
}

type msgKind int

const (
	kindHeaders msgKind = iota
	kindBody
	kindTrailers
)

// localReply is a response Envoy generates itself (sendLocalReply).
type localReply struct {
	status  int
	body    []byte
	headers *extprocsvc.HeaderMutation // immediate_response headers, through the checker
	details string
	checker *checker
	wwwAuth string // jwt_authn failures
}

// dirState is ProcessorState: one per direction per stream.
type dirState struct {
	sendHeaders  bool
	bodyMode     extprocv3.ProcessingMode_BodySendMode
	sendTrailers bool
	headersSent  bool // a headers message went out in this direction

	expect   []msgKind // messages sent and not yet answered, FIFO
	queue    []*extprocsvc.ProcessingResponse
	notify   chan struct{}
	timer    *time.Timer
	timerGen uint64
	extended bool // override_message_timeout already honoured for the outstanding message
	attrSent bool
	finished bool // no more messages will be sent in this direction
}

// session is one ext_proc gRPC stream for one HTTP request and one filter.
type session struct {
	f    *extProcFilter
	rq   *request
	log  func(msg string, args ...any)
	warn func(msg string, args ...any)
	mode *extprocv3.ProcessingMode // after per-route overrides: protocol_config
	fail bool                      // failure_mode_allow after per-route overrides

	ctx    context.Context
	cancel context.CancelFunc
	sendMu sync.Mutex // serialises Send and CloseSend

	mu        sync.Mutex
	dirs      [2]*dirState
	stream    grpc.BidiStreamingClient[extprocsvc.ProcessingRequest, extprocsvc.ProcessingResponse]
	opened    bool
	firstSent bool
	complete  bool
	outcome   *localReply // set when processing ended in a local reply
	done      chan struct{}
	closed    bool // CloseSend or cancel issued
	readerEnd chan struct{}
}

func newSession(rq *request, f *extProcFilter, mode *extprocv3.ProcessingMode, failOpen bool) *session {
	s := &session{f: f, rq: rq, mode: mode, fail: failOpen, done: make(chan struct{})}
	s.log = func(msg string, args ...any) {
		rq.e.log.Debug(msg, append([]any{"filter", f.name, "request_id", rq.requestID}, args...)...)
	}
	s.warn = func(msg string, args ...any) {
		rq.e.log.Warn(msg, append([]any{"filter", f.name, "request_id", rq.requestID}, args...)...)
	}
	s.ctx, s.cancel = context.WithCancel(rq.e.bgCtx)
	for i := range s.dirs {
		s.dirs[i] = &dirState{notify: make(chan struct{}, 1)}
	}
	s.setMode(mode, true)
	return s
}

// setMode applies a processing mode. On an override, header and trailer
// DEFAULT keep the current setting; body modes are taken literally.
func (s *session) setMode(m *extprocv3.ProcessingMode, initial bool) {
	hdr := func(cur bool, v extprocv3.ProcessingMode_HeaderSendMode, def bool) bool {
		switch v {
		case extprocv3.ProcessingMode_SEND:
			return true
		case extprocv3.ProcessingMode_SKIP:
			return false
		}
		if initial {
			return def
		}
		return cur
	}
	rq, rs := s.dirs[dirRequest], s.dirs[dirResponse]
	rq.sendHeaders = hdr(rq.sendHeaders, m.GetRequestHeaderMode(), true)
	rs.sendHeaders = hdr(rs.sendHeaders, m.GetResponseHeaderMode(), true)
	rq.sendTrailers = hdr(rq.sendTrailers, m.GetRequestTrailerMode(), false)
	rs.sendTrailers = hdr(rs.sendTrailers, m.GetResponseTrailerMode(), false)
	rq.bodyMode = m.GetRequestBodyMode()
	rs.bodyMode = m.GetResponseBodyMode()
}

// shouldRemoveContentLength is ProcessorState::shouldRemoveContentLength.
func (s *session) shouldRemoveContentLength(d direction) bool {
	if s.f.cfg.GetAllowContentLengthHeader() {
		return false
	}
	st := s.dirs[d]
	switch st.bodyMode {
	case extprocv3.ProcessingMode_STREAMED, extprocv3.ProcessingMode_BUFFERED_PARTIAL, extprocv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		return true
	case extprocv3.ProcessingMode_BUFFERED:
		return !st.sendHeaders
	}
	return false
}

// snapshot returns the current mode of a direction under the lock.
func (s *session) modeOf(d direction) (sendHeaders bool, body extprocv3.ProcessingMode_BodySendMode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dirs[d].sendHeaders, s.dirs[d].bodyMode
}

func (s *session) isComplete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.complete
}

// errNotSent means processing already completed; outcome tells how.
var errNotSent = errors.New("ext_proc processing complete")

// send opens the stream if needed and sends one message, recording the
// reply it expects and arming the message timer. It returns errNotSent when
// processing is complete (the caller then continues or replies locally).
func (s *session) send(d direction, kind msgKind, req *extprocsvc.ProcessingRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	if s.complete {
		s.mu.Unlock()
		return errNotSent
	}
	st := s.dirs[d]
	if !s.firstSent {
		s.firstSent = true
		req.ProtocolConfig = &extprocsvc.ProtocolConfiguration{
			RequestBodyMode:  s.mode.GetRequestBodyMode(),
			ResponseBodyMode: s.mode.GetResponseBodyMode(),
		}
	}
	if !st.attrSent {
		attrs := s.f.cfg.GetRequestAttributes()
		if d == dirResponse {
			attrs = s.f.cfg.GetResponseAttributes()
		}
		if len(attrs) > 0 {
			st.attrSent = true
			req.Attributes = map[string]*structpb.Struct{extProcAttributesKey: s.rq.attributes(attrs)}
		}
	}
	if kind == kindHeaders {
		st.headersSent = true
	}
	// The timer runs from the moment Envoy hands the message to its gRPC
	// client, opening the stream included.
	st.expect = append(st.expect, kind)
	s.armTimerLocked(st, s.f.timeout)
	if !s.opened {
		s.opened = true
		s.mu.Unlock()
		ctx := s.ctx
		if len(s.f.md) > 0 {
			ctx = metadata.NewOutgoingContext(ctx, s.f.md)
		}
		stream, err := extprocsvc.NewExternalProcessorClient(s.f.conn).Process(ctx)
		s.mu.Lock()
		if err != nil {
			s.onStreamErrorLocked(err)
			s.mu.Unlock()
			return errNotSent
		}
		if s.complete { // timed out or aborted while opening
			s.mu.Unlock()
			return errNotSent
		}
		s.stream = stream
		s.readerEnd = make(chan struct{})
		s.rq.e.bg.Add(1)
		go s.read(stream)
	}
	stream := s.stream
	s.mu.Unlock()
	if err := stream.Send(req); err != nil {
		// The stream is gone; its status reaches the reader.
		s.log("ext_proc send failed", "err", err)
	}
	return nil
}

func (s *session) armTimerLocked(st *dirState, d time.Duration) {
	st.timerGen++
	gen := st.timerGen
	if st.timer != nil {
		st.timer.Stop()
	}
	st.timer = time.AfterFunc(d, func() { s.onTimeout(st, gen) })
}

func (s *session) stopTimerLocked(st *dirState) {
	st.timerGen++
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

func (s *session) onTimeout(st *dirState, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.complete || gen != st.timerGen || len(st.expect) == 0 {
		return
	}
	s.warn("ext_proc message timeout")
	if s.fail {
		s.completeLocked(nil)
	} else {
		s.completeLocked(&localReply{status: http.StatusGatewayTimeout, details: errorPrefix + "_per-message_timeout_exceeded"})
	}
	s.cancelStreamLocked()
}

// completeLocked marks processing complete: nothing more is sent and every
// later reply is ignored. outcome nil means "continue unmodified".
func (s *session) completeLocked(outcome *localReply) {
	if s.complete {
		return
	}
	s.complete = true
	s.outcome = outcome
	for _, st := range s.dirs {
		s.stopTimerLocked(st)
	}
	close(s.done)
}

func (s *session) cancelStreamLocked() {
	s.closed = true
	s.cancel()
}

// read delivers replies until the stream ends.
func (s *session) read(stream grpc.BidiStreamingClient[extprocsvc.ProcessingRequest, extprocsvc.ProcessingResponse]) {
	defer s.rq.e.bg.Done()
	defer close(s.readerEnd)
	defer s.cancel()
	for {
		resp, err := stream.Recv()
		if err != nil {
			s.mu.Lock()
			s.onStreamErrorLocked(err)
			s.mu.Unlock()
			return
		}
		s.onReply(resp)
	}
}

// onStreamErrorLocked handles the end of the stream as seen by Envoy.
func (s *session) onStreamErrorLocked(err error) {
	if s.complete {
		return
	}
	if errors.Is(err, io.EOF) {
		s.log("ext_proc stream closed by server")
		s.completeLocked(nil)
		return
	}
	st, _ := status.FromError(err)
	if st.Code() == codes.Canceled && s.ctx.Err() != nil {
		s.completeLocked(nil)
		return
	}
	s.warn("ext_proc stream failed", "code", st.Code().String())
	if s.fail {
		s.completeLocked(nil)
		return
	}
	s.completeLocked(&localReply{status: s.f.statusOnError, details: fmt.Sprintf("%s_gRPC_error_%d", errorPrefix, st.Code())})
	s.cancelStreamLocked()
}

func replyKind(resp *extprocsvc.ProcessingResponse) (direction, msgKind, *extprocsvc.CommonResponse, bool) {
	switch r := resp.GetResponse().(type) {
	case *extprocsvc.ProcessingResponse_RequestHeaders:
		return dirRequest, kindHeaders, r.RequestHeaders.GetResponse(), true
	case *extprocsvc.ProcessingResponse_ResponseHeaders:
		return dirResponse, kindHeaders, r.ResponseHeaders.GetResponse(), true
	case *extprocsvc.ProcessingResponse_RequestBody:
		return dirRequest, kindBody, r.RequestBody.GetResponse(), true
	case *extprocsvc.ProcessingResponse_ResponseBody:
		return dirResponse, kindBody, r.ResponseBody.GetResponse(), true
	case *extprocsvc.ProcessingResponse_RequestTrailers:
		return dirRequest, kindTrailers, nil, true
	case *extprocsvc.ProcessingResponse_ResponseTrailers:
		return dirResponse, kindTrailers, nil, true
	}
	return 0, 0, nil, false
}

func (s *session) onReply(resp *extprocsvc.ProcessingResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.complete {
		s.log("ext_proc reply after processing complete ignored")
		return
	}
	if t := resp.GetOverrideMessageTimeout(); t != nil {
		// Only extends the timer of an outstanding message, once, within
		// max_message_timeout; a real reply must still follow.
		nd := t.AsDuration()
		if s.f.maxTimeout > 0 && nd <= s.f.maxTimeout {
			for _, st := range s.dirs {
				if len(st.expect) > 0 && !st.extended {
					st.extended = true
					s.armTimerLocked(st, nd)
				}
			}
		}
		return
	}
	if imm := resp.GetImmediateResponse(); imm != nil {
		if s.f.cfg.GetDisableImmediateResponse() {
			s.spuriousLocked()
			return
		}
		s.setMetadataLocked(resp)
		details := imm.GetDetails()
		s.completeLocked(&localReply{
			status:  immediateStatus(imm),
			body:    imm.GetBody(),
			headers: imm.GetHeaders(),
			checker: s.f.checker,
			details: strings.Join(strings.Fields(details), "_"),
		})
		s.cancelStreamLocked()
		return
	}
	d, kind, _, ok := replyKind(resp)
	if !ok {
		s.spuriousLocked()
		return
	}
	st := s.dirs[d]
	if kind == kindHeaders && resp.GetModeOverride() != nil && s.f.cfg.GetAllowModeOverride() &&
		len(st.expect) > 0 && st.expect[0] == kindHeaders && modeOverrideAllowed(s.f.cfg, resp.GetModeOverride()) {
		s.log("ext_proc processing mode overridden", "mode", resp.GetModeOverride().String())
		s.setMode(resp.GetModeOverride(), false)
	}
	s.setMetadataLocked(resp)
	if len(st.expect) == 0 || st.expect[0] != kind {
		s.spuriousLocked()
		return
	}
	st.expect = st.expect[1:]
	st.extended = false
	if len(st.expect) > 0 {
		s.armTimerLocked(st, s.f.timeout)
	} else {
		s.stopTimerLocked(st)
	}
	st.queue = append(st.queue, resp)
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

func immediateStatus(imm *extprocsvc.ImmediateResponse) int {
	code := int(imm.GetStatus().GetCode())
	if code < 200 {
		return http.StatusOK
	}
	return code
}

func modeOverrideAllowed(cfg *extprocv3.ExternalProcessor, m *extprocv3.ProcessingMode) bool {
	allowed := cfg.GetAllowedOverrideModes()
	if len(allowed) == 0 {
		return true
	}
	for _, a := range allowed {
		if proto.Equal(a, m) {
			return true
		}
	}
	return false
}

// spuriousLocked handles a reply of the wrong kind: 500, or close and
// continue when failure_mode_allow.
func (s *session) spuriousLocked() {
	s.warn("ext_proc spurious message")
	if s.fail {
		s.completeLocked(nil)
	} else {
		s.completeLocked(&localReply{status: http.StatusInternalServerError, details: errorPrefix + "_spurious_message"})
	}
	s.cancelStreamLocked()
}

// setMetadataLocked keeps the namespaces listed in
// metadata_options.receiving_namespaces.untyped, drops the rest.
func (s *session) setMetadataLocked(resp *extprocsvc.ProcessingResponse) {
	dm := resp.GetDynamicMetadata()
	if dm == nil || len(s.f.receiving) == 0 {
		return
	}
	for ns, v := range dm.GetFields() {
		if !s.f.receiving[ns] {
			s.log("ext_proc dynamic metadata namespace not received", "namespace", ns)
			continue
		}
		sv := v.GetStructValue()
		if sv == nil {
			sv = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		}
		s.rq.info.setMetadata(ns, sv)
	}
}

// await returns the next reply for direction d, or — when processing is
// complete — nil and the outcome (nil outcome = continue unmodified).
func (s *session) await(d direction) (*extprocsvc.ProcessingResponse, *localReply) {
	st := s.dirs[d]
	for {
		s.mu.Lock()
		if len(st.queue) > 0 {
			r := st.queue[0]
			st.queue = st.queue[1:]
			s.mu.Unlock()
			return r, nil
		}
		if s.complete {
			out := s.outcome
			s.mu.Unlock()
			return nil, out
		}
		s.mu.Unlock()
		select {
		case <-st.notify:
		case <-s.done:
		}
	}
}

// failMutation ends processing with the 500 Envoy sends for an invalid
// mutation (whatever failure_mode_allow says).
func (s *session) failMutation(err error) *localReply {
	s.mu.Lock()
	defer s.mu.Unlock()
	lr := &localReply{status: http.StatusInternalServerError, details: strings.ReplaceAll(err.Error(), " ", "_")}
	s.warn("ext_proc invalid mutation", "err", err)
	s.completeLocked(lr)
	s.cancelStreamLocked()
	return lr
}

// outcomeNow is the outcome of a completed session (nil = continue).
func (s *session) outcomeNow() *localReply {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outcome
}

// finishDir records that direction d will send nothing more; when both
// directions are finished and nothing is outstanding, Envoy closes the
// stream (half-close; the server sees io.EOF).
func (s *session) finishDir(d direction) {
	s.mu.Lock()
	s.dirs[d].finished = true
	done := s.dirs[dirRequest].finished && s.dirs[dirResponse].finished &&
		len(s.dirs[dirRequest].expect) == 0 && len(s.dirs[dirResponse].expect) == 0
	s.mu.Unlock()
	if done {
		s.end(true)
	}
}

// end closes the stream at the end of the request. graceful: half-close and
// let the server finish (cancelled after deferred_close_timeout); otherwise
// cancel (the server sees codes.Canceled).
func (s *session) end(graceful bool) {
	s.mu.Lock()
	if !s.complete {
		s.completeLocked(nil)
	}
	if !s.opened || s.closed || s.stream == nil {
		if !graceful {
			s.cancelStreamLocked()
		}
		s.mu.Unlock()
		return
	}
	s.closed = true
	stream, readerEnd := s.stream, s.readerEnd
	s.mu.Unlock()
	if !graceful {
		s.cancel()
		return
	}
	s.sendMu.Lock()
	_ = stream.CloseSend()
	s.sendMu.Unlock()
	t := time.AfterFunc(s.f.deferredClose, s.cancel)
	s.rq.e.bg.Add(1)
	go func() {
		defer s.rq.e.bg.Done()
		select {
		case <-readerEnd:
		case <-s.ctx.Done():
		}
		t.Stop()
		s.cancel()
	}()
}

// abort cancels the stream at once (client abort, emulator shutdown).
func (s *session) abort() {
	s.mu.Lock()
	s.completeLocked(nil)
	s.cancelStreamLocked()
	s.mu.Unlock()
}

// perRoute resolves ExtProcPerRoute for this filter on the request's route.
func (f *extProcFilter) perRoute(r *route) (disabled bool, mode *extprocv3.ProcessingMode, failOpen bool) {
	mode = f.cfg.GetProcessingMode()
	if mode == nil {
		mode = &extprocv3.ProcessingMode{}
	}
	failOpen = f.cfg.GetFailureModeAllow()
	if r == nil {
		return false, mode, failOpen
	}
	anyCfg := r.perFilterConfig(f.name)
	if anyCfg == nil {
		return false, mode, failOpen
	}
	var fc routev3.FilterConfig
	if anyCfg.MessageIs(&fc) {
		if anyCfg.UnmarshalTo(&fc) != nil || fc.GetConfig() == nil {
			return false, mode, failOpen
		}
		anyCfg = fc.GetConfig()
	}
	var pr extprocv3.ExtProcPerRoute
	if err := anyCfg.UnmarshalTo(&pr); err != nil {
		return false, mode, failOpen
	}
	if pr.GetDisabled() {
		return true, mode, failOpen
	}
	if o := pr.GetOverrides(); o != nil {
		if o.GetProcessingMode() != nil {
			mode = o.GetProcessingMode()
		}
		if o.GetFailureModeAllow() != nil {
			failOpen = o.GetFailureModeAllow().GetValue()
		}
	}
	return false, mode, failOpen
}
