package extproc

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// callRecord is the part of an exchange that outlives its Process stream:
// what booking the call reads (with Envoy's access-log entry, or from what
// keymux saw alone). A forwarded call waits for its entry in a pooled copy
// (detach), so the exchange itself — request headers, body state, reply
// storage, the attempts' bookkeeping — is released when its stream ends.
type callRecord struct {
	s         *Server
	settings  *policy.Settings
	phase     phase
	entry     *store.Entry
	client    *policy.Client
	status    int
	usage     usageScanner
	reading   bool     // the response body is read (mode overridden to STREAMED: UsageFromBody)
	chunks    int      // response body messages received while reading
	respDone  bool     // the response headers ended the response
	callID    string   // joins Envoy's access-log entry to this record (set when forwarded)
	callIDBuf [32]byte // the bytes of callID (written once)
	routed    string   // the key id the router-level metadata named first (set when forwarded)
	// disabledAt is the key's DisabledAt when the call's answer (its
	// response headers, fed by keymux) disabled the key for auth; zero
	// when it did not (blockModel).
	disabledAt time.Time
	call       telemetry.Call
}

var recordPool = sync.Pool{New: func() any { return new(callRecord) }}

// detach returns a pooled copy of c for the ledger to hold: its call id
// in its own buffer (c's is the exchange's memory), without the body
// scanner's buffer (the stream ended: nothing more is fed).
func (c *callRecord) detach() *callRecord {
	d := recordPool.Get().(*callRecord)
	*d = *c
	if n := copy(d.callIDBuf[:], c.callID); n == len(c.callID) && n > 0 {
		d.callID = unsafe.String(&d.callIDBuf[0], n)
	} else {
		d.callID = strings.Clone(c.callID)
	}
	d.usage.buf = nil
	return d
}

// release gives a detached record back to its pool once it is booked.
func (c *callRecord) release() {
	*c = callRecord{}
	recordPool.Put(c)
}

// namesKey reports whether an access-log entry's key id is this call's:
// the key the router-level metadata named, or the one that answered last.
func (c *callRecord) namesKey(id string) bool { return id == c.routed || id == c.call.KeyID }

// feedback records an upstream outcome's error class on the call and
// applies the outcome to the chosen key's passive state.
func (c *callRecord) feedback(o policy.Outcome, now time.Time) {
	c.call.ErrorCode = o.Kind.Class()
	c.keyFeedback(o, now)
}

// keyFeedback applies an upstream outcome to the chosen key's passive state.
func (c *callRecord) keyFeedback(o policy.Outcome, now time.Time) {
	if c.entry == nil {
		return
	}
	applyFeedback(c.entry, c.settings.Ejection, o, now)
}

// book completes the call with Envoy's entry (nil: none came) and hands it
// to the observer.
func (c *callRecord) book(rec *envoyRecord) {
	if rec != nil {
		c.fromEntry(rec)
	} else {
		c.fromStream()
	}
	if c.call.ErrorCode == "" && (c.call.Truncated || c.call.Status == 0) {
		c.call.ErrorCode = policy.ClassStreamCut // cut, or no response at all
	}
	c.s.observer.End(&c.call)
}

// fromEntry takes Envoy's account of the call: its duration and status, a
// failure keymux did not see (a local reply since Envoy 1.33.1 never
// reaches ext_proc), a client abort, and the token usage Envoy's filters
// read from the response body.
func (c *callRecord) fromEntry(r *envoyRecord) {
	now := c.s.now()
	if c.s.log.Enabled(context.Background(), slog.LevelDebug) {
		c.s.log.Debug("access-log entry", "call_id", r.callID, "key_id", r.keyID, "status", r.status,
			"flags", r.flags, "upstream_failure", r.failure, "attempts", r.attempts,
			"first_upstream_byte", r.firstUpstreamByte, "last_byte", r.lastByte,
			"bytes_sent", r.bytesSent, "bytes_received", r.bytesReceived)
	}
	if r.lastByte > 0 {
		c.call.End = c.call.Start.Add(r.lastByte)
	}
	if c.call.Status == 0 && r.status != 0 {
		// A reply of Envoy's own, which keymux never saw.
		c.call.Status = r.status
		c.call.ErrorCode = policy.StatusKind(r.status).Class()
	}
	switch o, failed := r.upstreamFailure(); {
	case r.clientAbort() && c.status == http.StatusSwitchingProtocols:
		// An upgraded stream (Realtime) ends when a side closes: no cut.
	case r.clientAbort():
		c.call.Truncated = true // the client left: not the key's fault
	case failed:
		c.feedback(o, now)
		c.call.Truncated = c.phase == phaseResponse // cut after the headers
	case c.phase == phaseForwarded && r.status == 0:
		c.call.Truncated = true
	}
	if !r.usageKnown && r.errorCode == "" && r.errorType == "" {
		// No usage filters in Envoy: what keymux read (UsageFromBody).
		c.bodyUsage(now)
		return
	}
	if r.usageKnown {
		c.bookUsage(r.input, r.output, now)
	}
	c.errorBody(c.call.Status, r.errorCode, r.errorType, now)
}

// errorBody applies what an upstream error body said (its error code and
// type, read by Envoy's filters or by keymux) to the answering key: an
// exhausted quota parks the key; a model the key cannot use takes it out
// of that model's pool until its next probe.
func (c *callRecord) errorBody(status int, code, typ string, now time.Time) {
	switch {
	case policy.QuotaExhausted(status, code, typ):
		c.feedback(policy.Outcome{Kind: policy.OutcomeQuota, Status: status}, now)
	case policy.ModelUnavailable(status, code, typ) && c.entry != nil:
		blockModel(c.entry, c.call.ModelFinal, status, now, c.disabledAt)
	}
}

// fromStream completes a call from what keymux saw on its Process stream
// alone (no access-log entry): a response that never came, or one cut
// before its end, and the usage read from a body keymux asked for.
func (c *callRecord) fromStream() {
	switch c.phase {
	case phaseForwarded:
		c.call.Truncated = true // no response reached keymux
	case phaseResponse:
		// The body ended early (stream cut, client abort), or an SSE
		// stream closed without its terminator. (No body message at all
		// means keymux did not read it, or Envoy did not take the mode
		// override — allow_mode_override off — not a cut.)
		c.call.Truncated = c.reading && c.chunks > 0 && (!c.usage.eos || (c.usage.sse && !c.usage.done && c.status < 300))
	}
	c.bodyUsage(c.s.now())
}

// bodyUsage books the usage and quota error read from a whole response
// body (UsageFromBody; nothing otherwise).
func (c *callRecord) bodyUsage(now time.Time) {
	if !c.usage.eos {
		return
	}
	if c.usage.known {
		c.bookUsage(c.usage.input, c.usage.output, now)
	}
	c.errorBody(c.status, c.usage.errorCode, c.usage.errorType, now)
}

// bookUsage counts a call's tokens on the call, its key and its client.
func (c *callRecord) bookUsage(input, output int64, now time.Time) {
	c.call.InputTokens, c.call.OutputTokens, c.call.UsageKnown = input, output, true
	tokens := uint64(input + output)
	c.entry.RT.AddUsage(tokens)
	c.entry.RT.MinuteTokens.Add(now, tokens)
	if c.client != nil {
		c.s.clientMinute(c.client.ID).tokens.Add(now, tokens)
	}
}
