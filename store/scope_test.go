package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keymux/keymux/policy"
)

func TestScopeCheckUpstream(t *testing.T) {
	def := DefaultScope()
	allow := DefaultScope()
	allow.Upstreams = []string{"127.0.0.0/8", "169.254.169.254:80", "[fe80::1]", "localhost", "127.0.0.1:9901"}
	cidrOnly := DefaultScope()
	cidrOnly.Upstreams = []string{"127.0.0.0/8"}
	tests := []struct {
		name    string
		scope   *Scope
		base    string
		wantErr string // "" = allowed
	}{
		{"public name", def, "https://api.openai.com/v1", ""},
		{"public address", def, "http://203.0.113.7:8000/v1", ""},
		{"metadata service", def, "http://169.254.169.254/v1", "outside the operator's scope: 169.254.169.254 is a link-local address (allow it with --allow-upstream)"},
		{"ipv6 link-local", def, "http://[fe80::1]:8080/v1", "outside the operator's scope: fe80::1 is a link-local address (allow it with --allow-upstream)"},
		{"mapped link-local", def, "http://[::ffff:169.254.1.1]/v1", "outside the operator's scope: ::ffff:169.254.1.1 is a link-local address (allow it with --allow-upstream)"},
		{"loopback", def, "http://127.0.0.1:8000/v1", "outside the operator's scope: 127.0.0.1 is a loopback address (allow it with --allow-upstream)"},
		{"loopback /8", def, "http://127.1.2.3/v1", "outside the operator's scope: 127.1.2.3 is a loopback address (allow it with --allow-upstream)"},
		{"ipv6 loopback", def, "http://[::1]:8000/v1", "outside the operator's scope: ::1 is a loopback address (allow it with --allow-upstream)"},
		{"localhost", def, "http://localhost:8000/v1", "outside the operator's scope: localhost is a loopback address (allow it with --allow-upstream)"},
		{"unspecified", def, "http://0.0.0.0:8000/v1", "outside the operator's scope: 0.0.0.0 is the unspecified address"},
		{"envoy admin", def, "http://127.0.0.1:9901", "outside the operator's scope: 127.0.0.1:9901 is Envoy's admin address (allow it with --allow-upstream)"},
		{"loopback allowed by prefix", allow, "http://127.0.0.1:8000/v1", ""},
		{"link-local allowed by host:port", allow, "http://169.254.169.254/v1", ""},
		{"link-local other port still refused", allow, "http://169.254.169.254:8080/v1", "outside the operator's scope: 169.254.169.254 is a link-local address (allow it with --allow-upstream)"},
		{"ipv6 allowed by host", allow, "http://[fe80::1]:8080/v1", ""},
		{"localhost allowed by name", allow, "http://localhost:1234/v1", ""},
		{"admin named", allow, "http://127.0.0.1:9901", ""},
		{"admin not lifted by a prefix", cidrOnly, "http://127.0.0.1:9901", "outside the operator's scope: 127.0.0.1:9901 is Envoy's admin address (allow it with --allow-upstream)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &policy.Key{}
			if err := parseBaseURL("keys/k1", tt.base, k); err != nil {
				t.Fatal(err)
			}
			err := tt.scope.CheckUpstream(k)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckUpstream: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr || !errors.Is(err, errOutOfScope) {
				t.Fatalf("CheckUpstream = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestScopeResolver(t *testing.T) {
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(dir, "token")
	for _, f := range []string{filepath.Join(secrets, "openai"), outside} {
		if err := os.WriteFile(f, []byte("sk-test-file\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(secrets, "escape")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OPENAI_API_KEY", "sk-test-env")
	t.Setenv("KEYMUX_K1", "sk-test-k1")
	t.Setenv("OPENAI_API_KEY_2", "sk-test-env-2")
	t.Setenv("CONSUL_HTTP_TOKEN", "consul-secret")
	sc := &Scope{SecretEnv: DefaultSecretEnv, SecretDirs: []string{secrets}}
	resolve := sc.Resolver(nil)
	tests := []struct {
		ref, want, wantErr string
	}{
		{"env:OPENAI_API_KEY", "sk-test-env", ""},
		{"env:KEYMUX_K1", "sk-test-k1", ""},
		{"env:OPENAI_API_KEY_2", "sk-test-env-2", ""},
		{"env:CONSUL_HTTP_TOKEN", "", "outside the operator's scope: environment variable CONSUL_HTTP_TOKEN matches no --secret-env pattern (*_API_KEY, *_API_KEY_*, KEYMUX_*)"},
		{"env:PATH", "", "outside the operator's scope: environment variable PATH matches no --secret-env pattern (*_API_KEY, *_API_KEY_*, KEYMUX_*)"},
		{"file:" + filepath.Join(secrets, "openai"), "sk-test-file", ""},
		{"file:" + outside, "", "outside the operator's scope: " + outside + " is under no --secret-dir (" + secrets + ")"},
		{"file:" + secrets + "/../token", "", "outside the operator's scope: " + secrets + "/../token is under no --secret-dir (" + secrets + ")"},
		{"file:" + filepath.Join(secrets, "escape"), "", "outside the operator's scope: " + filepath.Join(secrets, "escape") + " is under no --secret-dir (" + secrets + ")"},
		{"file:" + secrets, "", "outside the operator's scope: " + secrets + " is under no --secret-dir (" + secrets + ")"},
		{"file:secrets/openai", "", "outside the operator's scope: secrets/openai is not an absolute path"},
		{"vault:x", "", ErrBadSecretRef.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			got, err := resolve(tt.ref)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("resolve = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr || got != "" {
				t.Fatalf("resolve = %q, %v; want error %q", got, err, tt.wantErr)
			}
		})
	}
}
