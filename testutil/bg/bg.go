// Package bg runs a component's Run(ctx) loop in the background of a test
// and stops it, checked, when the test ends.
package bg

import (
	"context"
	"sync"
	"testing"
	"time"
)

// StopTimeout bounds how long a stopped Run may take to return.
const StopTimeout = 10 * time.Second

// Run starts run in a goroutine. The returned stop cancels its context and
// waits for it (at most StopTimeout), reporting a non-nil error or a hang as
// a test error; it is idempotent and also runs at t's cleanup, before any
// cleanup registered after this call.
func Run(t testing.TB, name string, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: Run returned %v, want nil on cancel", name, err)
				}
			case <-time.After(StopTimeout):
				t.Errorf("%s: Run did not return within %v of cancel", name, StopTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
