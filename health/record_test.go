package health_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
)

func TestParseRecord(t *testing.T) {
	at := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		raw     string
		want    health.Record
		wantErr string
	}{
		{name: "healthy", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","latency_ms":12,"error":"","failures":0}`,
			want: health.Record{Healthy: true, CheckedAt: at, LatencyMS: 12}},
		{name: "failed", raw: `{"healthy":false,"checked_at":"2026-11-25T20:00:00Z","latency_ms":3,"error":"auth: status 401","status":401,"failures":2,"by":"i1"}`,
			want: health.Record{CheckedAt: at, LatencyMS: 3, Error: "auth: status 401", Status: 401, Failures: 2, By: "i1"}},
		{name: "rate limited", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","latency_ms":1,"error":"rate limited (429)","cooldown_until":"2026-11-25T20:00:30Z"}`,
			want: health.Record{Healthy: true, CheckedAt: at, LatencyMS: 1, Error: "rate limited (429)", CooldownUntil: at.Add(30 * time.Second)}},
		{name: "unknown fields ignored", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","latency_ms":0,"error":"","x":1}`,
			want: health.Record{Healthy: true, CheckedAt: at}},
		{name: "no checked_at", raw: `{"healthy":true}`, wantErr: "checked_at is missing"},
		{name: "negative latency", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","latency_ms":-1}`, wantErr: "latency_ms is negative"},
		{name: "negative failures", raw: `{"healthy":false,"checked_at":"2026-11-25T20:00:00Z","failures":-3}`, wantErr: "failures is negative"},
		{name: "not json", raw: `healthy`, wantErr: "invalid character"},
		{name: "wrong type", raw: `{"healthy":"yes","checked_at":"2026-11-25T20:00:00Z"}`, wantErr: "cannot unmarshal"},
		{name: "too big", raw: `{"error":"` + strings.Repeat("x", 5000) + `"}`, wantErr: "bytes (max 4096)"},
		// A record from the future would pin the key: every real probe, older, would be ignored.
		// Within the skew, checked_at is taken as now: it cannot pin the key either.
		{name: "within the clock skew", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:05Z"}`,
			want: health.Record{Healthy: true, CheckedAt: at}},
		{name: "future checked_at", raw: `{"healthy":false,"checked_at":"2026-11-25T20:00:06Z","failures":1}`,
			wantErr: "bad health record: checked_at 2026-11-25T20:00:06Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
		{name: "far future checked_at", raw: `{"healthy":true,"checked_at":"9999-12-31T23:59:59Z"}`,
			wantErr: "bad health record: checked_at 9999-12-31T23:59:59Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
		{name: "future in another zone", raw: `{"healthy":true,"checked_at":"2026-11-25T23:00:00+02:00"}`,
			wantErr: "bad health record: checked_at 2026-11-25T21:00:00Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
		{name: "cooldown at the limit", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","cooldown_until":"2026-12-02T20:00:00Z"}`,
			want: health.Record{Healthy: true, CheckedAt: at, CooldownUntil: at.Add(policy.MaxRetryDelay)}},
		{name: "cooldown beyond the limit", raw: `{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","cooldown_until":"2026-12-02T20:00:01Z"}`,
			wantErr: "bad health record: cooldown_until is more than 168h0m0s after checked_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := health.ParseRecord([]byte(tt.raw), at)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, health.ErrBadRecord) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrBadRecord with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.CheckedAt.Equal(tt.want.CheckedAt) || !got.CooldownUntil.Equal(tt.want.CooldownUntil) {
				t.Fatalf("times = %v/%v, want %v/%v", got.CheckedAt, got.CooldownUntil, tt.want.CheckedAt, tt.want.CooldownUntil)
			}
			got.CheckedAt, got.CooldownUntil = tt.want.CheckedAt, tt.want.CooldownUntil
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRecordRoundTripAndLongError(t *testing.T) {
	r := health.Record{Healthy: false, CheckedAt: time.Now().UTC().Round(0), LatencyMS: 7,
		Error: strings.Repeat("é", 200), Status: 503, Failures: 4, By: "i2"}
	got, err := health.ParseRecord(r.Marshal(), r.CheckedAt)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Error) != health.MaxErrorLen || !strings.HasPrefix(r.Error, got.Error) {
		t.Errorf("error cut to %d bytes (want %d, on a rune boundary)", len(got.Error), health.MaxErrorLen)
	}
	got.Error = r.Error
	if !got.CheckedAt.Equal(r.CheckedAt) {
		t.Fatalf("checked_at %v, want %v", got.CheckedAt, r.CheckedAt)
	}
	got.CheckedAt = r.CheckedAt
	if got != r {
		t.Fatalf("round trip: %+v, want %+v", got, r)
	}
	for _, field := range []string{`"healthy":false`, `"checked_at":`, `"latency_ms":7`, `"error":`, `"failures":4`} {
		if !strings.Contains(string(r.Marshal()), field) {
			t.Errorf("encoding lacks %s: %s", field, r.Marshal())
		}
	}
}

func TestRecordApply(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	disabled := policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, ProbedAt: t0}
	ejected := policy.KeyState{EjectedUntil: t0.Add(time.Minute), Ejections: 2, ProbedAt: t0}
	tests := []struct {
		name string
		s    policy.KeyState
		r    health.Record
		want policy.KeyState
	}{
		{name: "pass clears auth disable", s: disabled, r: health.Record{Healthy: true, CheckedAt: t0.Add(time.Second)},
			want: policy.KeyState{ProbedAt: t0.Add(time.Second)}},
		{name: "pass clears ejection", s: ejected, r: health.Record{Healthy: true, CheckedAt: t0.Add(time.Second)},
			want: policy.KeyState{ProbedAt: t0.Add(time.Second), SlowStartFrom: t0.Add(time.Second)}},
		{name: "failure marks probe_failed", s: policy.KeyState{}, r: health.Record{CheckedAt: t0, Error: "upstream: status 500"},
			want: policy.KeyState{ProbeFailed: true, ProbeError: "upstream: status 500", ProbedAt: t0}},
		// A probe that passed before a 401 was observed (its record
		// arriving late) does not put the revoked key back.
		{name: "pass before a later disable keeps it", s: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, ProbedAt: t0, VerdictAt: t0.Add(2 * time.Second)},
			r:    health.Record{Healthy: true, CheckedAt: t0.Add(time.Second)},
			want: policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth, ProbedAt: t0.Add(time.Second), VerdictAt: t0.Add(2 * time.Second)}},
		{name: "older record ignored", s: disabled, r: health.Record{Healthy: true, CheckedAt: t0.Add(-time.Second)}, want: disabled},
		{name: "same record ignored", s: disabled, r: health.Record{Healthy: true, CheckedAt: t0}, want: disabled},
		{name: "429 keeps the key and cools it down", s: policy.KeyState{},
			r:    health.Record{Healthy: true, CheckedAt: t0, CooldownUntil: t0.Add(30 * time.Second)},
			want: policy.KeyState{ProbedAt: t0, CooldownUntil: t0.Add(30 * time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.Apply(tt.s); got != tt.want {
				t.Fatalf("Apply = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRecoveryDelay(t *testing.T) {
	const base, ceil = 30 * time.Second, 5 * time.Minute
	tests := []struct {
		fails int
		want  time.Duration
	}{
		{0, 30 * time.Second}, {1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute},
		{4, 4 * time.Minute}, {5, 5 * time.Minute}, {1000, 5 * time.Minute},
	}
	for _, tt := range tests {
		if got := health.RecoveryDelay(base, ceil, tt.fails); got != tt.want {
			t.Errorf("RecoveryDelay(%d) = %v, want %v", tt.fails, got, tt.want)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"healthy":true,"checked_at":"2026-11-25T20:00:00Z","latency_ms":12,"error":"","failures":0}`))
	f.Add([]byte(`{"healthy":false,"checked_at":"2026-11-25T20:00:00.123456789+02:00","error":"auth: status 401","failures":9}`))
	f.Add([]byte(`{"checked_at":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"error":"\u00e9\u00e9"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
		r, err := health.ParseRecord(raw, now)
		if err != nil {
			if !errors.Is(err, health.ErrBadRecord) {
				t.Fatalf("error %v does not wrap ErrBadRecord", err)
			}
			return
		}
		if r.CheckedAt.IsZero() || r.CheckedAt.After(now) || r.LatencyMS < 0 || r.Failures < 0 || len(r.Error) > health.MaxErrorLen {
			t.Fatalf("accepted an invalid record %+v", r)
		}
		again, err := health.ParseRecord(r.Marshal(), now)
		if err != nil {
			t.Fatalf("re-parse of an accepted record: %v", err)
		}
		if again.Healthy != r.Healthy || again.Failures != r.Failures || !again.CheckedAt.Equal(r.CheckedAt) {
			t.Fatalf("round trip changed %+v into %+v", r, again)
		}
		// Applying never panics and is idempotent.
		s1 := r.Apply(policy.KeyState{})
		if s2 := r.Apply(s1); s2 != s1 {
			t.Fatalf("Apply not idempotent: %+v then %+v", s1, s2)
		}
	})
}
