package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// fakeKV is an in-memory KV with Consul's compare-and-set semantics.
// beforeCAS, when set, runs before each CAS (another writer's turn).
type fakeKV struct {
	mu        sync.Mutex
	index     uint64
	pairs     map[string]*api.KVPair
	beforeCAS func(kv *fakeKV)
	cas       int
}

func newFakeKV() *fakeKV { return &fakeKV{pairs: map[string]*api.KVPair{}} }

func (kv *fakeKV) put(key string, value []byte) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.index++
	kv.pairs[key] = &api.KVPair{Key: key, Value: value, ModifyIndex: kv.index}
}

func (kv *fakeKV) Get(key string, _ *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if p := kv.pairs[key]; p != nil {
		c := *p
		return &c, &api.QueryMeta{LastIndex: kv.index}, nil
	}
	return nil, &api.QueryMeta{LastIndex: kv.index}, nil
}

func (kv *fakeKV) CAS(p *api.KVPair, _ *api.WriteOptions) (bool, *api.WriteMeta, error) {
	if kv.beforeCAS != nil {
		f := kv.beforeCAS
		kv.beforeCAS = nil
		f(kv)
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.cas++
	cur := kv.pairs[p.Key]
	if (cur == nil && p.ModifyIndex != 0) || (cur != nil && cur.ModifyIndex != p.ModifyIndex) {
		return false, nil, nil
	}
	kv.index++
	kv.pairs[p.Key] = &api.KVPair{Key: p.Key, Value: p.Value, ModifyIndex: kv.index}
	return true, nil, nil
}

func (kv *fakeKV) DeleteCAS(p *api.KVPair, _ *api.WriteOptions) (bool, *api.WriteMeta, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	cur := kv.pairs[p.Key]
	if cur == nil || cur.ModifyIndex != p.ModifyIndex {
		return false, nil, nil
	}
	delete(kv.pairs, p.Key)
	return true, nil, nil
}

func (kv *fakeKV) Acquire(*api.KVPair, *api.WriteOptions) (bool, *api.WriteMeta, error) {
	return false, nil, fmt.Errorf("not in the fake")
}

// newTestFleet returns a fleet on a store with keys k1, k2 (k1 limited to
// 20 rpm, client c1 to 10 rpm), a fake KV and a fake clock at *now.
func newTestFleet(t *testing.T, kv KV, now *time.Time, queue int) (*Fleet, *store.Store) {
	t.Helper()
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := func(id string, rpm int) *policy.Key {
		return &policy.Key{ID: id, Provider: policy.ProviderOpenAI, BaseURL: "https://api.openai.com/v1", Scheme: "https",
			Host: "api.openai.com", PathPrefix: "/v1", Secret: policy.Secret("sk-test-" + id), Enabled: true, Weight: 1, Limits: policy.Limits{RPM: rpm}}
	}
	cfg := &store.Config{Settings: policy.Defaults(),
		Keys:    map[string]*policy.Key{"k1": key("k1", 20), "k2": key("k2", 0)},
		Clients: map[string]*policy.Client{"c1": {ID: "c1", Enabled: true, TokenSHA256: [32]byte{1}, Limits: policy.Limits{RPM: 10}}},
	}
	if _, err := st.Apply(cfg, store.SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Store: st, KV: kv, Prefix: "keymux/", ID: "i1", QueueSize: queue,
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return f, st
}

func stateOf(st *store.Store, id string) policy.KeyState { return st.Read().Key(id).RT.State() }

// A write that loses its compare-and-set looks again: when the winner
// already says as much it is not written; when it says less it is
// overwritten on the next round.
func TestWriteCASConflicts(t *testing.T) {
	now := t0
	auth := Record{Reason: "auth", At: t0, By: "i1"}
	tests := []struct {
		name       string
		other      Record // written by another instance just before our CAS
		wantStored string
		wantCount  Counters
	}{
		{"the other wrote the same disable", Record{Reason: "auth", At: t0, By: "i2"}, "i2",
			Counters{Conflicts: 1, Covered: 1}},
		{"the other wrote a cooldown", Record{Reason: "cooldown", At: t0, Until: t0.Add(time.Hour), By: "i2"}, "i1",
			Counters{Conflicts: 1, Writes: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := newFakeKV()
			f, _ := newTestFleet(t, kv, &now, 8)
			kv.beforeCAS = func(kv *fakeKV) { kv.put("keymux/state/k1", tt.other.Marshal()) }
			f.write(context.Background(), "k1", auth)
			p, _, _ := kv.Get("keymux/state/k1", nil)
			got, err := ParseRecord(p.Value, now)
			if err != nil || got.By != tt.wantStored {
				t.Fatalf("stored %s (%v), want the record of %s", p.Value, err, tt.wantStored)
			}
			if c := f.counters(); c != tt.wantCount {
				t.Fatalf("counters %+v, want %+v", c, tt.wantCount)
			}
		})
	}
}

// Conflicts on every round give up after writeAttempts, counted as an error.
func TestWriteGivesUpAfterConflicts(t *testing.T) {
	now := t0
	kv := newFakeKV()
	f, _ := newTestFleet(t, kv, &now, 8)
	var other func(kv *fakeKV)
	n := 0
	other = func(kv *fakeKV) {
		n++
		kv.put("keymux/state/k1", Record{Reason: "cooldown", At: t0, Until: t0.Add(time.Duration(n) * time.Second)}.Marshal())
		kv.beforeCAS = other
	}
	kv.beforeCAS = other
	f.write(context.Background(), "k1", Record{Reason: "auth", At: t0, By: "i1"})
	if c := f.counters(); c.Conflicts != writeAttempts || c.WriteErrors != 1 || c.Writes != 0 {
		t.Fatalf("counters %+v, want %d conflicts and 1 error", c, writeAttempts)
	}
}

// A record KV holds from before the key's latest probe is obsolete: a new
// observation overwrites it.
func TestWriteOverObsoleteRecord(t *testing.T) {
	now := t0
	kv := newFakeKV()
	f, st := newTestFleet(t, kv, &now, 8)
	kv.put("keymux/state/k1", Record{Reason: "auth", At: t0.Add(-time.Minute), By: "i2"}.Marshal())
	st.Read().Key("k1").RT.Update(func(s policy.KeyState) policy.KeyState { return policy.ProbeResult(s, true, "", t0.Add(-time.Second)) })
	f.write(context.Background(), "k1", Record{Reason: "auth", At: t0, By: "i1"})
	if c := f.counters(); c.Writes != 1 || c.Covered != 0 {
		t.Fatalf("counters %+v, want the obsolete record overwritten", c)
	}
}

// Bad records are refused with their path and reason, listed on /status,
// and change nothing; a good one replaces the refusal and applies; one
// older than the key's latest probe changes nothing.
func TestOnStateRefusesAndApplies(t *testing.T) {
	now := t0
	f, st := newTestFleet(t, newFakeKV(), &now, 8)
	f.OnState("k1", []byte(`{"reason":"auth","at":"2026-11-25T20:10:00Z"}`), 7)
	s := f.Status()
	want := store.Refusal{Path: "keymux/state/k1",
		Reason: "bad shared state record: at 2026-11-25T20:10:00Z is more than 5s in the future (now 2026-11-25T20:00:00Z)"}
	if len(s.Refused) != 1 || s.Refused[0] != want || s.Counters.Refusals != 1 || len(s.States) != 0 {
		t.Fatalf("status %+v, want the refusal %+v", s, want)
	}
	if got := stateOf(st, "k1"); got != (policy.KeyState{}) {
		t.Fatalf("a refused record changed k1: %+v", got)
	}

	f.OnState("k1", Record{Reason: "auth", At: t0, By: "i2"}.Marshal(), 8)
	s = f.Status()
	if len(s.Refused) != 0 || len(s.States) != 1 || s.States[0].By != "i2" || s.Counters.Applied != 1 {
		t.Fatalf("status %+v, want k1's record known and applied", s)
	}
	if ok, why := policy.Eligible(st.Read().Key("k1").Key, stateOf(st, "k1"), now); ok || why.Reason != policy.ReasonAuthFailed {
		t.Fatalf("k1 eligible=%v %+v after a shared 401, want auth_failed", ok, why)
	}

	// k2 was probed after the record was observed: nothing to apply.
	st.Read().Key("k2").RT.Update(func(s policy.KeyState) policy.KeyState { return policy.ProbeResult(s, true, "", t0.Add(time.Second)) })
	f.OnState("k2", Record{Reason: "quota", At: t0, By: "i2"}.Marshal(), 9)
	if got := stateOf(st, "k2"); got.Disabled {
		t.Fatalf("a record older than the latest probe disabled k2: %+v", got)
	}
	f.OnState("k1", nil, 0) // deleted: forgotten, the key left as it is
	if s := f.Status(); len(s.States) != 1 || s.States[0].Key != "k2" || !stateOf(st, "k1").Disabled {
		t.Fatalf("after the delete: %+v, k1 %+v", s.States, stateOf(st, "k1"))
	}
}

// Members re-balance the shares: this instance counts itself in, and its
// rank is its place in the sorted ids.
func TestOnMembersShares(t *testing.T) {
	now := t0
	f, st := newTestFleet(t, newFakeKV(), &now, 8)
	tests := []struct {
		ids            []string
		members, rank  int
		keyRPM, cliRPM int
	}{
		{nil, 1, 0, 20, 10},
		{[]string{"i0", "i2"}, 3, 1, 7, 3},
		{[]string{"i0", "i1", "i2"}, 3, 1, 7, 3},
		{[]string{"i1", "i2"}, 2, 0, 10, 5},
		{[]string{"a", "b", "c", "i1"}, 4, 3, 5, 2},
	}
	for _, tt := range tests {
		f.OnMembers(tt.ids)
		m, r := st.Fleet().View()
		s := f.Status()
		if m != tt.members || r != tt.rank || len(s.Members) != tt.members || s.Rank != tt.rank {
			t.Fatalf("members %v: view %d/%d, status %v rank %d; want %d members, rank %d", tt.ids, m, r, s.Members, s.Rank, tt.members, tt.rank)
		}
		if got := st.Read().Key("k1").Limits().RPM; got != tt.keyRPM {
			t.Fatalf("members %v: k1's share %d, want %d", tt.ids, got, tt.keyRPM)
		}
		want := []ShareStatus{{Kind: "key", ID: "k1", RPM: 20, ShareRPM: tt.keyRPM}, {Kind: "client", ID: "c1", RPM: 10, ShareRPM: tt.cliRPM}}
		if len(s.Shares) != 2 || s.Shares[0] != want[0] || s.Shares[1] != want[1] {
			t.Fatalf("members %v: shares %+v, want %+v", tt.ids, s.Shares, want)
		}
	}
}

// The request path's observer enqueues only what is worth sharing and
// drops (counted) when the queue is full; it never blocks.
func TestObserveQueue(t *testing.T) {
	now := t0
	f, _ := newTestFleet(t, newFakeKV(), &now, 1)
	disabled := policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth}
	f.observe("k1", policy.KeyState{}, policy.KeyState{CooldownUntil: t0.Add(5 * time.Second)}, t0) // short: local
	f.observe("k1", policy.KeyState{}, policy.KeyState{EjectedUntil: t0.Add(time.Minute)}, t0)      // ejection: local
	if len(f.queue) != 0 {
		t.Fatalf("%d observations queued, want none", len(f.queue))
	}
	f.observe("k1", policy.KeyState{}, disabled, t0)
	f.observe("k2", policy.KeyState{}, disabled, t0) // the queue holds one
	if len(f.queue) != 1 || f.counters().Dropped != 1 {
		t.Fatalf("queued %d, dropped %d; want 1 and 1", len(f.queue), f.counters().Dropped)
	}
	if o := <-f.queue; o.id != "k1" || o.rec != (Record{Reason: "auth", At: t0, By: "i1"}) {
		t.Fatalf("queued %+v", o)
	}
}

// A passing probe clears the record it supersedes, not a newer one.
func TestProbePassedClears(t *testing.T) {
	now := t0
	kv := newFakeKV()
	f, _ := newTestFleet(t, kv, &now, 8)
	kv.put("keymux/state/k1", Record{Reason: "auth", At: t0, By: "i2"}.Marshal())
	p, _, _ := kv.Get("keymux/state/k1", nil)
	f.OnState("k1", p.Value, p.ModifyIndex)
	f.ProbePassed("k1", t0.Add(-time.Second)) // older than the record: kept
	if len(f.deletes) != 0 {
		t.Fatalf("a probe older than the record asked for a delete")
	}
	f.ProbePassed("k1", t0.Add(time.Second))
	f.clear(context.Background(), <-f.deletes)
	if p, _, _ := kv.Get("keymux/state/k1", nil); p != nil || f.counters().Cleared != 1 {
		t.Fatalf("record %v still there, cleared %d", p, f.counters().Cleared)
	}
}
