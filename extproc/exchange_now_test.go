package extproc

import (
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// TestExchangeNow: a request-path phase decides on the clock read that
// starts it (one read per message), read again after a wait; outside a
// phase, and on a server clock other than time.Now, now is the server's
// clock.
func TestExchangeNow(t *testing.T) {
	fake := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name      string
		s         *Server
		wantFixed bool // inside the phase: the same instant on every call
	}{
		{"real clock", &Server{now: time.Now, realClock: true}, true},
		{"server clock", &Server{now: func() time.Time { return fake }}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := &exchange{callRecord: callRecord{s: tt.s}}
			var first, second, moved time.Time
			before := time.Now()
			x.timed(func() *extprocv3.ProcessingResponse {
				first = x.now()
				for !time.Now().After(first) { // the wall clock moves on; the phase's time does not
				}
				second = x.now()
				x.clockMoved() // after a wait (an object's record)
				moved = x.now()
				return nil
			})
			switch {
			case tt.wantFixed && (first != second || first.Before(before)):
				t.Fatalf("inside the phase: %v then %v (phase began after %v)", first, second, before)
			case tt.wantFixed && !moved.After(second):
				t.Fatalf("after clockMoved: %v, not later than the phase's %v", moved, second)
			case !tt.wantFixed && (first != fake || second != fake || moved != fake):
				t.Fatalf("inside the phase: %v, %v; want the server's clock %v", first, second, fake)
			}
			if !x.at.IsZero() {
				t.Fatalf("after the phase: at = %v, want zero", x.at)
			}
			if after := x.now(); tt.wantFixed && !after.After(second) {
				t.Fatalf("after the phase: now = %v, not later than the phase's %v", after, second)
			}
		})
	}
}
