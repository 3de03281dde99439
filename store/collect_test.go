package store

import (
	"testing"
	"time"
)

// TestCollectAfterApplyFreesOnceQuiet: after a large apply the memory goes
// back to the system once no other large apply has come for the quiet
// period — once for a burst of applies, never for a small one.
func TestCollectAfterApplyFreesOnceQuiet(t *testing.T) {
	ticks := make(chan chan time.Time)
	freed := make(chan struct{}, 4)
	oldTimer, oldFree := quietTimer, freeOSMemory
	quietTimer = func(d time.Duration) <-chan time.Time {
		if d != quietAfterApply {
			t.Errorf("waited %v, want %v", d, quietAfterApply)
		}
		c := make(chan time.Time, 1)
		ticks <- c
		return c
	}
	freeOSMemory = func() { freed <- struct{}{} }
	t.Cleanup(func() { quietTimer, freeOSMemory = oldTimer, oldFree })

	notFreed := func(when string) {
		t.Helper()
		select {
		case <-freed:
			t.Fatalf("memory freed %s", when)
		default:
		}
	}
	collectAfterApply(collectAfterBytes - 1) // small: nothing starts
	collectAfterApply(collectAfterBytes)
	first := <-ticks // collected, waiting for the quiet period
	notFreed("before the quiet period ended")
	collectAfterApply(2 * collectAfterBytes) // a burst: the wait restarts
	first <- time.Time{}
	second := <-ticks
	notFreed("while a later apply's quiet period runs")
	second <- time.Time{}
	select {
	case <-freed:
	case <-time.After(10 * time.Second):
		t.Fatal("memory not freed after the quiet period")
	}
	for collecting.Load() { // the goroutine ends right after freeing
		time.Sleep(time.Millisecond)
	}
	notFreed("twice")
}
