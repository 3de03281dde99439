package extproc

import (
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/keymux/keymux/policy"
)

// Header names keymux reads or writes.
const (
	hdrAuthority     = ":authority"
	hdrPath          = ":path"
	hdrMethod        = ":method"
	hdrStatus        = ":status"
	hdrAuthorization = policy.HeaderAuthorization
	hdrXAPIKey       = policy.HeaderXAPIKey
	hdrContentLength = "content-length"
	hdrContentType   = "content-type"
	hdrRequestID     = "x-request-id"
	hdrTraceparent   = "traceparent"
	hdrTracestate    = "tracestate"
	hdrAnthropicVer  = policy.HeaderAnthropicVersion
	hdrAffinity      = "x-keymux-affinity"
	hdrUpgrade       = "upgrade"
	hdrConnection    = "connection"
	hdrWSProtocol    = "sec-websocket-protocol"

	// HeaderUpstream selects Envoy's upstream cluster: "https" or "http"
	// (envoy/envoy.yaml routes on it and removes it before the upstream).
	HeaderUpstream = "x-keymux-upstream"
	// UploadSuffix follows the scheme in HeaderUpstream for an upload
	// ("https-upload"): Envoy's upload routes forward it without keeping
	// a copy of the body for retries.
	UploadSuffix = "-upload"

	// MetadataNamespace is the dynamic metadata namespace keymux writes
	// (listed in the filter's metadata_options.receiving_namespaces).
	MetadataNamespace = "keymux"

	// JWTMetadataNamespace is jwt_authn's dynamic metadata namespace, which
	// the filter forwards to keymux (metadata_options.forwarding_namespaces);
	// JWTPayloadKey is the key of the verified claims in it (the provider's
	// payload_in_metadata).
	JWTMetadataNamespace = "envoy.filters.http.jwt_authn"
	JWTPayloadKey        = "jwt_payload"
)

// removedHeaders are removed from every proxied request: the client's
// credentials (and any header a provider takes a key in) never reach an
// upstream, nor does keymux's own affinity hint; and a client's retry
// conditions never widen the route's retry_policy (an Envoy without
// use_remote_address, as in an ingress snippet, keeps them).
var removedHeaders = func() []string {
	out := []string{hdrAuthorization, hdrXAPIKey}
	for _, h := range policy.CredentialHeaders() {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return append(out, hdrAffinity, "x-envoy-retry-on", "x-envoy-retriable-status-codes")
}()

// requestHeaders are the request headers keymux looks at, read in one pass.
type requestHeaders struct {
	method, path, authority string
	authorization, xAPIKey  string
	repeatedCredential      bool // authorization or x-api-key sent twice
	contentType             string
	contentLength           int64 // -1 when absent
	requestID               string
	traceparent, tracestate string
	anthropicVersion        string
	affinity                string // x-keymux-affinity
	upgrade                 string // the upgrade header ("websocket"); an upgrade when connection names it (isUpgrade)
	connection              string
	wsProtocol              string // sec-websocket-protocol
}

func readRequestHeaders(m *corev3.HeaderMap) requestHeaders {
	h := requestHeaders{contentLength: -1}
	if m == nil {
		return h
	}
	// Only the headers keymux reads are converted to strings: clients send
	// many more (user-agent, SDK telemetry) that would each cost an allocation.
	var seenAuth, seenKey bool
	for _, hv := range m.GetHeaders() {
		var dst *string
		switch k := hv.GetKey(); k {
		case hdrMethod:
			dst = &h.method
		case hdrPath:
			dst = &h.path
		case hdrAuthority:
			dst = &h.authority
		case hdrAuthorization:
			h.repeatedCredential = h.repeatedCredential || seenAuth
			dst, seenAuth = &h.authorization, true
		case hdrXAPIKey:
			h.repeatedCredential = h.repeatedCredential || seenKey
			dst, seenKey = &h.xAPIKey, true
		case hdrContentType:
			dst = &h.contentType
		case hdrContentLength:
			h.contentLength = parseContentLength(headerValue(hv))
			continue
		case hdrRequestID:
			dst = &h.requestID
		case hdrTraceparent:
			dst = &h.traceparent
		case hdrTracestate:
			dst = &h.tracestate
		case hdrAnthropicVer:
			dst = &h.anthropicVersion
		case hdrAffinity:
			dst = &h.affinity
		case hdrUpgrade:
			dst = &h.upgrade
		case hdrConnection:
			dst = &h.connection
		case hdrWSProtocol:
			dst = &h.wsProtocol
		default:
			continue
		}
		*dst = headerValue(hv)
	}
	return h
}

// headerValue reads a header as Envoy sends it: raw_value, falling back to
// value for older Envoys.
func headerValue(hv *corev3.HeaderValue) string {
	if raw := hv.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return hv.GetValue()
}

// findHeader returns the first value of name in m.
func findHeader(m *corev3.HeaderMap, name string) string {
	for _, hv := range m.GetHeaders() {
		if hv.GetKey() == name {
			return headerValue(hv)
		}
	}
	return ""
}

func parseContentLength(v string) int64 {
	if v == "" || len(v) > 18 {
		return -1
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// setHeader builds an overwrite (append=false) header option with raw_value,
// the only form Envoy reads (docs/envoy-extproc.md, "Applying a HeaderMutation").
func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
	}
}

// isUpgrade reports an HTTP/1.1 upgrade request: an upgrade header and a
// connection header naming it.
func (h *requestHeaders) isUpgrade() bool {
	if h.upgrade == "" {
		return false
	}
	for t := range strings.SplitSeq(h.connection, ",") {
		if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
			return true
		}
	}
	return false
}
