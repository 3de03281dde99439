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
