package policy

import (
	"fmt"
	"time"
)

// DefaultShareCooldownOver is settings.share.cooldown_over: a cooldown longer
// than this is shared with the fleet.
const DefaultShareCooldownOver = 10 * time.Second

// ShareSettings decide which key states one instance shares with the
// others (through Consul).
type ShareSettings struct {
	// CooldownOver: a rate-limit cooldown of the whole key longer than
	// this is shared; shorter ones stay local (they end before the others
	// would learn of them). Default DefaultShareCooldownOver.
	CooldownOver time.Duration
}

// The SharedState.Reason values: what one instance tells the others about a
// key.
const (
	SharedAuth     = DisabledAuth  // 401/403: disabled until a probe passes
	SharedQuota    = DisabledQuota // insufficient_quota: parked until a probe passes
	SharedCooldown = "cooldown"    // rate limited until Until
)

// SharedState is a key-wide state worth telling the fleet: a disable (auth,
// quota) or a long cooldown.
type SharedState struct {
	Reason string    // Shared* constants
	Until  time.Time // SharedCooldown only
}

// ShareWorthy reports the state to share after a key went from old to next
// at now: newly disabled (auth or quota), or a cooldown that grew and runs
// longer than over past now. Anything else (ejections after 5xx, short
// cooldowns, recoveries) stays local.
func ShareWorthy(old, next KeyState, now time.Time, over time.Duration) (SharedState, bool) {
	if next.Disabled && (!old.Disabled || old.DisabledReason != next.DisabledReason) {
		switch next.DisabledReason {
		case DisabledAuth, DisabledQuota:
			return SharedState{Reason: next.DisabledReason}, true
		}
	}
	if next.CooldownUntil.After(old.CooldownUntil) && next.CooldownUntil.Sub(now) > over {
		return SharedState{Reason: SharedCooldown, Until: next.CooldownUntil}, true
	}
	return SharedState{}, false
}

// ApplyShared returns s after a shared state observed at `at` by another
// instance. A state observed before the key's latest probe (s.ProbedAt) is
// obsolete: the probe already decided, so it changes nothing.
func ApplyShared(s KeyState, st SharedState, at time.Time) KeyState {
	if !at.After(s.ProbedAt) {
		return s
	}
	switch st.Reason {
	case SharedAuth, SharedQuota:
		s.Disabled, s.DisabledReason = true, st.Reason
		s.VerdictAt, s.DisabledAt = later(s.VerdictAt, at), later(s.DisabledAt, at)
	case SharedCooldown:
		s.CooldownUntil = later(s.CooldownUntil, st.Until)
	}
	return s
}

// ShareOf is one member's share of a per-minute limit split over members
// live instances, the member being the rank-th (0-based) in an order every
// member agrees on: limit/members, plus one for the first limit%members
// ranks, so that the shares add up to the limit exactly. A share is never
// below 1 (0 means unlimited): with fewer units than members the fleet may
// send up to members units. A zero limit (unlimited) stays zero; members < 1
// counts as one (alone: the whole limit).
func ShareOf(limit, members, rank int) int {
	if limit <= 0 || members <= 1 {
		return limit
	}
	rank = min(max(rank, 0), members-1)
	share := limit / members
	if rank < limit%members {
		share++
	}
	return max(share, 1)
}

// Share returns this member's share of l (ShareOf for rpm and tpm).
func (l Limits) Share(members, rank int) Limits {
	return Limits{RPM: ShareOf(l.RPM, members, rank), TPM: ShareOf(l.TPM, members, rank)}
}

// MaxClockSkew is how far in the future of the reader's clock a time that
// another instance wrote to Consul (a probe's checked_at, a shared state's
// at) may lie. A later time would pin a key: every real result, older,
// would be ignored.
const MaxClockSkew = 5 * time.Second

// CheckWrittenAt checks t, the time field `field` of a record another
// instance wrote, against the reader's now: more than MaxClockSkew ahead is
// an error naming both times; within the skew but after now it is taken as
// now (so that it cannot outlive a result that comes after it here).
func CheckWrittenAt(field string, t, now time.Time) (time.Time, error) {
	if t.After(now.Add(MaxClockSkew)) {
		return t, fmt.Errorf("%s %s is more than %s in the future (now %s)",
			field, t.UTC().Format(time.RFC3339), MaxClockSkew, now.UTC().Format(time.RFC3339))
	}
	if t.After(now) {
		return now, nil
	}
	return t, nil
}
