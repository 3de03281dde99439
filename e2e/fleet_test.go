package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// The fleet is one pool (issue 13): three `keymux dev --consul` sidecars on
// one real Consul and one mock upstream. Two run in this process; the third
// is a child process, so that it can be killed with SIGKILL.
//
//  1. A key with limits.rpm 20 receives 20 of the 90 requests the three
//     send within one wall-clock minute (each enforces its share 7/7/6),
//     and every request succeeds on the other keys.
//  2. A 401 on one sidecar disables the key on all three within a second
//     (shared through state/<id>); no sidecar sends it a request then; the
//     leader's recovery probe re-admits it on all and clears the record.
//  3. A 429 cools the key for one model only: that stays on its sidecar
//     (a long cooldown of the whole key is shared: fleet's unit tests).
//  4. A state record from the future is refused, with its path and reason
//     on /status.
//  5. Killing a sidecar (SIGKILL, then its session ended as Consul ends it
//     when the TTL runs out) re-balances the shares of the two others
//     within 15 s.
func TestFleetThreeSidecars(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := consulMock(t)
	bin := buildKeymux(t)
	const prefix = "fleet/"
	keyDoc := func(id, limits string) []byte {
		return fmt.Appendf(nil, `{"provider":"openai_compatible","base_url":%q,"secret":"sk-test-%s"%s}`, mock.URL()+"/v1", id, limits)
	}
	// Health: routine probes every 10s; a key out of rotation is probed
	// again 10s after it went out (min(interval, 30s)), which leaves the
	// 401 check below several seconds with the key out.
	a.Put(prefix+"settings", []byte(`{"strategy":"round_robin","health":{"interval":"10s","timeout":"2s"}}`))
	a.Put(prefix+"keys/k1", keyDoc("k1", `,"limits":{"rpm":20}`))
	a.Put(prefix+"keys/k2", keyDoc("k2", ""))
	a.Put(prefix+"keys/k3", keyDoc("k3", ""))

	gs := []*consulGateway{
		startConsulGateway(t, mock, prefix, "", true),
		startConsulGateway(t, mock, prefix, "", true),
		startFleetChild(t, bin, mock, prefix),
	}
	for i, g := range gs {
		g.waitFleet(fmt.Sprintf("sidecar %d sees 3 members", i), func(f fleetDoc) bool { return len(f.Members) == 3 })
	}

	t.Run("key limit holds for the fleet", func(t *testing.T) {
		// The 90 requests take a few seconds: start them in a minute that
		// has at least 15 s left, so that all fall in one minute.
		wait.Until(t, 20*time.Second, "a wall-clock minute with 15s left", func() bool { return time.Now().Second() < 45 })
		var shares []int
		for _, g := range gs {
			f := g.fleet()
			shares = append(shares, f.share("key", "k1").ShareRPM)
		}
		slices.Sort(shares)
		if !slices.Equal(shares, []int{6, 7, 7}) {
			t.Fatalf("k1's rpm shares = %v, want [6 7 7] (20 over 3 members)", shares)
		}
		start := len(mock.Requests())
		failed := 0
		for i := range 90 {
			if d := gs[i%3].send("gpt-4"); d.Status != http.StatusOK || d.Cred == "" {
				failed++
				t.Errorf("request %d through sidecar %d: %v", i, i%3, d)
			}
		}
		reqs := mock.Requests()[start:]
		k1, minutes := 0, map[int64]bool{}
		for _, r := range reqs {
			if r.Credential == "sk-test-k1" && strings.HasSuffix(r.Path, "/chat/completions") {
				k1++
				minutes[r.Time.Unix()/60] = true
			}
		}
		if len(minutes) != 1 {
			t.Fatalf("k1's requests spread over %d wall-clock minutes; the test must run within one", len(minutes))
		}
		if k1 != 20 || failed != 0 {
			t.Fatalf("k1 received %d of 90 requests from three sidecars (want 20: its limit), %d requests failed", k1, failed)
		}
	})

	t.Run("a 401 on one sidecar disables the key on all", func(t *testing.T) {
		// The leader probes k2 (GET /models, which the 401 below spares)
		// every 9–10 s; a passing probe after the 401 would re-admit k2
		// everywhere. Start right after one, so that the next is 9 s away.
		last := gs[0].fleet().key("k2").LastProbe
		gs[0].waitFleet("a fresh probe of k2", func(f fleetDoc) bool { return f.key("k2").LastProbe.After(last) })
		mock.SetDefault("sk-test-k2", mockupstream.Behaviour{Status: 401, Path: "/chat/completions"})
		start := len(mock.Requests())
		var at time.Time
		for i := 0; at.IsZero(); i++ {
			if i == 6 {
				t.Fatalf("6 requests through sidecar 0 and none reached k2")
			}
			if d := gs[0].send("gpt-4"); d.Status != http.StatusOK {
				t.Fatalf("request %d: %v (the 401 must be retried on another key)", i, d)
			}
			for _, r := range mock.Requests()[start:] {
				if r.Credential == "sk-test-k2" && strings.HasSuffix(r.Path, "/chat/completions") {
					at = r.Time
				}
			}
		}
		for i, g := range gs {
			g.waitFleet(fmt.Sprintf("sidecar %d: k2 disabled", i), func(f fleetDoc) bool { return f.keyState("k2") == "auth_failed" })
		}
		if d := time.Since(at); d > time.Second {
			t.Errorf("k2 disabled on all three %s after its 401, want within 1s", d.Round(time.Millisecond))
		} else {
			t.Logf("k2 disabled on all three sidecars %s after its 401", d.Round(time.Millisecond))
		}
		mark := len(mock.Requests())
		for i := range 12 {
			if d := gs[i%3].send("gpt-4"); d.Status != http.StatusOK || d.Cred == "sk-test-k2" {
				t.Fatalf("request %d through sidecar %d: %v, want 200 on another key than k2", i, i%3, d)
			}
		}
		for _, r := range mock.Requests()[mark:] {
			if r.Credential == "sk-test-k2" && strings.HasSuffix(r.Path, "/chat/completions") {
				t.Fatalf("a sidecar sent k2 a request after the fleet learnt of its 401")
			}
		}
		// A writer counts its write once Consul answered the CAS, which
		// may come after the others saw the record.
		wait.Until(t, consulWait, "the write counted", func() bool { return fleetWrites(gs) >= 1 })
		if n := fleetWrites(gs); n != 1 {
			t.Errorf("state/k2 written %d times by the fleet, want once", n)
		}

		// The upstream accepts k2 again: the leader's recovery probe
		// re-admits it everywhere and clears the shared record.
		mock.SetDefault("sk-test-k2", mockupstream.Behaviour{})
		for i, g := range gs {
			g.waitFleet(fmt.Sprintf("sidecar %d: k2 back", i), func(f fleetDoc) bool { return f.keyState("k2") == "" })
		}
		wait.Until(t, consulWait, "state/k2 cleared", func() bool {
			p, _, err := a.Client().KV().Get(prefix+"state/k2", nil)
			return err == nil && p == nil
		})
		for i, g := range gs {
			wait.Until(t, consulWait, fmt.Sprintf("sidecar %d sends k2 requests again", i), func() bool {
				return g.send("gpt-4").Cred == "sk-test-k2"
			})
		}
	})

	t.Run("a cooldown for one model stays on its sidecar", func(t *testing.T) {
		// untilK3 sends gpt-4 requests through g until one reaches k3.
		untilK3 := func(g *consulGateway, what string) {
			t.Helper()
			start := len(mock.Requests())
			for i := range 6 {
				if d := g.send("gpt-4"); d.Status != http.StatusOK {
					t.Fatalf("%s: request %d: %v (a 429 must be retried on another key)", what, i, d)
				}
				for _, r := range mock.Requests()[start:] {
					if r.Credential == "sk-test-k3" && strings.HasSuffix(r.Path, "/chat/completions") {
						return
					}
				}
			}
			t.Fatalf("%s: 6 requests and none reached k3", what)
		}
		before := fleetWrites(gs)
		// A 429 cools k3 for gpt-4 only (per key and model): however long,
		// it is not a key-wide state and is not shared (the provider's
		// headroom headers tell the other sidecars).
		mock.Script("sk-test-k3", mockupstream.Behaviour{Status: 429, RetryAfter: "120", Path: "/chat/completions"})
		untilK3(gs[0], "a 120s gpt-4 cooldown on sidecar 0")
		untilK3(gs[1], "sidecar 1 still sends gpt-4 to k3")
		if n := fleetWrites(gs) - before; n != 0 {
			t.Errorf("%d shared-state writes for a per-model cooldown, want 0", n)
		}
	})

	t.Run("a record from the future is refused", func(t *testing.T) {
		a.Put(prefix+"state/k1", []byte(`{"reason":"auth","at":"2099-01-01T00:00:00Z","by":"operator"}`))
		want := "bad shared state record: at 2099-01-01T00:00:00Z is more than 5s in the future (now "
		for i, g := range gs {
			g.waitFleet(fmt.Sprintf("sidecar %d refuses state/k1", i), func(f fleetDoc) bool {
				return len(f.Refused) == 1 && f.Refused[0].Path == prefix+"state/k1" && strings.HasPrefix(f.Refused[0].Reason, want)
			})
			if st := g.fleet().keyState("k1"); st == "auth_failed" {
				t.Errorf("sidecar %d applied a refused record: k1 %s", i, st)
			}
		}
		a.Delete(prefix + "state/k1")
	})

	t.Run("a killed sidecar's share goes to the others", func(t *testing.T) {
		child := gs[2]
		id := child.fleet().ID
		pair, _, err := a.Client().KV().Get(prefix+"members/"+id, nil)
		if err != nil || pair == nil || pair.Session == "" {
			t.Fatalf("members/%s: %v %+v", id, err, pair)
		}
		killed := time.Now()
		child.kill()
		// Consul ends a dead member's session once its TTL runs out
		// (10–20s); the test ends it at once, as that expiry would.
		if _, err := a.Client().Session().Destroy(pair.Session, nil); err != nil {
			t.Fatal(err)
		}
		for i, g := range gs[:2] {
			wait.Until(t, 15*time.Second, fmt.Sprintf("sidecar %d re-balanced", i), func() bool {
				f := g.fleet()
				return len(f.Members) == 2 && !slices.Contains(f.Members, id) && f.share("key", "k1").ShareRPM == 10
			})
		}
		t.Logf("limit shares re-balanced %s after the kill", time.Since(killed).Round(time.Millisecond))
	})
}

// fleetWrites sums the shared-state writes of gs.
func fleetWrites(gs []*consulGateway) (n uint64) {
	for _, g := range gs {
		n += g.fleet().Counters.Writes
	}
	return n
}

// fleetDoc is the part of /status these tests read.
type fleetDoc struct {
	ID      string       `json:"id"`
	Members []string     `json:"members"`
	Rank    int          `json:"rank"`
	Shares  []fleetShare `json:"shares"`
	Refused []struct {
		Path   string `json:"path"`
		Reason string `json:"reason"`
	} `json:"refused"`
	Counters struct {
		Writes uint64 `json:"writes"`
	} `json:"counters"`
	keys []fleetKey // from /status health.keys
}

type fleetKey struct {
	ID        string    `json:"id"`
	Reason    string    `json:"reason"`
	Until     time.Time `json:"until"`
	LastProbe time.Time `json:"last_probe"`
}

type fleetShare struct {
	Kind     string `json:"kind"`
	ID       string `json:"id"`
	RPM      int    `json:"rpm"`
	ShareRPM int    `json:"share_rpm"`
}

func (f fleetDoc) share(kind, id string) fleetShare {
	for _, s := range f.Shares {
		if s.Kind == kind && s.ID == id {
			return s
		}
	}
	return fleetShare{}
}

// keyState is key id's reason for being out ("" in rotation).
func (f fleetDoc) keyState(id string) string { return f.key(id).Reason }

func (f fleetDoc) key(id string) fleetKey {
	for _, k := range f.keys {
		if k.ID == id {
			return k
		}
	}
	return fleetKey{ID: id, Reason: "missing"}
}

func (g *consulGateway) fleet() fleetDoc {
	g.t.Helper()
	raw := g.getAdmin("/status")
	var st struct {
		Fleet  fleetDoc `json:"fleet"`
		Health struct {
			Keys []fleetKey `json:"keys"`
		} `json:"health"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		g.t.Fatalf("/status: %v\n%s", err, raw)
	}
	st.Fleet.keys = st.Health.Keys
	return st.Fleet
}

// waitFleet polls /status until cond holds for the fleet part.
func (g *consulGateway) waitFleet(what string, cond func(fleetDoc) bool) {
	g.t.Helper()
	wait.For(g.t, consulWait, what, func() error {
		f := g.fleet()
		if cond(f) {
			return nil
		}
		return fmt.Errorf("%+v", f)
	})
}

// startFleetChild runs `keymux dev --consul` as a child process (bin) in
// front of mock; kill ends it with SIGKILL.
func startFleetChild(t *testing.T, bin string, mock *mockupstream.Server, prefix string) *consulGateway {
	t.Helper()
	cmd := exec.Command(bin, "dev", "--consul", "--consul-prefix", prefix, "--envoy", "../envoy/envoy.yaml",
		"--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--log-level", "warn")
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	g := &gateway{t: t, mock: mock, stderr: stderr, stopped: make(chan error, 1)}
	cg := &consulGateway{gateway: g, prefix: prefix, cancel: func() {}}
	cg.stopOnce.Do(func() {}) // stop is kill's business
	kill := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(kill)
	cg.killFn = kill
	if !g.readReady(out) {
		<-exited
		t.Fatalf("keymux dev --consul (child) exited before it was ready\nstderr:\n%s", stderr.String())
	}
	cg.waitReady()
	return cg
}

// kill ends a child sidecar with SIGKILL: nothing of it runs afterwards.
func (g *consulGateway) kill() {
	g.t.Helper()
	if g.killFn == nil {
		g.t.Fatal("kill: not a child process")
	}
	g.killFn()
}
