package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store/consul"
)

// MaxSkew is how far in the future of the reader's clock a shared record's
// time may be (policy.MaxClockSkew). A record within it is applied as if
// observed now; a later one is refused: it would outlive every probe that
// should clear it.
const MaxSkew = policy.MaxClockSkew

// maxRecordBytes bounds a state/<id> value that ParseRecord accepts.
const maxRecordBytes = 1024

// maxByLen bounds Record.By.
const maxByLen = 128

// Record is a key-wide state one instance observed and shares with the
// fleet, as written to <prefix>state/<key id>. It never holds a secret.
type Record struct {
	// Reason is policy.SharedAuth ("auth", 401/403), policy.SharedQuota
	// ("quota", insufficient_quota) or policy.SharedCooldown ("cooldown").
	Reason string `json:"reason"`
	// At is when the instance observed it; a probe after At clears it.
	At time.Time `json:"at"`
	// Until ends a cooldown (cooldown only).
	Until time.Time `json:"until,omitzero"`
	// By names the instance that observed it.
	By string `json:"by,omitempty"`
}

// ErrBadRecord wraps every reason ParseRecord refuses a value.
var ErrBadRecord = errors.New("bad shared state record")

// ParseRecord decodes and checks a state/<id> value (written by another
// instance, another keymux version, or an operator): reason is one of auth,
// quota, cooldown; at is required and at most MaxSkew after now (a time
// within the skew is taken as now); a cooldown's until is after at and at
// most policy.MaxRetryDelay (the longest Retry-After keymux accepts) after
// it. Unknown fields are ignored; by is cut to 128 bytes.
func ParseRecord(raw []byte, now time.Time) (Record, error) {
	var r Record
	if err := consul.DecodeRecord(raw, maxRecordBytes, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	switch r.Reason {
	case policy.SharedAuth, policy.SharedQuota:
		r.Until = time.Time{}
	case policy.SharedCooldown:
	default:
		return Record{}, fmt.Errorf("%w: reason %q is not auth, quota or cooldown", ErrBadRecord, policy.Truncate(r.Reason, 32))
	}
	if r.At.IsZero() {
		return Record{}, fmt.Errorf("%w: at is missing", ErrBadRecord)
	}
	at, err := policy.CheckWrittenAt("at", r.At, now)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if r.Reason == policy.SharedCooldown {
		switch {
		case !r.Until.After(r.At):
			return Record{}, fmt.Errorf("%w: cooldown until is missing or not after at", ErrBadRecord)
		case r.Until.Sub(r.At) > policy.MaxRetryDelay:
			return Record{}, fmt.Errorf("%w: cooldown until %s is more than %s after at (the longest Retry-After keymux accepts)",
				ErrBadRecord, r.Until.UTC().Format(time.RFC3339), policy.MaxRetryDelay)
		}
	}
	if at.Before(r.At) {
		// Within the skew: observed "now" here, so that it cannot outlive
		// a probe that runs after it on this clock; a cooldown's end moves
		// with it (the writer's clock ran ahead).
		r.Until = r.Until.Add(at.Sub(r.At))
		r.At = at
	}
	r.By = policy.Truncate(r.By, maxByLen)
	return r, nil
}

// Marshal encodes r for KV.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r) // a Record always encodes
	return b
}

// Shared is the record as policy sees it.
func (r Record) Shared() policy.SharedState {
	return policy.SharedState{Reason: r.Reason, Until: r.Until}
}

// Apply returns s after the record (policy.ApplyShared): nothing changes
// when a probe ran after the record's time.
func (r Record) Apply(s policy.KeyState) policy.KeyState {
	return policy.ApplyShared(s, r.Shared(), r.At)
}

// disables reports whether r takes the key out until a probe passes.
func (r Record) disables() bool {
	return r.Reason == policy.SharedAuth || r.Reason == policy.SharedQuota
}

// Covers reports whether cur, the record KV holds, already tells the fleet
// what next would: cur is not older than the key's latest probe here
// (probedAt: an older record is obsolete) and it disables the key for the
// same reason, or disables it while next is a cooldown, or cools it down at
// least as long. Then next is not written.
func Covers(cur, next Record, probedAt time.Time) bool {
	if !cur.At.After(probedAt) {
		return false
	}
	switch {
	case next.disables():
		return cur.Reason == next.Reason
	case cur.disables():
		return true
	}
	return !cur.Until.Before(next.Until)
}

// merge folds a later observation into the pending record p: a disable
// replaces a cooldown (and a newer disable an older one), a cooldown
// extends a pending cooldown and never replaces a disable; At is the
// newest observation.
func merge(p, o Record) Record {
	at := p.At
	if o.At.After(at) {
		at = o.At
	}
	switch {
	case o.disables():
		p = o
	case p.disables():
	case o.Until.After(p.Until):
		p.Until = o.Until
	}
	p.At = at
	return p
}
