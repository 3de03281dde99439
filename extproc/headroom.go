package extproc

import (
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// The one place where a key's answers change its state, and where the
// state decides whether the key may take a request: the key-wide passive
// health (policy.NextState), the key's own limits, and per (key, model)
// the provider's rate-limit headroom, a 429 cooldown and a block after a
// 403/404 for the model (store.ModelState).

// admits reports whether e may take a request of est tokens for the model
// its rule makes of model at now and, when not, why. It reads atomics only
// and does not allocate.
func (x *exchange) admits(e *store.Entry, est int64, now time.Time) (bool, policy.Ineligible) {
	return x.admitsIn(e, e.RT.State(), est, now)
}

// admitsIn is admits for e in passive state st (read once by the caller).
func (x *exchange) admitsIn(e *store.Entry, st policy.KeyState, est int64, now time.Time) (bool, policy.Ineligible) {
	if ok, why := policy.Eligible(e.Key, st, now); !ok {
		return false, why
	}
	if !keyWithinLimits(e, now) {
		// Over its own rpm/tpm: out until the minute turns.
		return false, policy.Ineligible{Reason: policy.ReasonCoolingDown, Until: store.NextMinute(now)}
	}
	if !e.RT.HasModels() {
		return true, policy.Ineligible{}
	}
	if m := e.RT.Model(x.finalModel(e.Key)); m != nil {
		return m.Admits(est, st.ProbedAt, now)
	}
	return true, policy.Ineligible{}
}

// slowStartAdmits reports whether the i-th key of a pool, back from an
// ejection at from, takes the selection numbered seq while its share of
// traffic grows.
func (x *exchange) slowStartAdmits(from time.Time, seq uint64, i int, now time.Time) bool {
	if from.IsZero() {
		return true
	}
	share := policy.SlowStartShare(from, now, x.settings.Ejection.SlowStart)
	return policy.SlowStartAdmits(share, seq+uint64(i)*0x632BE59BD9B4E019)
}

// take counts a request of est tokens for model against e's headroom.
func take(e *store.Entry, model string, est int64, now time.Time) {
	if !e.RT.HasModels() {
		return
	}
	if m := e.RT.Model(model); m != nil {
		m.Take(est, now)
	}
}

// feedAnswer applies one upstream answer (status and headers hm) of a
// request of est tokens for model to key e and returns its outcome:
//
//   - the rate-limit headers of every answer replace keymux's estimate of
//     the key's headroom for the model;
//   - a 429 whose own headers show the key had requests left and the
//     request exceeds the key's whole token limit is the client's
//     ("Request too large"): the key is left alone;
//   - another 429 cools the key down for that model only;
//   - everything else goes to the key-wide state (applyFeedback).
func feedAnswer(e *store.Entry, model string, est int64, ej policy.EjectionSettings, status int, hm *corev3.HeaderMap, now time.Time) (policy.Outcome, time.Time) {
	o, h, bad := readAnswer(status, hm, est, now)
	if bad > 0 {
		e.RT.AddBadHeaders(uint64(bad))
	}
	var m *store.ModelState
	if h.Known() || o.Kind == policy.OutcomeRateLimited {
		m = e.RT.ModelFor(model)
	}
	if m != nil && h.Known() {
		m.Observe(h, now)
	}
	if o.Kind == policy.OutcomeRateLimited {
		if m != nil {
			ej.WithDefaults()
			until := o.RetryAt
			if until.IsZero() {
				until = now.Add(ej.Cooldown)
			}
			if m.CoolDown(until) {
				e.RT.AddCooldown()
			}
			e.RT.RecordError(now)
			return o, time.Time{}
		}
	}
	return o, applyFeedback(e, ej, o, now)
}

// classifyAnswer is the outcome of an upstream answer to a request of est
// tokens (readAnswer).
func classifyAnswer(status int, hm *corev3.HeaderMap, est int64, now time.Time) policy.Outcome {
	o, _, _ := readAnswer(status, hm, est, now)
	return o
}

// readAnswer classifies an answer from its status and headers
// (policy.Classify) and reads the headroom they report; a 429 that says
// the request is too large for the key's whole token limit
// (policy.TooLarge) is the client's (OutcomeClient).
func readAnswer(status int, hm *corev3.HeaderMap, est int64, now time.Time) (policy.Outcome, policy.Headroom, int) {
	header := func(name string) string { return findHeader(hm, name) }
	o := policy.Classify(status, header, nil, now)
	h, bad := policy.ParseHeadroom(header, now)
	if o.Kind == policy.OutcomeRateLimited && policy.TooLarge(h, est) {
		o = policy.Outcome{Kind: policy.OutcomeClient, Status: status}
	}
	return o, h, bad
}

// blockModel takes e out of model's pool until its next probe: the
// provider said the key cannot use the model (403/404 model_not_found).
// When the call's 403 headers disabled the key (disabledAt, its
// DisabledAt then), this answer shows the credential itself works, so that
// disable is lifted — unless another auth or quota verdict (a 401, an
// exhausted quota, a fleet member's disable) stamped the key since, or the
// key was disabled before the 403 came.
func blockModel(e *store.Entry, model string, status int, now, disabledAt time.Time) {
	if m := e.RT.ModelFor(model); m != nil {
		m.Block(now)
	}
	if status == 403 && !disabledAt.IsZero() {
		e.RT.Update(func(s policy.KeyState) policy.KeyState {
			if s.Disabled && s.DisabledReason == policy.DisabledAuth && s.DisabledAt.Equal(disabledAt) {
				s.Disabled, s.DisabledReason = false, ""
			}
			return s
		})
	}
}

// The OpenAI-style rate-limit headers keymux answers with: the pool's
// headroom, not the chosen key's. The key's own headers (OpenAI's, Azure's
// or Anthropic's) are removed.
var (
	poolHeadroomHeaders = [...]string{
		policy.HeaderLimitRequests, policy.HeaderRemainingRequests, policy.HeaderRateLimitResetRequests,
		policy.HeaderLimitTokens, policy.HeaderRemainingTokens, policy.HeaderRateLimitResetTokens,
	}
	keyHeadroomHeaders = []string{
		policy.HeaderLimitRequests, policy.HeaderRemainingRequests, policy.HeaderRateLimitResetRequests,
		policy.HeaderLimitTokens, policy.HeaderRemainingTokens, policy.HeaderRateLimitResetTokens,
		"anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining", policy.HeaderAnthropicRequestsReset,
		"anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining", policy.HeaderAnthropicTokensReset,
		"anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset",
		"anthropic-ratelimit-output-tokens-limit", "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset",
	}
)

// poolHeadroom sums the headroom keymux estimates for the eligible keys of
// the request's pool (each for the model its rule makes of the request's):
// limits and remaining counts add up, the reset is the earliest. A budget
// no eligible key reports stays unknown.
func (x *exchange) poolHeadroom(now time.Time) policy.Headroom {
	var sum policy.Headroom
	for _, e := range x.snap.Pool(x.call.ModelOriginal).Entries {
		if !e.RT.HasModels() {
			continue
		}
		if ok, _ := x.admits(e, 0, now); !ok {
			continue
		}
		m := e.RT.Model(x.finalModel(e.Key))
		if m == nil {
			continue
		}
		h := m.Headroom(now)
		addBudget(&sum.Requests, h.Requests)
		addBudget(&sum.Tokens, h.Tokens)
	}
	return sum
}

func addBudget(sum *policy.Budget, b policy.Budget) {
	if !b.Known {
		return
	}
	sum.Known = true
	sum.Limit += b.Limit
	sum.Remaining += b.Remaining
	if !b.Reset.IsZero() && (sum.Reset.IsZero() || b.Reset.Before(sum.Reset)) {
		sum.Reset = b.Reset
	}
}

// headroomMutation replaces the chosen key's rate-limit headers by the
// pool's (poolHeadroom), OpenAI-style: x-ratelimit-{limit,remaining,reset}-
// {requests,tokens}, resets as durations ("6m0s", "20ms").
func (x *exchange) headroomMutation(now time.Time) *extprocv3.HeaderMutation {
	h := x.poolHeadroom(now)
	mut := &extprocv3.HeaderMutation{RemoveHeaders: keyHeadroomHeaders}
	for i, b := range [...]policy.Budget{h.Requests, h.Tokens} {
		if !b.Known {
			continue
		}
		names := poolHeadroomHeaders[i*3 : i*3+3]
		if b.Limit > 0 {
			mut.SetHeaders = append(mut.SetHeaders, setHeader(names[0], strconv.FormatInt(b.Limit, 10)))
		}
		mut.SetHeaders = append(mut.SetHeaders, setHeader(names[1], strconv.FormatInt(b.Remaining, 10)))
		if !b.Reset.IsZero() {
			mut.SetHeaders = append(mut.SetHeaders, setHeader(names[2], max(b.Reset.Sub(now), 0).Round(time.Millisecond).String()))
		}
	}
	return mut
}
