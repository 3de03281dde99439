// Package wait polls a condition in tests until it holds, and fails the test
// with what it waited for when a deadline passes first.
//
//	wait.Until(t, 5*time.Second, "the key to cool down", func() bool { … })
//	wait.For(t, 5*time.Second, "/readyz", func() error { … }) // the last error is reported
//	wait.UntilChanged(t, 5*time.Second, "k1 in the pool", st.Changed, cond) // re-checked on each change
package wait

import (
	"testing"
	"time"
)

// Interval is how often a condition is checked when nothing signals a change.
const Interval = 10 * time.Millisecond

// Until checks cond every Interval until it returns true; after timeout it
// fails t, naming what.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, timeout, what, nil, asCheck(cond))
}

// For checks check every Interval until it returns nil; after timeout it
// fails t, naming what and check's last error.
func For(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	poll(t, timeout, what, nil, check)
}

// UntilChanged is Until that also re-checks cond as soon as the channel
// changed returns is closed. changed is called before each check, as the
// "take the channel, then look" pattern of Store.Changed requires.
func UntilChanged(t testing.TB, timeout time.Duration, what string, changed func() <-chan struct{}, cond func() bool) {
	t.Helper()
	poll(t, timeout, what, changed, asCheck(cond))
}

// errNotYet is the "last error" of a bool condition that has not held.
type errNotYet struct{}

func (errNotYet) Error() string { return "" }

func asCheck(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errNotYet{}
	}
}

func poll(t testing.TB, timeout time.Duration, what string, changed func() <-chan struct{}, check func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		var ch <-chan struct{}
		if changed != nil {
			ch = changed()
		}
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			if _, ok := err.(errNotYet); ok {
				t.Fatalf("timed out after %v waiting for %s", timeout, what)
			}
			t.Fatalf("timed out after %v waiting for %s; last: %v", timeout, what, err)
		}
	}
}
