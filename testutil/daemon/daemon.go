// Package daemon runs an external server program for a test (the real
// Jaeger, Prometheus…): free loopback ports for it, its output captured,
// a readiness poll that notices the program exiting, and a graceful stop.
package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/syncbuf"
)

// PollInterval is how often WaitReady checks readiness.
const PollInterval = 25 * time.Millisecond

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is one started program.
type Process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	out  syncbuf.Buffer
	once sync.Once
}

// Start runs bin with args, its stdout and stderr captured; name is what
// errors call it.
func Start(name, bin string, args ...string) (*Process, error) {
	p := &Process{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	// A child the program left behind must not hold Wait on its output.
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// WaitReady calls ready every PollInterval until it returns true; it fails
// when the program exits or timeout passes first, with the program's output.
func (p *Process) WaitReady(timeout time.Duration, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		if ready(ctx) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready\n%s output:\n%s", p.name, p.name, p.Output())
		case <-ctx.Done():
			return fmt.Errorf("%s was not ready after %s\n%s output:\n%s", p.name, timeout, p.name, p.Output())
		case <-tick.C:
		}
	}
}

// Stop ends the program (SIGTERM, then SIGKILL after StopTimeout) and
// waits for it; it is idempotent.
func (p *Process) Stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(StopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// Output is what the program printed so far.
func (p *Process) Output() string { return p.out.String() }

// AddrInUse reports whether the program's output says a port it was given
// was taken in the meantime (worth a retry on new ports).
func (p *Process) AddrInUse() bool {
	return strings.Contains(p.Output(), "address already in use")
}

// Get GETs u with client and returns the status and body.
func Get(ctx context.Context, client *http.Client, u string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
