package store

import (
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
)

// errBuckets is the number of one-second buckets of the error window.
const errBuckets = 300

// Runtime is the mutable state of one key, shared by every configuration
// generation that contains the key id. Every method is lock-free and safe for
// concurrent use; only Update allocates (and RecordError, once: at the key's
// first error).
type Runtime struct {
	state atomic.Pointer[policy.KeyState]
	// models holds the key's per-model states (modelstate.go), copied on
	// write.
	models   atomic.Pointer[[]*ModelState]
	usage    atomic.Uint64
	requests atomic.Uint64
	errors   atomic.Uint64
	// lastErr is the unix second of the latest error: keys without a recent
	// error answer ErrorsInWindow with one load.
	lastErr atomic.Int64
	// Requests and tokens of the current minute, for the key's limits
	// (rpm, tpm). They count what this instance sent.
	MinuteRequests MinuteCounter
	MinuteTokens   MinuteCounter
	// Passive-health transitions, for metrics.
	ejections atomic.Uint64
	cooldowns atomic.Uint64
	// Provider rate-limit header values that did not parse (ignored).
	badHeaders atomic.Uint64
	// window is the error window's buckets, allocated at the key's first
	// error: 2.4 KB per key that most keys of a large pool never need.
	window atomic.Pointer[errWindow]
}

// errWindow is one bucket per second of the error window. Each bucket
// packs the unix second it counts (high 32 bits) and the number of errors
// in that second (low 32 bits), so that moving a bucket to a new second
// and counting are one CAS.
type errWindow [errBuckets]atomic.Uint64

// stateEpoch counts the changes of any key's state that can make it
// eligible or ineligible (Update, EligibilityChanged). The request path
// keeps each pool's eligible set until the epoch moves or the earliest
// time-bound exclusion (a cooldown, an ejection) ends, instead of checking
// every key of the pool per request.
var stateEpoch atomic.Uint64

// StateEpoch returns the number of eligibility changes so far (of every
// key of every store in the process: a change anywhere only costs the
// request path a rebuild).
func StateEpoch() uint64 { return stateEpoch.Load() }

// EligibilityChanged records a change of an input of eligibility kept
// outside the key's State (it moves StateEpoch).
func EligibilityChanged() { stateEpoch.Add(1) }

// eligibilityMoved reports whether the fields policy.Eligible reads
// differ between a and b.
func eligibilityMoved(a, b *policy.KeyState) bool {
	return a.Disabled != b.Disabled || a.DisabledReason != b.DisabledReason || a.ProbeFailed != b.ProbeFailed ||
		!a.CooldownUntil.Equal(b.CooldownUntil) || !a.EjectedUntil.Equal(b.EjectedUntil) ||
		!a.SlowStartFrom.Equal(b.SlowStartFrom)
}

// NewRuntime returns the state of a key never used.
func NewRuntime() *Runtime { return &Runtime{} }

// State returns the key's current passive health.
func (r *Runtime) State() policy.KeyState {
	if p := r.state.Load(); p != nil {
		return *p
	}
	return policy.KeyState{}
}

// Update applies f to the current state with compare-and-swap, retrying
// when another goroutine updated the state meanwhile (f may run more than
// once and must be pure). It returns the state stored.
func (r *Runtime) Update(f func(policy.KeyState) policy.KeyState) policy.KeyState {
	for {
		old := r.state.Load()
		var cur policy.KeyState
		if old != nil {
			cur = *old
		}
		next := f(cur)
		if r.state.CompareAndSwap(old, &next) {
			if eligibilityMoved(&cur, &next) {
				stateEpoch.Add(1)
			}
			return next
		}
	}
}

// AddUsage adds tokens to the key's usage.
func (r *Runtime) AddUsage(tokens uint64) { r.usage.Add(tokens) }

// Usage returns the tokens used through the key.
func (r *Runtime) Usage() uint64 { return r.usage.Load() }

// AddRequest counts one request sent with the key.
func (r *Runtime) AddRequest() { r.requests.Add(1) }

// AddEjection counts one ejection of the key after upstream failures.
func (r *Runtime) AddEjection() { r.ejections.Add(1) }

// Ejections returns how often the key was ejected.
func (r *Runtime) Ejections() uint64 { return r.ejections.Load() }

// AddCooldown counts one rate-limit cooldown of the key.
func (r *Runtime) AddCooldown() { r.cooldowns.Add(1) }

// Cooldowns returns how often the key cooled down after a 429.
func (r *Runtime) Cooldowns() uint64 { return r.cooldowns.Load() }

// AddBadHeaders counts n provider rate-limit header values that did not
// parse.
func (r *Runtime) AddBadHeaders(n uint64) { r.badHeaders.Add(n) }

// BadHeaders returns the provider rate-limit header values that did not
// parse.
func (r *Runtime) BadHeaders() uint64 { return r.badHeaders.Load() }

// Requests returns the requests sent with the key.
func (r *Runtime) Requests() uint64 { return r.requests.Load() }

// Errors returns every error recorded for the key.
func (r *Runtime) Errors() uint64 { return r.errors.Load() }

// RecordError counts one error at now, in the total and in the sliding
// window. An error older than the window's span counts in the total only.
func (r *Runtime) RecordError(now time.Time) {
	r.errors.Add(1)
	for {
		last := r.lastErr.Load()
		if now.Unix() <= last || r.lastErr.CompareAndSwap(last, now.Unix()) {
			break
		}
	}
	w := r.window.Load()
	if w == nil {
		r.window.CompareAndSwap(nil, new(errWindow))
		w = r.window.Load()
	}
	sec := uint64(uint32(now.Unix()))
	b := &w[sec%errBuckets]
	for {
		v := b.Load()
		switch s := v >> 32; {
		case s == sec:
			if v&0xffffffff == 0xffffffff { // saturated
				return
			}
			if b.CompareAndSwap(v, v+1) {
				return
			}
		case s < sec:
			if b.CompareAndSwap(v, sec<<32|1) {
				return
			}
		default: // the bucket already counts a later second
			return
		}
	}
}

// ErrorsInWindow returns the errors recorded in the window seconds ending
// with now's second (at most MaxErrorWindow).
func (r *Runtime) ErrorsInWindow(now time.Time, window time.Duration) uint64 {
	n := int64((window + time.Second - 1) / time.Second)
	if n <= 0 {
		return 0
	}
	if n > errBuckets {
		n = errBuckets
	}
	sec := now.Unix()
	w := r.window.Load()
	if w == nil || sec-r.lastErr.Load() >= n {
		return 0 // no error within the window
	}
	var sum uint64
	for i := int64(0); i < n; i++ {
		s := uint64(uint32(sec - i))
		if v := w[s%errBuckets].Load(); v>>32 == s {
			sum += v & 0xffffffff
		}
	}
	return sum
}
