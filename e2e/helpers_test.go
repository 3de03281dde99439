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

// chatPath limits a scripted failure to the calls under test: keymux's own
// health probes (GET …/models) keep succeeding, so a probe landing during
// the test does not take the key out on its own.
const chatPath = "/chat/completions"

func mockBehaviour429(retryAfter string) mockupstream.Behaviour {
	return mockupstream.Behaviour{Status: 429, RetryAfter: retryAfter, Path: chatPath}
}

func mockBehaviourStatus(status int) mockupstream.Behaviour {
	return mockupstream.Behaviour{Status: status, Path: chatPath}
}

func mockBehaviourOK() mockupstream.Behaviour { return mockupstream.Behaviour{} }
