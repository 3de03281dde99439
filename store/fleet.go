package store

import (
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
)

// Fleet is what the hot path knows of the other instances: how many live
// members share the limits and this instance's rank among them (from the
// Consul membership, package fleet), and who wants to hear of key states
// worth sharing. Every method is lock-free; the zero value is an instance
// alone, with nobody listening.
type Fleet struct {
	// view packs the members (high 32 bits) and this instance's rank (low
	// 32): one atomic load per limit check.
	view     atomic.Uint64
	observer atomic.Pointer[StateObserver]
}

// StateObserver hears every key-state change the request path makes (old and
// next state of key keyID at now). It runs on the hot path: it must not
// block, lock or do I/O.
type StateObserver func(keyID string, old, next policy.KeyState, now time.Time)

// SetView records members live instances (at least 1) with this one at rank
// (0-based, < members).
func (f *Fleet) SetView(members, rank int) {
	members = max(members, 1)
	rank = min(max(rank, 0), members-1)
	f.view.Store(uint64(uint32(members))<<32 | uint64(uint32(rank)))
}

// View returns the live members (1 when alone) and this instance's rank.
func (f *Fleet) View() (members, rank int) {
	v := f.view.Load()
	return max(int(v>>32), 1), int(uint32(v))
}

// Limits returns this instance's share of l (policy.ShareOf over the view).
func (f *Fleet) Limits(l policy.Limits) policy.Limits {
	if f == nil || (l.RPM <= 0 && l.TPM <= 0) {
		return l
	}
	m, r := f.View()
	return l.Share(m, r)
}

// SetObserver installs o (nil removes it).
func (f *Fleet) SetObserver(o StateObserver) {
	if o == nil {
		f.observer.Store(nil)
		return
	}
	f.observer.Store(&o)
}

// Fleet returns the store's fleet view, shared by every generation.
func (s *Store) Fleet() *Fleet { return &s.fleet }

// Limits returns this instance's share of the key's limits.
func (e *Entry) Limits() policy.Limits { return e.fleet.Limits(e.Key.Limits) }

// Observed hands a state change made by the request path (old → next at
// now) to the fleet's observer, if any.
func (e *Entry) Observed(old, next policy.KeyState, now time.Time) {
	if e.fleet == nil {
		return
	}
	if o := e.fleet.observer.Load(); o != nil {
		(*o)(e.Key.ID, old, next, now)
	}
}
