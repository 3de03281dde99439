package policy

import (
	"testing"
	"time"
)

func TestShareOf(t *testing.T) {
	tests := []struct {
		name                 string
		limit, members, rank int
		want                 int
	}{
		{"alone", 20, 1, 0, 20},
		{"no members known", 20, 0, 0, 20},
		{"unlimited", 0, 3, 1, 0},
		{"20 over 3, rank 0", 20, 3, 0, 7},
		{"20 over 3, rank 1", 20, 3, 1, 7},
		{"20 over 3, rank 2", 20, 3, 2, 6},
		{"21 over 3", 21, 3, 2, 7},
		{"fewer units than members: at least 1", 2, 3, 2, 1},
		{"rank out of range is clamped", 20, 3, 9, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ShareOf(tt.limit, tt.members, tt.rank); got != tt.want {
				t.Fatalf("ShareOf(%d, %d, %d) = %d, want %d", tt.limit, tt.members, tt.rank, got, tt.want)
			}
		})
	}
}

// The shares of every member add up to the limit exactly when the limit is
// at least the number of members.
func TestShareOfAddsUp(t *testing.T) {
	for limit := 1; limit <= 50; limit++ {
		for members := 1; members <= 12; members++ {
			sum := 0
			for r := range members {
				sum += ShareOf(limit, members, r)
			}
			if want := max(limit, members); sum != want {
				t.Fatalf("limit %d over %d members: shares add up to %d, want %d", limit, members, sum, want)
			}
		}
	}
}

func TestShareWorthy(t *testing.T) {
	now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	over := 10 * time.Second
	tests := []struct {
		name      string
		old, next KeyState
		want      SharedState
		ok        bool
	}{
		{"newly disabled (auth)", KeyState{}, KeyState{Disabled: true, DisabledReason: DisabledAuth}, SharedState{Reason: SharedAuth}, true},
		{"newly parked (quota)", KeyState{}, KeyState{Disabled: true, DisabledReason: DisabledQuota}, SharedState{Reason: SharedQuota}, true},
		{"auth then quota", KeyState{Disabled: true, DisabledReason: DisabledAuth}, KeyState{Disabled: true, DisabledReason: DisabledQuota}, SharedState{Reason: SharedQuota}, true},
		{"already disabled", KeyState{Disabled: true, DisabledReason: DisabledAuth}, KeyState{Disabled: true, DisabledReason: DisabledAuth}, SharedState{}, false},
		{"long cooldown", KeyState{}, KeyState{CooldownUntil: now.Add(11 * time.Second)}, SharedState{Reason: SharedCooldown, Until: now.Add(11 * time.Second)}, true},
		{"cooldown of exactly over stays local", KeyState{}, KeyState{CooldownUntil: now.Add(over)}, SharedState{}, false},
		{"short cooldown stays local", KeyState{}, KeyState{CooldownUntil: now.Add(2 * time.Second)}, SharedState{}, false},
		{"cooldown not extended", KeyState{CooldownUntil: now.Add(time.Minute)}, KeyState{CooldownUntil: now.Add(time.Minute)}, SharedState{}, false},
		{"ejection stays local", KeyState{}, KeyState{EjectedUntil: now.Add(time.Minute)}, SharedState{}, false},
		{"recovery stays local", KeyState{Disabled: true, DisabledReason: DisabledAuth}, KeyState{}, SharedState{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ShareWorthy(tt.old, tt.next, now, over)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ShareWorthy = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestApplyShared(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		s    KeyState
		st   SharedState
		at   time.Time
		want KeyState
	}{
		{"disable", KeyState{}, SharedState{Reason: SharedAuth}, t0, KeyState{Disabled: true, DisabledReason: DisabledAuth, VerdictAt: t0, DisabledAt: t0}},
		{"park", KeyState{}, SharedState{Reason: SharedQuota}, t0, KeyState{Disabled: true, DisabledReason: DisabledQuota, VerdictAt: t0, DisabledAt: t0}},
		{"cooldown", KeyState{}, SharedState{Reason: SharedCooldown, Until: t0.Add(time.Minute)}, t0, KeyState{CooldownUntil: t0.Add(time.Minute)}},
		{"a longer local cooldown stays", KeyState{CooldownUntil: t0.Add(time.Hour)}, SharedState{Reason: SharedCooldown, Until: t0.Add(time.Minute)}, t0,
			KeyState{CooldownUntil: t0.Add(time.Hour)}},
		{"a probe after it: obsolete", KeyState{ProbedAt: t0.Add(time.Second)}, SharedState{Reason: SharedAuth}, t0, KeyState{ProbedAt: t0.Add(time.Second)}},
		{"a probe at the same time: obsolete", KeyState{ProbedAt: t0}, SharedState{Reason: SharedAuth}, t0, KeyState{ProbedAt: t0}},
		{"unknown reason: nothing", KeyState{}, SharedState{Reason: "x"}, t0, KeyState{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ApplyShared(tt.s, tt.st, tt.at); got != tt.want {
				t.Fatalf("ApplyShared = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCheckWrittenAt(t *testing.T) {
	now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		t       time.Time
		want    time.Time
		wantErr string
	}{
		{"past", now.Add(-time.Hour), now.Add(-time.Hour), ""},
		{"now", now, now, ""},
		{"within the skew: now", now.Add(MaxClockSkew), now, ""},
		{"beyond the skew", now.Add(MaxClockSkew + time.Second), time.Time{}, "at 2026-11-25T20:00:06Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckWrittenAt("at", tt.t, now)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("CheckWrittenAt = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}
