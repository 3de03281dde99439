package fleet

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

var t0 = time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)

func TestParseRecord(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    Record
		wantErr string
	}{
		{name: "auth", raw: `{"reason":"auth","at":"2026-11-25T19:59:00Z","by":"i1"}`,
			want: Record{Reason: "auth", At: t0.Add(-time.Minute), By: "i1"}},
		{name: "quota drops an until", raw: `{"reason":"quota","at":"2026-11-25T19:59:00Z","until":"2026-11-25T21:00:00Z"}`,
			want: Record{Reason: "quota", At: t0.Add(-time.Minute)}},
		{name: "cooldown", raw: `{"reason":"cooldown","at":"2026-11-25T20:00:00Z","until":"2026-11-25T20:01:00Z"}`,
			want: Record{Reason: "cooldown", At: t0, Until: t0.Add(time.Minute)}},
		{name: "unknown fields ignored", raw: `{"reason":"auth","at":"2026-11-25T20:00:00Z","x":1}`,
			want: Record{Reason: "auth", At: t0}},
		{name: "within the skew: taken as now", raw: `{"reason":"cooldown","at":"2026-11-25T20:00:05Z","until":"2026-11-25T20:01:05Z"}`,
			want: Record{Reason: "cooldown", At: t0, Until: t0.Add(time.Minute)}},
		{name: "beyond the skew", raw: `{"reason":"auth","at":"2026-11-25T20:00:06Z"}`,
			wantErr: "bad shared state record: at 2026-11-25T20:00:06Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
		{name: "far future", raw: `{"reason":"auth","at":"9999-12-31T23:59:59Z"}`,
			wantErr: "bad shared state record: at 9999-12-31T23:59:59Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"},
		{name: "cooldown at the longest Retry-After", raw: `{"reason":"cooldown","at":"2026-11-25T20:00:00Z","until":"2026-12-02T20:00:00Z"}`,
			want: Record{Reason: "cooldown", At: t0, Until: t0.Add(policy.MaxRetryDelay)}},
		{name: "cooldown beyond the longest Retry-After", raw: `{"reason":"cooldown","at":"2026-11-25T20:00:00Z","until":"2026-12-02T20:00:01Z"}`,
			wantErr: "bad shared state record: cooldown until 2026-12-02T20:00:01Z is more than 168h0m0s after at (the longest Retry-After keymux accepts)"},
		{name: "cooldown without until", raw: `{"reason":"cooldown","at":"2026-11-25T20:00:00Z"}`,
			wantErr: "bad shared state record: cooldown until is missing or not after at"},
		{name: "no at", raw: `{"reason":"auth"}`, wantErr: "bad shared state record: at is missing"},
		{name: "unknown reason", raw: `{"reason":"ejected","at":"2026-11-25T20:00:00Z"}`,
			wantErr: `bad shared state record: reason "ejected" is not auth, quota or cooldown`},
		{name: "not json", raw: `auth`, wantErr: "bad shared state record: invalid character"},
		{name: "too big", raw: `{"by":"` + strings.Repeat("x", 2000) + `"}`, wantErr: "bad shared state record: 2009 bytes (max 1024)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRecord([]byte(tt.raw), t0)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrBadRecord) || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrBadRecord starting with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.At.Equal(tt.want.At) || !got.Until.Equal(tt.want.Until) || got.Reason != tt.want.Reason || got.By != tt.want.By {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"reason":"auth","at":"2026-11-25T20:00:00Z"}`))
	f.Add([]byte(`{"reason":"cooldown","at":"2026-11-25T20:00:04Z","until":"2026-11-25T20:01:00Z"}`))
	f.Add([]byte(`{"reason":"quota","at":"2026-11-25T20:00:00Z","by":"\u00e9"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseRecord(raw, t0)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("error %v does not wrap ErrBadRecord", err)
			}
			return
		}
		if r.At.IsZero() || r.At.After(t0) || len(r.By) > maxByLen ||
			(r.Reason == policy.SharedCooldown && (!r.Until.After(r.At) || r.Until.Sub(r.At) > policy.MaxRetryDelay)) {
			t.Fatalf("accepted an invalid record %+v", r)
		}
		again, err := ParseRecord(r.Marshal(), t0)
		if err != nil {
			t.Fatalf("re-parse of an accepted record: %v", err)
		}
		if !again.At.Equal(r.At) || !again.Until.Equal(r.Until) || again.Reason != r.Reason || again.By != r.By {
			t.Fatalf("re-parse changed %+v into %+v", r, again)
		}
	})
}

func TestCovers(t *testing.T) {
	auth := Record{Reason: "auth", At: t0}
	quota := Record{Reason: "quota", At: t0}
	cool := func(d time.Duration) Record { return Record{Reason: "cooldown", At: t0, Until: t0.Add(d)} }
	tests := []struct {
		name      string
		cur, next Record
		probedAt  time.Time
		want      bool
	}{
		{"same disable", auth, auth, time.Time{}, true},
		{"other disable reason", auth, quota, time.Time{}, false},
		{"disable covers a cooldown", auth, cool(time.Minute), time.Time{}, true},
		{"cooldown does not cover a disable", cool(time.Hour), auth, time.Time{}, false},
		{"longer cooldown covers", cool(time.Hour), cool(time.Minute), time.Time{}, true},
		{"shorter cooldown does not", cool(time.Minute), cool(time.Hour), time.Time{}, false},
		{"a record older than the latest probe is obsolete", auth, auth, t0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Covers(tt.cur, tt.next, tt.probedAt); got != tt.want {
				t.Fatalf("Covers = %v, want %v", got, tt.want)
			}
		})
	}
}

// Observations of one key are merged and released at most once per
// WriteInterval; other keys are independent.
func TestCoalescer(t *testing.T) {
	c := newCoalescer()
	cool := func(at, until time.Duration) Record {
		return Record{Reason: "cooldown", At: t0.Add(at), Until: t0.Add(until)}
	}
	c.add("k1", cool(0, 20*time.Second))
	c.add("k1", cool(100*time.Millisecond, 40*time.Second))
	c.add("k1", cool(200*time.Millisecond, 30*time.Second))
	c.add("k2", Record{Reason: "auth", At: t0})
	ready, next := c.due(t0.Add(300 * time.Millisecond))
	want := cool(200*time.Millisecond, 40*time.Second)
	if len(ready) != 2 || ready["k1"] != want || ready["k2"].Reason != "auth" || !next.IsZero() {
		t.Fatalf("first release = %+v (next %s), want k1 %+v and k2 auth, nothing left", ready, next, want)
	}
	// k1 again within the second: held until a second after its release.
	c.add("k1", cool(400*time.Millisecond, 50*time.Second))
	c.add("k1", Record{Reason: "quota", At: t0.Add(500 * time.Millisecond)})
	c.add("k1", cool(600*time.Millisecond, time.Hour)) // a cooldown never replaces a disable
	ready, next = c.due(t0.Add(700 * time.Millisecond))
	if len(ready) != 0 || !next.Equal(t0.Add(1300*time.Millisecond)) {
		t.Fatalf("within the second: released %+v, next %s; want nothing until %s", ready, next, t0.Add(1300*time.Millisecond))
	}
	ready, next = c.due(t0.Add(1300 * time.Millisecond))
	if want := (Record{Reason: "quota", At: t0.Add(600 * time.Millisecond)}); len(ready) != 1 || ready["k1"] != want || !next.IsZero() {
		t.Fatalf("after the second: released %+v (next %s), want k1 %+v", ready, next, want)
	}
}
