package extproc

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// Defaults of the join between keymux's record of a call and Envoy's
// access-log entry for it.
const (
	// DefaultEntryWait is how long a record whose response ended (or never
	// came) waits for its entry, and how long an entry waits for its record.
	DefaultEntryWait = 10 * time.Second
	// DefaultResponseWait is how long a record whose response was still
	// under way when the Process stream ended (Envoy >= 1.37 ends it after
	// the response headers) waits for its entry: Envoy writes the entry
	// after the last byte of a possibly long stream.
	DefaultResponseWait = 15 * time.Minute
	// DefaultPendingCap bounds the records waiting for their entry, the
	// entries waiting for their record, and the booked call ids kept to
	// spot duplicates (each).
	DefaultPendingCap = 32768
)

// Why an access-log entry was not booked (the "reason" label).
const (
	dropNotForwarded = "not_forwarded" // keymux answered the request itself: nothing to join
	dropIntermediate = "intermediate"  // a periodic or upstream entry, not the request's end
	dropMalformed    = "malformed"
	dropUnknown      = "unknown"   // no record of the call id arrived within the wait
	dropDuplicate    = "duplicate" // the call was already booked with an entry
	dropLate         = "late"      // the call was already booked without its entry
	dropFull         = "full"      // the table of early entries was full
)

var (
	dropReasonList = [...]string{dropNotForwarded, dropIntermediate, dropMalformed, dropUnknown, dropDuplicate, dropLate, dropFull}
	dropReasons    = dropReasonList[:]
)

// Why a record was booked from what keymux saw alone (the "reason" label).
const (
	unmatchedTimeout  = "timeout"  // no entry within the wait
	unmatchedFull     = "full"     // the pending table was full
	unmatchedShutdown = "shutdown" // keymux stopped before the entry came
	unmatchedNoLog    = "no_log"   // no access-log stream is connected
)

var (
	unmatchedReasonList = [...]string{unmatchedTimeout, unmatchedFull, unmatchedShutdown, unmatchedNoLog}
	unmatchedReasons    = unmatchedReasonList[:]
)

// held is a record waiting for its entry (a detached copy: the exchange
// was released when its stream ended).
type held struct {
	r        *callRecord
	deadline time.Time
}

// early is an entry waiting for its record.
type early struct {
	rec      envoyRecord
	deadline time.Time
}

// booked is a call id already booked, kept until deadline to tell
// duplicates and late entries from unknown ones. A call booked without its
// entry keeps what a late entry still tells about, its key's health
// (Envoy opens its access-log stream with its first entry): the key and
// the ejection settings it was chosen under, nothing of the call itself.
type booked struct {
	deadline  time.Time
	key       *store.Entry             // nil: booked with its entry, or no key to feed
	ejection  *policy.EjectionSettings // the settings key was chosen under
	withEntry bool
}

// lateEntry applies what an entry that came after the call was booked
// still tells: an upstream failure of the key.
func (b booked) lateEntry(r *envoyRecord, now time.Time) {
	if o, failed := r.upstreamFailure(); failed && b.key != nil {
		applyFeedback(b.key, *b.ejection, o, now)
	}
}

// ledger joins exchanges that ended to their access-log entries, in
// either order, in bounded memory.
type ledger struct {
	entryWait, responseWait time.Duration
	capacity                int
	// always: every forwarded call has an entry coming, even while no
	// stream is connected (Envoy opens its stream with its first flush).
	// Off (--usage-from-body) records wait only while a stream is, or was
	// within the entry wait, connected.
	always bool

	mu      sync.Mutex
	pending map[string]held
	early   map[string]early
	done    map[string]booked

	streams   atomic.Int64
	lastGone  atomic.Int64 // when the last access-log stream ended (Unix ns; 0: never)
	closed    atomic.Bool
	entries   atomic.Uint64 // final entries of forwarded calls received
	matched   atomic.Uint64 // records booked with their entry
	lagNanos  atomic.Int64  // arrival − Envoy's end of the latest entry
	drops     [len(dropReasonList)]atomic.Uint64
	unmatched [len(unmatchedReasonList)]atomic.Uint64
}

func newLedger(entryWait, responseWait time.Duration, capacity int, always bool) *ledger {
	return &ledger{
		entryWait: entryWait, responseWait: responseWait, capacity: capacity, always: always,
		pending: make(map[string]held), early: make(map[string]early), done: make(map[string]booked),
	}
}

// drop counts n entries dropped for reason.
func (l *ledger) drop(reason string, n uint64) { l.drops[indexOf(dropReasons, reason)].Add(n) }

// miss counts n records booked without their entry for reason.
func (l *ledger) miss(reason string, n uint64) { l.unmatched[indexOf(unmatchedReasons, reason)].Add(n) }

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	panic("extproc: unknown reason " + s)
}

// active reports whether entries are expected: always (the default), or
// a stream is connected, or one was within the entry wait (Envoy
// reconnects).
func (l *ledger) active(now time.Time) bool {
	if l.closed.Load() {
		return false
	}
	if l.always || l.streams.Load() > 0 {
		return true
	}
	gone := l.lastGone.Load()
	return gone != 0 && now.Sub(time.Unix(0, gone)) < l.entryWait
}

// hold takes the record of a call whose Process stream ended until its
// entry arrives: it keeps a detached copy of c, so that the exchange c
// belongs to can go. It books c at once when its entry came first. It
// returns false, leaving c to the caller, when no entry is expected or the
// table is full.
func (l *ledger) hold(c *callRecord, now time.Time) bool {
	id := c.callID
	l.mu.Lock()
	distrusted := false
	if e, ok := l.early[id]; ok {
		delete(l.early, id)
		if e.rec.keyID != "" && !c.namesKey(e.rec.keyID) {
			// Not a key keymux put on this call (as in entry): the
			// record waits for its entry.
			distrusted = true
		} else {
			l.rememberLocked(e.rec.callID, nil, now)
			l.mu.Unlock()
			l.matched.Add(1)
			c.book(&e.rec)
			return true
		}
	}
	if distrusted {
		defer l.drop(dropMalformed, 1)
	}
	reason := ""
	switch {
	case !l.active(now):
		reason = unmatchedNoLog
	case len(l.pending) >= l.capacity:
		reason = unmatchedFull
	}
	if reason != "" {
		l.rememberLocked(strings.Clone(id), c, now)
		l.mu.Unlock()
		l.miss(reason, 1)
		return false
	}
	wait := l.entryWait
	if c.phase == phaseResponse && !c.respDone {
		wait = l.responseWait
	}
	d := c.detach()
	l.pending[d.callID] = held{r: d, deadline: now.Add(wait)}
	l.mu.Unlock()
	return true
}

// rememberLocked keeps a booked call id for the entry wait (while there is
// room); c is the record of a call booked without its entry (what a late
// entry needs is taken from it), nil when booked with it. id must not be
// memory of an exchange or a pooled record: the table outlives both.
func (l *ledger) rememberLocked(id string, c *callRecord, now time.Time) {
	if len(l.done) >= l.capacity {
		return
	}
	b := booked{withEntry: c == nil, deadline: now.Add(l.entryWait)}
	if c != nil && c.entry != nil {
		b.key, b.ejection = c.entry, &c.settings.Ejection
	}
	l.done[id] = b
}

// entry books the record rec belongs to, or keeps rec until its record
// arrives.
func (l *ledger) entry(rec envoyRecord, now time.Time) {
	l.entries.Add(1)
	if !rec.end.IsZero() {
		l.lagNanos.Store(int64(now.Sub(rec.end)))
	}
	l.mu.Lock()
	if h, ok := l.pending[rec.callID]; ok && rec.keyID != "" && !h.r.namesKey(rec.keyID) {
		// Not a key keymux put on this call: an entry to distrust.
		l.mu.Unlock()
		l.drop(dropMalformed, 1)
		return
	}
	if h, ok := l.pending[rec.callID]; ok {
		delete(l.pending, rec.callID)
		l.rememberLocked(rec.callID, nil, now) // the entry's string: h.r goes back to its pool
		l.mu.Unlock()
		l.matched.Add(1)
		h.r.book(&rec)
		h.r.release()
		return
	}
	reason := ""
	var late booked
	if b, ok := l.done[rec.callID]; ok {
		reason = dropLate
		if b.withEntry {
			reason = dropDuplicate
		}
		late = b
		l.done[rec.callID] = booked{withEntry: true, deadline: b.deadline}
	} else if _, ok := l.early[rec.callID]; ok {
		reason = dropDuplicate
	} else if len(l.early) >= l.capacity {
		reason = dropFull
	} else {
		l.early[rec.callID] = early{rec: rec, deadline: now.Add(l.entryWait)}
	}
	l.mu.Unlock()
	if reason != "" {
		l.drop(reason, 1)
	}
	late.lateEntry(&rec, now)
}

// sweep books the records whose wait is over from what keymux saw, and
// forgets entries and call ids whose wait is over.
func (l *ledger) sweep(now time.Time) {
	var due []*callRecord
	unknown := 0
	l.mu.Lock()
	for id, h := range l.pending {
		if !now.Before(h.deadline) {
			delete(l.pending, id)
			l.rememberLocked(strings.Clone(id), h.r, now) // id is h.r's memory, which goes back to its pool
			due = append(due, h.r)
		}
	}
	for id, e := range l.early {
		if !now.Before(e.deadline) {
			delete(l.early, id)
			unknown++
		}
	}
	for id, b := range l.done {
		if !now.Before(b.deadline) {
			delete(l.done, id)
		}
	}
	l.mu.Unlock()
	l.drop(dropUnknown, uint64(unknown))
	l.miss(unmatchedTimeout, uint64(len(due)))
	bookAll(due)
}

// pendingLen is the number of records waiting for their entry.
func (l *ledger) pendingLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}

// close books every waiting record from what keymux saw; records that end
// afterwards are booked at once.
func (l *ledger) close() {
	l.closed.Store(true)
	l.mu.Lock()
	due := make([]*callRecord, 0, len(l.pending))
	for id, h := range l.pending {
		delete(l.pending, id)
		due = append(due, h.r)
	}
	l.mu.Unlock()
	l.miss(unmatchedShutdown, uint64(len(due)))
	bookAll(due)
}

// bookAll books held records from what keymux saw and releases them.
func bookAll(due []*callRecord) {
	for _, r := range due {
		r.book(nil)
		r.release()
	}
}

// streamStarted and streamEnded count the connected access-log streams.
func (l *ledger) streamStarted() { l.streams.Add(1) }

func (l *ledger) streamEnded(now time.Time) {
	l.lastGone.Store(now.UnixNano())
	l.streams.Add(-1)
}

// waitEmpty returns when no record waits for its entry, or no access-log
// stream is left to bring one, or ctx ends.
func (l *ledger) waitEmpty(ctx context.Context, tick time.Duration) error {
	return pollUntil(ctx, tick, func() bool { return l.pendingLen() == 0 || l.streams.Load() == 0 })
}

// pollUntil calls cond every tick until it holds or ctx ends.
func pollUntil(ctx context.Context, tick time.Duration, cond func() bool) error {
	t := time.NewTicker(tick)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
