// Package consultest starts a real Consul agent in dev mode for tests.
//
// The binary is the one tools/build.sh builds into tools/bin/consul (or the
// path in $KEYMUX_CONSUL_BIN). When it is missing the test FAILS with the
// command that builds it: tests that need Consul never skip silently.
//
// Every agent listens on loopback only, on free ports picked for it, keeps its
// state in memory (dev mode) and is stopped by t.Cleanup. Stop and Restart
// let a test take Consul away mid-run and bring back an empty one on the same
// address (its Raft index starts again from 1, so blocking-query clients see
// the index go backwards).
package consultest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/testutil/daemon"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/toolbin"
)

// EnvBinary overrides the Consul binary the tests run.
const EnvBinary = "KEYMUX_CONSUL_BIN"

// startTimeout bounds how long an agent may take to elect itself leader.
const startTimeout = 60 * time.Second

// Agent is one running (or stopped) `consul agent -dev`.
type Agent struct {
	t       testing.TB
	bin     string
	dataDir string
	ports   ports

	clientOnce sync.Once
	client     *api.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedBuffer
}

type ports struct {
	http, serfLAN, serfWAN, server int
}

// tool is tools/bin/consul.
var tool = toolbin.Tool{Name: "consul", EnvVar: EnvBinary, About: "builds Consul v1.14.11 from tools/consul/go.mod"}

// Binary returns the path of the Consul binary the tests use, or an error
// that says how to build it.
func Binary() (string, error) { return tool.Path() }

// binaryIn is tools/bin/consul under root, or how to build it.
func binaryIn(root string) (string, error) { return tool.In(root) }

// Start runs a dev agent and waits until it has a leader. The agent is
// stopped when the test ends.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	a := &Agent{t: t, bin: bin, dataDir: t.TempDir()}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("consul agent output:\n%s", a.Output())
		}
	})
	// A port picked free can be taken by another test process before the
	// agent binds it (packages run in parallel): an agent that exits before
	// electing a leader gets fresh ports, a few times.
	const tries = 3
	for i := 1; ; i++ {
		a.ports = ports{http: daemon.FreePort(t), serfLAN: daemon.FreePort(t), serfWAN: daemon.FreePort(t), server: daemon.FreePort(t)}
		err := a.tryStart()
		if err == nil {
			return a
		}
		if !errors.Is(err, errExited) || i == tries {
			t.Fatalf("consultest: %v\nconsul output:\n%s", err, a.Output())
		}
		t.Logf("consultest: %v (try %d of %d); output:\n%s", err, i, tries, a.Output())
	}
}

// errExited: the agent process ended before it had a leader.
var errExited = errors.New("consul agent exited before electing a leader")

func (a *Agent) start() {
	a.t.Helper()
	if err := a.tryStart(); err != nil {
		a.t.Fatalf("consultest: %v\nconsul output:\n%s", err, a.Output())
	}
}

// tryStart runs the agent on a.ports and waits for its leader; on failure
// the process is gone and the error says why.
func (a *Agent) tryStart() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return errors.New("agent already running")
	}
	// A fresh data dir per run: dev mode keeps the KV store in memory, the
	// directory only holds the node id and the like.
	dataDir, err := os.MkdirTemp(a.dataDir, "run")
	if err != nil {
		return err
	}
	args := []string{
		"agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-data-dir=" + dataDir,
		"-node=consultest-" + strconv.Itoa(a.ports.http),
		"-http-port=" + strconv.Itoa(a.ports.http),
		"-grpc-port=-1",
		"-dns-port=-1",
		"-serf-lan-port=" + strconv.Itoa(a.ports.serfLAN),
		"-serf-wan-port=" + strconv.Itoa(a.ports.serfWAN),
		"-server-port=" + strconv.Itoa(a.ports.server),
		"-log-level=warn",
		"-hcl", `ports { grpc_tls = -1 }`,
		"-hcl", `disable_update_check = true`,
		"-hcl", `limits { http_max_conns_per_client = 4096 }`,
	}
	cmd := exec.Command(a.bin, args...)
	a.out = &lockedBuffer{}
	cmd.Stdout = a.out
	cmd.Stderr = a.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", a.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	a.cmd, a.done = cmd, done
	if err := a.waitLeader(done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		a.cmd = nil
		return err
	}
	return nil
}

// waitLeader polls /v1/status/leader until the agent reports a leader, the
// process exits, or startTimeout passes.
func (a *Agent) waitLeader(exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	url := "http://" + a.Addr() + "/v1/status/leader"
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			var body [256]byte
			n, _ := resp.Body.Read(body[:])
			resp.Body.Close()
			leader := strings.Trim(strings.TrimSpace(string(body[:n])), `"`)
			if resp.StatusCode == http.StatusOK && leader != "" {
				return nil
			}
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("consul agent had no leader after %s", startTimeout)
		case <-tick.C:
		}
	}
}

// Addr is the agent's HTTP address, "127.0.0.1:PORT". It stays the same
// across Restart.
func (a *Agent) Addr() string { return "127.0.0.1:" + strconv.Itoa(a.ports.http) }

// Config returns an api.Config pointing at the agent.
func (a *Agent) Config() *api.Config {
	cfg := api.DefaultConfig()
	cfg.Address = a.Addr()
	cfg.Scheme = "http"
	cfg.Token = ""
	cfg.TLSConfig = api.TLSConfig{}
	return cfg
}

// Client returns the agent's shared API client (it keeps working across
// Restart: the address does not change).
func (a *Agent) Client() *api.Client {
	a.clientOnce.Do(func() {
		c, err := api.NewClient(a.Config())
		if err != nil {
			a.t.Fatalf("consultest: client: %v", err)
		}
		a.client = c
	})
	return a.client
}

// NewClient returns a client of its own (its own connection pool), as a
// separate process would have.
func (a *Agent) NewClient() *api.Client {
	c, err := api.NewClient(a.Config())
	if err != nil {
		a.t.Fatalf("consultest: client: %v", err)
	}
	return c
}

// PID is the agent process's id (0 when it is not running).
func (a *Agent) PID() int {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Stop ends the agent (its data is gone: dev mode keeps it in memory). It
// returns once the process has exited.
func (a *Agent) Stop() {
	a.t.Helper()
	a.stop()
}

func (a *Agent) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.cmd = nil
}

// Restart stops the agent if it runs and starts an empty one on the same
// ports.
func (a *Agent) Restart() {
	a.t.Helper()
	a.stop()
	a.start()
}

// Running reports whether the agent process is up.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil
}

// Output is what the agent printed so far (its current run).
func (a *Agent) Output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.out == nil {
		return ""
	}
	return a.out.String()
}

// Put writes one KV entry, failing the test on error.
func (a *Agent) Put(key string, value []byte) {
	a.t.Helper()
	if _, err := a.Client().KV().Put(&api.KVPair{Key: key, Value: value}, nil); err != nil {
		a.t.Fatalf("consultest: put %s: %v", key, err)
	}
}

// Delete removes one KV entry, failing the test on error.
func (a *Agent) Delete(key string) {
	a.t.Helper()
	if _, err := a.Client().KV().Delete(key, nil); err != nil {
		a.t.Fatalf("consultest: delete %s: %v", key, err)
	}
}

type lockedBuffer = syncbuf.Buffer
