// Package wsevent exchanges JSON events over a WebSocket in tests (the
// Realtime API's client side).
package wsevent

import (
	"encoding/json"
	"testing"

	"github.com/coder/websocket"
)

// Read reads the next message of c as a JSON object, failing the test
// otherwise.
func Read(t testing.TB, c *websocket.Conn) map[string]any {
	t.Helper()
	_, data, err := c.Read(t.Context())
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var ev map[string]any
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatalf("event %s: %v", data, err)
	}
	return ev
}

// Step is one turn of an exchange: the event to send ("" for none), then
// the type of the event that must come next.
type Step struct{ Send, Want string }

// Exchange plays steps on c, failing the test on the first event of
// another type.
func Exchange(t testing.TB, c *websocket.Conn, steps ...Step) {
	t.Helper()
	for _, s := range steps {
		if s.Send != "" {
			if err := c.Write(t.Context(), websocket.MessageText, []byte(s.Send)); err != nil {
				t.Fatalf("write %s: %v", s.Send, err)
			}
		}
		if ev := Read(t, c); ev["type"] != s.Want {
			t.Fatalf("after %s: event %v, want %s", s.Send, ev, s.Want)
		}
	}
}
