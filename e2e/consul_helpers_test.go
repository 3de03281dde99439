package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymux/keymux/cmd/keymux/app"
	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/wait"
)

// consulWait bounds every wait for a Consul change to show through the
// request path.
const consulWait = 20 * time.Second

// useConsul points this test process at agent a the way an operator points
// keymux at Consul: through the CONSUL_HTTP_* environment, which both
// `keymux dev --consul` and `keymux kv` read (api.DefaultConfig). Tests that
// call it cannot run in parallel.
func useConsul(t *testing.T, a *consultest.Agent) {
	t.Helper()
	t.Setenv("CONSUL_HTTP_ADDR", a.Addr())
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_SSL", "false")
}

// consulGateway is one `keymux dev --consul` instance.
type consulGateway struct {
	*gateway
	prefix   string
	stopOnce sync.Once
	cancel   context.CancelFunc
	killFn   func() // a child process's SIGKILL (fleet_test.go)
}

// startConsulGateway runs `keymux dev --consul --consul-prefix prefix` (with
// --state-dir when stateDir is not empty) in front of mock, and waits for its
// readiness line; with waitReady it also waits for /readyz (a configuration
// applied, from Consul or the snapshot).
func startConsulGateway(t *testing.T, mock *mockupstream.Server, prefix, stateDir string, waitReady bool) *consulGateway {
	t.Helper()
	g := &gateway{t: t, mock: mock, stderr: &syncBuffer{}, stopped: make(chan error, 1)}
	args := []string{"dev",
		"--consul", "--consul-prefix", prefix,
		"--envoy", "../envoy/envoy.yaml",
		"--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0",
		"--log-level", "warn",
	}
	if stateDir != "" {
		args = append(args, "--state-dir", stateDir)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cg := &consulGateway{gateway: g, prefix: prefix, cancel: cancel}
	pr, pw := io.Pipe()
	go func() {
		err := app.Run(ctx, args, pw, g.stderr)
		pw.CloseWithError(io.EOF)
		g.stopped <- err
	}()
	t.Cleanup(cg.stop)
	if g.readReady(pr) {
		if waitReady {
			cg.waitReady()
		}
		return cg
	}
	t.Fatalf("keymux dev --consul exited before it was ready: %v\nstderr:\n%s", <-g.stopped, g.stderr.String())
	return nil
}

// stop ends the instance (idempotent), failing the test if it does not end
// cleanly.
func (g *consulGateway) stop() {
	g.stopOnce.Do(func() {
		g.cancel()
		select {
		case err := <-g.stopped:
			if err != nil {
				g.t.Errorf("keymux dev --consul ended with %v", err)
			}
		case <-time.After(15 * time.Second):
			g.t.Errorf("keymux dev --consul did not stop within 15s")
		}
	})
}

func (g *consulGateway) waitReady() {
	g.t.Helper()
	wait.For(g.t, consulWait, "keymux /readyz", func() error {
		resp, err := http.Get(g.admin + "/readyz")
		if err != nil {
			return fmt.Errorf("%w\nstderr:\n%s", err, g.stderr.String())
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d\nstderr:\n%s", resp.StatusCode, g.stderr.String())
		}
		return nil
	})
}

// consulStatus is the part of /status these tests read.
type consulStatus struct {
	Ready      bool      `json:"ready"`
	Source     string    `json:"source"`
	Generation uint64    `json:"generation"`
	Version    uint64    `json:"source_version"`
	LastSync   time.Time `json:"last_sync"`
	Stale      bool      `json:"stale"`
	StaleSince time.Time `json:"stale_since"`
	Refused    []struct {
		Path   string `json:"path"`
		Reason string `json:"reason"`
	} `json:"refused"`
	Keys     int `json:"keys"`
	Rules    int `json:"rules"`
	Clients  int `json:"clients"`
	Counters *struct {
		Refusals   uint64 `json:"refusals"`
		ReadErrors uint64 `json:"read_errors"`
	} `json:"source_counters"`
}

func (g *consulGateway) status() (consulStatus, []byte) {
	g.t.Helper()
	raw := g.getAdmin("/status")
	var st consulStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		g.t.Fatalf("/status: %v\n%s", err, raw)
	}
	return st, raw
}

// waitStatus polls /status until cond holds.
func (g *consulGateway) waitStatus(what string, cond func(consulStatus) bool) consulStatus {
	g.t.Helper()
	var st consulStatus
	wait.For(g.t, consulWait, "/status: "+what, func() error {
		var raw []byte
		st, raw = g.status()
		if cond(st) {
			return nil
		}
		return fmt.Errorf("\n%s", raw)
	})
	return st
}

// cDecision is what one request through the emulator turned into at the
// upstream: the credential (which key) and the model it received.
type cDecision struct {
	Status int
	Cred   string // "" when the request did not reach the mock
	Model  string
}

func (d cDecision) String() string {
	if d.Cred == "" {
		return fmt.Sprintf("%d (not upstream)", d.Status)
	}
	return fmt.Sprintf("%d %s→%s", d.Status, d.Cred, d.Model)
}

var consulRequestSeq atomic.Uint64

var consulHTTP = &http.Client{Timeout: 15 * time.Second}

// send posts one chat completion for model through the emulated Envoy and
// finds, by its x-request-id (which Envoy keeps), the request the mock got.
func (g *consulGateway) send(model string) cDecision {
	g.t.Helper()
	id := fmt.Sprintf("e2e-consul-%d", consulRequestSeq.Add(1))
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	req, err := http.NewRequest(http.MethodPost, g.url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-request-id", id)
	resp, err := consulHTTP.Do(req)
	if err != nil {
		g.t.Fatalf("POST /v1/chat/completions: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := cDecision{Status: resp.StatusCode}
	reqs := g.mock.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Header.Get("x-request-id") == id {
			d.Cred, d.Model = reqs[i].Credential, reqs[i].Model
			break
		}
	}
	return d
}

// want maps every credential that must serve a request to the model it must
// receive for a request of model "gpt-4".
type cWant map[string]string

func (w cWant) String() string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(w)) {
		parts = append(parts, c+"→"+w[c])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// matches reports whether a window of decisions is exactly w: every
// request succeeded at one of w's credentials with its model, and every
// credential of w was used (round robin covers all in len(w) requests).
func (w cWant) matches(ds []cDecision) bool {
	used := map[string]bool{}
	for _, d := range ds {
		if d.Status != http.StatusOK || d.Cred == "" || w[d.Cred] != d.Model {
			return false
		}
		used[d.Cred] = true
	}
	return len(used) == len(w)
}

// waitDecisions sends gpt-4 requests until the last 2·len(w) of them match
// w, and returns how many requests it took; it fails after consulWait.
func (g *consulGateway) waitDecisions(what string, w cWant) int {
	g.t.Helper()
	n := 2 * len(w)
	var window []cDecision
	deadline := time.Now().Add(consulWait)
	for sent := 1; ; sent++ {
		window = append(window, g.send("gpt-4"))
		if len(window) > n {
			window = window[1:]
		}
		if len(window) == n && w.matches(window) {
			return sent
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: decisions %v after %s, want %v\nstderr:\n%s", what, window, consulWait, w, consulTail(g.stderr.String(), 4000))
		}
	}
}

// assertDecisions sends n gpt-4 requests and fails unless they all match w.
func (g *consulGateway) assertDecisions(what string, n int, w cWant) {
	g.t.Helper()
	ds := make([]cDecision, n)
	for i := range ds {
		ds[i] = g.send("gpt-4")
	}
	if !w.matches(ds) {
		g.t.Errorf("%s: decisions %v, want %v", what, ds, w)
	}
}

func consulTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// kvCmd runs `keymux kv --consul-prefix prefix ARGS` through the command's
// entry point, as an operator would, and returns its stdout.
func consulKV(t *testing.T, prefix string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	err := app.Run(t.Context(), append([]string{"kv", "--consul-prefix", prefix}, args...), &out, &errb)
	if err != nil {
		t.Fatalf("keymux kv %s: %v\nstderr: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// keyDoc is a key on the mock; its secret is "sk-test-<id>".
func consulKeyDoc(mock *mockupstream.Server, id string, enabled bool) string {
	return fmt.Sprintf(`{"provider":"openai_compatible","base_url":%q,"secret":"sk-test-%s","enabled":%t}`, mock.URL()+"/v1", id, enabled)
}

func consulRuleDoc(key, from, to string) string {
	return fmt.Sprintf(`{"key":%q,"from":%q,"to":%q}`, key, from, to)
}

const consulRoundRobin = `{"strategy":"round_robin"}`

// newMock starts a mock upstream for the test.
func consulMock(t *testing.T) *mockupstream.Server {
	t.Helper()
	return startMock(t, mockupstream.Options{})
}

// percentile is the q-quantile (nearest rank) of ds.
func consulPercentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func consulMS(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
