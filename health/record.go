package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store/consul"
)

// MaxErrorLen bounds Record.Error (policy keeps the same bound in
// KeyState.ProbeError).
const MaxErrorLen = 256

// maxRecordBytes bounds a health/<id> value that ParseRecord accepts.
const maxRecordBytes = 4096

// MaxRecordSkew is how far in the future of the reader's clock a record's
// checked_at may be (policy.MaxClockSkew). A later checked_at is refused: it
// would pin the key, every real probe result being older. One within the
// skew is taken as checked now (ParseRecord), so that it cannot pin the key
// either.
const MaxRecordSkew = policy.MaxClockSkew

// Record is the result of one active probe, as the leader writes it to
// <prefix>health/<key id> and every instance applies it. It never holds a
// secret: Error is built by keymux from the status and a short error class.
type Record struct {
	Healthy   bool      `json:"healthy"`
	CheckedAt time.Time `json:"checked_at"`
	LatencyMS int64     `json:"latency_ms"`
	Error     string    `json:"error"`
	// Status is the upstream HTTP status (0 when no answer came).
	Status int `json:"status,omitempty"`
	// Failures counts consecutive failed probes of the key (0 after a
	// pass); every instance derives the recovery backoff from it.
	Failures int `json:"failures"`
	// CooldownUntil is set when the probe was rate limited (429): the key
	// is valid but cools down until then.
	CooldownUntil time.Time `json:"cooldown_until,omitzero"`
	// By names the instance that probed (Config.ID).
	By string `json:"by,omitempty"`
}

// ErrBadRecord wraps every reason ParseRecord refuses a value.
var ErrBadRecord = errors.New("bad health record")

// ParseRecord decodes and checks a health/<id> value written by a leader
// (possibly another keymux version, possibly an operator): checked_at is
// required and not more than MaxRecordSkew after now (a checked_at within
// the skew but after now becomes now), cooldown_until not more than
// policy.MaxRetryDelay after checked_at, latency_ms and failures not
// negative; error is cut to MaxErrorLen bytes.
func ParseRecord(raw []byte, now time.Time) (Record, error) {
	var r Record
	if err := consul.DecodeRecord(raw, maxRecordBytes, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if r.CheckedAt.IsZero() {
		return Record{}, fmt.Errorf("%w: checked_at is missing", ErrBadRecord)
	}
	checked, err := policy.CheckWrittenAt("checked_at", r.CheckedAt, now)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	switch {
	case r.CooldownUntil.After(checked.Add(policy.MaxRetryDelay)):
		return Record{}, fmt.Errorf("%w: cooldown_until is more than %s after checked_at", ErrBadRecord, policy.MaxRetryDelay)
	case r.LatencyMS < 0:
		return Record{}, fmt.Errorf("%w: latency_ms is negative", ErrBadRecord)
	case r.Failures < 0:
		return Record{}, fmt.Errorf("%w: failures is negative", ErrBadRecord)
	}
	r.CheckedAt = checked
	r.Error = truncate(r.Error, MaxErrorLen)
	if len(r.By) > 128 {
		r.By = truncate(r.By, 128)
	}
	return r, nil
}

// Marshal encodes r for KV.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r) // a Record always encodes
	return b
}

// Apply returns s after the probe result r: policy.ProbeResult at
// r.CheckedAt, plus the cooldown of a rate-limited probe. A result that is
// not newer than the state's latest probe (s.ProbedAt) changes nothing, so
// applying the same record twice (the leader's own write coming back from
// KV) is harmless.
func (r Record) Apply(s policy.KeyState) policy.KeyState {
	if !r.CheckedAt.After(s.ProbedAt) {
		return s
	}
	s = policy.ProbeResult(s, r.Healthy, r.Error, r.CheckedAt)
	if r.CooldownUntil.After(s.CooldownUntil) {
		s.CooldownUntil = r.CooldownUntil
	}
	return s
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
var truncate = policy.Truncate
