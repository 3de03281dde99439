package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/bigconfig"
	"github.com/keymux/keymux/testutil/syncbuf"
)

// logMark is a process's stderr that closes seen once a write contains
// mark ("" matches the first write).
type logMark struct {
	buf  syncbuf.Buffer
	mark string
	seen chan struct{}
	once sync.Once
}

func (w *logMark) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(w.mark)) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.buf.Write(p)
}

// TestServeSIGTERMDuringApply sends SIGTERM to the real `keymux serve`
// binary while it starts on the file of issue 15 (10,000 keys, 100,000
// distinct aliases): at its first log line, while it reads the file's
// documents, and during the store's apply. The process must exit 0 within
// a second, without having become ready.
func TestServeSIGTERMDuringApply(t *testing.T) {
	bin := buildKeymux(t)
	path := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(path, bigconfig.Aliases(10_000, 100_000), 0o600); err != nil {
		t.Fatal(err)
	}
	const bound = time.Second
	for _, tc := range []struct{ name, mark string }{
		{"at the first log line", ""},
		{"reading the documents", `"msg":"applying config file"`},
		{"applying to the store", `"msg":"applying configuration"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logMark{mark: tc.mark, seen: make(chan struct{})}
			var stdout syncbuf.Buffer
			cmd := exec.Command(bin, "serve", "--config", path, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-level", "debug")
			cmd.Stdout, cmd.Stderr = &stdout, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			select {
			case <-logs.seen:
			case err := <-exited:
				t.Fatalf("keymux exited before %q: %v\n%s", tc.mark, err, logs.buf.String())
			case <-time.After(time.Minute):
				t.Fatalf("no %q within a minute", tc.mark)
			}
			sent := time.Now()
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			var err error
			select {
			case err = <-exited:
			case <-time.After(time.Minute):
				t.Fatal("keymux still running a minute after SIGTERM")
			}
			exited <- err // for the cleanup
			took := time.Since(sent)
			t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
			if took > bound {
				t.Errorf("keymux exited %s after SIGTERM, want within %s", took.Round(time.Millisecond), bound)
			}
			if err != nil {
				t.Errorf("keymux exited with %v, want 0 (a stop)\n%s", err, logs.buf.String())
			}
			if strings.Contains(stdout.String(), "keymux ready") || strings.Contains(logs.buf.String(), `"msg":"config applied"`) {
				t.Errorf("the configuration was applied before the stop took effect (make the file larger):\n%s", stdout.String())
			}
		})
	}
}
