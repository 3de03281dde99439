package store

import (
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
)

// MaxModelStates bounds the models one key keeps a state for: model names
// come from clients, and a key that lists no model serves any. Answers for
// further models still feed the key's own state; they just leave no
// per-model trace.
const MaxModelStates = 32

// headroomTTL is how long a remaining count without a reset time is
// trusted.
const headroomTTL = time.Minute

// ModelState is the state of one key for one (upstream) model: the
// provider's rate-limit headroom as keymux estimates it, a 429 cooldown
// for that model alone, and whether the key may not serve the model at all
// (a 403/404 for it) until its next probe. Every field is an atomic: the
// hot path reads and updates it without a lock or an allocation.
type ModelState struct {
	Model string

	requests, tokens budget
	// cooldown is the unix-nanosecond end of a 429 cooldown for the model.
	cooldown atomic.Int64
	// blockedAt is when the provider said the key cannot use the model
	// (unix nanoseconds, 0: never); a probe after it lifts the block.
	blockedAt atomic.Int64
}

// budget is one rate limit: what remains until (unix nanoseconds) when.
type budget struct {
	limit, remaining, until atomic.Int64
}

func (b *budget) observe(v policy.Budget, now time.Time) {
	if !v.Known {
		return
	}
	until := v.Reset
	if until.IsZero() || !until.After(now) {
		until = now.Add(headroomTTL)
		if !v.Reset.IsZero() { // the limit is whole again: only the limit is news
			until = now
		}
	}
	b.limit.Store(v.Limit)
	b.remaining.Store(v.Remaining)
	b.until.Store(until.UnixNano())
}

// read returns the budget at now: unknown once its reset has passed.
func (b *budget) read(now time.Time) policy.Budget {
	until := b.until.Load()
	if until == 0 || now.UnixNano() >= until {
		return policy.Budget{Limit: b.limit.Load()}
	}
	return policy.Budget{Known: true, Limit: b.limit.Load(), Remaining: max(b.remaining.Load(), 0), Reset: time.Unix(0, until)}
}

func (b *budget) take(n int64, now time.Time) {
	if u := b.until.Load(); u != 0 && now.UnixNano() < u {
		b.remaining.Add(-n)
	}
}

// Observe records the headroom an answer reported (the provider's word
// replaces keymux's estimate).
func (m *ModelState) Observe(h policy.Headroom, now time.Time) {
	m.requests.observe(h.Requests, now)
	m.tokens.observe(h.Tokens, now)
}

// Take counts one request estimated at est tokens against the headroom.
func (m *ModelState) Take(est int64, now time.Time) {
	m.requests.take(1, now)
	m.tokens.take(est, now)
}

// Headroom returns the estimated headroom at now.
func (m *ModelState) Headroom(now time.Time) policy.Headroom {
	return policy.Headroom{Requests: m.requests.read(now), Tokens: m.tokens.read(now)}
}

// CoolDown keeps the key off the model until until (a later cooldown
// already set stays) and reports whether the cooldown grew.
func (m *ModelState) CoolDown(until time.Time) bool {
	u := until.UnixNano()
	for {
		old := m.cooldown.Load()
		if old >= u {
			return false
		}
		if m.cooldown.CompareAndSwap(old, u) {
			return true
		}
	}
}

// CooldownUntil returns the end of the model's cooldown (zero: none).
func (m *ModelState) CooldownUntil() time.Time {
	if u := m.cooldown.Load(); u != 0 {
		return time.Unix(0, u)
	}
	return time.Time{}
}

// Block takes the key out of the model's pool until a probe after now.
func (m *ModelState) Block(now time.Time) { m.blockedAt.Store(now.UnixNano()) }

// Blocked reports whether the key may not serve the model: it was blocked
// after its latest probe (probedAt, the key's KeyState.ProbedAt).
func (m *ModelState) Blocked(probedAt time.Time) bool {
	b := m.blockedAt.Load()
	return b != 0 && (probedAt.IsZero() || b > probedAt.UnixNano())
}

// Admits reports whether the key may serve a request of est tokens for the
// model at now and, when not, why (policy.ReasonModelUnavailable,
// ReasonCoolingDown or ReasonNoHeadroom, with the time it ends).
func (m *ModelState) Admits(est int64, probedAt, now time.Time) (bool, policy.Ineligible) {
	if m.Blocked(probedAt) {
		return false, policy.Ineligible{Reason: policy.ReasonModelUnavailable}
	}
	if u := m.cooldown.Load(); u != 0 && now.UnixNano() < u {
		return false, policy.Ineligible{Reason: policy.ReasonCoolingDown, Until: time.Unix(0, u)}
	}
	h := m.Headroom(now)
	if !policy.HeadroomAdmits(h.Requests.Known, h.Requests.Remaining, h.Tokens.Known, h.Tokens.Remaining, h.Tokens.Limit, est) {
		until := h.Tokens.Reset
		if h.Requests.Known && h.Requests.Remaining <= 0 {
			until = h.Requests.Reset
		}
		return false, policy.Ineligible{Reason: policy.ReasonNoHeadroom, Until: until}
	}
	return true, policy.Ineligible{}
}

// ModelView is a key's state for one model at a moment, for /stats and
// /metrics.
type ModelView struct {
	Model string
	// State is "healthy", or why the key does not serve the model:
	// policy.ReasonCoolingDown, ReasonNoHeadroom or ReasonModelUnavailable.
	State    string
	Until    time.Time
	Headroom policy.Headroom
}

// View returns the model state at now for a key last probed at probedAt.
func (m *ModelState) View(probedAt, now time.Time) ModelView {
	v := ModelView{Model: m.Model, State: "healthy", Headroom: m.Headroom(now)}
	if ok, why := m.Admits(0, probedAt, now); !ok {
		v.State, v.Until = why.Reason, why.Until
	}
	return v
}

// Model returns the key's state for model, nil when it has none. It does
// not allocate.
func (r *Runtime) Model(model string) *ModelState {
	p := r.models.Load()
	if p == nil {
		return nil
	}
	for _, m := range *p {
		if m.Model == model {
			return m
		}
	}
	return nil
}

// HasModels reports whether any model state exists (one atomic load: the
// hot path skips the per-model checks of keys without one).
func (r *Runtime) HasModels() bool { return r.models.Load() != nil }

// ModelFor returns the key's state for model, created on first use (copy
// on write: only the first answer for a model allocates); nil when the key
// already keeps MaxModelStates models or model is "".
func (r *Runtime) ModelFor(model string) *ModelState {
	if model == "" {
		return nil
	}
	for {
		if m := r.Model(model); m != nil {
			return m
		}
		old := r.models.Load()
		var list []*ModelState
		if old != nil {
			if len(*old) >= MaxModelStates {
				return nil
			}
			list = make([]*ModelState, len(*old), len(*old)+1)
			copy(list, *old)
		}
		list = append(list, &ModelState{Model: model})
		if r.models.CompareAndSwap(old, &list) {
			return list[len(list)-1]
		}
	}
}

// Models returns the key's model states, in the order they appeared.
func (r *Runtime) Models() []*ModelState {
	if p := r.models.Load(); p != nil {
		return *p
	}
	return nil
}
