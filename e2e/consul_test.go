package e2e

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/wait"
)

// Acceptance of Consul KV as the source of truth (issue 4), through the real
// request path: `keymux dev --consul` (sidecar + Envoy emulator over gRPC),
// a real Consul dev agent (testutil/consultest), the mock upstream. A
// cDecision is what the mock received: which key's credential, which model.

// TestConsulEditsChangeDecisions adds, disables, enables and removes keys
// and adds and removes a rule, once by raw KV writes and once by `keymux kv`,
// and checks each change in the requests the upstream receives.
func TestConsulEditsChangeDecisions(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	base := mock.URL() + "/v1"

	type step struct {
		name string
		raw  func(p string) // raw KV writes under prefix p
		kv   []string       // the same change by `keymux kv`
		out  string         // what `keymux kv` prints, %s = the prefix
		want cWant          // decisions for gpt-4 afterwards
	}
	steps := []step{
		{"add key k2",
			func(p string) { a.Put(p+"keys/k2", []byte(consulKeyDoc(mock, "k2", true))) },
			[]string{"keys", "add", "k2", "--provider", "openai_compatible", "--base-url", base, "--secret", "sk-test-k2"},
			"wrote %skeys/k2\n",
			cWant{"sk-test-k1": "gpt-4", "sk-test-k2": "gpt-4"}},
		{"add rule k2 gpt-4→gpt-4o-mini",
			func(p string) { a.Put(p+"rules/r1", []byte(consulRuleDoc("k2", "gpt-4", "gpt-4o-mini"))) },
			[]string{"rules", "add", "r1", "--key", "k2", "--from", "gpt-4", "--to", "gpt-4o-mini"},
			"wrote %srules/r1\n",
			cWant{"sk-test-k1": "gpt-4", "sk-test-k2": "gpt-4o-mini"}},
		{"disable key k1",
			func(p string) { a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", false))) },
			[]string{"keys", "disable", "k1"},
			"%skeys/k1 enabled=false\n",
			cWant{"sk-test-k2": "gpt-4o-mini"}},
		{"enable key k1",
			func(p string) { a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true))) },
			[]string{"keys", "enable", "k1"},
			"%skeys/k1 enabled=true\n",
			cWant{"sk-test-k1": "gpt-4", "sk-test-k2": "gpt-4o-mini"}},
		{"remove rule r1",
			func(p string) { a.Delete(p + "rules/r1") },
			[]string{"rules", "rm", "r1"},
			"removed %srules/r1\n",
			cWant{"sk-test-k1": "gpt-4", "sk-test-k2": "gpt-4"}},
		{"remove key k2",
			func(p string) { a.Delete(p + "keys/k2") },
			[]string{"keys", "rm", "k2"},
			"removed %skeys/k2\n",
			cWant{"sk-test-k1": "gpt-4"}},
	}
	for _, via := range []string{"raw KV", "keymux kv"} {
		t.Run(via, func(t *testing.T) {
			p := "edits-" + strings.ReplaceAll(via, " ", "-") + "/"
			a.Put(p+"settings", []byte(consulRoundRobin))
			a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
			g := startConsulGateway(t, mock, p, "", true)
			g.waitDecisions("seed", cWant{"sk-test-k1": "gpt-4"})
			for _, s := range steps {
				t0 := time.Now()
				if via == "raw KV" {
					s.raw(p)
				} else {
					if out, want := consulKV(t, p, s.kv...), fmt.Sprintf(s.out, p); out != want {
						t.Errorf("keymux kv %v printed %q, want %q", s.kv, out, want)
					}
				}
				n := g.waitDecisions(s.name, s.want)
				t.Logf("%s: visible after %s (%d requests)", s.name, consulMS(time.Since(t0)), n)
				g.assertDecisions(s.name+" (steady)", 6, s.want)
			}
			st, raw := g.status()
			if st.Source != "consul" || st.Stale || len(st.Refused) != 0 || st.Keys != 1 || st.Rules != 0 {
				t.Errorf("/status after the edits:\n%s\nwant source consul, not stale, 1 key, 0 rules, nothing refused", raw)
			}
		})
	}
}

var propagationEdits = flag.Int("consul.edits", 100, "edits measured by TestConsulPropagationDelay")

// TestConsulPropagationDelay measures, over consul.edits KV writes, the
// delay from the start of a PUT to the first request through the emulator
// whose upstream request reflects it. Each edit flips a rule's `to` model
// (k1: gpt-4 → gpt-4o-mini | gpt-4.1-mini); requests are sent back to back
// until the mock receives the new model. Edits start every 100 ms (an
// operator's pace, under the source's 20 queries/s rate limit). The figures
// go into BENCHMARKS.md:
//
//	go test ./e2e/ -run TestConsulPropagationDelay -count=1 -v -consul.edits=1000
func TestConsulPropagationDelay(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "propagation/"
	models := [2]string{"gpt-4o-mini", "gpt-4.1-mini"}
	a.Put(p+"settings", []byte(consulRoundRobin))
	a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
	a.Put(p+"rules/r1", []byte(consulRuleDoc("k1", "gpt-4", models[1])))
	g := startConsulGateway(t, mock, p, "", true)
	g.waitDecisions("seed", cWant{"sk-test-k1": models[1]})

	const pace = 100 * time.Millisecond
	n := *propagationEdits
	total := make([]time.Duration, 0, n) // PUT start → first reflecting response
	write := make([]time.Duration, 0, n) // the PUT's own round trip
	extra := make([]time.Duration, 0, n) // total − write: keymux's share
	requests := 0
	kv := a.NewClient().KV()
	for i := range n {
		next := time.Now().Add(pace)
		to := models[i%2]
		mock.Reset() // keeps the x-request-id lookup short
		t0 := time.Now()
		if _, err := kv.Put(&api.KVPair{Key: p + "rules/r1", Value: []byte(consulRuleDoc("k1", "gpt-4", to))}, nil); err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
		w := time.Since(t0)
		for {
			d := g.send("gpt-4")
			requests++
			if d.Status != 200 || d.Cred != "sk-test-k1" {
				t.Fatalf("edit %d: decision %v, want 200 at sk-test-k1", i, d)
			}
			if d.Model == to {
				break
			}
			if time.Since(t0) > consulWait {
				t.Fatalf("edit %d: rule to %s not visible after %s", i, to, consulWait)
			}
		}
		d := time.Since(t0)
		total, write, extra = append(total, d), append(write, w), append(extra, d-w)
		time.Sleep(time.Until(next)) // pacing between edits, not a readiness wait
	}
	p50, p99 := consulPercentile(total, 0.50), consulPercentile(total, 0.99)
	t.Logf("%d edits (%d requests): KV PUT start → first reflecting response p50 %s, p99 %s, max %s; "+
		"Consul PUT alone p50 %s, p99 %s; on top of the PUT p50 %s, p99 %s",
		n, requests, consulMS(p50), consulMS(p99), consulMS(consulPercentile(total, 1)),
		consulMS(consulPercentile(write, 0.50)), consulMS(consulPercentile(write, 0.99)),
		consulMS(consulPercentile(extra, 0.50)), consulMS(consulPercentile(extra, 0.99)))
	if p99 > time.Second {
		t.Errorf("propagation p99 %s, want < 1s (target: 200 ms on top of Consul's write)", consulMS(p99))
	}
}

// TestConsulRefusedEntriesAlone writes an entry with invalid JSON, a key
// with an unknown provider, a rule naming a missing key, and a broken edit
// of a serving key, together with one good new key: each bad entry is
// refused alone (the broken key keeps its last good version), the good key
// is served, and /status names every refused path with its reason and no
// secret.
func TestConsulRefusedEntriesAlone(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "refused/"
	a.Put(p+"settings", []byte(consulRoundRobin))
	a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
	a.Put(p+"keys/k2", []byte(consulKeyDoc(mock, "k2", true)))
	a.Put(p+"rules/r1", []byte(consulRuleDoc("k1", "gpt-4", "gpt-4o-mini")))
	g := startConsulGateway(t, mock, p, "", true)
	g.waitDecisions("seed", cWant{"sk-test-k1": "gpt-4o-mini", "sk-test-k2": "gpt-4"})
	before, _ := g.status()

	a.Put(p+"keys/badjson", []byte(`{"provider":"openai_compatible","secret":"sk-test-secret-badjson",`))
	a.Put(p+"keys/unknown", []byte(`{"provider":"foo","base_url":"`+mock.URL()+`/v1","secret":"sk-test-secret-unknown"}`))
	a.Put(p+"rules/orphan", []byte(consulRuleDoc("nokey", "gpt-4", "gpt-4o")))
	a.Put(p+"keys/k2", []byte(`{"provider":"openai_compatible","secret":"sk-test-secret-k2-edit"`))
	a.Put(p+"keys/k3", []byte(consulKeyDoc(mock, "k3", true)))

	g.waitDecisions("good key k3 added next to the refused entries",
		cWant{"sk-test-k1": "gpt-4o-mini", "sk-test-k2": "gpt-4", "sk-test-k3": "gpt-4"})
	st := g.waitStatus("4 refusals, counted", func(st consulStatus) bool {
		return len(st.Refused) == 4 && st.Counters != nil && st.Counters.Refusals == 4
	})
	wantRefused := []struct{ path, reason string }{
		{p + "keys/badjson", `keys/badjson: invalid JSON: unexpected end of input`},
		{p + "keys/k2", `keys/k2: invalid JSON: unexpected end of input`},
		{p + "keys/unknown", `keys/unknown: field "provider": unknown provider "foo" (want openai, azure, anthropic, huggingface, openai_compatible)`},
		{p + "rules/orphan", `rules/orphan: field "key": unknown key "nokey"`},
	}
	for i, w := range wantRefused {
		if r := st.Refused[i]; r.Path != w.path || r.Reason != w.reason {
			t.Errorf("/status refused[%d] = %s: %s\nwant %s: %s", i, r.Path, r.Reason, w.path, w.reason)
		}
	}
	if st.Source != "consul" || st.Stale || !st.Ready || st.Keys != 3 || st.Rules != 1 || st.Generation <= before.Generation {
		t.Errorf("/status = %+v, want ready, source consul, not stale, 3 keys (k1, k2's last good, k3), 1 rule, generation above %d",
			st, before.Generation)
	}
	_, raw := g.status()
	metrics := g.getAdmin("/metrics")
	for _, doc := range [][]byte{raw, metrics, []byte(g.stderr.String())} {
		if strings.Contains(string(doc), "sk-test") {
			t.Errorf("a secret (sk-test…) appears on /status, /metrics or in the log")
		}
	}
	for _, line := range []string{"keymux_config_refused 4", "keymux_config_refusals_total 4", "keymux_config_read_errors_total 0"} {
		if !strings.Contains(string(metrics), "\n"+line+"\n") {
			t.Errorf("/metrics has no %s", line)
		}
	}
	if c := st.Counters; c == nil || c.Refusals != 4 || c.ReadErrors != 0 {
		t.Errorf("/status source_counters = %+v, want 4 refusals, 0 read errors", c)
	}

	// Fixing the broken key drops its refusal and serves its new version.
	a.Put(p+"keys/k2", []byte(`{"provider":"openai_compatible","base_url":"`+mock.URL()+`/v1","secret":"sk-test-k2-fixed"}`))
	g.waitDecisions("k2 fixed", cWant{"sk-test-k1": "gpt-4o-mini", "sk-test-k2-fixed": "gpt-4", "sk-test-k3": "gpt-4"})
	st = g.waitStatus("3 refusals", func(st consulStatus) bool { return len(st.Refused) == 3 })
	for _, r := range st.Refused {
		if r.Path == p+"keys/k2" {
			t.Errorf("keys/k2 still refused after the fix: %s", r.Reason)
		}
	}
}

// reseed writes docs (path relative to prefix → value) in one Consul
// transaction, so that keymux sees the whole new data set at once.
func consulReseed(t *testing.T, a *consultest.Agent, prefix string, docs map[string]string) {
	t.Helper()
	var ops api.TxnOps
	for path, v := range docs {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: prefix + path, Value: []byte(v)}})
	}
	ok, resp, _, err := a.Client().Txn().Txn(ops, nil)
	if err != nil || !ok {
		t.Fatalf("re-seed: ok=%t err=%v resp=%+v", ok, err, resp)
	}
}

// kvIndex is the Consul index of prefix now.
func consulIndex(t *testing.T, a *consultest.Agent, prefix string) uint64 {
	t.Helper()
	_, meta, err := a.Client().KV().List(prefix, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	return meta.LastIndex
}

// TestConsulOutageKeepsServing stops Consul mid-run: requests keep being
// served on the last state and /status turns stale; Consul comes back empty
// (a dev agent) and is re-seeded with other data: the same keymux process
// follows it.
func TestConsulOutageKeepsServing(t *testing.T) {
	const outage = 2 * time.Second
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "outage/"
	a.Put(p+"settings", []byte(consulRoundRobin))
	a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
	a.Put(p+"keys/k2", []byte(consulKeyDoc(mock, "k2", true)))
	a.Put(p+"rules/r1", []byte(consulRuleDoc("k2", "gpt-4", "gpt-4o-mini")))
	g := startConsulGateway(t, mock, p, t.TempDir(), true)
	last := cWant{"sk-test-k1": "gpt-4", "sk-test-k2": "gpt-4o-mini"}
	g.waitDecisions("seed", last)

	a.Stop()
	stopped := time.Now()
	// Two seconds without Consul under steady traffic: every request must
	// be served on the last state (and the source's backoff grows).
	var during []cDecision
	for time.Since(stopped) < outage {
		during = append(during, g.send("gpt-4"))
	}
	if !last.matches(during) {
		t.Errorf("requests while Consul is down: %v, want all %v", during, last)
	}
	st := g.waitStatus("stale", func(st consulStatus) bool { return st.Stale })
	if st.Source != "consul" || st.StaleSince.IsZero() || st.StaleSince.After(stopped) || !st.Ready || st.Keys != 2 || st.Rules != 1 ||
		st.Counters == nil || st.Counters.ReadErrors == 0 {
		t.Errorf("/status with Consul down = %+v, want ready, source consul, stale since the last contact (before %s), 2 keys, 1 rule, read errors counted",
			st, stopped.Format(time.RFC3339Nano))
	}
	g.assertDecisions("Consul down, marked stale", 10, last)

	a.Restart()
	restarted := time.Now()
	consulReseed(t, a, p, map[string]string{
		"settings": consulRoundRobin,
		"keys/k3":  consulKeyDoc(mock, "k3", true),
		"rules/r1": consulRuleDoc("k3", "gpt-4", "gpt-4.1-mini"),
	})
	g.waitDecisions("after Consul came back re-seeded", cWant{"sk-test-k3": "gpt-4.1-mini"})
	t.Logf("Consul down for %s: %d requests served on the last state; re-seeded data served %s after the agent was back",
		consulMS(restarted.Sub(stopped)), len(during), consulMS(time.Since(restarted)))
	st = g.waitStatus("fresh", func(st consulStatus) bool { return !st.Stale })
	if st.Source != "consul" || st.Keys != 1 || st.Rules != 1 || len(st.Refused) != 0 {
		t.Errorf("/status after the resync = %+v, want source consul, 1 key, 1 rule, nothing refused", st)
	}
}

// TestConsulRestartWhileDownServesSnapshot restarts keymux while Consul is
// down: the new process serves the last-good snapshot from --state-dir and
// says so on /status (source snapshot, stale), then follows Consul when it
// is back.
func TestConsulRestartWhileDownServesSnapshot(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "snapshot/"
	stateDir := t.TempDir()
	a.Put(p+"settings", []byte(consulRoundRobin))
	a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
	a.Put(p+"keys/k2", []byte(consulKeyDoc(mock, "k2", true)))
	a.Put(p+"rules/r1", []byte(consulRuleDoc("k1", "gpt-4", "gpt-4o-mini")))
	a.Put(p+"keys/bad", []byte(`{"provider":"foo","secret":"sk-test-bad"}`))
	first := startConsulGateway(t, mock, p, stateDir, true)
	last := cWant{"sk-test-k1": "gpt-4o-mini", "sk-test-k2": "gpt-4"}
	first.waitDecisions("seed", last)
	snap := filepath.Join(stateDir, "consul-snapshot.json")
	wait.For(t, consulWait, "the snapshot in the state dir", func() error {
		_, err := os.Stat(snap)
		return err
	})
	if fi, err := os.Stat(snap); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", snap, fi.Mode().Perm())
	}

	a.Stop()
	stopped := time.Now()
	first.stop()

	second := startConsulGateway(t, mock, p, stateDir, true)
	st, raw := second.status()
	if st.Source != "snapshot" || !st.Stale || st.StaleSince.IsZero() || st.StaleSince.After(stopped) || st.Keys != 2 || st.Rules != 1 {
		t.Errorf("/status of keymux started while Consul is down:\n%s\nwant source snapshot, stale since the snapshot's read time (before %s), 2 keys, 1 rule",
			raw, stopped.Format(time.RFC3339Nano))
	}
	if len(st.Refused) != 1 || st.Refused[0].Path != p+"keys/bad" {
		t.Errorf("/status refused = %+v, want %skeys/bad (refused from the snapshot as from Consul)", st.Refused, p)
	}
	if strings.Contains(string(raw), "sk-test") {
		t.Errorf("/status shows a secret:\n%s", raw)
	}
	second.waitDecisions("from the snapshot", last)
	second.assertDecisions("from the snapshot (steady)", 10, last)

	a.Restart()
	consulReseed(t, a, p, map[string]string{
		"settings": consulRoundRobin,
		"keys/k2":  consulKeyDoc(mock, "k2", true),
		"keys/k3":  consulKeyDoc(mock, "k3", true),
	})
	second.waitDecisions("Consul back", cWant{"sk-test-k2": "gpt-4", "sk-test-k3": "gpt-4"})
	st = second.waitStatus("source consul", func(st consulStatus) bool { return st.Source == "consul" && !st.Stale })
	if st.Keys != 2 || st.Rules != 0 || len(st.Refused) != 0 {
		t.Errorf("/status after Consul came back = %+v, want 2 keys, no rule, nothing refused", st)
	}
}

// TestConsulIndexGoesBackwards replaces Consul under a running keymux with
// an agent whose index is lower and whose data differs in place (same paths,
// other values; one value identical): keymux resyncs to exactly the new data.
func TestConsulIndexGoesBackwards(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "backwards/"
	a.Put(p+"settings", []byte(consulRoundRobin))
	a.Put(p+"keys/k1", []byte(consulKeyDoc(mock, "k1", true)))
	a.Put(p+"keys/k2", []byte(consulKeyDoc(mock, "k2", true)))
	a.Put(p+"rules/r1", []byte(consulRuleDoc("k1", "gpt-4", "gpt-4o-mini")))
	g := startConsulGateway(t, mock, p, "", true)
	// Push the index up with edits keymux applies, the last one visible.
	for i := range 40 {
		a.Put(p+"rules/r1", []byte(consulRuleDoc("k1", "gpt-4", fmt.Sprintf("gpt-4o-v%d", i))))
	}
	g.waitDecisions("index pushed up", cWant{"sk-test-k1": "gpt-4o-v39", "sk-test-k2": "gpt-4"})
	oldIndex := consulIndex(t, a, p)

	a.Restart()
	consulReseed(t, a, p, map[string]string{
		"settings": consulRoundRobin,
		"keys/k1":  consulKeyDoc(mock, "k1", true), // the same value as before
		"keys/k2":  `{"provider":"openai_compatible","base_url":"` + mock.URL() + `/v1","secret":"sk-test-k2-new"}`,
		"keys/k4":  consulKeyDoc(mock, "k4", true),
		"rules/r1": consulRuleDoc("k2", "gpt-4", "gpt-4.1-mini"),
	})
	newIndex := consulIndex(t, a, p)
	if newIndex >= oldIndex {
		t.Fatalf("Consul index %d after the restart, want below the old %d", newIndex, oldIndex)
	}
	g.waitDecisions("resync to the lower index", cWant{"sk-test-k1": "gpt-4", "sk-test-k2-new": "gpt-4.1-mini", "sk-test-k4": "gpt-4"})
	g.assertDecisions("after the resync (steady)", 9, cWant{"sk-test-k1": "gpt-4", "sk-test-k2-new": "gpt-4.1-mini", "sk-test-k4": "gpt-4"})
	t.Logf("Consul index went from %d to %d; resynced", oldIndex, newIndex)
	st, raw := g.status()
	if st.Source != "consul" || st.Stale || st.Keys != 3 || st.Rules != 1 || len(st.Refused) != 0 {
		t.Errorf("/status after the resync:\n%s\nwant source consul, not stale, 3 keys, 1 rule, nothing refused", raw)
	}
}

// TestConsulThreeInstancesConverge runs three keymux instances on one Consul
// prefix (and one upstream), fires a burst of 50 edits, and checks that all
// three serve the same final configuration. Generations are logged, not
// compared: a generation counts one instance's applies, and the source's
// rate limit coalesces a burst differently on each instance (e.g. 16, 20
// and 18 applies for the same 50 edits); /status has no Consul index.
func TestConsulThreeInstancesConverge(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	const p = "three/"
	ids := []string{"k1", "k2", "k3"}
	a.Put(p+"settings", []byte(consulRoundRobin))
	for _, id := range ids {
		a.Put(p+"keys/"+id, []byte(consulKeyDoc(mock, id, true)))
	}
	a.Put(p+"rules/r1", []byte(consulRuleDoc("*", "gpt-4", "gpt-4-start")))
	var gs []*consulGateway
	for range 3 {
		gs = append(gs, startConsulGateway(t, mock, p, t.TempDir(), true))
	}
	start := cWant{"sk-test-k1": "gpt-4-start", "sk-test-k2": "gpt-4-start", "sk-test-k3": "gpt-4-start"}
	for i, g := range gs {
		g.waitDecisions(fmt.Sprintf("instance %d seed", i), start)
	}

	// The burst: even edits move the rule, odd ones toggle a key.
	enabled := map[string]bool{"k1": true, "k2": true, "k3": true}
	to := ""
	kv := a.NewClient().KV()
	t0 := time.Now()
	for i := range 50 {
		var path, doc string
		if i%2 == 0 {
			to = fmt.Sprintf("gpt-4-v%d", i)
			path, doc = "rules/r1", consulRuleDoc("*", "gpt-4", to)
		} else {
			id := ids[(i/2)%3]
			enabled[id] = !enabled[id]
			path, doc = "keys/"+id, consulKeyDoc(mock, id, enabled[id])
		}
		if _, err := kv.Put(&api.KVPair{Key: p + path, Value: []byte(doc)}, nil); err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
	}
	burst := time.Since(t0)
	final := cWant{}
	for id, on := range enabled {
		if on {
			final["sk-test-"+id] = to
		}
	}
	if len(final) == 0 || len(final) == 3 {
		t.Fatalf("the burst's final state %v does not tell a stale instance apart", final)
	}
	for i, g := range gs {
		g.waitDecisions(fmt.Sprintf("instance %d after the burst", i), final)
	}
	converged := time.Since(t0)
	var gens, versions []uint64
	for i, g := range gs {
		g.assertDecisions(fmt.Sprintf("instance %d (steady)", i), 2*len(final), final)
		st, raw := g.status()
		gens = append(gens, st.Generation)
		versions = append(versions, st.Version)
		if st.Source != "consul" || st.Stale || st.Keys != 3 || st.Rules != 1 || len(st.Refused) != 0 {
			t.Errorf("instance %d /status:\n%s\nwant source consul, not stale, 3 keys, 1 rule, nothing refused", i, raw)
		}
	}
	// The same configuration version (Consul's KV index) on every
	// instance: one of them may still be reading the burst's last no-op.
	target := slices.Max(versions)
	for i, g := range gs {
		st := g.waitStatus(fmt.Sprintf("instance %d at version %d", i, target), func(st consulStatus) bool { return st.Version >= target })
		if st.Version != target || target == 0 {
			t.Errorf("instance %d serves configuration version %d, want %d (versions %v)", i, st.Version, target, versions)
		}
	}
	t.Logf("50 edits written in %s; all three instances serve %v %s after the burst started; configuration version %d; local generations %v",
		consulMS(burst), final, consulMS(converged), versions[0], gens)
}
