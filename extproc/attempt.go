package extproc

import (
	"bytes"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// The gRPC initial metadata that marks the ext_proc filter of the
// forward-proxy clusters' upstream filter chain, which runs once per
// upstream attempt (Envoy's retries included).
const (
	FilterMetadataKey = "x-keymux-filter"
	FilterUpstream    = "upstream"
)

// HeaderCall carries a forwarded request's internal call id from the
// router-level exchange to the upstream filter's exchange of its first
// attempt; the upstream filter removes it before the provider. Envoy's
// upstream filters change the request headers in place, so a retry no
// longer carries it: the later attempts join the call by its x-request-id
// (which Envoy generates for an external request), unless two open calls
// share one (then they are not retried).
const HeaderCall = "x-keymux-call"

// hdrMaxRetries is Envoy's per-request retry count, which keymux sets at
// the router level (the route's retry_policy decides what is retried).
const hdrMaxRetries = "x-envoy-max-retries"

// A 429 whose body says the request is too large for the key's limit is
// the request's fault: another key would refuse it too. The upstream filter
// reads the body of every 429 (mode override to BUFFERED) and marks such an
// answer with x-envoy-ratelimited, which Envoy's router never retries
// (unless retry_on has envoy-ratelimited); the router-level exchange
// removes the mark before the client.
const (
	hdrEnvoyRateLimited = "x-envoy-ratelimited"
	markTooLarge        = "keymux-request-too-large"
)

// requestTooLarge reports whether a 429's body says the request is too
// large rather than over a rate (OpenAI's "Request too large for …" on
// tokens per minute; a request_too_large code or type).
func requestTooLarge(body []byte) bool {
	return bytes.Contains(body, []byte("Request too large")) || bytes.Contains(body, []byte(`"request_too_large"`))
}

// attemptHeaders are removed by the upstream filter on every attempt
// (Envoy's router consumes x-envoy-max-retries itself).
var attemptHeaders = []string{HeaderCall}

// attempts is what the router-level exchange of a forwarded request shares
// with the upstream filter's exchanges of its attempts. The router-level
// exchange's snapshot, settings, route, headers and original model are set
// before it is shared and never change; the fields below are guarded by mu.
type attempts struct {
	x *exchange

	mu       sync.Mutex
	entry    *store.Entry // the key of the current attempt
	model    string       // the model the current attempt's upstream gets
	tried    []*store.Entry
	n        int  // upstream attempts begun
	fed      bool // the current attempt's response headers fed its key
	upstream bool // an upstream filter ran: it feeds each attempt's key
	// cur is the current attempt's record (its class: what its response
	// said, for the reason of a retry); done holds the attempts before
	// it, nil until a retry.
	cur      telemetry.Attempt
	curClass string
	// curDisabledAt is the current attempt's auth disable (applyFeedback).
	curDisabledAt time.Time
	done          []telemetry.Attempt
	held          *heldAnswer // a 429 whose key is fed once its body is read
}

// heldAnswer is an attempt's 429 waiting for its body.
type heldAnswer struct {
	entry  *store.Entry
	model  string // the model the attempt's upstream got
	hm     *corev3.HeaderMap
	status int
}

// feedLocked applies an attempt's answer to its key (feedAnswer; a
// request its body showed too large for the key's limit leaves the key
// alone) and records it on the current attempt. Callers hold a.mu.
func (a *attempts) feedLocked(e *store.Entry, model string, status int, hm *corev3.HeaderMap, tooLarge bool, now time.Time) {
	o := policy.Outcome{Kind: policy.OutcomeClient, Status: status}
	var disabledAt time.Time
	if !tooLarge {
		o, disabledAt = feedAnswer(e, model, a.x.est, a.x.settings.Ejection, status, hm, now)
	}
	if a.entry == e {
		a.fed = true
		a.cur.Status, a.cur.End, a.curClass = status, now, o.Kind.Class()
		a.curDisabledAt = disabledAt
	}
}

// releaseLocked feeds a held 429 whose body never came (an Envoy that did
// not take the mode override) as the rate limit its status says.
func (a *attempts) releaseLocked(now time.Time) {
	if h := a.held; h != nil {
		a.held = nil
		a.feedLocked(h.entry, h.model, h.status, h.hm, false, now)
	}
}

// record returns the call's attempts for telemetry: nil when it had one.
// Callers hold a.mu.
func (a *attempts) record(now time.Time) []telemetry.Attempt {
	if len(a.done) == 0 {
		return nil
	}
	out := make([]telemetry.Attempt, 0, len(a.done)+1)
	out = append(out, a.done...)
	last := a.cur
	if last.End.IsZero() {
		last.End = now
	}
	return append(out, last)
}

// retried closes the current attempt as retried (its response's class, or
// a reset when none came) and opens the next on key e.
func (a *attempts) retried(e *store.Entry, now time.Time) {
	c := a.cur
	c.Retried = a.curClass
	if !a.fed {
		c.Retried, c.Status = telemetry.RetryReset, 0
	}
	if c.End.IsZero() {
		c.End = now
	}
	a.done = append(a.done, c)
	a.cur, a.curClass, a.curDisabledAt = telemetry.Attempt{KeyID: e.Key.ID, Start: now}, "", time.Time{}
}

// retriesFor is the x-envoy-max-retries of a request forwarded with entry:
// retry.max_attempts-1, and no more than the other eligible keys of the
// same upstream host, so that no retry is wasted.
func (x *exchange) retriesFor(entry *store.Entry, now time.Time) int {
	limit := x.settings.Retry.MaxAttempts - 1
	n := 0
	pool := x.snap.Pool(x.call.ModelOriginal)
	entries, checked := pool.Entries, false
	if set := eligibleOf(pool, now, selectionOf(x.settings)); !set.check {
		entries, checked = set.entries, true // every one eligible now
	}
	for _, e := range entries {
		if n >= limit {
			break
		}
		if e == entry || !sameHost(e.Key, entry.Key) || !x.inAccount(e) {
			continue
		}
		if checked {
			n++ // the set's keys are all admitted now
		} else if ok, _ := x.admits(e, x.est, now); ok {
			n++
		}
	}
	return n
}

// sameHost reports whether two keys reach the same upstream (provider and
// base URL): a retry stays on the host Envoy routed the request to.
func sameHost(a, b *policy.Key) bool {
	return a.Provider == b.Provider && a.Scheme == b.Scheme && a.Host == b.Host && a.PathPrefix == b.PathPrefix
}

// ambiguousRequest marks an x-request-id that two open calls share.
var ambiguousRequest = new(attempts)

// share registers the forwarded call's attempts under its call id and its
// request id, and reports whether its retries can be joined to it.
func (x *exchange) share() bool {
	a := &x.shared // allocated with the exchange
	a.x, a.entry, a.model = x, x.entry, x.call.ModelFinal
	x.firstTried[0] = x.entry
	a.tried = x.firstTried[:]
	x.att = a
	x.s.calls.Store(x.callID, x.att)
	rid := x.hdr.requestID
	if rid == "" {
		return false
	}
	if _, loaded := x.s.requests.LoadOrStore(rid, x.att); loaded {
		x.s.requests.Store(rid, ambiguousRequest)
		return false
	}
	return true
}

// unshare ends the call's attempts.
func (x *exchange) unshare() {
	if x.att == nil {
		return
	}
	x.s.calls.Delete(x.callID)
	if rid := x.hdr.requestID; rid != "" && !x.s.requests.CompareAndDelete(rid, x.att) {
		x.s.requests.CompareAndDelete(rid, ambiguousRequest)
	}
}

// attemptsOf finds the call an upstream attempt belongs to: the first by
// its call id, a retry by its request id. nil: a request keymux did not
// forward, or one it cannot tell apart.
func (s *Server) attemptsOf(hm *corev3.HeaderMap) *attempts {
	if v, ok := s.calls.Load(findHeader(hm, HeaderCall)); ok {
		return v.(*attempts)
	}
	if v, ok := s.requests.Load(findHeader(hm, hdrRequestID)); ok && v != ambiguousRequest {
		return v.(*attempts)
	}
	return nil
}

// fromAttempts takes the key and model of the last upstream attempt and
// reports whether an upstream filter fed each attempt's key already.
func (x *exchange) fromAttempts() bool {
	a := x.att
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.upstream {
		return false
	}
	a.releaseLocked(x.s.now())
	x.entry, x.disabledAt = a.entry, a.curDisabledAt
	x.call.KeyID, x.call.ModelFinal = a.entry.Key.ID, a.model
	x.call.Attempts = a.record(x.s.now())
	if x.call.Attempts != nil {
		x.call.RuleID = ""
		if r := x.snap.Rule(a.entry.Key.ID, x.call.ModelOriginal); r != nil && a.model != x.call.ModelOriginal {
			x.call.RuleID = r.ID
		}
	}
	return true
}

// upstreamExchange is one upstream attempt's ext_proc stream.
type upstreamExchange struct {
	s      *Server
	a      *attempts    // nil: not a call keymux forwarded (passed through)
	entry  *store.Entry // this attempt's key
	model  string       // the model this attempt must carry ("" = leave the body)
	final  string       // the model this attempt's upstream gets
	status int
}

func (u *upstreamExchange) handle(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		resp := u.onRequestHeaders(r.RequestHeaders)
		if findHeader(r.RequestHeaders.GetHeaders(), hdrUpgrade) != "" {
			// An upgrade: its stream is no body to wait for (see exchange.upgrade).
			resp.ModeOverride = noBodies
		}
		return resp
	case *extprocv3.ProcessingRequest_RequestBody:
		return u.onRequestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return u.onResponseHeaders(r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return u.onResponseBody(r.ResponseBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	default:
		return responseBodyReply(nil, nil)
	}
}

// onRequestHeaders begins an attempt. The first confirms the key chosen at
// the router level; a retry feeds the previous attempt's key what happened
// (if its response headers did not), then puts another eligible key of the
// same host on the request: its credentials, its path and its model.
func (u *upstreamExchange) onRequestHeaders(h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	mut := &extprocv3.HeaderMutation{RemoveHeaders: attemptHeaders}
	if u.a = u.s.attemptsOf(h.GetHeaders()); u.a == nil {
		return headersReply(mut, false)
	}
	a, x := u.a, u.a.x
	now := x.s.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == 0 && findHeader(h.GetHeaders(), HeaderCall) == "" {
		// A retry of a call whose first attempt did not come through
		// keymux's upstream filter: leave it alone.
		u.a = nil
		return headersReply(mut, false)
	}
	a.upstream = true
	a.releaseLocked(now)
	a.n++
	if a.n == 1 {
		a.cur = telemetry.Attempt{KeyID: a.entry.Key.ID, Start: now}
	}
	if a.n > 1 {
		if !a.fed {
			// No response headers: the connection failed or was reset.
			applyFeedback(a.entry, x.settings.Ejection, policy.Outcome{Kind: policy.OutcomeServer}, now)
		}
		e, aerr := x.choose(x.call.ModelOriginal, func(e *store.Entry) bool {
			return !sameHost(e.Key, a.entry.Key) || !x.inAccount(e) || slices.Contains(a.tried, e)
		}, now)
		if aerr != nil {
			return aerr.response()
		}
		final := x.finalModel(e.Key)
		a.retried(e, now)
		a.entry, a.model, a.fed = e, final, false
		a.tried = append(a.tried, e)
		u.model = final
		t := target(e.Key, x.route.op, x.route.path, final, x.route.query, x.hdr.anthropicVersion)
		mut.SetHeaders = append(mut.SetHeaders, setHeader(hdrPath, t.fullPath()))
		t.eachHeader(func(name, part1, part2 string) {
			mut.SetHeaders = append(mut.SetHeaders, setHeader(name, part1+part2))
		})
	}
	u.entry, u.final = a.entry, a.model
	resp := headersReply(mut, false)
	if x.upload {
		// The upstream filter must not buffer the upload either.
		resp.ModeOverride = unbuffered
	}
	return resp
}

// onRequestBody re-applies the attempt's key's model rule to the body the
// router replays (the one the first attempt got).
func (u *upstreamExchange) onRequestBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if u.a == nil || u.model == "" || !b.GetEndOfStream() {
		return bodyReply(nil, nil, false)
	}
	x := u.a.x
	body := b.GetBody()
	bi, aerr := readBody(body, x.route.op, x.boundary, x.settings.MaxJSONDepth)
	if aerr != nil || bi.model == u.model || bi.modelEnd == 0 {
		return bodyReply(nil, nil, false)
	}
	nb := patchModel(body, bi, u.model)
	mut := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(hdrContentLength, strconv.Itoa(len(nb)))}}
	return bodyReply(mut, nb, false)
}

// onResponseHeaders feeds the attempt's key its response (cooldown,
// disable, ejection), as the router-level exchange does without an
// upstream filter; a 429 with a body is held until its body tells whether
// it is the request's fault.
func (u *upstreamExchange) onResponseHeaders(h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	if u.a == nil || u.entry == nil {
		return resp
	}
	hm := h.GetHeaders()
	u.status, _ = strconv.Atoi(findHeader(hm, hdrStatus))
	a := u.a
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.x.s.now()
	if u.status == 429 {
		if classifyAnswer(u.status, hm, a.x.est, now).Kind == policy.OutcomeClient {
			// Its headers show the request is too large for the key's
			// limit (feedAnswer leaves the key alone).
			a.feedLocked(u.entry, u.final, u.status, hm, false, now)
			resp.GetResponseHeaders().Response = &extprocv3.CommonResponse{HeaderMutation: tooLargeMark()}
			return resp
		}
		if !h.GetEndOfStream() {
			a.held = &heldAnswer{entry: u.entry, model: u.final, hm: hm, status: u.status}
			resp.ModeOverride = &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_BUFFERED}
			return resp
		}
	}
	a.feedLocked(u.entry, u.final, u.status, hm, false, now)
	return resp
}

// tooLargeMark is the header mutation that marks a 429 as the request's
// fault, which Envoy does not retry.
func tooLargeMark() *extprocv3.HeaderMutation {
	return &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(hdrEnvoyRateLimited, markTooLarge)}}
}

// onResponseBody reads a held 429's body: a request too large for the
// key's limit is marked so that Envoy does not retry it, and does not cool
// the key down.
func (u *upstreamExchange) onResponseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if u.a == nil || !b.GetEndOfStream() {
		return responseBodyReply(nil, nil)
	}
	a := u.a
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.held
	if h == nil || h.entry != u.entry {
		return responseBodyReply(nil, nil)
	}
	a.held = nil
	tooLarge := requestTooLarge(b.GetBody())
	a.feedLocked(h.entry, h.model, h.status, h.hm, tooLarge, a.x.s.now())
	if tooLarge {
		return responseBodyReply(tooLargeMark(), nil)
	}
	return responseBodyReply(nil, nil)
}
