package emulator

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// retry_on conditions (RetryPolicy::RETRY_ON_*).
const (
	retryOn5xx uint32 = 1 << iota
	retryOnGatewayError
	retryOnConnectFailure
	retryOnRetriable4xx
	retryOnRefusedStream
	retryOnRetriableStatusCodes
	retryOnReset
	retryOnResetBeforeRequest
	retryOnEnvoyRateLimited
)

// retryOnNames are the retry_on values the emulator knows
// (RetryStateImpl::parseRetryOn); the others make New fail when configured
// and are ignored in x-envoy-retry-on, as Envoy ignores unknown values.
var retryOnNames = map[string]uint32{
	"5xx":                    retryOn5xx,
	"gateway-error":          retryOnGatewayError,
	"connect-failure":        retryOnConnectFailure,
	"retriable-4xx":          retryOnRetriable4xx,
	"refused-stream":         retryOnRefusedStream,
	"retriable-status-codes": retryOnRetriableStatusCodes,
	"reset":                  retryOnReset,
	"reset-before-request":   retryOnResetBeforeRequest,
	"envoy-ratelimited":      retryOnEnvoyRateLimited,
}

// The request headers the router consumes when it creates its retry state
// (RetryStateImpl::create), whether or not it retries.
var retryRequestHeaders = []string{
	"x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
	"x-envoy-hedge-on-per-try-timeout", "x-envoy-retriable-header-names",
	"x-envoy-retriable-status-codes", "x-envoy-upstream-rq-per-try-timeout-ms",
}

// parseRetryOn splits a retry_on list (comma separated, blanks trimmed).
func parseRetryOn(s string) (on uint32, unknown []string) {
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		bit, ok := retryOnNames[v]
		if !ok {
			unknown = append(unknown, v)
			continue
		}
		on |= bit
	}
	return on, unknown
}

// checkRetryPolicy refuses what the emulator would silently get wrong.
func checkRetryPolicy(p *routev3.RetryPolicy) error {
	if p == nil {
		return nil
	}
	if _, unknown := parseRetryOn(p.GetRetryOn()); len(unknown) > 0 {
		return fmt.Errorf("retry_policy.retry_on %q is not emulated", strings.Join(unknown, ","))
	}
	switch {
	case len(p.GetRetriableHeaders()) > 0, len(p.GetRetriableRequestHeaders()) > 0,
		p.GetRateLimitedRetryBackOff() != nil, p.GetPerTryIdleTimeout() != nil,
		p.GetRetryPriority() != nil, len(p.GetRetryHostPredicate()) > 0, len(p.GetRetryOptionsPredicates()) > 0:
		return errors.New("retry_policy: retriable_headers, retriable_request_headers, rate_limited_retry_back_off, " +
			"per_try_idle_timeout, retry_priority, retry_host_predicate and retry_options_predicates are not emulated")
	}
	return nil
}

// retryPolicy is the route's retry policy, or its virtual host's.
func (r *route) retryPolicy() *routev3.RetryPolicy {
	if p := r.cfg.GetRoute().GetRetryPolicy(); p != nil {
		return p
	}
	return r.vh.cfg.GetRetryPolicy()
}

// perTryTimeout is the policy's per_try_timeout, overridden by the
// x-envoy-upstream-rq-per-try-timeout-ms request header; 0 when it is not
// shorter than the route timeout (FilterUtility::finalTimeout).
func perTryTimeout(p *routev3.RetryPolicy, h *headerMap, total time.Duration) time.Duration {
	var d time.Duration
	if p.GetPerTryTimeout() != nil {
		d = p.GetPerTryTimeout().AsDuration()
	}
	if v, ok := h.get("x-envoy-upstream-rq-per-try-timeout-ms"); ok {
		if ms, err := strconv.ParseUint(strings.TrimSpace(v), 10, 63); err == nil {
			d = time.Duration(ms) * time.Millisecond
		}
	}
	if total > 0 && d >= total {
		d = 0
	}
	return d
}

// retryState is RetryStateImpl for one request.
type retryState struct {
	on        uint32
	remaining uint64
	codes     []uint64
	next, max uint64 // JitteredExponentialBackOffStrategy, in ms
}

// newRetryState merges the route's policy with the x-envoy-* request
// headers and removes those headers; nil when nothing could be retried.
func newRetryState(p *routev3.RetryPolicy, h *headerMap) *retryState {
	hdrOn, hasOn := h.get("x-envoy-retry-on")
	_, hasGrpcOn := h.get("x-envoy-retry-grpc-on")
	maxRetries, hasMax := h.get("x-envoy-max-retries")
	codes, hasCodes := h.get("x-envoy-retriable-status-codes")
	for _, k := range retryRequestHeaders {
		h.remove(k)
	}
	if !hasOn && !hasGrpcOn && p.GetRetryOn() == "" {
		return nil
	}
	st := &retryState{remaining: 1, next: 25}
	st.on, _ = parseRetryOn(p.GetRetryOn())
	if p.GetNumRetries() != nil {
		st.remaining = uint64(p.GetNumRetries().GetValue())
	}
	for _, c := range p.GetRetriableStatusCodes() {
		st.codes = append(st.codes, uint64(c))
	}
	if bo := p.GetRetryBackOff(); bo != nil && bo.GetBaseInterval() != nil {
		st.next = uint64(bo.GetBaseInterval().AsDuration().Milliseconds())
	}
	st.max = st.next * 10
	if bo := p.GetRetryBackOff(); bo != nil && bo.GetMaxInterval() != nil {
		st.max = uint64(bo.GetMaxInterval().AsDuration().Milliseconds())
	}
	st.next = max(st.next, 1)
	if hasOn {
		on, _ := parseRetryOn(hdrOn)
		st.on |= on
	}
	if st.on != 0 && hasMax {
		if n, err := strconv.ParseUint(strings.TrimSpace(maxRetries), 10, 64); err == nil {
			st.remaining = n
		}
	}
	if hasCodes {
		for _, c := range strings.Split(codes, ",") {
			if n, err := strconv.ParseUint(strings.TrimSpace(c), 10, 32); err == nil {
				st.codes = append(st.codes, n)
			}
		}
	}
	return st
}

// wouldRetryHeaders is RetryStateImpl::wouldRetryFromHeaders for an
// HTTP/1.1 (non-gRPC) response.
func (st *retryState) wouldRetryHeaders(h *headerMap) bool {
	if h.has("x-envoy-ratelimited") {
		return st.on&retryOnEnvoyRateLimited != 0
	}
	code, _ := strconv.ParseUint(h.value(":status"), 10, 64)
	switch {
	case st.on&retryOn5xx != 0 && code >= 500 && code < 600,
		st.on&retryOnGatewayError != 0 && code >= 502 && code <= 504,
		st.on&retryOnRetriable4xx != 0 && code == 409:
		return true
	}
	if st.on&retryOnRetriableStatusCodes != 0 {
		for _, c := range st.codes {
			if c == code {
				return true
			}
		}
	}
	return false
}

// resetReason is why an attempt ended without response headers.
type resetReason int

const (
	resetConnectFailure resetReason = iota // no connection (UF)
	resetTermination                       // the connection closed before headers (UC)
	resetLocal                             // per-try timeout
)

// wouldRetryReset is RetryStateImpl::wouldRetryFromReset; started tells
// whether any attempt sent bytes upstream.
func (st *retryState) wouldRetryReset(r resetReason, started bool) bool {
	switch {
	case r == resetConnectFailure && st.on&retryOnConnectFailure != 0,
		st.on&retryOnResetBeforeRequest != 0 && !started,
		st.on&(retryOnReset|retryOn5xx|retryOnGatewayError) != 0:
		return true
	}
	// refused-stream needs an HTTP/2 REFUSED_STREAM: never on HTTP/1.1.
	return false
}

type retryStatus int

const (
	retryNo retryStatus = iota
	retryYes
	retryLimitExceeded
)

// shouldRetry is RetryStateImpl::shouldRetry (no circuit breakers).
func (st *retryState) shouldRetry(would bool) retryStatus {
	switch {
	case !would:
		return retryNo
	case st.remaining == 0:
		return retryLimitExceeded
	}
	st.remaining--
	return retryYes
}

// backoff is JitteredExponentialBackOffStrategy::nextBackOffMs: a random
// wait below the current interval, which doubles up to the maximum.
func (st *retryState) backoff(randN func(uint64) uint64) time.Duration {
	b := st.next
	if st.next < st.max/2 {
		st.next *= 2
	} else {
		st.next = st.max
	}
	return time.Duration(min(randN(b), st.max)) * time.Millisecond
}

func defaultRandN(n uint64) uint64 { return rand.Uint64N(n) }

// replayBody is the router's copy of the request body for retries: it
// keeps what was read from the source up to limit bytes; beyond that it
// gives up (retries are off) and the attempt reading goes on unbuffered.
type replayBody struct {
	mu    sync.Mutex
	src   io.Reader
	buf   []byte
	limit int
	over  bool
	eof   bool
	err   error
}

func newReplayBody(src io.Reader, limit int) *replayBody {
	return &replayBody{src: src, limit: limit}
}

// overflowed reports that the body went past the limit: no replay.
func (rb *replayBody) overflowed() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.over
}

// reader is one attempt's view of the body, from its start.
func (rb *replayBody) reader() *attemptBody { return &attemptBody{rb: rb} }

var errAttemptOver = errors.New("emulator: upstream attempt ended")

// attemptBody reads the buffered bytes, then the source (buffering them).
// Once closed (the attempt is over) it fails without touching the source.
type attemptBody struct {
	rb     *replayBody
	off    int
	closed atomic.Bool
}

func (a *attemptBody) Read(p []byte) (int, error) {
	if a.closed.Load() {
		return 0, errAttemptOver
	}
	rb := a.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if a.closed.Load() {
		return 0, errAttemptOver
	}
	if !rb.over && a.off < len(rb.buf) {
		n := copy(p, rb.buf[a.off:])
		a.off += n
		return n, nil
	}
	switch {
	case rb.eof:
		return 0, io.EOF
	case rb.err != nil:
		return 0, rb.err
	}
	n, err := rb.src.Read(p)
	if !rb.over {
		if len(rb.buf)+n > rb.limit {
			rb.over, rb.buf = true, nil
		} else {
			rb.buf = append(rb.buf, p[:n]...)
			a.off += n
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		rb.eof = true
	case err != nil:
		rb.err = err
	}
	return n, err
}

func (a *attemptBody) Close() error {
	a.closed.Store(true)
	return nil
}
