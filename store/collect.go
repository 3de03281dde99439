package store

import "runtime"

// collectAfterBytes is the size of a configuration file from which its
// apply is followed by a garbage collection.
const collectAfterBytes = 1 << 20

// collectAfterApply runs a garbage collection after the apply of a large
// configuration (size bytes). The apply leaves the previous generation and
// the decoding's intermediates as garbage, several times the heap that
// stays; the collector's goal, set during the apply, would otherwise keep
// that much memory mapped until the next cycle, which an idle process
// does not start for minutes. Collected now, the goal falls back to twice
// what stays, and the runtime returns the rest to the system.
func collectAfterApply(size int) {
	if size >= collectAfterBytes {
		runtime.GC()
	}
}
