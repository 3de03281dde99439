package store

import (
	"sync"
	"testing"
	"time"
)

func TestMinuteCounter(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0).Truncate(time.Minute)
	var c MinuteCounter
	steps := []struct {
		at      time.Duration
		add     uint64
		want    uint64
		wantGet uint64
	}{
		{0, 1, 1, 1},
		{30 * time.Second, 2, 3, 3},
		{59 * time.Second, 0, 3, 3},
		{60 * time.Second, 1, 1, 1},                          // a new minute starts from zero
		{30 * time.Second, 5, 1, 0},                          // an older minute cannot count any more
		{125 * time.Second, 0, 0, 0},                         // two minutes later: nothing yet
		{130 * time.Second, 1 << 40, 0xffffffff, 0xffffffff}, // saturates
	}
	for i, s := range steps {
		now := t0.Add(s.at)
		if got := c.Add(now, s.add); got != s.want {
			t.Fatalf("step %d: Add = %d, want %d", i, got, s.want)
		}
		if got := c.Get(now); got != s.wantGet {
			t.Fatalf("step %d: Get = %d, want %d", i, got, s.wantGet)
		}
	}
	if got := NextMinute(t0.Add(61 * time.Second)); !got.Equal(t0.Add(2 * time.Minute)) {
		t.Errorf("NextMinute = %v", got)
	}
}

func TestMinuteCounterConcurrent(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var c MinuteCounter
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.Add(now, 1)
			}
		})
	}
	wg.Wait()
	if got := c.Get(now); got != 8000 {
		t.Fatalf("count %d, want 8000", got)
	}
}
