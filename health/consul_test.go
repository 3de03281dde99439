package health_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/testutil/consultest"
)

// instance is one sidecar: a store fed by a Consul source, and a checker
// whose results come back through the source's health hook.
type instance struct {
	id      string
	st      *store.Store
	hc      *runningChecker
	srcStop func()
}

func (in *instance) stop() {
	in.hc.stop()
	in.srcStop()
}

func startInstance(t *testing.T, a *consultest.Agent, id string, cfg health.Config) *instance {
	t.Helper()
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Consul, cfg.ID = st, a.NewClient(), id
	hc := startChecker(t, cfg)
	src, err := consul.New(consul.Options{
		Client: a.NewClient(), Store: st, OnHealth: hc.c.OnHealth,
		Logger:      slog.New(slog.DiscardHandler),
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return &instance{id: id, st: st, hc: hc, srcStop: stop}
}

func leaders(ins []*instance) []*instance {
	var out []*instance
	for _, in := range ins {
		if in.hc.c.IsLeader() {
			out = append(out, in)
		}
	}
	return out
}

// readRecord reads keymux/health/<id> from Consul.
func readRecord(t *testing.T, a *consultest.Agent, id string) (health.Record, bool) {
	t.Helper()
	p, _, err := a.Client().KV().Get("keymux/health/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p == nil {
		return health.Record{}, false
	}
	r, err := health.ParseRecord(p.Value, time.Now())
	if err != nil {
		t.Fatalf("health/%s: %v", id, err)
	}
	return r, true
}

// Three instances on one Consul: one prober per interval, results in KV and
// in every instance's decisions, takeover after a clean stop and after a
// crash.
func TestThreeInstancesOneProber(t *testing.T) {
	a := consultest.Start(t)
	m := startMock(t)
	creds := map[string]string{"k1": "sk-test-k1", "k2": "sk-test-k2"}
	for id, cred := range creds {
		a.Put("keymux/keys/"+id, []byte(openAIKey(m, cred)))
	}
	const interval = 300 * time.Millisecond
	cfg := health.Config{Interval: interval, RecoveryBase: interval, Timeout: 200 * time.Millisecond, Jitter: 0.05}
	ins := []*instance{
		startInstance(t, a, "i1", cfg), startInstance(t, a, "i2", cfg), startInstance(t, a, "i3", cfg),
	}
	all := func(cond func(in *instance) bool) func() bool {
		return func() bool {
			for _, in := range ins {
				if !cond(in) {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, nil, "every store probed by a leader", all(func(in *instance) bool {
		for id := range creds {
			e := in.st.Read().Key(id)
			if e == nil || e.RT.State().ProbedAt.IsZero() {
				return false
			}
		}
		return true
	}))
	ls := leaders(ins)
	if len(ls) != 1 {
		t.Fatalf("%d leaders, want 1", len(ls))
	}
	leader := ls[0]
	if held, _, err := a.Client().KV().Get(leader.hc.c.LockKey(), nil); err != nil || held == nil || held.Session == "" {
		t.Fatalf("lock key %s: %+v, %v", leader.hc.c.LockKey(), held, err)
	}

	// The results are in KV, written by the leader, and applied by all three.
	for id := range creds {
		waitFor(t, nil, "health/"+id+" applied everywhere", all(func(in *instance) bool {
			r, ok := readRecord(t, a, id)
			return ok && in.st.Read().Key(id).RT.State().ProbedAt.Equal(r.CheckedAt)
		}))
		r, _ := readRecord(t, a, id)
		if !r.Healthy || r.By != leader.id || r.Error != "" || r.Status != 200 || r.Failures != 0 {
			t.Errorf("health/%s = %+v, want healthy by %s", id, r, leader.id)
		}
	}

	// Exactly one instance probes, once per interval per key.
	before := map[string]uint64{}
	for _, in := range ins {
		before[in.id] = in.hc.c.Stats().Probes
	}
	start := time.Now()
	const window = 8 * interval
	waitFor(t, nil, "a window of 8 intervals", func() bool { return time.Since(start) > window })
	end := time.Now()
	for _, in := range ins {
		d := in.hc.c.Stats().Probes - before[in.id]
		switch {
		case in == leader && d == 0:
			t.Errorf("the leader %s did not probe in %v", in.id, window)
		case in != leader && d != 0:
			t.Errorf("follower %s probed %d times", in.id, d)
		}
	}
	for id, cred := range creds {
		var times []time.Time
		for _, r := range probesOf(m, cred) {
			if r.Time.After(start) && r.Time.Before(end) {
				times = append(times, r.Time)
			}
		}
		if n := len(times); n < 7 || n > 9 {
			t.Errorf("%s probed %d times in 8 intervals, want 8±1", id, n)
		}
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < interval*95/100-20*time.Millisecond || gap > interval+slack {
				t.Errorf("%s: probes %v apart, want one per interval (%v, jitter 5%%)", id, gap, interval)
			}
		}
	}

	// A failing key is out in the decisions of all three instances, and
	// back in all three when it recovers.
	m.SetDefault("sk-test-k2", mockupstream.Behaviour{Status: 401})
	waitFor(t, nil, "k2 excluded everywhere", all(func(in *instance) bool {
		e := in.st.Read().Key("k2")
		ok, why := policy.Eligible(e.Key, e.RT.State(), time.Now())
		return !ok && why.Reason == policy.ReasonProbeFailed
	}))
	if r, _ := readRecord(t, a, "k2"); r.Healthy || r.Error != "auth: status 401 (invalid_api_key)" || r.Status != 401 || r.Failures < 1 || r.By != leader.id {
		t.Errorf("health/k2 = %+v", r)
	}
	for _, in := range ins {
		if ks := statusOf(in.hc.c, "k2"); ks.State != health.StateProbeFailed || ks.Leader != (in == leader) || ks.Error != "auth: status 401 (invalid_api_key)" {
			t.Errorf("%s: Snapshot k2 = %+v", in.id, ks)
		}
		if ok, _ := eligible(in.st, "k1"); !ok {
			t.Errorf("%s: k1 excluded too", in.id)
		}
	}
	m.SetDefault("sk-test-k2", mockupstream.Behaviour{})
	waitFor(t, nil, "k2 back everywhere", all(func(in *instance) bool { ok, _ := eligible(in.st, "k2"); return ok }))

	// The leader stops cleanly: it releases the lock, another takes over at once.
	rest := []*instance{}
	for _, in := range ins {
		if in != leader {
			rest = append(rest, in)
		}
	}
	stopAt := time.Now()
	leader.stop()
	var next *instance
	waitFor(t, nil, "a new leader after a clean stop", func() bool {
		ls := leaders(rest)
		if len(ls) == 1 {
			next = ls[0]
		}
		return len(ls) == 1
	})
	waitFor(t, nil, "the new leader probes", func() bool {
		r, ok := readRecord(t, a, "k1")
		return ok && r.By == next.id
	})
	r, _ := readRecord(t, a, "k1")
	if d := r.CheckedAt.Sub(stopAt); d > health.DefaultSessionTTL+health.DefaultLockDelay {
		t.Errorf("new leader probed %v after the clean stop, want within TTL+lock-delay", d)
	}
	t.Logf("clean stop: %s took over, first probe %v after the stop", next.id, r.CheckedAt.Sub(stopAt).Round(time.Millisecond))

	// The new leader crashes (its session is left to expire): the last
	// instance takes over once Consul invalidates the session (TTL, up to
	// 2×TTL) plus the lock-delay.
	var last *instance
	for _, in := range rest {
		if in != next {
			last = in
		}
	}
	next.hc.c.AbandonOnStop()
	crashAt := time.Now()
	next.stop()
	waitFor(t, nil, "the last instance leads", func() bool {
		r, ok := readRecord(t, a, "k1")
		return last.hc.c.IsLeader() && ok && r.By == last.id
	})
	r, _ = readRecord(t, a, "k1")
	took := r.CheckedAt.Sub(crashAt)
	t.Logf("crash: %s took over, first probe %v after the crash", last.id, took.Round(time.Millisecond))
	if took < health.DefaultSessionTTL-time.Second {
		t.Errorf("takeover %v after a crash, before the session TTL (%v): the lock was not held", took, health.DefaultSessionTTL)
	}
	if limit := 2*health.DefaultSessionTTL + health.DefaultLockDelay + interval + time.Second; took > limit {
		t.Errorf("takeover %v after a crash, want within 2×TTL + lock-delay (%v)", took, limit)
	}
	// Its write is counted once Consul has answered, after the record shows.
	waitFor(t, nil, "the stats counting the write", func() bool { return last.hc.c.Stats().KVWrites > 0 })
	st := last.hc.c.Stats()
	if st.Mode != "consul" || !st.Leader || st.LeaderTerms != 1 || st.KVWrites == 0 || st.LockKey != "keymux/leader/health" {
		t.Errorf("Stats = %+v", st)
	}
}

// A key that only a follower took out (a 401 only that sidecar saw) gets a
// local recovery probe on that follower when no leader result covers it;
// the follower writes nothing to KV.
func TestFollowerRecoversLocallyDisabledKey(t *testing.T) {
	a := consultest.Start(t)
	m := startMock(t)
	a.Put("keymux/keys/k1", []byte(openAIKey(m, "sk-test-k1")))
	const base = 200 * time.Millisecond
	cfg := health.Config{Interval: time.Minute, RecoveryBase: base, Timeout: time.Second, Jitter: 0.05}
	ins := []*instance{startInstance(t, a, "i1", cfg), startInstance(t, a, "i2", cfg)}
	waitFor(t, nil, "k1 probed and applied on both", func() bool {
		r, ok := readRecord(t, a, "k1")
		for _, in := range ins {
			e := in.st.Read().Key("k1")
			if !ok || e == nil || !e.RT.State().ProbedAt.Equal(r.CheckedAt) {
				return false
			}
		}
		return true
	})
	ls := leaders(ins)
	if len(ls) != 1 {
		t.Fatalf("%d leaders, want 1", len(ls))
	}
	leader, follower := ls[0], ins[0]
	if follower == leader {
		follower = ins[1]
	}
	before := follower.hc.c.Stats()
	probesBefore := len(probesOf(m, "sk-test-k1"))

	outAt := time.Now()
	follower.st.Read().Key("k1").RT.Update(func(s policy.KeyState) policy.KeyState {
		return policy.NextState(s, policy.Outcome{Kind: policy.OutcomeAuth, Status: 401}, policy.EjectionSettings{}, outAt)
	})
	if ok, why := eligible(follower.st, "k1"); ok || why.Reason != policy.ReasonAuthFailed {
		t.Fatalf("follower k1: eligible=%v %+v, want auth_failed", ok, why)
	}
	if ks := statusOf(follower.hc.c, "k1"); ks.NextProbe.IsZero() || ks.NextProbe.Sub(outAt) > 2*base+slack {
		t.Errorf("follower k1 out with next probe %v (out at %v), want within 2×%v", ks.NextProbe, outAt, base)
	}
	waitFor(t, follower.hc.c, "follower k1 back", func() bool { ok, _ := eligible(follower.st, "k1"); return ok })
	back := time.Since(outAt)
	after := follower.hc.c.Stats()
	if d := after.Probes - before.Probes; d != 1 || after.RecoveryProbes-before.RecoveryProbes != 1 || after.KVWrites != 0 {
		t.Errorf("follower ran %d probes (%d recovery), %d KV writes; want 1 local recovery probe, no write", d, after.RecoveryProbes-before.RecoveryProbes, after.KVWrites)
	}
	if n := len(probesOf(m, "sk-test-k1")) - probesBefore; n != 1 {
		t.Errorf("upstream saw %d probes, want 1", n)
	}
	if r, _ := readRecord(t, a, "k1"); r.By != leader.id {
		t.Errorf("health/k1 written by %q, want the leader %q only", r.By, leader.id)
	}
	if ok, _ := eligible(leader.st, "k1"); !ok {
		t.Error("the leader's k1 went out too")
	}
	if back > 2*base+time.Second {
		t.Errorf("follower k1 back after %v, want about 2×%v", back, base)
	}
}

// The leader writes its results in Consul transactions rather than one PUT
// per probe, and deletes the record of a key removed from the
// configuration (not that of a disabled key).
func TestRecordsBatchedAndRemovedKeysCleaned(t *testing.T) {
	a := consultest.Start(t)
	m := startMock(t)
	const n = 100
	for i := range n {
		a.Put(fmt.Sprintf("keymux/keys/k%d", i), []byte(openAIKey(m, fmt.Sprintf("sk-test-%d", i))))
	}
	// First probes spread over 1% of the interval (100 ms): they end close
	// together and share transactions.
	in := startInstance(t, a, "i1", health.Config{Interval: 10 * time.Second, Jitter: 0.01, Timeout: 2 * time.Second})
	records := func() map[string]bool {
		pairs, _, err := a.Client().KV().List("keymux/health/", nil)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, p := range pairs {
			out[strings.TrimPrefix(p.Key, "keymux/health/")] = true
		}
		return out
	}
	waitFor(t, nil, "a record of every key", func() bool { return len(records()) == n })
	// The stats count a transaction once Consul has answered it, which is
	// after its records are visible: wait until every write is counted.
	var st health.Stats
	waitFor(t, nil, "the stats counting every write", func() bool {
		st = in.hc.c.Stats()
		return st.KVWrites+st.KVWriteErrors >= n
	})
	t.Logf("%d records written in %d transactions", st.KVWrites, st.KVTxns)
	if st.KVWrites < n || st.KVTxns == 0 || st.KVTxns*2 > st.KVWrites || st.KVWriteErrors != 0 {
		t.Fatalf("Stats = %+v: want %d+ writes in at most half as many transactions, no error", st, n)
	}

	// k8 disabled first, k7 removed after: the writes are in order, so
	// once k7's record is gone a wrong delete of k8's would have happened.
	a.Put("keymux/keys/k8", []byte(strings.Replace(openAIKey(m, "sk-test-8"), `{`, `{"enabled":false,`, 1)))
	waitFor(t, nil, "k8 disabled", func() bool {
		e := in.st.Read().Key("k8")
		return e != nil && !e.Key.Enabled
	})
	a.Delete("keymux/keys/k7")
	waitFor(t, nil, "the record of the removed key deleted", func() bool { return !records()["k7"] })
	got := records()
	if len(got) != n-1 || !got["k8"] {
		t.Fatalf("records after removing k7 and disabling k8: %d (k8 kept: %v), want %d with k8", len(got), got["k8"], n-1)
	}
}
