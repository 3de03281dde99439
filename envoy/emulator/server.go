package emulator

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

var (
	errLocalReply   = errors.New("local reply sent")
	errRouteTimeout = errors.New("upstream request timeout")
	errIdleTimeout  = errors.New("stream idle timeout")
)

// request is one downstream HTTP request going through the filter chain.
type request struct {
	e         *Emulator
	w         http.ResponseWriter
	r         *http.Request
	ctx       context.Context
	cancel    context.CancelFunc
	info      *logInfo
	requestID string

	hdr          *headerMap
	body         io.Reader // nil: the request has no body
	route        *route
	routeCleared bool
	sessions     map[*extProcFilter]*session
	order        []*session

	wg        sync.WaitGroup // body pipeline goroutines
	pipesMu   sync.Mutex
	pipes     []*io.PipeReader
	upBody    io.Closer
	down      *downstreamBody // the client's request body; nil: none
	detached  bool            // a CONTINUE_AND_REPLACE dropped the client's body
	aborted   atomic.Bool
	reqPump   atomic.Bool // a STREAMED request body pump reads the client
	upReads   atomic.Bool // the upstream request may read the client's body
	asyncMu   sync.Mutex
	asyncLR   *localReply
	upCancel  context.CancelCauseFunc
	wrote     bool
	resetConn bool
	closeConn bool               // the reply closes the connection (a refused upgrade)
	upgrade   string             // the Upgrade token of an allowed HTTP/1.1 upgrade
	upTunnel  io.ReadWriteCloser // the upstream's side of an accepted upgrade (101)
	tunneled  bool               // the 101 went out: closing the tunnel is its end, not an abort
}

func (e *Emulator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	e.bg.Add(1)
	e.mu.Unlock()
	defer e.bg.Done()

	// Envoy is full duplex: the response may start while the request body
	// still flows (and Go's server must not drain the body behind our back).
	_ = http.NewResponseController(w).EnableFullDuplex()
	rq := &request{e: e, w: w, r: r, sessions: map[*extProcFilter]*session{}}
	rq.ctx, rq.cancel = context.WithCancel(r.Context())
	stopBg := context.AfterFunc(e.bgCtx, rq.abort)
	stopAbort := context.AfterFunc(r.Context(), rq.abort)
	rq.info = &logInfo{start: time.Now(), protocol: r.Proto, downstreamRemote: r.RemoteAddr}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		rq.info.downstreamLocal = la.String()
	}

	rq.run()

	stopAbort()
	stopBg()
	// The client's context may be cancelled (ending the upstream exchange,
	// whose context derives from it) before abort() ran: both mean the
	// downstream went away.
	gone := rq.aborted.Load() || r.Context().Err() != nil
	rq.cleanup()
	rq.info.end = time.Now()
	if gone && !rq.tunneled {
		// Envoy: the downstream went away before the response completed.
		if !rq.wrote {
			rq.info.status = 0
		}
		rq.info.responseFlags = addFlag(rq.info.responseFlags, "DC")
	}
	lastRx := rq.info.start
	if rq.down != nil {
		lastRx = rq.down.eofTime()
	}
	rq.info.mu.Lock()
	rq.info.lastDownstreamRx = lastRx
	rq.info.mu.Unlock()
	for _, a := range e.accessLogs {
		a.log(rq.info)
	}
	for _, g := range e.grpcLogs {
		g.log(rq.info)
	}
	if rq.resetConn {
		panic(http.ErrAbortHandler)
	}
}

// flagOrder is the order in which Envoy prints the response flags the
// emulator sets (the order of its flag enumeration).
var flagOrder = []string{"UH", "UT", "UR", "UF", "UC", "NR", "DC", "URX", "SI", "NC"}

// addFlag adds response flag f to a RESPONSE_FLAGS string, in Envoy's order.
func addFlag(flags, f string) string {
	var set []string
	if flags != "" {
		set = strings.Split(flags, ",")
	}
	if slices.Contains(set, f) {
		return flags
	}
	set = append(set, f)
	slices.SortStableFunc(set, func(a, b string) int {
		return slices.Index(flagOrder, a) - slices.Index(flagOrder, b)
	})
	return strings.Join(set, ",")
}

// abort is a client abort (or emulator shutdown): cancel everything.
func (rq *request) abort() {
	rq.aborted.Store(true)
	rq.cancel()
	for _, s := range rq.snapshotSessions() {
		s.abort()
	}
}

func (rq *request) snapshotSessions() []*session {
	rq.pipesMu.Lock()
	defer rq.pipesMu.Unlock()
	return append([]*session(nil), rq.order...)
}

func (rq *request) cleanup() {
	// Unblock and wait for body pipelines before the handler returns: no
	// goroutine may touch the request body afterwards. A STREAMED request
	// body pump or the upstream transport may be blocked reading the client.
	if rq.down != nil {
		rq.down.stop()
	}
	rq.pipesMu.Lock()
	for _, p := range rq.pipes {
		_ = p.CloseWithError(errLocalReply)
	}
	if rq.upBody != nil {
		_ = rq.upBody.Close()
	}
	rq.pipesMu.Unlock()
	rq.asyncMu.Lock()
	cancel := rq.upCancel
	rq.asyncMu.Unlock()
	if cancel != nil {
		cancel(context.Canceled)
	}
	// A client gone (its context may be cancelled before abort() ran) or a
	// reset stream cancels the ext_proc streams; a normal end half-closes.
	graceful := !rq.aborted.Load() && rq.r.Context().Err() == nil && !rq.resetConn
	for _, s := range rq.snapshotSessions() {
		s.end(graceful)
	}
	rq.wg.Wait()
	rq.cancel()
}

func (rq *request) addPipe(p *io.PipeReader) {
	rq.pipesMu.Lock()
	defer rq.pipesMu.Unlock()
	rq.pipes = append(rq.pipes, p)
}

// asyncFail records a local reply decided by a body pipeline and cancels
// the upstream exchange.
func (rq *request) asyncFail(lr *localReply) {
	rq.asyncMu.Lock()
	if rq.asyncLR == nil {
		rq.asyncLR = lr
	}
	cancel := rq.upCancel
	rq.asyncMu.Unlock()
	if cancel != nil {
		cancel(errLocalReply)
	}
}

func (rq *request) asyncLocal() *localReply {
	rq.asyncMu.Lock()
	defer rq.asyncMu.Unlock()
	return rq.asyncLR
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func (rq *request) run() {
	r := rq.r
	h := &headerMap{}
	path := r.RequestURI
	if !strings.HasPrefix(path, "/") {
		path = r.URL.RequestURI()
	}
	h.fields = append(h.fields, field{":authority", r.Host}, field{":path", path}, field{":method", r.Method}, field{":scheme", "http"})
	h.fromHTTP(r.Header)
	for k := range hopByHop {
		if k != "te" {
			h.remove(k)
		}
	}
	upgrade := upgradeOf(r)
	h.remove("expect") // Envoy answers 100-continue itself
	hcm := rq.e.hcm
	// Early header mutations run before anything else, routing included.
	for _, m := range rq.e.early {
		switch {
		case m.GetRemove() != "":
			h.remove(hostKey(strings.ToLower(m.GetRemove())))
		case m.GetAppend() != nil:
			applyHeaderOptions(h, nil, []*corev3.HeaderValueOption{m.GetAppend()}, nil)
		}
	}
	if hcm.GetNormalizePath().GetValue() || hcm.GetMergeSlashes() {
		h.set(":path", normalizePath(path, hcm.GetNormalizePath().GetValue(), hcm.GetMergeSlashes()))
	}
	if hcm.GetUseRemoteAddress().GetValue() {
		if ip := hostOnly(r.RemoteAddr); ip != "" {
			if xff, ok := h.get("x-forwarded-for"); ok {
				h.set("x-forwarded-for", xff+","+ip)
			} else {
				h.add("x-forwarded-for", ip)
			}
		}
		h.set("x-forwarded-proto", "http")
	} else if _, ok := h.get("x-forwarded-proto"); !ok {
		h.add("x-forwarded-proto", "http")
	}
	if _, ok := h.get("x-request-id"); !ok {
		h.add("x-request-id", newRequestID())
	}
	rq.requestID = h.value("x-request-id")
	rq.hdr = h
	rq.info.reqHeaders = h
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		rq.down = newDownstreamBody(r.Body, http.NewResponseController(rq.w), &rq.info.bytesReceived)
		rq.body = rq.down
	}
	rq.route = rq.e.routes.match(h)
	if upgrade != "" {
		if !rq.e.upgradeAllowed(upgrade, rq.route) {
			rq.refuseUpgrade()
			return
		}
		// Envoy keeps the upgrade headers of an upgrade it accepts.
		rq.upgrade = upgrade
		h.add("upgrade", upgrade)
		h.add("connection", "Upgrade")
	}

	for _, f := range rq.e.filters {
		var lr *localReply
		if f.kind != filterRouter && !filterEnabled(f, rq.route) {
			continue
		}
		switch f.kind {
		case filterExtProc:
			lr = rq.decodeExtProc(f.extProc)
		case filterJWT:
			lr = f.jwt.decode(rq)
		case filterHeaderMutation:
			rq.applyHeaderMutationFilter(f, h, true)
		case filterRouter:
			rq.router()
			return
		}
		if rq.aborted.Load() {
			return
		}
		if lr != nil {
			if lr.viaEncoders {
				rq.routerLocal(nil, lr)
			} else {
				rq.sendLocal(lr)
			}
			return
		}
	}
	// No router filter: Envoy would hang; answer 404 instead.
	rq.sendLocal(&localReply{status: http.StatusNotFound, details: "no_router_filter"})
}

// upstreamSession opens filter f's session for one upstream attempt: each
// attempt has its own Process stream.
func (rq *request) upstreamSession(f *extProcFilter) *session {
	disabled, mode, failOpen := f.perRoute(rq.route)
	if disabled {
		return nil
	}
	s := newSession(rq, f, mode, failOpen)
	s.upstream = true
	rq.track(s)
	return s
}

// track lists a session for abort and cleanup.
func (rq *request) track(s *session) {
	rq.pipesMu.Lock()
	rq.order = append(rq.order, s)
	rq.pipesMu.Unlock()
	if rq.aborted.Load() { // abort() may have run before the append
		s.abort()
	}
}

func (rq *request) session(f *extProcFilter) *session {
	if s, ok := rq.sessions[f]; ok {
		return s
	}
	disabled, mode, failOpen := f.perRoute(rq.route)
	if disabled {
		rq.sessions[f] = nil
		return nil
	}
	s := newSession(rq, f, mode, failOpen)
	rq.sessions[f] = s
	rq.track(s)
	return s
}

// ---- ext_proc, both directions ----

func headersRequest(d direction, h *headerMap, eos bool) *extprocsvc.ProcessingRequest {
	hh := &extprocsvc.HttpHeaders{Headers: h.proto(), EndOfStream: eos}
	if d == dirRequest {
		return &extprocsvc.ProcessingRequest{Request: &extprocsvc.ProcessingRequest_RequestHeaders{RequestHeaders: hh}}
	}
	return &extprocsvc.ProcessingRequest{Request: &extprocsvc.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}}
}

func bodyRequest(d direction, data []byte, eos bool) *extprocsvc.ProcessingRequest {
	hb := &extprocsvc.HttpBody{Body: data, EndOfStream: eos}
	if d == dirRequest {
		return &extprocsvc.ProcessingRequest{Request: &extprocsvc.ProcessingRequest_RequestBody{RequestBody: hb}}
	}
	return &extprocsvc.ProcessingRequest{Request: &extprocsvc.ProcessingRequest_ResponseBody{ResponseBody: hb}}
}

// phase runs one direction of one ext_proc filter over headers h and body
// (nil = no body). It returns the body to pass on.
func (rq *request) phase(s *session, d direction, h *headerMap, body io.Reader) (io.Reader, *localReply) {
	noBody := body == nil
	// An upgrade's stream is its body: the headers never end the stream.
	upgraded := (d == dirRequest && rq.upgrade != "") || (d == dirResponse && rq.upTunnel != nil)
	sendHeaders, _ := s.modeOf(d)
	s.mu.Lock()
	removeCL := s.shouldRemoveContentLength(d)
	s.mu.Unlock()
	if sendHeaders {
		err := s.send(d, kindHeaders, headersRequest(d, h, noBody && !upgraded))
		if removeCL {
			h.remove("content-length")
		}
		if err != nil {
			return body, s.outcomeNow()
		}
		resp, lr := s.await(d)
		if resp == nil {
			return body, lr
		}
		_, _, cr, _ := replyKind(resp)
		var replaced bool
		if body, replaced, lr = rq.applyHeadersReply(s, d, cr, h, body); lr != nil {
			return body, lr
		}
		if replaced {
			s.finishDir(d)
			return body, nil
		}
	} else if removeCL {
		h.remove("content-length")
	}
	if _, mode := s.modeOf(d); upgraded && d == dirRequest && mode != extprocv3.ProcessingMode_NONE && !s.isComplete() {
		return body, s.upgradeStall()
	}
	if s.isComplete() || noBody {
		s.finishDir(d)
		return body, nil
	}
	_, mode := s.modeOf(d)
	switch mode {
	case extprocv3.ProcessingMode_BUFFERED, extprocv3.ProcessingMode_BUFFERED_PARTIAL:
		body, lr := rq.bufferedBody(s, d, h, body, mode == extprocv3.ProcessingMode_BUFFERED_PARTIAL)
		s.finishDir(d)
		return body, lr
	case extprocv3.ProcessingMode_STREAMED:
		return rq.streamedBody(s, d, body), nil
	}
	s.finishDir(d)
	return body, nil
}

// applyHeadersReply applies a headers reply (ProcessorState::handleHeadersResponse).
func (rq *request) applyHeadersReply(s *session, d direction, cr *extprocsvc.CommonResponse, h *headerMap, body io.Reader) (io.Reader, bool, *localReply) {
	replace := cr.GetStatus() == extprocsvc.CommonResponse_CONTINUE_AND_REPLACE
	if hm := cr.GetHeaderMutation(); hm != nil {
		s.mu.Lock()
		removeCL := s.shouldRemoveContentLength(d)
		s.mu.Unlock()
		if _, err := applyHeaderMutation(hm, h, replace, s.f.checker, removeCL); err != nil {
			return body, false, s.failMutation(err)
		}
	}
	if d == dirRequest && !s.upstream {
		rq.clearRouteCache(s, cr)
	}
	if !replace {
		return body, false, nil
	}
	s.mu.Lock()
	st := s.dirs[d]
	st.bodyMode = extprocv3.ProcessingMode_NONE
	st.sendTrailers = false
	s.mu.Unlock()
	if bm := cr.GetBodyMutation(); bm != nil {
		h.remove("content-length")
		if body != nil && d == dirResponse && rq.upBody != nil {
			_ = rq.upBody.Close()
		}
		if d == dirRequest && !s.upstream {
			rq.detached = true
		}
		return bytes.NewReader(applyBodyMutation(bm, nil)), true, nil
	}
	return body, true, nil
}

// clearRouteCache re-selects the route only when the reply also carries a
// header mutation, only on the request path, only in the downstream filter.
func (rq *request) clearRouteCache(s *session, cr *extprocsvc.CommonResponse) {
	cfg := s.f.cfg
	if cr.GetHeaderMutation() == nil {
		if cr.GetClearRouteCache() {
			s.log("clear_route_cache ignored: no header mutation in the reply")
		}
		return
	}
	switch {
	case cfg.GetRouteCacheAction() == extprocv3.ExternalProcessor_CLEAR:
		rq.routeCleared = true
	case cfg.GetRouteCacheAction() == extprocv3.ExternalProcessor_RETAIN, cfg.GetDisableClearRouteCache():
	case cr.GetClearRouteCache():
		rq.routeCleared = true
	}
}

// readUpTo reads at most limit+1 bytes; over reports a body beyond limit.
func readUpTo(r io.Reader, limit int) (data []byte, over bool, err error) {
	data, err = io.ReadAll(io.LimitReader(r, int64(limit)+1))
	return data, len(data) > limit, err
}

func (rq *request) bufferLimit() int {
	return rq.route.bufferLimit(rq.e.bufferLimit)
}

func (rq *request) bufferedBody(s *session, d direction, h *headerMap, body io.Reader, partial bool) (io.Reader, *localReply) {
	limit := rq.bufferLimit()
	data, over, err := readUpTo(body, limit)
	if err != nil {
		if d == dirRequest {
			rq.abort()
		}
		return nil, &localReply{status: http.StatusServiceUnavailable, details: "body_read_error"}
	}
	var rest io.Reader
	eos := true
	if over {
		if !partial {
			if d == dirRequest {
				// Envoy's filter manager answers, through the encoder filters.
				return nil, &localReply{status: http.StatusRequestEntityTooLarge, body: []byte("Payload Too Large"), details: "request_payload_too_large", viaEncoders: true}
			}
			return nil, &localReply{status: http.StatusInternalServerError, body: []byte("Internal Server Error"), details: "response_payload_too_large"}
		}
		rest = io.MultiReader(bytes.NewReader(data[limit:]), body)
		data = data[:limit]
		eos = false
	}
	join := func(b []byte) io.Reader {
		if rest == nil {
			return bytes.NewReader(b)
		}
		return io.MultiReader(bytes.NewReader(b), rest)
	}
	if err := s.send(d, kindBody, bodyRequest(d, data, eos)); err != nil {
		return join(data), s.outcomeNow()
	}
	resp, lr := s.await(d)
	if resp == nil {
		return join(data), lr
	}
	_, _, cr, _ := replyKind(resp)
	s.mu.Lock()
	headersAvail := s.dirs[d].headersSent
	removeCL := s.shouldRemoveContentLength(d)
	s.mu.Unlock()
	if hm := cr.GetHeaderMutation(); hm != nil {
		if headersAvail {
			if _, err := applyHeaderMutation(hm, h, false, s.f.checker, removeCL); err != nil {
				return nil, s.failMutation(err)
			}
		} else {
			s.log("body reply had header mutations but headers are not available")
		}
	}
	if bm := cr.GetBodyMutation(); bm != nil {
		if headersAvail {
			if cl, ok := h.get("content-length"); ok {
				if n, err := strconv.ParseUint(cl, 10, 64); err == nil && n != uint64(len(bm.GetBody())) {
					return nil, s.failMutation(fmt.Errorf("%w: mismatch between content length and the length of the mutated body", errInvalidMutation))
				}
			}
		}
		data = applyBodyMutation(bm, data)
	}
	if d == dirRequest && !s.upstream {
		rq.clearRouteCache(s, cr)
	}
	return join(data), nil
}

type chunkItem struct {
	data []byte
	eos  bool
	sent bool
	err  error
}

// streamedBody sends one body message per read of src, pipelined, and
// writes the processed chunks in order to the returned reader.
func (rq *request) streamedBody(s *session, d direction, src io.Reader) io.Reader {
	pr, pw := io.Pipe()
	rq.addPipe(pr)
	items := make(chan chunkItem, 1024)
	rq.wg.Add(2)
	if d == dirRequest {
		rq.reqPump.Store(true)
	}
	go func() {
		defer rq.wg.Done()
		defer close(items)
		if d == dirRequest {
			defer rq.reqPump.Store(false)
		}
		buf := make([]byte, 16<<10)
		for {
			n, err := src.Read(buf)
			if err != nil && !errors.Is(err, io.EOF) {
				items <- chunkItem{err: err}
				return
			}
			eos := err != nil
			if n == 0 && !eos {
				continue
			}
			data := bytes.Clone(buf[:n])
			sent := s.send(d, kindBody, bodyRequest(d, data, eos)) == nil
			items <- chunkItem{data: data, eos: eos, sent: sent}
			if eos {
				return
			}
		}
	}()
	go func() {
		defer rq.wg.Done()
		defer func() {
			for range items { // let the sender finish
			}
		}()
		for it := range items {
			if it.err != nil {
				if d == dirRequest {
					rq.abort()
				}
				_ = pw.CloseWithError(it.err)
				return
			}
			data := it.data
			if it.sent {
				resp, lr := s.await(d)
				switch {
				case resp != nil:
					_, _, cr, _ := replyKind(resp)
					if bm := cr.GetBodyMutation(); bm != nil {
						data = applyBodyMutation(bm, data)
					}
				case lr != nil:
					rq.asyncFail(lr)
					_ = pw.CloseWithError(errLocalReply)
					return
				}
			}
			if len(data) > 0 {
				if _, err := pw.Write(data); err != nil {
					return
				}
			}
			if it.eos {
				_ = pw.Close()
				s.finishDir(d)
				return
			}
		}
		_ = pw.CloseWithError(io.ErrUnexpectedEOF)
	}()
	return pr
}

func (rq *request) decodeExtProc(f *extProcFilter) *localReply {
	s := rq.session(f)
	if s == nil {
		return nil
	}
	body, lr := rq.phase(s, dirRequest, rq.hdr, rq.body)
	rq.body = body
	return lr
}

// ---- other filters ----

func (rq *request) applyHeaderMutationFilter(f *httpFilter, h *headerMap, request bool) {
	muts := f.hm.GetMutations().GetResponseMutations()
	if request {
		muts = f.hm.GetMutations().GetRequestMutations()
	}
	for _, m := range muts {
		switch {
		case m.GetRemove() != "":
			h.remove(hostKey(strings.ToLower(m.GetRemove())))
		case m.GetAppend() != nil:
			applyHeaderOptions(h, nil, []*corev3.HeaderValueOption{m.GetAppend()}, rq.formatValue)
		}
	}
}

// formatValue expands %COMMAND% operators in a configured header value.
func (rq *request) formatValue(v string) string {
	f, err := parseFormat(v)
	if err != nil {
		return v
	}
	return f.format(rq.info)
}

// attributes evaluates the request/response attributes Envoy would send.
func (rq *request) attributes(names []string) *structpb.Struct {
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	h := rq.hdr
	for _, n := range names {
		var v *structpb.Value
		switch n {
		case "request.path":
			v = structpb.NewStringValue(h.value(":path"))
		case "request.url_path":
			p := h.value(":path")
			if i := strings.IndexByte(p, '?'); i >= 0 {
				p = p[:i]
			}
			v = structpb.NewStringValue(p)
		case "request.host":
			v = structpb.NewStringValue(h.value(":authority"))
		case "request.method":
			v = structpb.NewStringValue(h.value(":method"))
		case "request.scheme":
			v = structpb.NewStringValue(h.value(":scheme"))
		case "request.id":
			v = structpb.NewStringValue(h.value("x-request-id"))
		case "request.protocol":
			v = structpb.NewStringValue(rq.info.protocol)
		case "source.address":
			v = structpb.NewStringValue(rq.info.downstreamRemote)
		case "destination.address":
			v = structpb.NewStringValue(rq.info.downstreamLocal)
		case "xds.route_name":
			if rq.route != nil {
				v = structpb.NewStringValue(rq.route.name())
			}
		case "xds.cluster_name":
			v = structpb.NewStringValue(rq.info.upstreamCluster)
		case "response.code":
			if rq.info.status != 0 {
				v = structpb.NewNumberValue(float64(rq.info.status))
			}
		}
		if v != nil {
			out.Fields[n] = v
		}
	}
	return out
}

// ---- router ----

func (rq *request) router() {
	if rq.routeCleared {
		rq.route = rq.e.routes.match(rq.hdr)
	}
	rt := rq.route
	if rt == nil {
		rq.info.responseFlags = addFlag(rq.info.responseFlags, "NR")
		rq.routerLocal(rt, &localReply{status: http.StatusNotFound, details: "route_not_found"})
		return
	}
	rq.info.routeName = rt.name()
	if dr := rt.cfg.GetDirectResponse(); dr != nil {
		var body []byte
		if dr.GetBody() != nil {
			body, _ = dataSource(dr.GetBody())
		}
		rq.routerLocal(rt, &localReply{status: int(dr.GetStatus()), body: body, details: "direct_response"})
		return
	}
	ra := rt.cfg.GetRoute()
	name := ra.GetCluster()
	if ch := ra.GetClusterHeader(); ch != "" {
		name = rq.hdr.value(hostKey(strings.ToLower(ch)))
	}
	cl := rq.e.clusters[name]
	if cl == nil {
		rq.info.responseFlags = addFlag(rq.info.responseFlags, "NC")
		rq.routerLocal(rt, &localReply{status: http.StatusServiceUnavailable, details: "cluster_not_found"})
		return
	}
	rq.info.upstreamCluster = name
	if !cl.dfp && len(cl.endpoints) == 0 {
		rq.info.responseFlags = addFlag(rq.info.responseFlags, "UH")
		rq.routerLocal(rt, &localReply{status: http.StatusServiceUnavailable, body: []byte("no healthy upstream"), details: "no_healthy_upstream"})
		return
	}

	// finalizeRequestHeaders: route, then virtual host, then route config.
	h := rq.hdr
	applyHeaderOptions(h, rt.cfg.GetRequestHeadersToRemove(), rt.cfg.GetRequestHeadersToAdd(), rq.formatValue)
	applyHeaderOptions(h, rt.vh.cfg.GetRequestHeadersToRemove(), rt.vh.cfg.GetRequestHeadersToAdd(), rq.formatValue)
	applyHeaderOptions(h, rq.e.routes.cfg.GetRequestHeadersToRemove(), rq.e.routes.cfg.GetRequestHeadersToAdd(), rq.formatValue)
	if pre := ra.GetPrefixRewrite(); pre != "" {
		if p, ok := rt.cfg.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Prefix); ok {
			orig := h.value(":path")
			h.set("x-envoy-original-path", orig)
			h.set(":path", pre+orig[len(p.Prefix):])
		}
	}
	if hr := ra.GetHostRewriteLiteral(); hr != "" {
		h.set(":authority", hr)
	}
	total, idle := rt.timeouts()
	policy := rt.retryPolicy()
	perTry := perTryTimeout(policy, h, total)
	retry := newRetryState(policy, h)
	if expected := cmp.Or(perTry, total); expected > 0 && !rq.e.suppressEnvoyHeaders {
		h.set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(expected.Milliseconds(), 10))
	}

	out := rq.forward(rt, cl, timeouts{total: total, idle: idle, perTry: perTry}, retry)
	switch {
	case rq.aborted.Load():
	case out.lr != nil && out.lr == rq.asyncLocal():
		rq.sendLocal(out.lr) // decided by a STREAMED ext_proc body
	case out.lr != nil:
		h, body := localHeaders(out.lr)
		rq.attemptCountInResponse(rt, h)
		rq.encodeLocal(rt, h, readerOf(body), out.lr.details)
	case out.h != nil && out.local:
		rq.encodeLocal(rt, out.h, out.body, out.details)
	default:
		rq.respondUpstream(rt, out.h, out.body)
	}
}

type idleReader struct {
	rc io.ReadCloser
	t  *time.Timer
	d  time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.t.Reset(r.d)
	return n, err
}

func (r *idleReader) Close() error { return r.rc.Close() }

// respondUpstream sends the accepted attempt's response (headers already
// through the upstream filters) down the encoder filters.
func (rq *request) respondUpstream(rt *route, h *headerMap, body io.Reader) {
	if !rq.e.suppressEnvoyHeaders {
		h.set("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(rq.info.start).Milliseconds(), 10))
	}
	rq.finalizeResponseHeaders(rt, h)
	rq.attemptCountInResponse(rt, h)
	rq.info.details = "via_upstream"
	rq.encode(h, body, false)
}

func (rq *request) finalizeResponseHeaders(rt *route, h *headerMap) {
	if rt == nil {
		return
	}
	applyHeaderOptions(h, rt.cfg.GetResponseHeadersToRemove(), rt.cfg.GetResponseHeadersToAdd(), rq.formatValue)
	applyHeaderOptions(h, rt.vh.cfg.GetResponseHeadersToRemove(), rt.vh.cfg.GetResponseHeadersToAdd(), rq.formatValue)
	applyHeaderOptions(h, rq.e.routes.cfg.GetResponseHeadersToRemove(), rq.e.routes.cfg.GetResponseHeadersToAdd(), rq.formatValue)
}

// routerLocal is a local reply generated by the router (no route, direct
// response, upstream failure) or the filter manager (request buffer
// limit): it goes through the encoder filters, but ext_proc does not send it
// to the processor (behaviour localRepliesSkipExtProc): its stream just ends.
func (rq *request) routerLocal(rt *route, lr *localReply) {
	h, body := localHeaders(lr)
	rq.encodeLocal(rt, h, readerOf(body), lr.details)
}

// readerOf is a body reader, nil for no body.
func readerOf(b []byte) io.Reader {
	if len(b) == 0 {
		return nil
	}
	return bytes.NewReader(b)
}

// attemptCountInResponse is the router's x-envoy-attempt-count response
// header (include_attempt_count_in_response), on upstream responses and on
// the router's replies after an attempt.
func (rq *request) attemptCountInResponse(rt *route, h *headerMap) {
	if rq.info.attempts > 0 && rt.vh.cfg.GetIncludeAttemptCountInResponse() {
		h.set("x-envoy-attempt-count", strconv.FormatUint(uint64(rq.info.attempts), 10))
	}
}

// encodeLocal sends a local reply whose headers are built (routerLocal, or
// one that went through the upstream filters first).
func (rq *request) encodeLocal(rt *route, h *headerMap, body io.Reader, details string) {
	rq.finalizeResponseHeaders(rt, h)
	rq.info.details = details
	rq.encode(h, body, true)
}

func localHeaders(lr *localReply) (*headerMap, []byte) {
	h := &headerMap{}
	h.fields = append(h.fields, field{":status", strconv.Itoa(lr.status)})
	if len(lr.body) > 0 {
		h.add("content-length", strconv.Itoa(len(lr.body)))
		h.add("content-type", "text/plain")
	}
	if lr.wwwAuth != "" {
		h.add("www-authenticate", lr.wwwAuth)
	}
	return h, lr.body
}

// encode runs the encoder filters (reverse order) and writes the response,
// streaming the body chunk by chunk. local: a local reply, which ext_proc
// filters do not send to their processor (they end their stream instead).
func (rq *request) encode(h *headerMap, body io.Reader, local bool) {
	filters := rq.e.filters
	for i := len(filters) - 1; i >= 0; i-- {
		f := filters[i]
		switch f.kind {
		case filterExtProc:
			s, ok := rq.sessions[f.extProc]
			if !ok || s == nil {
				continue
			}
			if s.isComplete() {
				continue
			}
			if local {
				s.finishDir(dirResponse)
				continue
			}
			var lr *localReply
			body, lr = rq.phase(s, dirResponse, h, body)
			if lr != nil {
				if rq.aborted.Load() {
					return
				}
				rq.sendLocal(lr)
				return
			}
		case filterHeaderMutation:
			if filterEnabled(f, rq.route) {
				rq.applyHeaderMutationFilter(f, h, false)
			}
		case filterJSONMeta:
			if filterEnabled(f, rq.route) {
				body = f.jsonMeta.encode(rq.info, h, body, rq.bufferLimit())
			}
		case filterSSEMeta:
			if filterEnabled(f, rq.route) {
				body = f.sseMeta.encode(rq.info, h, body)
			}
		}
	}
	rq.write(h, body)
}

// sendLocal answers with a local reply that skips the encoder filters (an
// ext_proc immediate response or error).
func (rq *request) sendLocal(lr *localReply) {
	h, body := localHeaders(lr)
	if lr.headers != nil {
		// Immediate-response headers go through the mutation checker;
		// failures are only logged, as in Envoy.
		c := lr.checker
		if c == nil {
			c = &checker{}
		}
		if _, err := applyHeaderMutation(lr.headers, h, false, c, false); err != nil {
			rq.e.log.Debug("immediate response header mutation failed", "err", err)
		}
	}
	rq.info.details = lr.details
	var b io.Reader
	if len(body) > 0 {
		b = bytes.NewReader(body)
	}
	rq.write(h, b)
}

func (rq *request) write(h *headerMap, body io.Reader) {
	if rq.wrote {
		rq.resetConn = true
		return
	}
	if rq.upTunnel != nil && h.value(":status") == "101" {
		rq.tunnel(h, rq.upTunnel)
		return
	}
	status, err := strconv.Atoi(h.value(":status"))
	if err != nil || status < 100 {
		status = http.StatusInternalServerError
	}
	wh := rq.w.Header()
	for _, f := range h.fields {
		if strings.HasPrefix(f.key, ":") || hopByHop[f.key] {
			continue
		}
		k := http.CanonicalHeaderKey(f.key)
		wh[k] = append(wh[k], f.value)
	}
	switch rq.e.hcm.GetServerHeaderTransformation() {
	case hcmv3.HttpConnectionManager_OVERWRITE:
		wh.Set("Server", rq.e.serverName)
	case hcmv3.HttpConnectionManager_APPEND_IF_ABSENT:
		if wh.Get("Server") == "" {
			wh.Set("Server", rq.e.serverName)
		}
	}
	if !rq.requestComplete() || rq.closeConn {
		wh.Set("Connection", "close")
	}
	rq.info.status = status
	rq.info.respHeaders = h
	rq.w.WriteHeader(status)
	rq.wrote = true
	rc := http.NewResponseController(rq.w)
	_ = rc.Flush()
	li := rq.info
	li.at(&li.firstDownstreamTx)
	if body == nil {
		if rq.upBody != nil {
			li.at(&li.lastUpstreamRx)
		}
		li.at(&li.lastDownstreamTx)
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := rq.w.Write(buf[:n]); werr != nil {
				rq.abort()
				return
			}
			rq.info.bytesSent += int64(n)
			_ = rc.Flush()
		}
		if errors.Is(err, io.EOF) {
			if rq.upBody != nil {
				li.at(&li.lastUpstreamRx)
			}
			li.at(&li.lastDownstreamTx)
			return
		}
		if err != nil {
			if lr := rq.asyncLocal(); lr != nil {
				rq.info.details = lr.details
			}
			if context.Cause(rq.ctx) == nil {
				rq.info.responseFlags = addFlag(rq.info.responseFlags, "UR")
			}
			// Headers are out: Envoy resets the stream.
			rq.resetConn = true
			return
		}
	}
}

// normalizePath applies RFC 3986 dot-segment removal (normalize_path) and
// merge_slashes to the path part of :path; the query is kept as is.
func normalizePath(p string, normalize, merge bool) string {
	query := ""
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p, query = p[:i], p[i:]
	}
	if merge {
		for strings.Contains(p, "//") {
			p = strings.ReplaceAll(p, "//", "/")
		}
	}
	if normalize {
		trailing := strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")
		var out []string
		for _, seg := range strings.Split(p, "/") {
			switch seg {
			case ".":
			case "..":
				if len(out) > 1 {
					out = out[:len(out)-1]
				}
			default:
				out = append(out, seg)
			}
		}
		p = strings.Join(out, "/")
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		if trailing && !strings.HasSuffix(p, "/") {
			p += "/"
		}
	}
	return p + query
}
