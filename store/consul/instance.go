package consul

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
)

// InstanceID is the default name of a keymux instance in Consul (session
// names, member keys, lock values, records): hostname-pid-random, unique
// per process and also for several instances in one process (tests).
func InstanceID() string {
	h, _ := os.Hostname()
	if h == "" {
		h = "keymux"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return h + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}
