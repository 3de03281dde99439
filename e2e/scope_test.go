package e2e

import (
	"strings"
	"testing"
)

// TestSecretScope: key documents reach only the secrets and upstreams the
// operator allows; what is refused is listed on /status without a value.
func TestSecretScope(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-test-openai-env")
	t.Setenv("CONSUL_HTTP_TOKEN", "consul-token-must-not-leak")
	const pasted = "sk-live-pasted-into-secret-ref"
	g := startGateway(t, `
keys:
  good: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "env:OPENAI_API_KEY"}
  consul: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "env:CONSUL_HTTP_TOKEN"}
  metadata: {provider: openai_compatible, base_url: "http://169.254.169.254/v1", secret: sk-test-meta}
  file: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "file:/etc/hostname"}
  pasted: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret_ref: "`+pasted+`"}
  admin: {provider: openai_compatible, base_url: "http://127.0.0.1:9901", secret: sk-test-admin}
`)
	want := map[string]string{
		"keys/consul":   `keys/consul: field "secret_ref": cannot resolve "env:CONSUL_HTTP_TOKEN": outside the operator's scope: environment variable CONSUL_HTTP_TOKEN matches no --secret-env pattern (*_API_KEY, *_API_KEY_*, KEYMUX_*)`,
		"keys/metadata": `keys/metadata: field "base_url": outside the operator's scope: 169.254.169.254 is a link-local address (allow it with --allow-upstream)`,
		"keys/file":     `keys/file: field "secret_ref": cannot resolve "file:/etc/hostname": outside the operator's scope: /etc/hostname is under no --secret-dir (/run/secrets)`,
		"keys/pasted":   `keys/pasted: field "secret_ref": want "env:NAME" or "file:/path" (the value is not shown)`,
		"keys/admin":    `keys/admin: field "base_url": outside the operator's scope: 127.0.0.1:9901 is Envoy's admin address (allow it with --allow-upstream)`,
	}
	st := g.status()
	got := map[string]string{}
	for _, r := range st.Refused {
		got[r.Path] = r.Reason
	}
	for path, reason := range want {
		if got[path] != reason {
			t.Errorf("refusal of %s = %q, want %q", path, got[path], reason)
		}
	}
	if len(got) != len(want) {
		t.Errorf("refused %v, want exactly %d", got, len(want))
	}
	status := string(g.getAdmin("/status"))
	for _, secret := range []string{"consul-token-must-not-leak", pasted, "sk-test-openai-env"} {
		if strings.Contains(status, secret) || strings.Contains(g.stderr.String(), secret) {
			t.Errorf("a secret value appears on /status or in the logs")
		}
	}
	before := len(g.requests())
	if resp, b := g.do("POST", "/v1/chat/completions", nil, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := g.requests()[before].Credential; got != "sk-test-openai-env" {
		t.Fatalf("credential %q, want the env:OPENAI_API_KEY value", got)
	}
}
