package emulator

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"time"
)

var errPerTryTimeout = errors.New("upstream per try timeout")

type timeouts struct{ total, idle, perTry time.Duration }

// outcome is what the router sends downstream: a local reply (lr), a local
// reply already through the upstream filters (local, h, body), or the
// accepted attempt's response (h, body).
type outcome struct {
	lr      *localReply
	h       *headerMap
	body    io.Reader
	local   bool
	details string
}

// forward runs the upstream attempts (Router::Filter with its retry state
// st, nil = no retries): each attempt goes through the cluster's upstream
// filters on its own, the retry decision sees the response headers as
// those filters left them, and only the accepted response goes on.
func (rq *request) forward(rt *route, cl *cluster, to timeouts, st *retryState) outcome {
	glCtx, glCancel := context.WithCancelCause(rq.ctx)
	rq.asyncMu.Lock()
	rq.upCancel = glCancel
	la := rq.asyncLR
	rq.asyncMu.Unlock()
	if la != nil {
		return outcome{lr: la}
	}
	if to.total > 0 {
		t := time.AfterFunc(to.total, func() { glCancel(errRouteTimeout) })
		context.AfterFunc(glCtx, func() { t.Stop() })
	}
	var rb *replayBody
	if st != nil && rq.body != nil {
		rb = newReplayBody(rq.body, rq.bufferLimit())
	}
	started := false // some attempt sent bytes upstream (reset-before-request)
	for n := 1; ; n++ {
		body := rq.body
		if rb != nil {
			body = rb.reader()
		}
		a := rq.attempt(n, rt, cl, glCtx, to, body)
		if a.final != nil {
			return *a.final
		}
		started = started || a.sent
		if rb != nil && rb.overflowed() {
			st = nil // the router gave up buffering: no more retries
		}
		var status retryStatus
		if st != nil {
			if a.resp != nil {
				status = st.shouldRetry(st.wouldRetryHeaders(a.h))
			} else {
				status = st.shouldRetry(st.wouldRetryReset(a.reset, started))
			}
		}
		if status == retryYes {
			a.discard()
			rq.e.log.Debug("upstream attempt retried", "request_id", rq.requestID, "attempt", n)
			if !rq.e.sleep(glCtx, st.backoff(rq.e.randN)) {
				if la := rq.asyncLocal(); la != nil {
					return outcome{lr: la}
				}
				return rq.failure(glCtx, a, n)
			}
			continue
		}
		if status == retryLimitExceeded {
			rq.info.responseFlags = addFlag(rq.info.responseFlags, "URX")
		}
		if a.resp == nil {
			a.discard()
			return rq.failure(glCtx, a, n)
		}
		a.accept()
		return outcome{h: a.h, body: a.body}
	}
}

// attemptResult is one upstream attempt: response headers (after the
// upstream filters) and body, or the reset that ended it; final is set
// when the attempt decided the reply (local reply, global timeout).
type attemptResult struct {
	final        *outcome
	resp         *http.Response
	h            *headerMap
	body         io.Reader
	reset        resetReason
	err          error // the transport's error on a reset
	cause        error // why the attempt's context ended, if it did
	connected    bool  // a connection was obtained (guarded by logInfo.mu)
	wroteHeaders bool  // the request headers went out (guarded by logInfo.mu)
	sent         bool  // wroteHeaders when the transport returned
	sessions     []*session
	reqBody      io.Reader
	stopPerTry   func()
	cancel       context.CancelCauseFunc
}

// discard ends a retried or failed attempt: its streams are closed, its
// request body reader is cut off.
func (a *attemptResult) discard() {
	a.stopPerTry()
	if a.cancel != nil {
		a.cancel(errAttemptOver)
	}
	if a.resp != nil {
		_ = a.resp.Body.Close()
	}
	if c, ok := a.reqBody.(io.Closer); ok {
		_ = c.Close()
	}
	for _, s := range a.sessions {
		s.end(true)
	}
}

// accept: the downstream response starts, a per-try timeout no longer applies.
func (a *attemptResult) accept() { a.stopPerTry() }

// resetAttempt counts a new attempt and clears what the access log reads of the upstream
// request: the downstream stream info points at the latest attempt's.
func (li *logInfo) resetAttempt(host string) {
	li.mu.Lock()
	defer li.mu.Unlock()
	li.attempts++
	li.upstreamHost = host
	li.upstreamFailure = ""
	li.upstreamRemote, li.upstreamLocal = "", ""
	li.firstUpstreamTx, li.lastUpstreamTx, li.firstUpstreamByte = time.Time{}, time.Time{}, time.Time{}
}

func (rq *request) attempt(n int, rt *route, cl *cluster, glCtx context.Context, to timeouts, body io.Reader) *attemptResult {
	h := rq.hdr
	a := &attemptResult{reqBody: body, stopPerTry: func() {}}
	if rt.vh.cfg.GetIncludeRequestAttemptCount() {
		h.set("x-envoy-attempt-count", strconv.Itoa(n))
	}
	rq.info.resetAttempt(cl.hostFor(h.value(":authority")))
	rq.pipesMu.Lock()
	rq.upBody = nil // a previous attempt's response was closed by discard
	rq.pipesMu.Unlock()
	attCtx, attCancel := context.WithCancelCause(glCtx)
	a.cancel = attCancel
	if to.perTry > 0 {
		t := time.AfterFunc(to.perTry, func() { attCancel(errPerTryTimeout) })
		a.stopPerTry = func() { t.Stop() }
	}
	// Upstream filters, request path, in order.
	for i, f := range cl.upFilters {
		switch f.kind {
		case filterExtProc:
			s := rq.upstreamSession(f.extProc)
			if s == nil {
				continue
			}
			a.sessions = append(a.sessions, s)
			var lr *localReply
			if body, lr = rq.phase(s, dirRequest, h, body); lr != nil {
				return rq.upstreamLocal(a, cl, i, lr)
			}
		case filterHeaderMutation:
			rq.applyHeaderMutationFilter(f, h, true)
		}
	}
	var idleTimer *time.Timer
	if to.idle > 0 {
		idleTimer = time.AfterFunc(to.idle, func() { attCancel(errIdleTimeout) })
		context.AfterFunc(attCtx, func() { idleTimer.Stop() })
	}
	resp, err := rq.roundTrip(attCtx, cl, h, body, a)
	rq.info.mu.Lock()
	connected, wrote := a.connected, a.wroteHeaders
	rq.info.mu.Unlock()
	a.sent = wrote
	if err != nil {
		a.err, a.cause = err, context.Cause(attCtx)
		switch {
		case errors.Is(err, errBadPath):
			a.discard()
			a.final = &outcome{lr: &localReply{status: http.StatusBadRequest, details: "invalid_path"}}
		case rq.asyncLocal() != nil:
			a.discard()
			a.final = &outcome{lr: rq.asyncLocal()}
		case a.cause != nil && !errors.Is(a.cause, errPerTryTimeout):
			a.discard()
			a.final = ptr(rq.failure(glCtx, a, n))
		case a.cause != nil:
			a.reset = resetLocal
		case connected:
			a.reset = resetTermination
		default:
			a.reset = resetConnectFailure
			rq.info.mu.Lock()
			rq.info.upstreamFailure = err.Error()
			rq.info.mu.Unlock()
		}
		return a
	}
	rw, tunnel := resp.Body.(io.ReadWriteCloser)
	tunnel = tunnel && rq.upgrade != "" && resp.StatusCode == http.StatusSwitchingProtocols
	switch {
	case idleTimer != nil && tunnel:
		idleTimer.Stop() // see "upgrades" in doc.go
	case idleTimer != nil:
		resp.Body = &idleReader{rc: resp.Body, t: idleTimer, d: to.idle}
	}
	rq.pipesMu.Lock()
	rq.upBody = resp.Body
	rq.pipesMu.Unlock()
	a.resp = resp
	rh := &headerMap{}
	rh.fields = append(rh.fields, field{":status", strconv.Itoa(resp.StatusCode)})
	rh.fromHTTP(resp.Header)
	for k := range hopByHop {
		rh.remove(k)
	}
	var rbody io.Reader = resp.Body
	if resp.Body == http.NoBody || resp.ContentLength == 0 || rq.r.Method == http.MethodHead {
		rbody = nil
	}
	if tunnel {
		// The upstream accepted the upgrade: its stream is no response body.
		rq.upTunnel, rbody = rw, nil
		rh.add("upgrade", resp.Header.Get("Upgrade"))
		rh.add("connection", "Upgrade")
	}
	rbody, lr, i := rq.upstreamEncode(a, cl, len(cl.upFilters)-1, rh, rbody)
	if lr != nil {
		_ = resp.Body.Close()
		return rq.upstreamLocal(a, cl, i, lr)
	}
	a.h, a.body = rh, rbody
	return a
}

// upstreamEncode runs the upstream filters from index from down to 0 on the
// response path; a local reply stops it at the filter i that made it.
func (rq *request) upstreamEncode(a *attemptResult, cl *cluster, from int, h *headerMap, body io.Reader) (_ io.Reader, _ *localReply, i int) {
	for i = from; i >= 0; i-- {
		f := cl.upFilters[i]
		switch f.kind {
		case filterExtProc:
			s := a.session(f.extProc)
			if s == nil || s.isComplete() {
				continue
			}
			var lr *localReply
			if body, lr = rq.phase(s, dirResponse, h, body); lr != nil {
				return body, lr, i
			}
		case filterHeaderMutation:
			rq.applyHeaderMutationFilter(f, h, false)
		}
	}
	return body, nil, -1
}

func ptr[T any](v T) *T { return &v }

// session is the attempt's ext_proc session of filter f, nil if none.
func (a *attemptResult) session(f *extProcFilter) *session {
	for _, s := range a.sessions {
		if s.f == f {
			return s
		}
	}
	return nil
}

// upstreamLocal is a local reply decided by upstream filter i: it goes
// back through the upstream ext_proc filters before it (Envoy ≥ 1.37), then
// to the client through the encoder filters like a router reply, without
// a retry.
func (rq *request) upstreamLocal(a *attemptResult, cl *cluster, i int, lr *localReply) *attemptResult {
	h, b := localHeaders(lr)
	out := &outcome{local: true, h: h, details: lr.details}
	var lr2 *localReply
	if out.body, lr2, _ = rq.upstreamEncode(a, cl, i-1, h, readerOf(b)); lr2 != nil {
		out = &outcome{lr: lr2}
	}
	a.final = out
	a.stopPerTry()
	if c, ok := a.reqBody.(io.Closer); ok {
		_ = c.Close()
	}
	return a
}

// failure is the router's local reply for the last attempt's failure
// (Filter::onUpstreamReset, onPerTryTimeout, onResponseTimeout).
func (rq *request) failure(glCtx context.Context, a *attemptResult, n int) outcome {
	li := rq.info
	retried := ""
	if n > 1 {
		retried = "retried and the latest "
	}
	switch cause := context.Cause(glCtx); {
	case errors.Is(cause, errRouteTimeout):
		li.responseFlags = addFlag(li.responseFlags, "UT")
		return outcome{lr: &localReply{status: http.StatusGatewayTimeout, body: []byte("upstream request timeout"), details: "upstream_response_timeout"}}
	case errors.Is(a.cause, errIdleTimeout):
		li.responseFlags = addFlag(li.responseFlags, "SI")
		return outcome{lr: &localReply{status: http.StatusGatewayTimeout, body: []byte("stream timeout"), details: "stream_idle_timeout"}}
	case cause != nil:
		return outcome{lr: &localReply{status: http.StatusServiceUnavailable, details: "downstream_remote_disconnect"}}
	}
	switch a.reset {
	case resetLocal:
		li.responseFlags = addFlag(li.responseFlags, "UT")
		return outcome{lr: &localReply{status: http.StatusGatewayTimeout, body: []byte("upstream request timeout"), details: "upstream_per_try_timeout"}}
	case resetTermination:
		li.responseFlags = addFlag(li.responseFlags, "UC")
		return outcome{lr: &localReply{
			status:  http.StatusServiceUnavailable,
			body:    []byte("upstream connect error or disconnect/reset before headers. " + retried + "reset reason: connection termination"),
			details: "upstream_reset_before_response_started{connection_termination}",
		}}
	}
	li.responseFlags = addFlag(li.responseFlags, "UF")
	reason := ""
	if a.err != nil {
		reason = a.err.Error()
	}
	return outcome{lr: &localReply{
		status:  http.StatusServiceUnavailable,
		body:    []byte("upstream connect error or disconnect/reset before headers. " + retried + "reset reason: connection failure, transport failure reason: " + reason),
		details: "upstream_reset_before_response_started{connection_failure}",
	}}
}

var errBadPath = errors.New("invalid :path")

// roundTrip sends one attempt (HTTP/1.1, no decompression, no redirects).
func (rq *request) roundTrip(ctx context.Context, cl *cluster, h *headerMap, body io.Reader, a *attemptResult) (*http.Response, error) {
	authority := h.value(":authority")
	u, err := url.ParseRequestURI(h.value(":path"))
	if err != nil {
		return nil, errBadPath
	}
	u.Scheme = cl.scheme()
	u.Host = authority
	hh := h.httpHeader()
	for k := range hopByHop {
		hh.Del(k)
	}
	if rq.upgrade != "" {
		hh.Set("Connection", "Upgrade")
		hh.Set("Upgrade", rq.upgrade)
	}
	hh.Del("Host")
	var contentLength int64
	if v, ok := h.get("content-length"); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			contentLength = n
		}
	} else if body != nil {
		contentLength = -1
	}
	hh.Del("Content-Length")
	if rq.asyncLocal() != nil {
		return nil, errLocalReply
	}
	if body == nil || contentLength == 0 {
		body = http.NoBody
	}
	req := (&http.Request{
		Method:        h.value(":method"),
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        hh,
		Host:          authority,
		Body:          io.NopCloser(body),
		ContentLength: contentLength,
	}).WithContext(ctx)
	if body == http.NoBody {
		req.Body = http.NoBody
	} else if rq.down != nil && !rq.detached {
		rq.upReads.Store(true)
	}
	li := rq.info
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) {
			li.mu.Lock()
			defer li.mu.Unlock()
			a.connected = true
			li.upstreamRemote = ci.Conn.RemoteAddr().String()
			li.upstreamLocal = ci.Conn.LocalAddr().String()
		},
		WroteHeaders: func() {
			li.at(&li.firstUpstreamTx)
			li.mu.Lock()
			a.wroteHeaders = true
			li.mu.Unlock()
		},
		WroteRequest:         func(httptrace.WroteRequestInfo) { li.at(&li.lastUpstreamTx) },
		GotFirstResponseByte: func() { li.at(&li.firstUpstreamByte) },
	}))
	resp, err := cl.transport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	li.at(&li.firstUpstreamByte)
	return resp, nil
}
