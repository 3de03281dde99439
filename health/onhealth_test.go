package health_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// Records that arrive before their key are applied when the key appears;
// bad records are counted and ignored; a deletion leaves the state alone.
func TestOnHealthRecords(t *testing.T) {
	m := startMock(t)
	st := newStore(t, testSettings(), map[string]string{"k1": openAIKey(m, "sk-test-k1")})
	c := startChecker(t, health.Config{Store: st, Interval: time.Minute, Timeout: time.Second, ID: "solo"}).c

	at := time.Now().UTC().Round(0)
	failed := health.Record{Healthy: false, CheckedAt: at, Error: "auth: status 401", Status: 401, Failures: 3, LatencyMS: 9, By: "other"}
	c.OnHealth("k9", failed.Marshal()) // k9 does not exist yet
	c.OnHealth("k1", []byte(`{"healthy":true}`))
	if got := c.Stats().RecordsBad; got != 1 {
		t.Errorf("RecordsBad = %d, want 1", got)
	}

	k1, err := store.ParseKey("k1", []byte(openAIKey(m, "sk-test-k1")), nil)
	if err != nil {
		t.Fatal(err)
	}
	k9, err := store.ParseKey("k9", []byte(openAIKey(m, "sk-test-k9")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(&store.Config{Settings: testSettings(), Keys: map[string]*policy.Key{"k1": k1, "k9": k9}}, store.SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "k9's record applied", func() bool { return state(st, "k9").ProbedAt.Equal(at) })
	if ok, why := eligible(st, "k9"); ok || why.Reason != policy.ReasonProbeFailed {
		t.Errorf("k9 eligible=%v %+v, want probe_failed", ok, why)
	}
	ks := statusOf(c, "k9")
	if ks.Failures != 3 || ks.LatencyMS != 9 || ks.Error != "auth: status 401" || ks.LastHealthy {
		t.Errorf("Snapshot k9 = %+v", ks)
	}
	// Three failures: the next recovery probe is 4×base (base = 30s) later,
	// capped at min(interval, 5m) = 1m.
	// (Counted from when the scheduler saw the key out, a moment after at.)
	if want := at.Add(time.Minute); ks.NextProbe.Before(want) || ks.NextProbe.After(want.Add(time.Second)) {
		t.Errorf("k9 next probe %v, want %v (after 3 failures)", ks.NextProbe, want)
	}

	c.OnHealth("k9", nil)
	if s := state(st, "k9"); !s.ProbeFailed || !s.ProbedAt.Equal(at) {
		t.Errorf("a deleted record changed the state: %+v", s)
	}
	passed := health.Record{Healthy: true, CheckedAt: at.Add(time.Second)}
	c.OnHealth("k9", passed.Marshal())
	if ok, why := eligible(st, "k9"); !ok {
		t.Errorf("k9 not back after a passing record: %+v", why)
	}
}

func TestNewValidates(t *testing.T) {
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     health.Config
		wantErr string
	}{
		{name: "no store", cfg: health.Config{}, wantErr: "Store is required"},
		{name: "bad prefix", cfg: health.Config{Store: st, Prefix: "/keymux"}, wantErr: "must not start with /"},
		{name: "ttl too short", cfg: health.Config{Store: st, SessionTTL: time.Second}, wantErr: "outside Consul's 10s–24h"},
		{name: "lock delay too long", cfg: health.Config{Store: st, LockDelay: 2 * time.Minute}, wantErr: "lock delay"},
		{name: "jitter", cfg: health.Config{Store: st, Jitter: 1}, wantErr: "jitter"},
		{name: "negative", cfg: health.Config{Store: st, Interval: -time.Second}, wantErr: "negative"},
		{name: "ok", cfg: health.Config{Store: st, Prefix: "kx"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := health.New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.LockKey() != "kx/leader/health" || c.HealthPrefix() != "kx/health/" || c.IsLeader() {
				t.Errorf("LockKey %q HealthPrefix %q IsLeader %v", c.LockKey(), c.HealthPrefix(), c.IsLeader())
			}
		})
	}
}

// A record whose checked_at is beyond the clock skew is refused: applied, it
// would pin the key's state, since every real probe result is older.
func TestOnHealthFutureRecordRefused(t *testing.T) {
	m := startMock(t)
	st := newStore(t, testSettings(), map[string]string{"k1": openAIKey(m, "sk-test-k1")})
	now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	var later atomic.Int64 // the fake clock's advance, read by the checker
	c := startChecker(t, health.Config{Store: st, Interval: time.Hour, Timeout: time.Second, ID: "solo",
		Now: func() time.Time { return now.Add(time.Duration(later.Load())) }}).c

	future := health.Record{Healthy: false, CheckedAt: now.Add(time.Hour), Error: "auth: status 401", Status: 401, Failures: 1}
	c.OnHealth("k1", future.Marshal())
	if got := c.Stats().RecordsBad; got != 1 {
		t.Fatalf("RecordsBad = %d, want 1 (the future record refused)", got)
	}
	if s := state(st, "k1"); !s.ProbedAt.IsZero() || s.ProbeFailed {
		t.Fatalf("a future record changed k1's state: %+v", s)
	}
	// A record within the skew applies as checked now, so that a real one
	// one second later still does.
	skewed := health.Record{Healthy: false, CheckedAt: now.Add(health.MaxRecordSkew), Error: "auth: status 401", Status: 401, Failures: 1}
	c.OnHealth("k1", skewed.Marshal())
	if s := state(st, "k1"); !s.ProbeFailed || !s.ProbedAt.Equal(now) {
		t.Fatalf("a record within the skew was not applied as checked now: %+v", s)
	}
	passed := health.Record{Healthy: true, CheckedAt: now.Add(time.Second)}
	later.Store(int64(time.Second))
	c.OnHealth("k1", passed.Marshal())
	if ok, why := eligible(st, "k1"); !ok {
		t.Errorf("k1 not back after a passing record: %+v", why)
	}
	if got := c.Stats().RecordsBad; got != 1 {
		t.Errorf("RecordsBad = %d, want 1", got)
	}
}
