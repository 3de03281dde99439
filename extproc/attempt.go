package extproc

import (
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
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
}

// retriesFor is the x-envoy-max-retries of a request forwarded with entry:
// retry.max_attempts-1, and no more than the other eligible keys of the
// same upstream host, so that no retry is wasted.
func (x *exchange) retriesFor(entry *store.Entry, now time.Time) int {
	limit := x.settings.Retry.MaxAttempts - 1
	n := 0
	for _, e := range x.snap.Pool(x.call.ModelOriginal).Entries {
		if n >= limit {
			break
		}
		if e == entry || !sameHost(e.Key, entry.Key) || !x.inAccount(e) {
			continue
		}
		if ok, _ := x.admits(e, x.est, now); ok {
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
	x.att = &attempts{x: x, entry: x.entry, model: x.call.ModelFinal, tried: []*store.Entry{x.entry}}
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
	x.entry = a.entry
	x.call.KeyID, x.call.ModelFinal = a.entry.Key.ID, a.model
	return true
}

// upstreamExchange is one upstream attempt's ext_proc stream.
type upstreamExchange struct {
	s      *Server
	a      *attempts    // nil: not a call keymux forwarded (passed through)
	entry  *store.Entry // this attempt's key
	model  string       // the model this attempt must carry ("" = leave the body)
	final  string       // the model this attempt's upstream gets
	phase  phase
	status int
}

func (u *upstreamExchange) handle(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return u.onRequestHeaders(r.RequestHeaders)
	case *extprocv3.ProcessingRequest_RequestBody:
		return u.onRequestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		u.onResponseHeaders(r.ResponseHeaders)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	default:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
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
	a.n++
	if a.n > 1 {
		if !a.fed {
			// No response headers: the connection failed or was reset.
			applyFeedback(a.entry, x.settings.Ejection, policy.Outcome{Kind: policy.OutcomeServer}, now)
		}
		e, aerr := x.choose(x.call.ModelOriginal, func(e *store.Entry) bool {
			return !sameHost(e.Key, a.entry.Key) || !x.inAccount(e) || slices.Contains(a.tried, e)
		})
		if aerr != nil {
			return aerr.response()
		}
		final := x.finalModel(e.Key)
		a.entry, a.model, a.fed = e, final, false
		a.tried = append(a.tried, e)
		u.model = final
		t := target(e.Key, x.route.op, x.route.path, final, x.route.query, x.hdr.anthropicVersion)
		mut.SetHeaders = append(mut.SetHeaders, setHeader(hdrPath, t.path))
		mut.SetHeaders = append(mut.SetHeaders, t.headers...)
	}
	u.entry, u.final = a.entry, a.model
	u.phase = phaseForwarded
	return headersReply(mut, false)
}

// onRequestBody re-applies the attempt's key's model rule to the body the
// router replays (the one the first attempt got).
func (u *upstreamExchange) onRequestBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if u.a == nil || u.model == "" || !b.GetEndOfStream() {
		return bodyReply(nil, nil, false)
	}
	x := u.a.x
	body := b.GetBody()
	bi, aerr := parseBody(body, x.route.op.model, x.settings.MaxJSONDepth)
	if aerr != nil || bi.model == u.model || bi.modelEnd == 0 {
		return bodyReply(nil, nil, false)
	}
	nb := patchModel(body, bi, u.model)
	mut := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(hdrContentLength, strconv.Itoa(len(nb)))}}
	return bodyReply(mut, nb, false)
}

// onResponseHeaders feeds the attempt's key its response (cooldown,
// disable, ejection), as the router-level exchange does without an
// upstream filter.
func (u *upstreamExchange) onResponseHeaders(h *extprocv3.HttpHeaders) {
	if u.a == nil || u.entry == nil {
		return
	}
	hm := h.GetHeaders()
	u.status, _ = strconv.Atoi(findHeader(hm, hdrStatus))
	x := u.a.x
	now := x.s.now()
	feedAnswer(u.entry, u.final, x.est, x.settings.Ejection, u.status, hm, now)
	u.a.mu.Lock()
	if u.a.entry == u.entry {
		u.a.fed = true
	}
	u.a.mu.Unlock()
}
