package consul_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/testutil/consultest"
)

func seed(t testing.TB, a *consultest.Agent) {
	t.Helper()
	put(t, a, "settings", `{"strategy":"round_robin"}`)
	put(t, a, "keys/k1", keyK1)
	put(t, a, "keys/k2", keyK2)
	put(t, a, "rules/r1", `{"key":"k1","from":"gpt-4","to":"gpt-4o"}`)
	put(t, a, "clients/c1", `{"name":"team a","token_sha256":"`+strings.Repeat("ab", 32)+`"}`)
}

func TestSourceInitialLoad(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	put(t, a, "keys/", "")                                   // a folder entry (Consul UI): ignored
	put(t, a, "other/thing", `{"not":"ours"}`)               // outside the document kinds: ignored
	a.Put("keymux-other/keys/k9", []byte(keyK1))             // another prefix: not read
	r := startSource(t, a, consul.Options{Prefix: "keymux"}) // trailing slash added
	waitStore(t, r.st, "first apply", r.st.Ready)

	if got := poolIDs(r.st, "gpt-4o"); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("Pool(gpt-4o) = %v, want [k1 k2]", got)
	}
	if got := poolIDs(r.st, "gpt-4o-mini"); !slices.Equal(got, []string{"k1"}) {
		t.Errorf("Pool(gpt-4o-mini) = %v, want [k1]", got)
	}
	snap := r.st.Read()
	if rule := snap.Rule("k1", "gpt-4"); rule == nil || rule.To != "gpt-4o" {
		t.Errorf("Rule(k1, gpt-4) = %+v, want to gpt-4o", rule)
	}
	st := r.st.Status()
	if st.Source != consul.SourceConsul || st.Stale || st.Keys != 2 || st.Rules != 1 || st.Clients != 1 || len(st.Refused) != 0 {
		t.Errorf("Status = %+v, want source consul, not stale, 2 keys, 1 rule, 1 client, nothing refused", st)
	}
	if st.LastSync.IsZero() {
		t.Error("Status.LastSync is zero")
	}
	// The store is ready as soon as Apply returns; the source records the
	// index it applied right after.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := r.src.Wait(ctx, func() bool { return r.src.Index() != 0 }); err != nil {
		t.Errorf("Index() = 0 after the first read: %v", err)
	}
}

// TestSourceFollowsEdits: each edit reaches the store as a delta (after
// the first, whole apply), the answers read by the source's scanner
// (consul.NewClient) or decoded by the Consul client (any other client).
func TestSourceFollowsEdits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client func(a *consultest.Agent) *api.Client
	}{
		{"consul.NewClient", func(*consultest.Agent) *api.Client { return nil }},
		{"api.NewClient", (*consultest.Agent).NewClient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := consultest.Start(t)
			seed(t, a)
			r := startSource(t, a, consul.Options{Client: tc.client(a)})
			waitStore(t, r.st, "first apply", r.st.Ready)
			followEdits(t, a, r)
			if n := strings.Count(r.logs.String(), "delta=true"); n != 11 {
				t.Errorf("%d edits applied as deltas, want 11", n)
			}
		})
	}
}

func followEdits(t *testing.T, a *consultest.Agent, r *running) {

	steps := []struct {
		name string
		edit func(t *testing.T)
		want func() bool
	}{
		{"PUT adds k3", func(t *testing.T) { put(t, a, "keys/k3", keyK3) }, poolIs(r.st, "gpt-4o", "k1", "k2", "k3")},
		{"PUT disables k2", func(t *testing.T) {
			put(t, a, "keys/k2", `{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k2","models":["gpt-4o"],"enabled":false}`)
		}, poolIs(r.st, "gpt-4o", "k1", "k3")},
		{"DELETE removes k1 (and its rule is refused)", func(t *testing.T) { a.Delete(prefix + "keys/k1") }, func() bool {
			st := r.st.Status()
			return slices.Equal(poolIDs(r.st, "gpt-4o"), []string{"k3"}) && len(st.Refused) == 1 && st.Refused[0].Path == "keymux/rules/r1"
		}},
		{"DELETE removes the dangling rule", func(t *testing.T) { a.Delete(prefix + "rules/r1") }, func() bool {
			return len(r.st.Status().Refused) == 0 && r.st.Status().Rules == 0
		}},
		{"PUT adds a rule", func(t *testing.T) { put(t, a, "rules/r2", `{"key":"k3","from":"gpt-4","to":"gpt-4o"}`) }, func() bool {
			rule := r.st.Read().Rule("k3", "gpt-4")
			return rule != nil && rule.ID == "r2" && rule.To == "gpt-4o"
		}},
		// The writes of `keymux kv keys add/disable/enable`, `rules add/rm`, `keys rm`.
		{"PUT adds k4 with a secret_ref", func(t *testing.T) {
			put(t, a, "keys/k4", `{"base_url":"http://127.0.0.1:9/v1","models":["gpt-4o"],"provider":"openai_compatible","secret_ref":"env:KEYMUX_TEST_K4"}`)
		}, poolIs(r.st, "gpt-4o", "k3", "k4")},
		{"PUT disables k3", func(t *testing.T) {
			put(t, a, "keys/k3", `{"provider":"anthropic","secret":"sk-test-k3","models":["gpt-4o"],"enabled":false}`)
		}, poolIs(r.st, "gpt-4o", "k4")},
		{"PUT enables k3", func(t *testing.T) {
			put(t, a, "keys/k3", `{"provider":"anthropic","secret":"sk-test-k3","models":["gpt-4o"],"enabled":true}`)
		}, poolIs(r.st, "gpt-4o", "k3", "k4")},
		{"PUT adds rule r3", func(t *testing.T) {
			put(t, a, "rules/r3", `{"from":"gpt-4","key":"k4","to":"gpt-4o-mini"}`)
		}, func() bool {
			rule := r.st.Read().Rule("k4", "gpt-4")
			return rule != nil && rule.ID == "r3" && rule.To == "gpt-4o-mini"
		}},
		{"DELETE removes rule r3", func(t *testing.T) { a.Delete(prefix + "rules/r3") }, func() bool {
			return r.st.Read().Rule("k4", "gpt-4") == nil
		}},
		{"DELETE removes k4", func(t *testing.T) { a.Delete(prefix + "keys/k4") }, poolIs(r.st, "gpt-4o", "k3")},
	}
	t.Setenv("KEYMUX_TEST_K4", "sk-test-k4")
	for _, s := range steps {
		gen := r.st.Read().Generation()
		s.edit(t)
		waitStore(t, r.st, s.name, s.want)
		if got := r.st.Read().Generation(); got <= gen {
			t.Errorf("%s: generation %d, want > %d", s.name, got, gen)
		}
	}
	if k := r.st.Read().Key("k4"); k != nil {
		t.Errorf("k4 still in the store after rm")
	}
}

func TestSourceRefusesBadEntriesAlone(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	r := startSource(t, a, consul.Options{})
	waitStore(t, r.st, "first apply", r.st.Ready)
	gen := r.st.Read().Generation()

	put(t, a, "keys/bad-json", `{"provider":"openai","secret":"sk-test-leak-1"`)
	put(t, a, "keys/bad-provider", `{"provider":"foo","secret":"sk-test-leak-2"}`)
	put(t, a, "rules/r-missing", `{"key":"nope","from":"a","to":"b"}`)
	// A good key turned bad keeps its last good version.
	put(t, a, "keys/k2", `{"provider":"openai","secret":"sk-test-leak-3","models":["gpt-4o"],"weight":-1}`)
	put(t, a, "keys/k3", keyK3)

	waitStore(t, r.st, "four refusals and k3", func() bool {
		return len(r.st.Status().Refused) == 4 && r.st.Read().Key("k3") != nil
	})
	st := r.st.Status()
	want := []struct{ path, reason string }{
		{"keymux/keys/bad-json", "keys/bad-json"},
		{"keymux/keys/bad-provider", `field "provider": unknown provider "foo"`},
		{"keymux/keys/k2", `field "weight"`},
		{"keymux/rules/r-missing", `field "key": unknown key "nope"`},
	}
	for i, w := range want {
		got := st.Refused[i]
		if got.Path != w.path || !strings.Contains(got.Reason, w.reason) {
			t.Errorf("Refused[%d] = %+v, want path %s and a reason containing %q", i, got, w.path, w.reason)
		}
		if strings.Contains(got.Reason, "sk-test") {
			t.Errorf("Refused[%d] reason leaks a secret: %q", i, got.Reason)
		}
	}
	if got := poolIDs(r.st, "gpt-4o"); !slices.Equal(got, []string{"k1", "k2", "k3"}) {
		t.Errorf("Pool(gpt-4o) = %v, want [k1 k2 k3] (k2 at its last good version)", got)
	}
	if k2 := r.st.Read().Key("k2"); k2 == nil || k2.Key.Weight != 1 {
		t.Errorf("k2 = %+v, want its last good version (weight 1)", k2)
	}
	if got := r.st.Read().Generation(); got <= gen {
		t.Errorf("generation %d, want > %d", got, gen)
	}
	// The store shows the refusals as soon as Apply returns; the source
	// records them (and counts them) right after.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := r.src.Wait(ctx, func() bool { return slices.Equal(r.src.Refused(), st.Refused) }); err != nil {
		t.Errorf("Source.Refused = %v, want %v: %v", r.src.Refused(), st.Refused, err)
	}
	if got := r.src.RefusedTotal(); got != 4 {
		t.Errorf("RefusedTotal = %d, want 4", got)
	}
	if strings.Contains(r.logs.String(), "sk-test-leak") {
		t.Errorf("a secret reached the logs")
	}

	// Fixing the entries clears the refusals.
	a.Delete(prefix + "keys/bad-json")
	a.Delete(prefix + "keys/bad-provider")
	a.Delete(prefix + "rules/r-missing")
	put(t, a, "keys/k2", keyK2)
	waitStore(t, r.st, "refusals cleared", func() bool { return len(r.st.Status().Refused) == 0 })
}

func TestSourceHealthHook(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	type call struct{ id, raw string }
	calls := make(chan call, 10)
	r := startSource(t, a, consul.Options{OnHealth: func(id string, raw []byte) {
		calls <- call{id, string(raw)}
	}})
	waitStore(t, r.st, "first apply", r.st.Ready)
	next := func() call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(waitTimeout):
			t.Fatal("no OnHealth call")
		}
		return call{}
	}
	put(t, a, "health/k1", `{"healthy":false,"error":"401"}`)
	if c := next(); c != (call{"k1", `{"healthy":false,"error":"401"}`}) {
		t.Errorf("OnHealth = %+v, want k1 with the document", c)
	}
	a.Delete(prefix + "health/k1")
	if c := next(); c != (call{"k1", ""}) {
		t.Errorf("OnHealth = %+v, want k1 deleted (nil)", c)
	}
}

// TestSourceSurvivesConsulRestart stops Consul mid-run (the store keeps its
// last state, marked stale), then brings back an empty agent on the same
// address and re-seeds it with different data: the source resyncs.
func TestSourceSurvivesConsulRestart(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	r := startSource(t, a, consul.Options{})
	waitStore(t, r.st, "first apply", r.st.Ready)
	gen := r.st.Read().Generation()
	for range 30 { // push the index up so that the re-seeded agent's is lower
		put(t, a, "keys/k3", keyK3)
		a.Delete(prefix + "keys/k3")
	}
	oldIndex := kvIndex(t, a)
	waitSource(t, r.src, "index after edits", func() bool { return r.src.Index() >= oldIndex })

	a.Stop()
	waitStore(t, r.st, "stale", func() bool { return r.st.Status().Stale })
	st := r.st.Status()
	if st.Source != consul.SourceConsul || st.StaleSince.IsZero() {
		t.Errorf("Status while Consul is down = %+v, want source consul, stale since the last contact", st)
	}
	if got := poolIDs(r.st, "gpt-4o"); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("Pool(gpt-4o) while Consul is down = %v, want the last state [k1 k2]", got)
	}

	a.Restart()
	put(t, a, "keys/k9", keyK2)
	waitSource(t, r.src, "resync to the re-seeded agent", func() bool {
		st := r.st.Status()
		return slices.Equal(poolIDs(r.st, "gpt-4o"), []string{"k9"}) && !st.Stale && st.Source == consul.SourceConsul
	})
	if got := r.src.Index(); got >= oldIndex {
		t.Errorf("Index() = %d after the re-seed, want below the old %d", got, oldIndex)
	}
	if r.st.Read().Generation() <= gen {
		t.Errorf("generation did not move")
	}
	if r.src.Failures() == 0 {
		t.Error("Failures() = 0 after an outage")
	}
}

// TestSourceIndexGoesBackwards restores an older Consul snapshot while a
// blocking query is in flight: Consul answers with a lower index, the source
// resets and resyncs to the restored data.
func TestSourceIndexGoesBackwards(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	// A restore lowers the index without waking blocking queries: they
	// return at the end of their wait time with the lower index.
	r := startSource(t, a, consul.Options{WaitTime: 300 * time.Millisecond})
	waitStore(t, r.st, "first apply", r.st.Ready)

	c := a.Client()
	snap, _, err := c.Snapshot().Save(nil)
	if err != nil {
		t.Fatal(err)
	}
	saved, err := readAll(snap)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		put(t, a, fmt.Sprintf("keys/x%02d", i), keyK2)
	}
	waitStore(t, r.st, "20 more keys", func() bool { return len(poolIDs(r.st, "gpt-4o")) == 22 })

	if err := c.Snapshot().Restore(nil, strings.NewReader(string(saved))); err != nil {
		t.Fatal(err)
	}
	waitStore(t, r.st, "the restored data", poolIs(r.st, "gpt-4o", "k1", "k2"))
	waitSource(t, r.src, "the reset to be logged", func() bool {
		return strings.Contains(r.logs.String(), "consul index went backwards")
	})
}

func TestSourceServesFromSnapshotWhenConsulIsDown(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	put(t, a, "keys/bad", `{"provider":"foo","secret":"sk-test-bad"}`)
	dir := filepath.Join(t.TempDir(), "state")

	r := startSource(t, a, consul.Options{StateDir: dir})
	waitSource(t, r.src, "first apply", func() bool { return r.src.Index() > 0 })
	fi, err := os.Stat(filepath.Join(dir, consul.SnapshotFile))
	if err != nil {
		t.Fatalf("no snapshot after the first apply: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	snap, err := consul.LoadSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range snap.Entries {
		paths = append(paths, e.Path)
	}
	wantPaths := []string{"keymux/clients/c1", "keymux/keys/bad", "keymux/keys/k1", "keymux/keys/k2", "keymux/rules/r1", "keymux/settings"}
	if !slices.Equal(paths, wantPaths) || snap.Prefix != prefix || snap.Index == 0 || snap.ReadAt.IsZero() {
		t.Errorf("snapshot = prefix %q index %d read_at %v paths %v; want prefix keymux/, an index, a time and %v",
			snap.Prefix, snap.Index, snap.ReadAt, paths, wantPaths)
	}
	r.stop()
	a.Stop()

	// keymux restarted while Consul is down: serves from the snapshot.
	r2 := startSource(t, a, consul.Options{StateDir: dir})
	waitStore(t, r2.st, "snapshot applied", r2.st.Ready)
	st := r2.st.Status()
	if st.Source != consul.SourceSnapshot || !st.Stale || !st.StaleSince.Equal(snap.ReadAt) {
		t.Errorf("Status = %+v, want source snapshot, stale since %v", st, snap.ReadAt)
	}
	if len(st.Refused) != 1 || st.Refused[0].Path != "keymux/keys/bad" {
		t.Errorf("Refused = %+v, want keymux/keys/bad", st.Refused)
	}
	if got := poolIDs(r2.st, "gpt-4o"); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("Pool(gpt-4o) from the snapshot = %v, want [k1 k2]", got)
	}

	// Consul back, re-seeded differently: resync, no longer stale.
	a.Restart()
	put(t, a, "keys/k3", keyK3)
	idx := kvIndex(t, a)
	waitSource(t, r2.src, "resync from Consul", func() bool { return r2.src.Index() >= idx })
	if st := r2.st.Status(); st.Source != consul.SourceConsul || st.Stale || !slices.Equal(poolIDs(r2.st, "gpt-4o"), []string{"k3"}) {
		t.Errorf("after resync: Status %+v, Pool(gpt-4o) %v; want source consul, not stale, [k3]", st, poolIDs(r2.st, "gpt-4o"))
	}
	snap2, err := consul.LoadSnapshot(dir)
	if err != nil || len(snap2.Entries) != 1 || snap2.Entries[0].Path != "keymux/keys/k3" || snap2.Index != idx {
		t.Errorf("snapshot after resync = %v, %v; want only keymux/keys/k3 at index %d", snap2, err, idx)
	}
}

func TestSourceNotReadyWithoutConsulOrSnapshot(t *testing.T) {
	a := consultest.Start(t)
	a.Stop()
	r := startSource(t, a, consul.Options{StateDir: t.TempDir()})
	waitSource(t, r.src, "three failed attempts", func() bool { return r.src.Failures() >= 3 })
	if r.st.Ready() {
		t.Fatal("store ready without Consul or a snapshot")
	}
	a.Restart()
	seed(t, a)
	waitStore(t, r.st, "ready once Consul answers", func() bool {
		return r.st.Ready() && slices.Equal(poolIDs(r.st, "gpt-4o"), []string{"k1", "k2"})
	})
}

// TestThreeSourcesConverge runs three sidecars' sources on one Consul and a
// burst of 50 edits: all three end at the same Consul index with the same
// configuration.
func TestThreeSourcesConverge(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	var rs []*running
	for range 3 {
		r := startSource(t, a, consul.Options{})
		waitStore(t, r.st, "first apply", r.st.Ready)
		rs = append(rs, r)
	}
	kvc := a.Client().KV()
	for i := range 50 {
		var err error
		switch i % 5 {
		case 0, 1, 2:
			_, err = kvc.Put(&api.KVPair{Key: fmt.Sprintf("%skeys/b%02d", prefix, i), Value: []byte(keyK2)}, nil)
		case 3:
			_, err = kvc.Delete(fmt.Sprintf("%skeys/b%02d", prefix, i-3), nil)
		case 4:
			_, err = kvc.Put(&api.KVPair{Key: fmt.Sprintf("%srules/b%02d", prefix, i), Value: []byte(fmt.Sprintf(`{"key":"b%02d","from":"gpt-4","to":"gpt-4o"}`, i-4))}, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	final := kvIndex(t, a)
	for i, r := range rs {
		waitSource(t, r.src, fmt.Sprintf("source %d to reach index %d", i, final), func() bool { return r.src.Index() >= final })
	}
	want := describe(rs[0].st)
	if !strings.Contains(want, "key b01 ") || strings.Contains(want, "key b00 ") {
		t.Fatalf("source 0 content %q lacks the burst", want)
	}
	for i, r := range rs[1:] {
		if got := describe(r.st); got != want {
			t.Errorf("source %d content\n%s\nwant (source 0)\n%s", i+1, got, want)
		}
		if r.src.Index() != rs[0].src.Index() {
			t.Errorf("source %d at index %d, source 0 at %d", i+1, r.src.Index(), rs[0].src.Index())
		}
	}
	// 30 keys put, 10 deleted, 10 rules of which the 10 naming deleted keys are refused.
	if st := rs[0].st.Status(); st.Keys != 22 || st.Rules != 1 || len(st.Refused) != 10 {
		t.Errorf("Status = %d keys, %d rules, %d refused; want 22, 1, 10", st.Keys, st.Rules, len(st.Refused))
	}
}

// kvIndex is the prefix's current Consul index.
func kvIndex(t *testing.T, a *consultest.Agent) uint64 {
	t.Helper()
	_, meta, err := a.Client().KV().List(prefix, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	return meta.LastIndex
}

// describe renders a store's configuration and the decisions it implies.
func describe(st *store.Store) string {
	s := st.Read()
	var b strings.Builder
	for _, e := range s.Keys() {
		fmt.Fprintf(&b, "key %s enabled=%t models=%v weight=%g\n", e.Key.ID, e.Key.Enabled, e.Key.Models, e.Key.Weight)
	}
	for _, m := range []string{"gpt-4o", "gpt-4o-mini", "gpt-4"} {
		fmt.Fprintf(&b, "pool %s=%v\n", m, poolIDs(st, m))
	}
	for _, r := range s.Rules() {
		fmt.Fprintf(&b, "rule %s %s %s→%s\n", r.ID, r.KeyID, r.From, r.To)
	}
	fmt.Fprintf(&b, "refused=%v\n", st.Status().Refused)
	return b.String()
}

func readAll(rc interface {
	Read([]byte) (int, error)
	Close() error
}) ([]byte, error) {
	defer rc.Close()
	var out []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
	}
}

var _ = context.Background

// A prefix that vanishes at once (a restarted dev agent, a wrongly restored
// cluster) does not empty the sidecars: the last configuration keeps
// serving, stale, until entries return. Deleting documents one by one still
// applies.
func TestSourceKeepsServingWhenThePrefixVanishes(t *testing.T) {
	a := consultest.Start(t)
	seed(t, a)
	r := startSource(t, a, consul.Options{})
	waitStore(t, r.st, "first apply", r.st.Ready)

	a.Delete(prefix + "keys/k2") // one by one: applied
	waitStore(t, r.st, "k2 removed", poolIs(r.st, "gpt-4o", "k1"))

	if _, err := a.Client().KV().DeleteTree(prefix, nil); err != nil {
		t.Fatal(err)
	}
	waitStore(t, r.st, "stale", func() bool { return r.st.Status().Stale })
	if got := poolIDs(r.st, "gpt-4o"); !slices.Equal(got, []string{"k1"}) {
		t.Fatalf("Pool(gpt-4o) after the prefix vanished = %v, want the last state [k1]", got)
	}
	if st := r.st.Status(); st.Source != consul.SourceConsul || st.Keys != 1 {
		t.Errorf("Status = %+v, want source consul, 1 key, stale", st)
	}

	put(t, a, "keys/k9", keyK2)
	waitStore(t, r.st, "entries return", func() bool {
		return slices.Equal(poolIDs(r.st, "gpt-4o"), []string{"k9"}) && !r.st.Status().Stale
	})
}
