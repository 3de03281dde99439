package store

import (
	"runtime/debug"
	"sync/atomic"
)

// collectAfterBytes is the size of a configuration file from which its
// apply is followed by a collection that returns memory to the system.
const collectAfterBytes = 1 << 20

// collecting is set while a collection started by collectAfterApply runs.
var collecting atomic.Bool

// collectAfterApply returns the memory a large configuration's apply
// (size bytes) freed to the system, in the background: a collection, then
// the free pages handed back (debug.FreeOSMemory). The apply leaves the
// previous generation and the decoding's intermediates as garbage, more
// than the heap that stays; without this, the collector's goal set during
// the apply keeps twice that peak mapped, and an idle process does not
// start another cycle for minutes. Reloads are rare: the collection costs
// a fraction of the apply itself. At most one runs at a time.
func collectAfterApply(size int) {
	if size < collectAfterBytes || !collecting.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer collecting.Store(false)
		debug.FreeOSMemory()
	}()
}
