package store

import (
	"sync"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

func TestRuntimeConcurrentExactCounts(t *testing.T) {
	const (
		workers = 8
		perG    = 5000
	)
	r := NewRuntime()
	t0 := time.Unix(1_700_000_000, 0)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range perG {
				r.Update(func(s policy.KeyState) policy.KeyState {
					s.ConsecutiveFailures++
					return s
				})
				r.AddUsage(3)
				r.AddRequest()
				// Spread over 10 seconds, crossing bucket boundaries concurrently.
				r.RecordError(t0.Add(time.Duration((g+i)%10) * time.Second))
				_ = r.State()
				_ = r.ErrorsInWindow(t0.Add(9*time.Second), 10*time.Second)
			}
		})
	}
	wg.Wait()
	const n = workers * perG
	if got := r.State().ConsecutiveFailures; got != n {
		t.Errorf("ConsecutiveFailures = %d, want %d", got, n)
	}
	if got := r.Usage(); got != 3*n {
		t.Errorf("Usage = %d, want %d", got, 3*n)
	}
	if got := r.Requests(); got != n {
		t.Errorf("Requests = %d, want %d", got, n)
	}
	if got := r.Errors(); got != n {
		t.Errorf("Errors = %d, want %d", got, n)
	}
	if got := r.ErrorsInWindow(t0.Add(9*time.Second), 10*time.Second); got != n {
		t.Errorf("ErrorsInWindow(10s) = %d, want %d", got, n)
	}
	if got := r.ErrorsInWindow(t0.Add(9*time.Second), 1*time.Second); got != n/10 {
		t.Errorf("ErrorsInWindow(1s) = %d, want %d", got, n/10)
	}
}

func TestRuntimeErrorWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name   string
		errors []int // seconds after t0
		now    int
		window time.Duration
		want   uint64
	}{
		{"empty", nil, 0, time.Minute, 0},
		{"same second", []int{0, 0, 0}, 0, time.Second, 3},
		{"window edge", []int{0, 1, 59, 61}, 61, time.Minute, 2}, // seconds 2..61
		{"inclusive start", []int{2}, 61, time.Minute, 1},
		{"sub-second window rounds up", []int{5}, 5, 10 * time.Millisecond, 1},
		{"zero window", []int{5}, 5, 0, 0},
		{"future errors ignored", []int{10}, 5, time.Minute, 0},
		{"bucket reused after a full turn", []int{0, errBuckets}, errBuckets, time.Second, 1},
		{"old error dropped from window", []int{errBuckets, 0}, errBuckets, MaxErrorWindow, 1},
		{"window capped at MaxErrorWindow", []int{0, 1}, errBuckets, time.Hour, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRuntime()
			for _, s := range tc.errors {
				r.RecordError(at(s))
			}
			if got := r.ErrorsInWindow(at(tc.now), tc.window); got != tc.want {
				t.Errorf("ErrorsInWindow = %d, want %d", got, tc.want)
			}
			if got := r.Errors(); got != uint64(len(tc.errors)) {
				t.Errorf("Errors = %d, want %d", got, len(tc.errors))
			}
		})
	}
}

func TestRuntimeUpdateReturnsStored(t *testing.T) {
	r := NewRuntime()
	if s := r.State(); s != (policy.KeyState{}) {
		t.Fatalf("fresh state %+v", s)
	}
	until := time.Unix(50, 0)
	got := r.Update(func(s policy.KeyState) policy.KeyState {
		s.CooldownUntil = until
		return s
	})
	if got.CooldownUntil != until || r.State().CooldownUntil != until {
		t.Errorf("Update = %+v, State = %+v", got, r.State())
	}
}

func TestRuntimeHotMethodsDoNotAllocate(t *testing.T) {
	r := NewRuntime()
	now := time.Unix(1_700_000_000, 0)
	allocs := testing.AllocsPerRun(100, func() {
		r.RecordError(now)
		r.AddUsage(1)
		r.AddRequest()
		_ = r.ErrorsInWindow(now, time.Minute)
		_ = r.State()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per call", allocs)
	}
}

func TestErrorsInWindowEdges(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	r := NewRuntime()
	if got := r.ErrorsInWindow(t0, time.Minute); got != 0 {
		t.Fatalf("fresh key: %d errors", got)
	}
	r.RecordError(t0)
	r.RecordError(t0.Add(10 * time.Second))
	tests := []struct {
		at   time.Duration
		want uint64
	}{
		{0, 1},
		{10 * time.Second, 2},
		{59 * time.Second, 2},
		{60 * time.Second, 1}, // t0 left the 60s window
		{69 * time.Second, 1},
		{70 * time.Second, 0},
		{time.Hour, 0},
	}
	for _, tc := range tests {
		if got := r.ErrorsInWindow(t0.Add(tc.at), time.Minute); got != tc.want {
			t.Errorf("at +%v: %d errors in the window, want %d", tc.at, got, tc.want)
		}
	}
	// An error recorded late with an older clock reading still counts.
	r.RecordError(t0.Add(5 * time.Second))
	if got := r.ErrorsInWindow(t0.Add(30*time.Second), time.Minute); got != 3 {
		t.Errorf("after an out-of-order error: %d, want 3", got)
	}
}

// TestStateEpoch: Update moves the epoch only when a field that decides
// eligibility changes.
func TestStateEpoch(t *testing.T) {
	r := NewRuntime()
	at := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		f     func(policy.KeyState) policy.KeyState
		moves bool
	}{
		{"failure count", func(s policy.KeyState) policy.KeyState { s.ConsecutiveFailures++; return s }, false},
		{"probe time", func(s policy.KeyState) policy.KeyState { s.ProbedAt = at; return s }, false},
		{"cooldown", func(s policy.KeyState) policy.KeyState { s.CooldownUntil = at; return s }, true},
		{"same cooldown", func(s policy.KeyState) policy.KeyState { s.CooldownUntil = at.In(time.Local); return s }, false},
		{"ejection", func(s policy.KeyState) policy.KeyState { s.EjectedUntil = at; return s }, true},
		{"probe failed", func(s policy.KeyState) policy.KeyState { s.ProbeFailed = true; return s }, true},
		{"disabled", func(s policy.KeyState) policy.KeyState { s.Disabled = true; return s }, true},
		{"disabled reason", func(s policy.KeyState) policy.KeyState { s.DisabledReason = policy.DisabledQuota; return s }, true},
		{"slow start", func(s policy.KeyState) policy.KeyState { s.SlowStartFrom = at; return s }, true},
	} {
		before := StateEpoch()
		r.Update(tc.f)
		if moved := StateEpoch() != before; moved != tc.moves {
			t.Errorf("%s: epoch moved = %v, want %v", tc.name, moved, tc.moves)
		}
	}
	before := StateEpoch()
	EligibilityChanged()
	if StateEpoch() != before+1 {
		t.Errorf("EligibilityChanged: epoch %d, want %d", StateEpoch(), before+1)
	}
}

// A key's error window is allocated at its first error: a large pool
// whose keys never fail does not carry 2.4 KB per key.
func TestRuntimeErrorWindowAllocatedAtFirstError(t *testing.T) {
	r := NewRuntime()
	now := time.Unix(1_700_000_000, 0)
	if r.window.Load() != nil || r.ErrorsInWindow(now, time.Minute) != 0 {
		t.Fatal("a new Runtime has an error window")
	}
	r.RecordError(now)
	r.RecordError(now)
	if r.window.Load() == nil {
		t.Fatal("no error window after an error")
	}
	if got := r.ErrorsInWindow(now, time.Minute); got != 2 {
		t.Fatalf("ErrorsInWindow = %d, want 2", got)
	}
}
