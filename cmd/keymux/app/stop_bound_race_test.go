//go:build race

package app

import "time"

// stopBound is wider under the race detector, which slows the file's
// decoding passes (each a few hundred milliseconds there) several times;
// a full apply still takes far longer.
const stopBound = 3 * time.Second
