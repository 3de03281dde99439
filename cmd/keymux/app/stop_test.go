package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/bigconfig"
	"github.com/keymux/keymux/testutil/syncbuf"
)

// markWriter collects a log and closes seen once a write contains mark.
type markWriter struct {
	buf  syncbuf.Buffer
	mark string
	seen chan struct{}
	once sync.Once
}

func (w *markWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.mark) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.buf.Write(p)
}

// TestServeStopsDuringApply stops `keymux serve` (as SIGTERM does: main
// cancels Run's context) while it applies a large configuration — once in
// the file's documents, once in the store's apply — and wants Run to return
// within a second (stopBound), without an error and without having become
// ready. A full apply of this file takes several seconds (its 20,000
// distinct aliases each get a pool over 2,000 keys), so a stop that is not
// honoured fails the bound.
func TestServeStopsDuringApply(t *testing.T) {
	if testing.Short() {
		t.Skip("applies a large configuration")
	}
	path := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(path, bigconfig.Aliases(2000, 20000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, mark string }{
		{"reading the documents", `"msg":"applying config file"`},
		{"applying to the store", `"msg":"applying configuration"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			logs := &markWriter{mark: tc.mark, seen: make(chan struct{})}
			var stdout syncbuf.Buffer
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, []string{"serve", "--config", path, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-level", "debug"}, &stdout, logs)
			}()
			select {
			case <-logs.seen:
			case err := <-done:
				t.Fatalf("serve returned before %s: %v\n%s", tc.mark, err, logs.buf.String())
			case <-time.After(time.Minute):
				t.Fatalf("no %s within a minute", tc.mark)
			}
			stop := time.Now()
			cancel()
			select {
			case err := <-done:
				took := time.Since(stop)
				if took > stopBound {
					t.Errorf("serve returned %s after the stop, want within %s", took.Round(time.Millisecond), stopBound)
				}
				t.Logf("serve returned %s after the stop", took.Round(time.Millisecond))
				if err != nil {
					t.Errorf("serve returned %v, want nil (a stop)", err)
				}
			case <-time.After(time.Minute):
				t.Fatalf("serve still running a minute after the stop")
			}
			if strings.Contains(stdout.String(), "keymux ready") || strings.Contains(logs.buf.String(), `"msg":"config applied"`) {
				t.Errorf("the configuration was applied: the stop was not honoured, or the apply finished before it (then make the file larger):\n%s", stdout.String())
			}
		})
	}
}
