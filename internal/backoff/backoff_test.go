package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	base, ceil := 100*time.Millisecond, time.Second
	tests := []struct {
		n       int
		rnd     float64
		want    time.Duration
		comment string
	}{
		{1, 0, 50 * time.Millisecond, "first retry, no jitter drawn: half of base"},
		{1, 0.5, 75 * time.Millisecond, "first retry, half the jitter"},
		{2, 0, 100 * time.Millisecond, "doubled"},
		{4, 0.999999, 800 * time.Millisecond, "base·8, nearly all the jitter"},
		{5, 0, 500 * time.Millisecond, "capped at ceil"},
		{60, 0.5, 750 * time.Millisecond, "a large n neither overflows nor passes ceil"},
		{0, 0, 50 * time.Millisecond, "n below 1 counts as the first retry"},
	}
	for _, tc := range tests {
		got := Delay(tc.n, base, ceil, func() float64 { return tc.rnd })
		if tc.rnd == 0.999999 {
			got = got.Round(time.Millisecond)
		}
		if got != tc.want {
			t.Errorf("Delay(%d, rnd %v) = %v, want %v (%s)", tc.n, tc.rnd, got, tc.want, tc.comment)
		}
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(t.Context(), time.Millisecond) {
		t.Error("Sleep(1ms) = false with a live context, want true")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep(1h) = true with a cancelled context, want false")
	}
}
