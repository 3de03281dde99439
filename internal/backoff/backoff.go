// Package backoff holds the waits keymux's retry loops share: an exponential
// delay with equal jitter, and a sleep that a context cuts short.
package backoff

import (
	"context"
	"time"
)

// Delay is the wait before retry n (n ≥ 1): d = min(ceil, base·2^(n-1)),
// with equal jitter: d/2 fixed plus up to d/2 drawn from rnd (uniform in
// [0, 1)). Half of the wait is always kept, so a retry storm still spreads
// out without ever retrying at once.
func Delay(n int, base, ceil time.Duration, rnd func() float64) time.Duration {
	d := base
	for i := 1; i < n && d < ceil; i++ {
		d *= 2
	}
	d = min(d, ceil)
	return d/2 + time.Duration(rnd()*float64(d-d/2))
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
