package fleet

import (
	"time"
)

// WriteInterval is the shortest time between two writes of one key's
// state record by one instance.
const WriteInterval = time.Second

// coalescer holds the key states waiting to be written: one pending record
// per key, merged as observations arrive, released at most once per
// WriteInterval per key. It is owned by the writer goroutine (no locks).
type coalescer struct {
	pending map[string]Record
	last    map[string]time.Time // when each key was last released
}

func newCoalescer() *coalescer {
	return &coalescer{pending: map[string]Record{}, last: map[string]time.Time{}}
}

// add merges an observation of key id into its pending record.
func (c *coalescer) add(id string, r Record) {
	if p, ok := c.pending[id]; ok {
		r = merge(p, r)
	}
	c.pending[id] = r
}

// due releases the pending records whose key was not released within
// WriteInterval before now, and returns when the next one will be due
// (zero: nothing pending).
func (c *coalescer) due(now time.Time) (ready map[string]Record, next time.Time) {
	for id, r := range c.pending {
		at := c.last[id].Add(WriteInterval)
		if at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if ready == nil {
			ready = map[string]Record{}
		}
		ready[id] = r
		delete(c.pending, id)
		c.last[id] = now
	}
	for id, t := range c.last { // forget keys quiet for a while
		if _, ok := c.pending[id]; !ok && now.Sub(t) > time.Minute {
			delete(c.last, id)
		}
	}
	return ready, next
}
