package extproc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// phase is where an exchange stands.
type phase int

const (
	phaseStart     phase = iota
	phaseBody            // headers accepted, waiting for the request body
	phaseForwarded       // a key was chosen and the request went upstream
	phaseLocal           // answered by keymux; Envoy sends nothing more
	phaseResponse        // response headers seen
)

// exchange is the state of one HTTP request across its ext_proc messages.
type exchange struct {
	// What outlives the stream until the call is booked (record.go).
	callRecord

	snap     *store.Snapshot
	hdr      requestHeaders
	route    routeResult
	est      int64 // the request's token estimate (policy.EstimateTokens)
	bodySeen bool
	att      *attempts // shared with the upstream filter's attempts (set when forwarded)
	boundary string    // a multipart form's boundary (operation.form)
	upload   bool      // the body streams through unbuffered (operation.upload)
	rep      *replies  // storage of the request path's replies (reply.go); nil once released
	// The storage of att and of its first tried key (share).
	shared     attempts
	firstTried [1]*store.Entry
	mut        *mutationMsg // the forwarding mutation (set by forward)

	sctx        context.Context // the Process stream's
	obj         objectState     // the account-scoped objects the request names or creates
	waited      bool            // an unknown object id already waited for its record
	bodyChanged bool            // the request body's object ids were replaced
	jwtSubject  string          // jwt_claim: the owner identity of the verified JWT
	at          time.Time       // the start of the request-path phase running (timed; zero on another clock than time.Now)
}

func newExchange(s *Server) *exchange {
	return &exchange{callRecord: callRecord{s: s, call: telemetry.Call{Start: s.now()}}, rep: getReplies()}
}

// releaseReplies hands the reply storage back to its pool once the stream
// has ended: every reply was serialized (reply.go).
func (x *exchange) releaseReplies() {
	if x.rep != nil {
		putReplies(x.rep)
		x.rep, x.mut = nil, nil
	}
}

// handle answers one message.
func (x *exchange) handle(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	x.s.countMessage(req)
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return x.timed(func() *extprocv3.ProcessingResponse {
			return x.onRequestHeaders(r.RequestHeaders, req.GetMetadataContext())
		}), nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return x.timed(func() *extprocv3.ProcessingResponse { return x.onRequestBody(r.RequestBody) }), nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return x.onResponseHeaders(r.ResponseHeaders), nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return x.onResponseBody(r.ResponseBody), nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}, nil
	default:
		return nil, fmt.Errorf("unsupported ext_proc message %T", r)
	}
}

// timed runs a request-path phase and adds its duration to the overhead.
// The clock read that starts it is also the phase's time for its decisions
// (x.now).
func (x *exchange) timed(f func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	t0 := time.Now()
	if x.s.realClock {
		x.at = t0
	}
	resp := f()
	x.at = time.Time{}
	x.call.Overhead += time.Since(t0)
	return resp
}

// now is the time of the request-path phase running (one clock read per
// message instead of one per decision), the server's clock outside a
// phase or when the server runs on another clock than time.Now (tests).
// Only the exchange's own stream calls it: an upstream attempt that uses
// the exchange reads the clock itself.
func (x *exchange) now() time.Time {
	if !x.at.IsZero() {
		return x.at
	}
	return x.s.now()
}

// clockMoved is called after the phase may have waited (for an object's
// record): its later decisions read the clock again.
func (x *exchange) clockMoved() {
	if !x.at.IsZero() {
		x.at = x.s.now()
	}
}

func (x *exchange) onRequestHeaders(h *extprocv3.HttpHeaders, md *corev3.Metadata) *extprocv3.ProcessingResponse {
	if x.phase != phaseStart {
		return x.refuse(&apiError{Status: 500, Type: typeServer, Code: "protocol_error", Message: "keymux received request headers twice"})
	}
	x.snap = x.s.store.Read()
	x.settings = x.snap.Settings()
	x.hdr = readRequestHeaders(h.GetHeaders())
	x.call.RequestID, x.call.TraceParent, x.call.TraceState = x.hdr.requestID, x.hdr.traceparent, x.hdr.tracestate
	x.call.Method = x.hdr.method
	x.call.Path = x.hdr.path
	if i := strings.IndexByte(x.call.Path, '?'); i >= 0 {
		x.call.Path = x.call.Path[:i]
	}

	route, aerr := x.matchRoute()
	if aerr != nil {
		if _, unknown := unknownAPIPath(x.call.Path); unknown && aerr.Code == codeUnknownURL {
			x.call.Operation = policy.EndpointOther // refused by settings.unknown_paths
		}
		return x.refuse(aerr)
	}
	x.route = route
	x.call.Operation = route.op.name
	if aerr := x.authenticate(md); aerr != nil {
		return x.refuse(aerr)
	}
	if route.op.local {
		return x.answerModels()
	}
	if policy.AuthorizeEndpoint(x.client, route.op.name, route.op.modelBearing()) != nil {
		return x.refuse(&apiError{Status: 403, Type: typePermission, Code: "insufficient_permissions",
			Message: "This client may not call " + route.op.name + " endpoints."})
	}
	if aerr := x.clientLimits(); aerr != nil {
		return x.refuse(aerr)
	}
	x.upload = route.op.upload > 0 && x.hdr.method == "POST" && !h.GetEndOfStream()
	if limit := x.bodyLimit(); limit > 0 && x.hdr.contentLength > limit {
		return x.refuse(tooLarge(limit))
	}
	if local, aerr := x.objectsOnHeaders(); aerr != nil {
		return x.refuse(aerr)
	} else if local != nil {
		return local
	}
	switch {
	case route.op.model == modelQuery:
		return x.upgrade()
	case x.hdr.isUpgrade() && route.op != &opOther:
		// Envoy would wait for a body that follows only an accepted upgrade.
		return x.refuse(badRequest("upgrade_not_supported", "", "The "+route.op.name+" endpoints do not accept a protocol upgrade."))
	case x.hdr.isUpgrade():
		// A path keymux does not know (unknown_paths: forward): any key.
		mut, aerr := x.forward("")
		if aerr != nil {
			return x.refuse(aerr)
		}
		return x.upgradeReply(mut)
	}
	if route.op.form {
		b, aerr := formBoundary(x.hdr.contentType)
		if aerr != nil {
			return x.refuse(aerr)
		}
		x.boundary = b
	}
	if x.upload {
		return x.forwardUpload()
	}
	if !h.GetEndOfStream() {
		x.phase = phaseBody
		return x.headersReply(nil, false)
	}
	// No body follows.
	switch {
	case route.op.form && route.op.model == modelRequired:
		return x.refuse(badRequest("missing_required_parameter", "model", "The request body is empty; a multipart form with a model is required."))
	case route.op.model == modelRequired:
		return x.refuse(badRequest("invalid_json", "", "The request body is empty; a JSON object with a model is required."))
	}
	mut, aerr := x.forward("")
	if aerr != nil {
		return x.refuse(aerr)
	}
	return x.withMetadata(x.headersReply(mut, true))
}

func (x *exchange) onRequestBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if x.phase != phaseBody {
		// Envoy sends a body only after a headers reply asked to continue;
		// a second body message (STREAMED mode) is passed through.
		return bodyReply(nil, nil, false)
	}
	if !b.GetEndOfStream() && x.bodySeen {
		return bodyReply(nil, nil, false)
	}
	x.bodySeen = true
	body := b.GetBody()
	if limit := x.bodyLimit(); limit > 0 && int64(len(body)) > limit {
		return x.refuse(tooLarge(limit))
	}
	asIs := x.route.op.model == modelNone || (x.route.op.model == modelJSON && !isJSON(x.hdr.contentType))
	bi, aerr := bodyInfo{}, (*apiError)(nil)
	if !asIs {
		bi, aerr = readBody(body, x.route.op, x.boundary, x.settings.MaxJSONDepth)
		// A path keymux does not know: a body it cannot read goes as is.
		asIs = aerr != nil && x.route.op.model == modelJSON
	}
	if asIs {
		// An object endpoint with a body keymux has no use for: forward it.
		// A JSON body may name objects; any other (an upload) goes as it came.
		var newBody []byte
		if isJSON(x.hdr.contentType) && x.obj.kind != nil {
			if _, aerr := parseBody(body, modelOptional, x.settings.MaxJSONDepth); aerr != nil {
				return x.refuse(aerr)
			}
			nb, aerr := x.objectsInBody(body)
			if aerr != nil {
				return x.refuse(aerr)
			}
			newBody = nb
		}
		mut, aerr := x.forward("")
		if aerr != nil {
			return x.refuse(aerr)
		}
		if newBody != nil {
			x.mut.setInt(hdrContentLength, len(newBody))
		}
		return x.withMetadata(x.bodyReply(mut, newBody, true))
	}
	if aerr != nil {
		return x.refuse(aerr)
	}
	if bi.form {
		// A multipart form names no object.
	} else if unTagged, aerr := x.objectsInBody(body); aerr != nil {
		return x.refuse(aerr)
	} else if unTagged != nil {
		// The provider's ids are as long or shorter: re-read the model's place.
		body = unTagged
		if bi, aerr = parseBody(body, x.route.op.model, x.settings.MaxJSONDepth); aerr != nil {
			return x.refuse(aerr)
		}
		x.bodyChanged = true
	}
	x.call.Stream = bi.stream
	if !bi.form {
		// A form's bytes are mostly a file (audio, an image), not prompt
		// tokens: its estimate stays 0, as an upload's.
		x.est = policy.EstimateTokens(len(body), bi.maxTokens)
	}
	if x.hdr.affinity == "" {
		x.hdr.affinity = bi.affinity
	}
	mut, aerr := x.forward(bi.model)
	if aerr != nil {
		return x.refuse(aerr)
	}
	var newBody []byte
	if x.call.ModelFinal != bi.model {
		newBody = patchModel(body, bi, x.call.ModelFinal)
	} else if x.bodyChanged {
		newBody = body
	}
	if x.wantsStreamUsage(bi) {
		src := body
		if newBody != nil {
			src = newBody
		}
		if patched, err := withStreamUsage(src, bi); err == nil {
			newBody = patched
		}
	}
	switch {
	case newBody != nil:
		x.mut.setInt(hdrContentLength, len(newBody))
	case x.hdr.contentLength >= 0:
		x.mut.setInt(hdrContentLength, len(body))
	}
	return x.withMetadata(x.bodyReply(mut, newBody, true))
}

// bodyLimit is the largest request body of this request: the
// operation's own limit for forms and uploads, else max_body_bytes.
func (x *exchange) bodyLimit() int64 {
	switch {
	case x.upload:
		return x.route.op.upload
	case x.route.op.form:
		return maxFormBytes
	}
	return x.settings.MaxBodyBytes
}

// forwardUpload forwards an upload from its headers: the body is never
// buffered, by Envoy or keymux. The reply overrides the request body mode
// to NONE (the filter's allow_mode_override) and routes to the upload
// routes, which keep no copy for retries (envoy/README.md). A body without
// Content-Length (chunked) is not counted: the provider applies its limit.
func (x *exchange) forwardUpload() *extprocv3.ProcessingResponse {
	mut, aerr := x.forward("")
	if aerr != nil {
		return x.refuse(aerr)
	}
	resp := x.withMetadata(headersReply(mut, true))
	resp.ModeOverride = unbuffered
	return resp
}

// unbuffered is the mode override of an upload: no request body message,
// the response body as configured (NONE).
var unbuffered = &filterv3.ProcessingMode{RequestBodyMode: filterv3.ProcessingMode_NONE, ResponseBodyMode: filterv3.ProcessingMode_NONE}

// wantsStreamUsage reports whether keymux asks the upstream for the final
// usage chunk of this stream (settings.stream_usage): OpenAI-style chat and
// text completions whose client did not ask for it.
func (x *exchange) wantsStreamUsage(bi bodyInfo) bool {
	if !bi.stream || bi.streamUsage || !x.settings.StreamUsage || x.entry == nil {
		return false
	}
	if n := x.route.op.name; x.route.op.anthropic || (n != "chat" && n != "text_completion") {
		return false
	}
	spec, ok := policy.LookupProvider(x.entry.Key.Provider)
	return ok && spec.StreamOptions
}

// authenticate applies settings.auth to the request; md is the dynamic
// metadata Envoy forwarded with the request headers (jwt_claim mode reads
// jwt_authn's verified claims there).
func (x *exchange) authenticate(md *corev3.Metadata) *apiError {
	switch x.settings.Auth.Mode {
	case policy.AuthClientKeys:
		if x.hdr.repeatedCredential {
			// Which one would count? Envoy, keymux and the upstream could disagree.
			return &apiError{Status: 401, Type: typeInvalidRequest, Code: "invalid_api_key",
				Message: "Ambiguous credentials: the request has more than one Authorization or x-api-key header."}
		}
		token, ok := policy.TokenFromHeaders(x.hdr.authorization, x.hdr.xAPIKey)
		if !ok {
			if strings.TrimSpace(x.hdr.xAPIKey) == "" && !credentialGiven(x.hdr.authorization) {
				return &apiError{Status: 401, Type: typeInvalidRequest, Code: "missing_api_key",
					Message: "You didn't provide an API key. Provide it in the Authorization header (Bearer <key>)."}
			}
			return &apiError{Status: 401, Type: typeInvalidRequest, Code: "invalid_api_key",
				Message: "Incorrect API key provided: use the Authorization header with the Bearer scheme."}
		}
		sum := policy.HashToken(token)
		c := x.snap.ClientByTokenSHA256(sum)
		if policy.AuthenticateClient(c, sum) != nil {
			return &apiError{Status: 401, Type: typeInvalidRequest, Code: "invalid_api_key",
				Message: "Incorrect API key provided."}
		}
		x.client = c
		x.call.ClientID = c.ID
	case policy.AuthJWTClaim:
		a := x.settings.Auth
		switch err := policy.CheckJWTClaims(jwtClaims(md), a.Claim, a.Value); {
		case errors.Is(err, policy.ErrNoCredentials):
			return &apiError{Status: 401, Type: typeInvalidRequest, Code: "missing_api_key",
				Message: "A verified JWT is required."}
		case err != nil:
			return &apiError{Status: 403, Type: typePermission, Code: "insufficient_permissions",
				Message: "The token does not carry the claim " + a.Claim + "=" + a.Value + "."}
		}
		x.jwtSubject = jwtSubject(md)
	}
	return nil
}

// clientLimits enforces the client's rpm and tpm (per instance, over the
// current minute) and counts the request.
func (x *exchange) clientLimits() *apiError {
	c := x.client
	if c == nil || (c.Limits.RPM <= 0 && c.Limits.TPM <= 0) {
		return nil
	}
	now := x.now()
	m := x.s.clientMinute(c.ID)
	reqs, tokens := m.reqs.Get(now), m.tokens.Get(now)
	l := x.s.store.Fleet().Limits(c.Limits)
	if policy.WithinLimits(l, reqs, tokens) {
		m.reqs.Add(now, 1)
		return nil
	}
	what, limit, whole := "requests", l.RPM, c.Limits.RPM
	if l.RPM <= 0 || reqs < uint64(l.RPM) {
		what, limit, whole = "tokens", l.TPM, c.Limits.TPM
	}
	return &apiError{Status: 429, Type: what, Code: "rate_limit_exceeded",
		Message:    "Rate limit reached for client " + c.ID + " on " + what + " per minute: limit " + strconv.Itoa(limit) + fleetShareNote(limit, whole) + ".",
		RetryAfter: max(1, int(store.NextMinute(now).Sub(now).Round(time.Second)/time.Second))}
}

// fleetShareNote explains a limit that is this instance's share of the
// client's whole limit ("" when it is the whole limit).
func fleetShareNote(share, whole int) string {
	if share == whole {
		return ""
	}
	return " (this instance's share of " + strconv.Itoa(whole) + " over the fleet)"
}

// credentialGiven reports whether an Authorization header carries anything
// beyond an empty Bearer scheme.
func credentialGiven(authorization string) bool {
	a := strings.TrimSpace(authorization)
	return a != "" && !strings.EqualFold(a, "bearer")
}

// jwtClaims returns the claims jwt_authn verified (its payload_in_metadata
// entry JWTPayloadKey, forwarded through forwarding_namespaces), nil when
// there are none. A client cannot set dynamic metadata.
func jwtClaims(md *corev3.Metadata) *structpb.Struct {
	return md.GetFilterMetadata()[JWTMetadataNamespace].GetFields()[JWTPayloadKey].GetStructValue()
}

// forward checks the client may use model, chooses a key for it ("" for
// requests without a model) and builds the request mutation towards the
// key's provider.
func (x *exchange) forward(model string) (*extprocv3.HeaderMutation, *apiError) {
	// A model-bearing body without a model gets the provider's default
	// model, which a client limited to some models may not use either.
	if (model != "" || x.route.op.modelBearing()) && policy.AuthorizeModel(x.client, model) != nil {
		msg := "The model `" + model + "` is not allowed for this client."
		if model == "" {
			msg = "This client must name one of its allowed models: the provider's default model is not allowed."
		}
		return nil, &apiError{Status: 403, Type: typePermission, Code: "model_not_allowed", Param: "model", Message: msg}
	}
	x.call.ModelOriginal = model
	skip := x.accountSkip()
	if x.route.op.anthropic && model == "" {
		// Anthropic's account objects (message batches): Anthropic keys only.
		inAccount := skip
		skip = func(e *store.Entry) bool {
			return e.Key.Provider != policy.ProviderAnthropic || (inAccount != nil && inAccount(e))
		}
		if !slices.ContainsFunc(x.snap.Pool("").Entries, func(e *store.Entry) bool { return e.Key.Provider == policy.ProviderAnthropic }) {
			return nil, &apiError{Status: 503, Type: typeServer, Code: "no_keys",
				Message: "No enabled Anthropic key is configured for " + x.route.op.name + "."}
		}
	}
	entry, aerr := x.choose(model, skip, x.now())
	if aerr != nil {
		return nil, aerr
	}
	k := entry.Key
	final := x.finalModel(k)
	if final != model {
		x.call.RuleID = x.snap.Rule(k.ID, model).ID
	}
	x.entry = entry
	x.phase = phaseForwarded
	idBuf := x.callIDBuf[:0]
	if x.callID != "" {
		idBuf = nil // the bytes of a call id never change: a second one gets its own
	}
	x.callID = x.s.newCallID(idBuf)
	x.routed = k.ID
	x.call.KeyID, x.call.Provider, x.call.UpstreamHost, x.call.ModelFinal = k.ID, string(k.Provider), k.Host, final
	x.call.Strategy = x.settings.Strategy

	t := target(k, x.route.op, x.route.path, final, x.route.query, x.hdr.anthropicVersion)
	m := x.rep.mutationMsg()
	x.mut = m
	mut := m.start(removedHeaders)
	upload := ""
	if x.upload {
		upload = UploadSuffix
	}
	m.set(HeaderUpstream, t.scheme, upload)
	m.set(hdrAuthority, t.authority)
	m.set(hdrPath, t.prefix, t.path)
	t.eachHeader(func(name, part1, part2 string) { m.set(name, part1, part2) })
	retries := 0
	if x.share() && !x.upload {
		retries = x.retriesFor(entry, x.now())
	}
	m.set(HeaderCall, x.callID)
	m.setInt(hdrMaxRetries, retries)
	if tp := x.s.observer.Begin(&x.call); tp != "" {
		m.set(hdrTraceparent, tp)
	}
	return mut, nil
}

// matchRoute maps the request line to a known operation, else (settings.
// unknown_paths: forward) to opOther, else to its refusal.
func (x *exchange) matchRoute() (routeResult, *apiError) {
	aerr := refuseMethod(x.hdr.method)
	var r routeResult
	if aerr == nil {
		r, aerr = matchRoute(x.hdr.method, x.hdr.path)
	}
	if aerr != nil && x.settings.UnknownPaths == policy.UnknownPathsForward {
		if o, ok := matchOther(x.hdr.method, x.hdr.path); ok {
			return o, nil
		}
	}
	return r, aerr
}

// upgrade forwards a WebSocket upgrade (the Realtime API): the key is
// chosen for the query's model, the rule's model replaces it in the query,
// and the upgraded stream — the request "body" — passes untouched: the
// reply turns the request body mode to NONE, since Envoy would otherwise
// wait for a body that the client sends only after the 101.
func (x *exchange) upgrade() *extprocv3.ProcessingResponse {
	if !x.hdr.isUpgrade() || !strings.EqualFold(x.hdr.upgrade, "websocket") {
		return x.refuse(&apiError{Status: 426, Type: typeInvalidRequest, Code: "upgrade_required",
			Message: x.call.Path + " is a WebSocket endpoint: open it with Upgrade: websocket.",
			Header:  map[string]string{"upgrade": "websocket"}})
	}
	model, ok, err := policy.QueryParam(x.route.query, "model")
	switch {
	case err != nil:
		return x.refuse(badRequest("invalid_value", "model", "The query string is malformed: "+err.Error()+"."))
	case !ok:
		return x.refuse(badRequest("missing_required_parameter", "model", "You must provide a model query parameter."))
	}
	if aerr := checkModel(model); aerr != nil {
		return x.refuse(aerr)
	}
	mut, aerr := x.forward(model)
	if aerr != nil {
		return x.refuse(aerr)
	}
	return x.upgradeReply(mut)
}

// upgradeReply forwards an upgrade with mutation mut: without any key the
// client put in a WebSocket subprotocol, and with the body modes NONE.
func (x *exchange) upgradeReply(mut *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	if p, changed := withoutKeyProtocols(x.hdr.wsProtocol); changed {
		if p == "" {
			mut.RemoveHeaders = append(slices.Clip(mut.RemoveHeaders), hdrWSProtocol)
		} else {
			mut.SetHeaders = append(mut.SetHeaders, setHeader(hdrWSProtocol, p))
		}
	}
	resp := x.withMetadata(headersReply(mut, true))
	resp.ModeOverride = noBodies
	return resp
}

// noBodies is the mode override of an upgrade: neither the request's nor
// the response's upgraded stream goes to keymux.
var noBodies = &filterv3.ProcessingMode{RequestBodyMode: filterv3.ProcessingMode_NONE, ResponseBodyMode: filterv3.ProcessingMode_NONE}

// keyProtocol is the WebSocket subprotocol prefix in which browsers hand
// OpenAI's Realtime API a key ("openai-insecure-api-key.<key>").
const keyProtocol = "openai-insecure-api-key."

// withoutKeyProtocols drops key-carrying subprotocols from a
// sec-websocket-protocol value: the client's own credentials never reach
// the upstream. changed reports whether any was dropped.
func withoutKeyProtocols(v string) (string, bool) {
	if !strings.Contains(strings.ToLower(v), keyProtocol) {
		return v, false
	}
	var kept []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" && !strings.HasPrefix(strings.ToLower(p), keyProtocol) {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ", "), true
}

// isJSON reports whether a content-type is JSON (application/json or a
// +json type, parameters ignored).
func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// finalModel is the model key k's rule makes of the request's model.
func (x *exchange) finalModel(k *policy.Key) string {
	model := x.call.ModelOriginal
	if model == "" {
		return model
	}
	if r := x.snap.Rule(k.ID, model); r != nil {
		if to, ok := policy.ApplyRule(r, model); ok {
			return to
		}
	}
	return model
}

// candidateBuf is reused across requests so selection does not allocate in
// proportion to the pool.
type candidateBuf struct {
	cands   []policy.Candidate
	entries []*store.Entry
	at      []int // the entries' indexes in the pool
}

var candidatePool = sync.Pool{New: func() any { return new(candidateBuf) }}

// choose picks a key for model among the eligible keys of its pool that
// skip (nil: none) does not rule out.
func (x *exchange) choose(model string, skip func(*store.Entry) bool, now time.Time) (*store.Entry, *apiError) {
	pool := x.snap.Pool(model)
	if len(pool.Entries) == 0 {
		if model == "" {
			return nil, &apiError{Status: 503, Type: typeServer, Code: "no_keys", Message: "No upstream key is configured."}
		}
		return nil, &apiError{Status: 404, Type: typeInvalidRequest, Code: "model_not_found", Param: "model",
			Message: "The model `" + model + "` does not exist or no key serves it."}
	}
	if skip == nil {
		set := eligibleOf(pool, now, selectionOf(x.settings))
		if e, aerr, ok := x.chooseFrom(set, model, pool, now); ok {
			return e, aerr
		}
	}
	window := x.settings.Ejection.ErrorWindow
	buf := candidatePool.Get().(*candidateBuf)
	defer func() {
		clear(buf.entries)
		clear(buf.cands)
		buf.cands, buf.entries, buf.at = buf.cands[:0], buf.entries[:0], buf.at[:0]
		candidatePool.Put(buf)
	}()
	strat := selectionOf(x.settings).strat
	needUsage, needErrors := policy.StrategyInputs(strat)
	seq := pool.Seq.Add(1) - 1
	slow := 0 // eligible keys left out by their slow start
	for i, e := range pool.Entries {
		st := e.RT.State()
		ok, why := x.admitsIn(e, st, x.est, now)
		if !ok || (skip != nil && skip(e)) {
			if !ok && skip == nil {
				x.call.AddSkipped(telemetry.Skip{KeyID: e.Key.ID, Reason: why.Reason, Until: why.Until})
			}
			continue
		}
		if !x.slowStartAdmits(st.SlowStartFrom, seq, i, now) {
			slow++
			if skip == nil {
				x.call.AddSkipped(telemetry.Skip{KeyID: e.Key.ID, Reason: skipSlowStart})
			}
			continue
		}
		c := policy.Candidate{Key: e.Key}
		if needUsage {
			c.Usage = e.RT.Requests()
		}
		if needErrors {
			c.Errors = e.RT.ErrorsInWindow(now, window)
		}
		buf.cands = append(buf.cands, c)
		buf.entries = append(buf.entries, e)
		buf.at = append(buf.at, i)
	}
	if len(buf.cands) == 0 && slow > 0 {
		// Only keys in slow start: they serve rather than nobody.
		for i, e := range pool.Entries {
			if ok, _ := x.admits(e, x.est, now); ok && (skip == nil || !skip(e)) {
				buf.cands = append(buf.cands, policy.Candidate{Key: e.Key})
				buf.entries = append(buf.entries, e)
				buf.at = append(buf.at, i)
			}
		}
	}
	if len(buf.cands) == 0 {
		if x.obj.account != "" && !slices.ContainsFunc(pool.Entries, x.inAccount) {
			return nil, x.noKeyInAccount(model)
		}
		return nil, x.noEligibleKey(model, pool, now)
	}
	if skip == nil {
		x.call.Candidates = len(buf.cands)
	}
	if x.hdr.affinity != "" && policy.UsesAffinity(strat) {
		seq = policy.AffinityHash(x.hdr.affinity)
	}
	i := -1
	if policy.UsesRing(strat) && len(pool.Entries) > ringScanMin {
		i = ringSelect(pool, buf, strat, seq)
	}
	if i < 0 {
		i = policy.Select(buf.cands, strat, seq, rand.Float64())
	}
	e := buf.entries[i]
	x.took(e, now)
	return e, nil
}

// ringScanMin is the pool size above which a scan picks for a strategy
// that hashes on a ring (affinity) with the pool's ring rather than with
// the strategy's Pick, which computes every candidate's points.
const ringScanMin = 64

// ringSelect is policy.Select over buf's candidates for a strategy that
// hashes on a ring, walking the pool's ring (built once): the index into
// buf, or -1 when the walk gave up (a small tier: Select's Pick is cheap).
func ringSelect(pool *store.Pool, buf *candidateBuf, strat policy.Strategy, hash uint64) int {
	best := policy.BestTier(nil, buf.cands)
	tier, at := make([]policy.Candidate, len(best)), make([]int, len(best))
	for j, i := range best {
		tier[j], at[j] = buf.cands[i], buf.at[i]
	}
	if d := policy.NewIndex(strat, tier, poolRing(pool), at).First(hash, 0); d.I >= 0 {
		return best[d.I]
	}
	return -1
}

// chooseFrom picks a key for model from the pool's eligible set (choose
// without a scan of the pool): the strategy's index proposes keys of the
// set's best tier, as policy.Select would pick over the eligible keys;
// when the set needs it each proposal is admitted for this request
// (limits, headroom, slow start) and a refused one is replaced. ok is
// false when no proposal was admitted (the caller scans the pool).
func (x *exchange) chooseFrom(set *eligibleSet, model string, pool *store.Pool, now time.Time) (_ *store.Entry, _ *apiError, ok bool) {
	if len(set.tier) == 0 {
		x.addSkipped(set.skipped)
		return nil, x.noEligibleKey(model, pool, now), true
	}
	if set.index == nil && set.check {
		return nil, nil, false
	}
	strat := set.strat
	seq := pool.Seq.Add(1) - 1
	hash := seq
	if x.hdr.affinity != "" && policy.UsesAffinity(strat) {
		hash = policy.AffinityHash(x.hdr.affinity)
	}
	rnd := rand.Float64()
	if set.index == nil {
		buf := candidatePool.Get().(*candidateBuf)
		i := policy.SelectTier(x.liveTier(set, buf, now), strat, hash, rnd)
		clear(buf.cands)
		buf.cands = buf.cands[:0]
		candidatePool.Put(buf)
		return x.chose(set, i, now), nil, true
	}
	needUsage, needErrors := policy.StrategyInputs(strat)
	var refused [policy.MaxDraws]telemetry.Skip
	nref := 0
	for d := set.index.First(hash, rnd); d.I >= 0; d = set.index.Next(d, hash, rnd) {
		e := set.tierEntries[d.I]
		if needUsage || needErrors {
			if !set.index.Check(d, x.live(set, d.I, now)) {
				continue
			}
		}
		if set.check {
			st := e.RT.State()
			why := policy.Ineligible{Reason: skipSlowStart}
			if ok, out := x.admitsIn(e, st, x.est, now); !ok {
				why = out
			} else if x.slowStartAdmits(st.SlowStartFrom, seq, set.tierAt[d.I], now) {
				why.Reason = ""
			}
			if why.Reason != "" {
				if !slices.ContainsFunc(refused[:nref], func(sk telemetry.Skip) bool { return sk.KeyID == e.Key.ID }) {
					refused[nref] = telemetry.Skip{KeyID: e.Key.ID, Reason: why.Reason, Until: why.Until}
					nref++
				}
				continue
			}
		}
		e = x.chose(set, d.I, now)
		x.addSkipped(refused[:nref])
		x.call.Candidates -= nref // refused for this request: skipped, not candidates
		return e, nil, true
	}
	return nil, nil, false
}

// live is the tier's candidate i with the counters its strategy reads now.
func (x *exchange) live(set *eligibleSet, i int, now time.Time) policy.Candidate {
	c, e := set.tier[i], set.tierEntries[i]
	needUsage, needErrors := policy.StrategyInputs(set.strat)
	if needUsage {
		c.Usage = e.RT.Requests()
	}
	if needErrors {
		if c.Errors = e.RT.ErrorsInWindow(now, x.settings.Ejection.ErrorWindow); c.Errors > 0 {
			set.sawErrors(now)
		}
	}
	return c
}

// liveTier fills buf with the set's tier and the counters its strategy
// reads now (a strategy without an index: O(tier)).
func (x *exchange) liveTier(set *eligibleSet, buf *candidateBuf, now time.Time) []policy.Candidate {
	needUsage, needErrors := policy.StrategyInputs(set.strat)
	if !needUsage && !needErrors {
		return set.tier // shared: read-only
	}
	for i := range set.tier {
		buf.cands = append(buf.cands, x.live(set, i, now))
	}
	return buf.cands
}

// chose takes the set's tier candidate i for the request: its skipped keys
// and candidates go to the call, the request is counted against the key
// and the index learns its new counters.
func (x *exchange) chose(set *eligibleSet, i int, now time.Time) *store.Entry {
	x.addSkipped(set.skipped)
	x.call.Candidates = len(set.entries)
	e := set.tierEntries[i]
	x.took(e, now)
	if u, _ := policy.StrategyInputs(set.strat); u && set.index != nil {
		set.index.Update(i, x.live(set, i, now))
	}
	return e
}

// addSkipped records skipped keys on the call.
func (x *exchange) addSkipped(skipped []telemetry.Skip) {
	for _, sk := range skipped {
		x.call.AddSkipped(sk)
	}
}

// took counts the request against the chosen key e: its requests, its
// minute and its headroom for the model its rule makes of the request's.
func (x *exchange) took(e *store.Entry, now time.Time) {
	e.RT.AddRequest()
	e.RT.MinuteRequests.Add(now, 1)
	take(e, x.finalModel(e.Key), x.est, now)
}

// skipSlowStart is telemetry.Skip's reason for an eligible key left out
// by its slow start after an ejection.
const skipSlowStart = "slow_start"

// keyWithinLimits applies this instance's share of the key's rpm/tpm
// (store.Fleet) to what this instance sent in the current minute.
func keyWithinLimits(e *store.Entry, now time.Time) bool {
	l := e.Limits()
	if l.RPM <= 0 && l.TPM <= 0 {
		return true
	}
	return policy.WithinLimits(l, e.RT.MinuteRequests.Get(now), e.RT.MinuteTokens.Get(now))
}

// poolOut lists why each key of the pool is out now; all reports whether
// every key is.
func (x *exchange) poolOut(pool *store.Pool, now time.Time) (reasons []policy.Ineligible, all bool) {
	reasons = make([]policy.Ineligible, 0, len(pool.Entries))
	for _, e := range pool.Entries {
		if !x.inAccount(e) {
			continue
		}
		if ok, why := x.admits(e, x.est, now); !ok {
			reasons = append(reasons, why)
		}
	}
	return reasons, len(reasons) == len(pool.Entries)
}

// retryAfter is a Retry-After in whole seconds (at least 1) until t.
func retryAfter(t, now time.Time) int {
	return max(1, int(t.Sub(now).Round(time.Second)/time.Second))
}

// noEligibleKey explains a 503: every key of the pool is out, and why.
func (x *exchange) noEligibleKey(model string, pool *store.Pool, now time.Time) *apiError {
	reasons, _ := x.poolOut(pool, now)
	msg, code := policy.Explain(model, reasons)
	e := &apiError{Status: 503, Type: typeServer, Code: code, Message: msg}
	if earliest := policy.EarliestUntil(reasons); !earliest.IsZero() {
		e.RetryAfter = retryAfter(earliest, now)
	}
	return e
}

func (x *exchange) onResponseHeaders(h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	x.phase = phaseResponse
	hm := h.GetHeaders()
	x.status, _ = strconv.Atoi(findHeader(hm, hdrStatus))
	x.call.Status = x.status
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{},
	}}
	now := x.s.now()
	tooLarge := findHeader(hm, hdrEnvoyRateLimited) == markTooLarge
	if x.fromAttempts() {
		// The upstream filter fed the key.
		o := classifyAnswer(x.status, hm, x.est, now)
		if tooLarge {
			// The upstream filter's mark (attempt.go): the request's fault.
			o = policy.Outcome{Kind: policy.OutcomeClient, Status: x.status}
		}
		x.call.ErrorCode = o.Kind.Class()
		if len(x.call.Attempts) > 0 {
			x.retriedMetadata(resp)
		}
	} else if x.entry != nil {
		o, disabledAt := feedAnswer(x.entry, x.call.ModelFinal, x.est, x.settings.Ejection, x.status, hm, now)
		x.call.ErrorCode, x.disabledAt = o.Kind.Class(), disabledAt
	} else {
		x.call.ErrorCode = policy.StatusKind(x.status).Class()
	}
	if x.entry != nil && x.status != 0 {
		resp.GetResponseHeaders().Response = &extprocv3.CommonResponse{HeaderMutation: x.headroomMutation(now)}
	}
	if tooLarge {
		m := headersMutation(resp)
		m.RemoveHeaders = append(m.RemoveHeaders, hdrEnvoyRateLimited)
	}
	if x.call.ErrorCode != policy.ClassClient {
		x.poolRetryAfter(resp, now)
	}
	x.respDone = h.GetEndOfStream()
	if ct := findHeader(hm, hdrContentType); !x.respDone && x.wantsObjectBody(x.status, ct) {
		// A creation's small JSON answer names the new object: read it
		// whole; a streamed response's id is tagged chunk by chunk.
		mode := filterv3.ProcessingMode_BUFFERED
		if x.obj.sse != nil {
			mode = filterv3.ProcessingMode_STREAMED
		}
		x.reading, x.usage.sse = x.s.fromBody, x.obj.sse != nil
		resp.ModeOverride = &filterv3.ProcessingMode{ResponseBodyMode: mode}
		return resp
	}
	if x.entry == nil || x.respDone || !x.s.fromBody {
		return resp
	}
	// UsageFromBody (Envoy without the http_grpc logger or the usage
	// filters): read the body for token usage; STREAMED passes every chunk
	// on at once.
	ct := findHeader(hm, hdrContentType)
	switch {
	case strings.HasPrefix(ct, "text/event-stream"):
		x.usage.sse = true
	case strings.HasPrefix(ct, "application/json"):
	default:
		return resp
	}
	x.reading = true
	resp.ModeOverride = &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_STREAMED}
	return resp
}

// retriedMetadata tells Envoy's access log, on the response headers of a
// call Envoy retried, the key that answered and the attempts.
func (x *exchange) retriedMetadata(resp *extprocv3.ProcessingResponse) {
	resp.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			metaKeyID:     structpb.NewStringValue(x.call.KeyID),
			"model_final": structpb.NewStringValue(x.call.ModelFinal),
			"attempts":    structpb.NewNumberValue(float64(len(x.call.Attempts))),
		}}),
	}}
}

// poolRetryAfter gives an upstream 429 or 503 (the last attempt's, once
// the key was fed) the Retry-After of the earliest time a key of the pool
// is back, when every key is out: the upstream's own names one key only.
func (x *exchange) poolRetryAfter(resp *extprocv3.ProcessingResponse, now time.Time) {
	if (x.status != 429 && x.status != 503) || x.entry == nil {
		return
	}
	reasons, all := x.poolOut(x.snap.Pool(x.call.ModelOriginal), now)
	earliest := policy.EarliestUntil(reasons)
	if !all || earliest.IsZero() {
		return
	}
	m := headersMutation(resp)
	m.SetHeaders = append(m.SetHeaders, setHeader("retry-after", strconv.Itoa(retryAfter(earliest, now))))
}

// headersMutation is the header mutation of a response headers reply,
// added when it has none.
func headersMutation(resp *extprocv3.ProcessingResponse) *extprocv3.HeaderMutation {
	hr := resp.GetResponseHeaders()
	if hr.Response == nil {
		hr.Response = &extprocv3.CommonResponse{}
	}
	if hr.Response.HeaderMutation == nil {
		hr.Response.HeaderMutation = &extprocv3.HeaderMutation{}
	}
	return hr.Response.HeaderMutation
}

// applyFeedback applies an upstream outcome to key e's passive state.
// It returns the key's DisabledAt when this answer disabled it for auth
// (it was not disabled before), zero otherwise.
func applyFeedback(e *store.Entry, ej policy.EjectionSettings, o policy.Outcome, now time.Time) (disabledAt time.Time) {
	rt := e.RT
	var old policy.KeyState
	ns := rt.Update(func(s policy.KeyState) policy.KeyState { old = s; return policy.NextState(s, o, ej, now) })
	e.Observed(old, ns, now)
	if ns.EjectedUntil.After(old.EjectedUntil) {
		rt.AddEjection()
	}
	if ns.CooldownUntil.After(old.CooldownUntil) {
		rt.AddCooldown()
	}
	switch o.Kind {
	case policy.OutcomeSuccess, policy.OutcomeClient:
	default:
		rt.RecordError(now)
	}
	if !old.Disabled && ns.Disabled && ns.DisabledReason == policy.DisabledAuth {
		return ns.DisabledAt
	}
	return time.Time{}
}

// onResponseBody passes a response body chunk on, reading it for token
// usage when keymux asked for it (UsageFromBody).
func (x *exchange) onResponseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if x.reading {
		x.chunks++
		x.usage.feed(b.GetBody(), b.GetEndOfStream())
	}
	if x.obj.sse != nil {
		return responseBodyReply(nil, x.tagStream(b.GetBody(), b.GetEndOfStream()))
	}
	if x.obj.capture && b.GetEndOfStream() {
		x.obj.capture = false
		if body, mut := x.learnObject(b.GetBody()); body != nil {
			return responseBodyReply(mut, body)
		}
	}
	return responseBodyReply(nil, nil)
}

// finish runs once when the stream ends. A forwarded call waits for
// Envoy's access-log entry, which completes it (book); without an
// access-log stream it is booked at once from what keymux saw.
func (x *exchange) finish() {
	x.fromAttempts() // the attempts after the last response headers keymux saw
	x.unshare()
	x.call.End = x.s.now()
	switch x.phase {
	case phaseStart:
		return // Envoy opened the stream but nothing was answered
	case phaseForwarded, phaseResponse:
		if x.s.ledger.hold(&x.callRecord, x.call.End) {
			return
		}
	}
	x.book(nil)
}

// refuse answers the client locally with an OpenAI-style error.
func (x *exchange) refuse(e *apiError) *extprocv3.ProcessingResponse {
	x.phase = phaseLocal
	x.call.Local, x.call.Status, x.call.ErrorCode = true, e.Status, e.Code
	return e.response()
}

// withMetadata adds keymux's dynamic metadata (for Envoy's access log) to a
// forwarding reply.
func (x *exchange) withMetadata(resp *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	resp.DynamicMetadata = x.rep.metadataMsg().build([len(metadataFields)]string{
		x.callID, x.call.KeyID, x.call.ModelOriginal, x.call.ModelFinal, x.call.ClientID})
	return resp
}

// headersReply is headersReply in the exchange's storage.
func (x *exchange) headersReply(mut *extprocv3.HeaderMutation, reroute bool) *extprocv3.ProcessingResponse {
	return x.rep.headersMsg().build(mut, reroute)
}

// bodyReply is bodyReply in the exchange's storage.
func (x *exchange) bodyReply(mut *extprocv3.HeaderMutation, body []byte, reroute bool) *extprocv3.ProcessingResponse {
	return x.rep.bodyMsg().build(mut, body, reroute)
}

func tooLarge(limit int64) *apiError {
	return &apiError{Status: 413, Type: typeInvalidRequest, Code: "request_too_large",
		Message: "The request body is larger than " + strconv.FormatInt(limit, 10) + " bytes."}
}
