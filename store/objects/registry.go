package objects

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
)

// Backend makes records durable (and, for Consul, fleet-wide). Put and
// Delete change the Table too once the backend has them; Run keeps the
// Table in step with the backend and removes expired records until ctx
// ends.
type Backend interface {
	Put(ctx context.Context, r *Record) error
	Delete(ctx context.Context, id string) error
	Run(ctx context.Context) error
	// Writes counts the writes made to the backend (creations, deletions
	// and expiry sweeps), for the write-rate figures.
	Writes() uint64
}

// DefaultWait is the Registry.Wait of a fleet (Consul).
const DefaultWait = 2 * time.Second

// ErrFull is returned by Registry.Record when the table holds Max records.
var ErrFull = errors.New("objects: the object table is full")

// Registry is what the request path uses: the Table, its Backend and the
// fleet secret of response tags.
type Registry struct {
	Table   *Table
	Backend Backend
	// secret authenticates the tags of stored responses; the same on
	// every sidecar of a fleet (SetSecret, Secret).
	secret atomic.Pointer[[]byte]
	// Wait is how long a follow-up naming an unknown id waits for the
	// record to arrive from another sidecar (Consul watch) before it is
	// treated as created outside keymux.
	Wait time.Duration
}

// SetSecret sets the fleet secret of response tags.
func (r *Registry) SetSecret(b []byte) { r.secret.Store(&b) }

// Secret is the fleet secret of response tags (nil until set).
func (r *Registry) Secret() []byte {
	if p := r.secret.Load(); p != nil {
		return *p
	}
	return nil
}

// Lookup returns the live record of id, waiting up to r.Wait for it to
// arrive when wait is true; nil when there is none.
func (r *Registry) Lookup(ctx context.Context, id string, now func() time.Time, wait bool) *Record {
	var timer <-chan time.Time
	for {
		ch := r.Table.Changed()
		if rec := r.Table.Get(id); rec != nil {
			if rec.Expired(now()) {
				return nil
			}
			return rec
		}
		if !wait || r.Wait <= 0 {
			return nil
		}
		if timer == nil {
			t := time.NewTimer(r.Wait)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ch:
		case <-timer:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// Full reports whether max records are held (max <= 0: policy's default).
func (r *Registry) Full(max int) bool {
	if max <= 0 {
		max = policy.DefaultObjectsMax
	}
	return r.Table.Len() >= max
}

// Record stores rec in the backend, then in the table.
func (r *Registry) Record(ctx context.Context, rec *Record, max int) error {
	if !ValidID(rec.ID) {
		return fmt.Errorf("objects: id %q: want 1 to %d of A-Z a-z 0-9 . _ -", truncate(rec.ID, 64), MaxIDLen)
	}
	if r.Table.Get(rec.ID) == nil && r.Full(max) {
		return ErrFull
	}
	if err := r.Backend.Put(ctx, rec); err != nil {
		return fmt.Errorf("objects: record %s: %w", rec.ID, err)
	}
	return nil
}

// Forget removes the record of id (the object was deleted).
func (r *Registry) Forget(ctx context.Context, id string) error {
	if r.Table.Get(id) == nil {
		return nil
	}
	if err := r.Backend.Delete(ctx, id); err != nil {
		return fmt.Errorf("objects: forget %s: %w", id, err)
	}
	return nil
}

// MaxIDLen bounds an object id keymux records.
const MaxIDLen = 256

// ValidID accepts the provider ids keymux records (they become KV paths):
// 1 to MaxIDLen of A-Z a-z 0-9 . _ -, not "." or "..".
func ValidID(id string) bool {
	if id == "" || len(id) > MaxIDLen || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes with policy.Truncate (on a UTF-8
// boundary) and marks the cut with "…".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return policy.Truncate(s, n) + "…"
}
