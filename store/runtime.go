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
// concurrent use; only Update allocates.
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
	// Each bucket packs the unix second it counts (high 32 bits) and the
	// number of errors in that second (low 32 bits), so that moving a
	// bucket to a new second and counting are one CAS.
	buckets [errBuckets]atomic.Uint64
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
	sec := uint64(uint32(now.Unix()))
	b := &r.buckets[sec%errBuckets]
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
	if sec-r.lastErr.Load() >= n {
		return 0 // no error within the window
	}
	var sum uint64
	for i := int64(0); i < n; i++ {
		s := uint64(uint32(sec - i))
		if v := r.buckets[s%errBuckets].Load(); v>>32 == s {
			sum += v & 0xffffffff
		}
	}
	return sum
}
