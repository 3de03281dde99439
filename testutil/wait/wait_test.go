package wait

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that records a Fatalf instead of stopping the
// test (Fatalf ends the poll's goroutine, as the real one does).
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	panic(r)
}

// run calls f with a recorder and returns the failure message ("" = none).
func run(t *testing.T, f func(tb testing.TB)) string {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if v := recover(); v != nil && v != r {
				panic(v)
			}
		}()
		f(r)
	}()
	return r.failed
}

func TestUntil(t *testing.T) {
	n := 0
	if msg := run(t, func(tb testing.TB) {
		Until(tb, time.Second, "three checks", func() bool { n++; return n == 3 })
	}); msg != "" || n != 3 {
		t.Errorf("Until: failed %q after %d checks, want success at the third", msg, n)
	}
	msg := run(t, func(tb testing.TB) { Until(tb, 30*time.Millisecond, "never", func() bool { return false }) })
	if msg != "timed out after 30ms waiting for never" {
		t.Errorf("Until never: %q", msg)
	}
}

func TestForReportsTheLastError(t *testing.T) {
	n := 0
	msg := run(t, func(tb testing.TB) {
		For(tb, 30*time.Millisecond, "/readyz", func() error { n++; return errors.New("status 503") })
	})
	if msg != "timed out after 30ms waiting for /readyz; last: status 503" || n < 2 {
		t.Errorf("For: %q after %d checks, want the timeout with the last error, checked more than once", msg, n)
	}
}

func TestUntilChangedWakesOnTheSignal(t *testing.T) {
	var (
		mu   sync.Mutex
		ch   = make(chan struct{})
		done bool
	)
	changed := func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return ch }
	go func() {
		mu.Lock()
		done = true
		close(ch)
		ch = make(chan struct{})
		mu.Unlock()
	}()
	msg := run(t, func(tb testing.TB) {
		UntilChanged(tb, time.Second, "the change", changed, func() bool { mu.Lock(); defer mu.Unlock(); return done })
	})
	if msg != "" {
		t.Errorf("UntilChanged: %q", msg)
	}
}
