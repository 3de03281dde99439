package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/syncbuf"
)

// holdingLog is a log writer that holds the first write containing hold
// until release is closed (the writing goroutine waits in it), and closes
// seen once a write contains mark.
type holdingLog struct {
	buf         syncbuf.Buffer
	hold, mark  string
	held, seen  chan struct{}
	release     chan struct{}
	holdOnce    sync.Once
	seenOnce    sync.Once
	releaseOnce sync.Once
}

func (w *holdingLog) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if strings.Contains(string(p), w.hold) {
		w.holdOnce.Do(func() {
			close(w.held)
			<-w.release
		})
	}
	if strings.Contains(string(p), w.mark) {
		w.seenOnce.Do(func() { close(w.seen) })
	}
	return n, err
}

func (w *holdingLog) unhold() { w.releaseOnce.Do(func() { close(w.release) }) }

// TestSIGHUPDuringFirstLoad: a SIGHUP that comes while `keymux serve`
// loads its file for the first time is taken (an unhandled SIGHUP ends the
// process, this test binary with it) and reloads the file once that load
// is done. The first load is held in its own log line ("applying config
// file": the log writer blocks) while the test sends SIGHUP.
func TestSIGHUPDuringFirstLoad(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "keymux.yaml")
	if err := os.WriteFile(cfg, []byte("keys:\n  k1: {provider: openai, secret: sk-hup-test}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &holdingLog{hold: `"msg":"applying config file"`, mark: `"msg":"reloaded on SIGHUP"`,
		held: make(chan struct{}), seen: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	var stdout syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"serve", "--config", cfg, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-level", "info"}, &stdout, logs)
	}()
	t.Cleanup(func() {
		logs.unhold() // a load still held in its log line could not see the stop
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("serve still running a minute after the stop")
		}
	})
	select {
	case <-logs.held:
	case err := <-done:
		t.Fatalf("serve returned before its first load: %v\n%s", err, logs.buf.String())
	case <-time.After(time.Minute):
		t.Fatal("no first load within a minute")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logs.unhold()
	select {
	case <-logs.seen:
	case err := <-done:
		t.Fatalf("serve returned: %v\n%s", err, logs.buf.String())
	case <-time.After(time.Minute):
		t.Fatalf("the SIGHUP sent during the first load did not reload the file:\n%s", logs.buf.String())
	}
}
