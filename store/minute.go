package store

import (
	"sync/atomic"
	"time"
)

// MinuteCounter counts within the current wall-clock minute, for RPM and TPM
// limits. It is one atomic word (the minute in the high 32 bits, the count
// in the low 32), so counting and rolling over to a new minute are one CAS.
// The zero value is ready.
type MinuteCounter struct{ v atomic.Uint64 }

// Add adds n for the minute of now and returns the minute's count.
func (c *MinuteCounter) Add(now time.Time, n uint64) uint64 {
	m := uint64(uint32(now.Unix() / 60))
	for {
		v := c.v.Load()
		cur := v & 0xffffffff
		switch {
		case v>>32 == m:
		case v>>32 < m:
			cur = 0
		default: // a later minute is already counting
			return cur
		}
		next := min(cur+n, 0xffffffff)
		if c.v.CompareAndSwap(v, m<<32|next) {
			return next
		}
	}
}

// Get returns the count of now's minute.
func (c *MinuteCounter) Get(now time.Time) uint64 {
	v := c.v.Load()
	if v>>32 != uint64(uint32(now.Unix()/60)) {
		return 0
	}
	return v & 0xffffffff
}

// NextMinute is when the minute of now ends.
func NextMinute(now time.Time) time.Time { return now.Truncate(time.Minute).Add(time.Minute) }
