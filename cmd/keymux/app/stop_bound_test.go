//go:build !race

package app

import "time"

// stopBound is how soon a stop must end `keymux serve` in
// TestServeStopsDuringApply.
const stopBound = time.Second
