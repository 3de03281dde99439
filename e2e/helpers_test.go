package e2e

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/keymux/keymux/examples/mockupstream"
)

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func mockBehaviour429(retryAfter string) mockupstream.Behaviour {
	return mockupstream.Behaviour{Status: 429, RetryAfter: retryAfter}
}

func mockBehaviourStatus(status int) mockupstream.Behaviour {
	return mockupstream.Behaviour{Status: status}
}

func mockBehaviourOK() mockupstream.Behaviour { return mockupstream.Behaviour{} }
