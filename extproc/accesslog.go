package extproc

import (
	"errors"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/policy"
)

// Dynamic metadata keymux reads back from Envoy's access log.
const (
	// UsageNamespace is the dynamic metadata namespace that Envoy's
	// json_to_metadata (JSON bodies) and sse_to_metadata (SSE bodies)
	// filters write what they read in a response body: the token counts
	// input_tokens and output_tokens (OpenAI's prompt_tokens and
	// completion_tokens, Anthropic's input_tokens and output_tokens), and
	// the error's code and type of a JSON error body (error_code,
	// error_type; "insufficient_quota" tells an exhausted quota from a
	// rate limit).
	UsageNamespace = "keymux.usage"

	metaCallID       = "call_id" // in MetadataNamespace: joins the entry to keymux's record
	metaKeyID        = "key_id"
	metaInputTokens  = "input_tokens"
	metaOutputTokens = "output_tokens"
	metaErrorCode    = "error_code"
	metaErrorType    = "error_type"
)

// envoyRecord is what keymux takes from one access-log entry: Envoy's own
// account of a request keymux forwarded.
type envoyRecord struct {
	callID, keyID string
	status        int    // 0: Envoy sent no response (the client left first)
	flags         uint32 // flag* bits
	failure       string // upstream transport failure reason
	// firstUpstreamByte and lastByte count from the request's start; zero
	// when the event did not happen.
	firstUpstreamByte, lastByte time.Duration
	bytesSent, bytesReceived    uint64 // response and request body bytes
	attempts                    uint32
	input, output               int64
	usageKnown                  bool
	errorCode, errorType        string
	end                         time.Time // Envoy's start time + duration (zero when unknown)
}

// Response flags keymux acts on (Envoy's short names).
const (
	flagUF    uint32 = 1 << iota // upstream connection failure
	flagUC                       // upstream connection termination
	flagUR                       // upstream remote reset
	flagURX                      // upstream retry limit exceeded
	flagUT                       // upstream request timeout
	flagUMSDR                    // upstream max stream duration reached
	flagUPE                      // upstream protocol error
	flagDF                       // DNS resolution failure
	flagUH                       // no healthy upstream
	flagUO                       // upstream overflow (circuit breaker)
	flagNR                       // no route
	flagLR                       // local reset
	flagDC                       // downstream connection termination
	flagDR                       // downstream remote reset
	flagSI                       // stream idle timeout
)

// readFlags maps Envoy's response flags to flag* bits.
func readFlags(f *accesslogv3.ResponseFlags) uint32 {
	var bits uint32
	for _, b := range []struct {
		on  bool
		bit uint32
	}{
		{f.GetUpstreamConnectionFailure(), flagUF},
		{f.GetUpstreamConnectionTermination(), flagUC},
		{f.GetUpstreamRemoteReset(), flagUR},
		{f.GetUpstreamRetryLimitExceeded(), flagURX},
		{f.GetUpstreamRequestTimeout(), flagUT},
		{f.GetUpstreamMaxStreamDurationReached(), flagUMSDR},
		{f.GetUpstreamProtocolError(), flagUPE},
		{f.GetDnsResolutionFailure(), flagDF},
		{f.GetNoHealthyUpstream(), flagUH},
		{f.GetUpstreamOverflow(), flagUO},
		{f.GetNoRouteFound() || f.GetNoClusterFound(), flagNR},
		{f.GetLocalReset(), flagLR},
		{f.GetDownstreamConnectionTermination(), flagDC},
		{f.GetDownstreamRemoteReset(), flagDR},
		{f.GetStreamIdleTimeout(), flagSI},
	} {
		if b.on {
			bits |= b.bit
		}
	}
	return bits
}

// Why an entry is not booked.
var (
	errNotForwarded = errors.New("no keymux call id: the request was not forwarded by keymux")
	errIntermediate = errors.New("not a final entry")
	errMalformed    = errors.New("malformed entry")
)

// readEntry translates an access-log entry. It fails with errNotForwarded
// for requests keymux answered itself (no call id), errIntermediate for
// periodic and upstream entries, and errMalformed for entries keymux cannot
// trust.
func readEntry(e *accesslogv3.HTTPAccessLogEntry) (envoyRecord, error) {
	var r envoyRecord
	cp := e.GetCommonProperties()
	if cp == nil {
		return r, errMalformed
	}
	switch cp.GetAccessLogType() {
	case accesslogv3.AccessLogType_NotSet, accesslogv3.AccessLogType_DownstreamEnd:
	default:
		return r, errIntermediate
	}
	if cp.GetIntermediateLogEntry() {
		return r, errIntermediate
	}
	meta := cp.GetMetadata().GetFilterMetadata()
	km := meta[MetadataNamespace].GetFields()
	id, ok := km[metaCallID]
	if !ok {
		return r, errNotForwarded
	}
	if r.callID = id.GetStringValue(); r.callID == "" {
		return r, errMalformed
	}
	r.keyID = km[metaKeyID].GetStringValue()
	if c := e.GetResponse().GetResponseCode(); c != nil {
		v := c.GetValue()
		if v < 100 || v > 599 {
			return r, errMalformed
		}
		r.status = int(v)
	}
	// AsDuration reads an absent duration as 0.
	r.firstUpstreamByte = cp.GetTimeToFirstUpstreamRxByte().AsDuration()
	r.lastByte = cp.GetTimeToLastDownstreamTxByte().AsDuration()
	if r.firstUpstreamByte < 0 || r.lastByte < 0 {
		return r, errMalformed
	}
	if d := cp.GetDuration(); d != nil {
		total := d.AsDuration()
		if total < 0 {
			return r, errMalformed
		}
		if r.lastByte == 0 {
			r.lastByte = total
		}
		if st := cp.GetStartTime(); st != nil {
			r.end = st.AsTime().Add(total)
		}
	}
	r.flags = readFlags(cp.GetResponseFlags())
	r.failure = cp.GetUpstreamTransportFailureReason()
	r.attempts = cp.GetUpstreamRequestAttemptCount()
	r.bytesSent = e.GetResponse().GetResponseBodyBytes()
	r.bytesReceived = e.GetRequest().GetRequestBodyBytes()

	um := meta[UsageNamespace].GetFields()
	var errIn, errOut error
	r.input, r.usageKnown, errIn = metaTokens(um[metaInputTokens], r.usageKnown)
	r.output, r.usageKnown, errOut = metaTokens(um[metaOutputTokens], r.usageKnown)
	if errIn != nil || errOut != nil {
		// The upstream's usage is not believed; Envoy's account of the
		// call still is.
		r.input, r.output, r.usageKnown = 0, 0, false
	}
	r.errorCode, r.errorType = um[metaErrorCode].GetStringValue(), um[metaErrorType].GetStringValue()
	return r, nil
}

// maxTokens bounds a token count keymux believes (2^40).
const maxTokens = 1 << 40

// metaTokens reads a token count written by json_to_metadata or
// sse_to_metadata: a number (type NUMBER) or a decimal string (type
// STRING, the filters' default). Absent: (0, known). A negative count reads
// as 0 (as the body scanner reads it); a value that is not a whole number
// up to 2^40 is an error: the entry's usage is then not believed.
func metaTokens(v *structpb.Value, known bool) (int64, bool, error) {
	if v == nil {
		return 0, known, nil
	}
	var f float64
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		f = k.NumberValue
	case *structpb.Value_StringValue:
		n, err := strconv.ParseInt(k.StringValue, 10, 64)
		if err != nil {
			return 0, known, errMalformed
		}
		f = float64(n)
	default:
		return 0, known, errMalformed
	}
	if f > maxTokens || f != float64(int64(f)) {
		return 0, known, errMalformed
	}
	if f < 0 {
		f = 0
	}
	return int64(f), true, nil
}

// clientAbort reports whether the client went away before the response
// ended: not the key's fault.
func (r *envoyRecord) clientAbort() bool { return r.flags&(flagDC|flagDR) != 0 }

// upstreamFailure is the key's outcome of a failure Envoy saw on the
// upstream (connect failure, reset, timeout, protocol error, DNS), with
// ok false when Envoy saw none, or the failure is not the key's (no route,
// no healthy host, circuit breaker, a local reset, the client leaving).
func (r *envoyRecord) upstreamFailure() (policy.Outcome, bool) {
	if r.clientAbort() {
		return policy.Outcome{}, false
	}
	switch {
	case r.flags&(flagUT|flagUMSDR) != 0:
		return policy.Outcome{Kind: policy.OutcomeTimeout, Status: r.status}, true
	// URX alone is not a failure: Envoy's retries ran out on a retriable
	// answer, whose status already fed the key that gave it.
	case r.flags&(flagUF|flagUC|flagUR|flagUPE|flagDF) != 0:
		return policy.Outcome{Kind: policy.OutcomeServer, Status: r.status}, true
	}
	return policy.Outcome{}, false
}
