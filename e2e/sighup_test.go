package e2e

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/wait"
)

// SIGHUP re-reads the configuration and the secrets it references: a
// rotated secret file is picked up without a restart.
func TestSIGHUPReloadsSecrets(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "k1.secret")
	if err := os.WriteFile(secret, []byte("sk-test-rotated-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "file:`+secret+`"}
`, "--secret-dir", dir)
	call := func() string {
		t.Helper()
		before := len(g.requests())
		if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		return g.requests()[before].Credential
	}
	if got := call(); got != "sk-test-rotated-1" {
		t.Fatalf("credential %q, want the file's", got)
	}
	if err := os.WriteFile(secret, []byte("sk-test-rotated-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gen := g.status().Generation
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 10*time.Second, "a new generation after SIGHUP", func() bool { return g.status().Generation > gen })
	if got := call(); got != "sk-test-rotated-2" {
		t.Fatalf("after SIGHUP the credential is %q, want the rotated one", got)
	}
}

// A SIGHUP that comes while the first load is under way is taken (an
// unhandled SIGHUP would end the process) and reloads once that load is
// done. The key's secret is a named pipe: the first load is under way
// while it reads the pipe, and the reload is seen when it opens the pipe
// again.
func TestSIGHUPDuringFirstLoadReloadsAfterIt(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "k1.secret")
	if err := syscall.Mkfifo(secret, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // unblocks a writer still waiting for a reader
		if f, err := os.OpenFile(secret, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	// feed writes value into the pipe once a reader opens it; hup sends
	// SIGHUP while that reader still waits for the end of the pipe.
	feed := func(value string, hup bool) error {
		f, err := os.OpenFile(secret, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(value)
		if err == nil && hup {
			err = syscall.Kill(os.Getpid(), syscall.SIGHUP)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	first := make(chan error, 1)
	go func() { first <- feed("sk-test-first-load\n", true) }()
	g := startGateway(t, `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "file:`+secret+`"}
`, "--secret-dir", dir)
	if err := <-first; err != nil { // the first load is done: its reader closed the pipe
		t.Fatal(err)
	}
	reload := make(chan error, 1)
	go func() { reload <- feed("sk-test-after-hup\n", false) }()
	select {
	case err := <-reload:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the SIGHUP sent during the first load did not reload the configuration")
	}
	wait.Until(t, 10*time.Second, "the reload's generation", func() bool { return g.status().Generation >= 2 })
	before := len(g.requests())
	if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := g.requests()[before].Credential; got != "sk-test-after-hup" {
		t.Fatalf("credential %q, want the one read by the reload", got)
	}
}
