package store

import (
	"runtime"
	"sync/atomic"
)

// collectAfterBytes is the size of a configuration file from which its
// apply is followed by a garbage collection.
const collectAfterBytes = 1 << 20

// collecting is set while a collection started by collectAfterApply runs.
var collecting atomic.Bool

// collectAfterApply starts a garbage collection after the apply of a
// large configuration (size bytes), in the background. The apply leaves
// the previous generation and the decoding's intermediates as garbage,
// more than the heap that stays; the collector's goal, set during the
// apply, would keep twice that peak mapped, and an idle process does not
// start another cycle for minutes. Collected now, the goal falls back to
// twice the heap that stays, and the runtime's scavenger returns the rest
// to the system over the next seconds (debug.FreeOSMemory would return it
// at once, but the next apply pays the page faults back: it cost more
// than the apply's decoding). At most one runs at a time.
func collectAfterApply(size int) {
	if size < collectAfterBytes || !collecting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer collecting.Store(false)
		runtime.GC()
	}()
}
