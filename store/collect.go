package store

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// collectAfterBytes is the size of a configuration file from which its
// apply is followed by a garbage collection.
const collectAfterBytes = 1 << 20

// quietAfterApply is how long no large apply must follow one before the
// memory it freed is returned to the system at once.
const quietAfterApply = 5 * time.Second

var (
	// collecting is set while a collection started by collectAfterApply
	// runs or waits for the quiet period.
	collecting atomic.Bool
	// largeApplies counts the applies of large configurations.
	largeApplies atomic.Uint64
	// quietTimer and freeOSMemory are replaced by tests.
	quietTimer   = func(d time.Duration) <-chan time.Time { return time.After(d) }
	freeOSMemory = debug.FreeOSMemory
)

// collectAfterApply starts a garbage collection after the apply of a
// large configuration (size bytes), in the background. The apply leaves
// the previous generation and the decoding's intermediates as garbage,
// more than the heap that stays; the collector's goal, set during the
// apply, would keep twice that peak mapped, and an idle process does not
// start another cycle for minutes. Collected now, the goal falls back to
// twice the heap that stays. Once no other large apply has followed for
// quietAfterApply, the freed memory is returned to the system at once
// (debug.FreeOSMemory): the runtime's scavenger would keep most of it
// mapped for minutes, and returning it right after each apply made a
// burst of applies pay the page faults back (it cost more than their
// decoding), which the quiet period avoids. At most one runs at a time;
// an apply during the wait restarts it.
func collectAfterApply(size int) {
	if size < collectAfterBytes {
		return
	}
	seen := largeApplies.Add(1)
	if !collecting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer collecting.Store(false)
		runtime.GC()
		for {
			<-quietTimer(quietAfterApply)
			if n := largeApplies.Load(); n != seen {
				seen = n // another apply came: wait for quiet after it
				continue
			}
			freeOSMemory()
			return
		}
	}()
}
