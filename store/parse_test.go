package store

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
)

var update = flag.Bool("update", false, "rewrite golden files")

// testSecrets backs testResolve: obviously fake values only.
var testSecrets = map[string]string{
	"env:KEYMUX_TEST_K1":    "sk-test-k1-from-env",
	"env:KEYMUX_TEST_K2":    "sk-test-k2-from-env",
	"env:KEYMUX_TEST_EMPTY": "",
	"file:/run/secrets/k1":  "sk-test-k1-from-file",
}

func testResolve(ref string) (string, error) {
	v, ok := testSecrets[ref]
	if !ok {
		return "", errors.New("not found")
	}
	return v, nil
}

// parseFixture parses a testdata document whose name starts with its kind.
func parseFixture(name string, raw []byte) (any, error) {
	kind, _, _ := strings.Cut(name, "-")
	switch Kind(kind) {
	case KindSettings:
		return ParseSettings(raw)
	case KindKeys:
		return ParseKey("k1", raw, testResolve)
	case KindRules:
		return ParseRule("r1", raw)
	case KindClients:
		return ParseClient("c1", raw)
	}
	return nil, errors.New("fixture name must start with its kind: " + name)
}

var badFixtures = []struct {
	name string
	err  string
}{
	{"clients-limits-negative", "clients/c1: field \"limits.tpm\": must be >= 0"},
	{"clients-limits-unknown", "clients/c1: unknown field \"limits.rpd\""},
	{"clients-missing-token", "clients/c1: field \"token_sha256\": required (the hex SHA-256 of the client token)"},
	{"clients-models-duplicate", "clients/c1: field \"models[1]\": duplicate model \"a\""},
	{"clients-non-hex-token", "clients/c1: field \"token_sha256\": want 64 hex digits"},
	{"clients-raw-token", "clients/c1: unknown field \"token\""},
	{"clients-short-token", "clients/c1: field \"token_sha256\": want 64 hex digits, got 4 characters"},
	{"keys-azure-bad-deployment", "keys/k1: field \"azure.deployments.gpt-4o\": want a deployment name of A-Z a-z 0-9 . _ -"},
	{"keys-azure-no-base-url", "keys/k1: field \"base_url\": required for provider azure"},
	{"keys-azure-no-version", "keys/k1: field \"azure.api_version\": required for provider azure"},
	{"keys-azure-on-openai", "keys/k1: field \"azure\": only for provider azure"},
	{"keys-azure-unknown-field", "keys/k1: unknown field \"azure.version\""},
	{"keys-bad-secret-ref", "keys/k1: field \"secret_ref\": want \"env:NAME\" or \"file:/path\" (the value is not shown)"},
	{"keys-base-url-bad-port", "keys/k1: field \"base_url\": not a valid URL"},
	{"keys-base-url-fragment", "keys/k1: field \"base_url\": must not contain a fragment"},
	{"keys-base-url-no-host", "keys/k1: field \"base_url\": want an absolute http or https URL with a host"},
	{"keys-base-url-query", "keys/k1: field \"base_url\": must not contain a query"},
	{"keys-base-url-relative", "keys/k1: field \"base_url\": want an absolute http or https URL"},
	{"keys-base-url-scheme", "keys/k1: field \"base_url\": want an absolute http or https URL"},
	{"keys-base-url-userinfo", "keys/k1: field \"base_url\": must not contain userinfo"},
	{"keys-both-secrets", "keys/k1: need exactly one of \"secret\" or \"secret_ref\""},
	{"keys-compatible-no-base-url", "keys/k1: field \"base_url\": required for provider openai_compatible"},
	{"keys-empty-ref-value", "keys/k1: field \"secret_ref\": \"env:KEYMUX_TEST_EMPTY\" resolves to an empty value or one with control characters"},
	{"keys-empty-secret", "keys/k1: field \"secret\": must be non-empty without control characters"},
	{"keys-enabled-string", "keys/k1: field \"enabled\": want boolean, got string"},
	{"keys-limits-negative", "keys/k1: field \"limits.rpm\": must be >= 0"},
	{"keys-missing-provider", "keys/k1: field \"provider\": required (want openai, azure, anthropic, huggingface, openai_compatible)"},
	{"keys-models-duplicate", "keys/k1: field \"models[1]\": duplicate model \"gpt-4o\""},
	{"keys-models-empty", "keys/k1: field \"models[1]\": must not be empty"},
	{"keys-models-not-array", "keys/k1: field \"models\": want array, got string"},
	{"keys-models-reserved", "keys/k1: field \"models[0]\": \"*\" is reserved"},
	{"keys-no-secret", "keys/k1: need exactly one of \"secret\" or \"secret_ref\""},
	{"keys-not-object", "keys/k1: want a JSON object, got array"},
	{"keys-secret-newline", "keys/k1: field \"secret\": must be non-empty without control characters"},
	{"keys-secret-number", "keys/k1: field \"secret\": want string, got number"},
	{"keys-unknown-field", "keys/k1: unknown field \"modles\""},
	{"keys-unknown-provider", "keys/k1: field \"provider\": unknown provider \"foo\" (want openai, azure, anthropic, huggingface, openai_compatible)"},
	{"keys-unresolved-ref", "keys/k1: field \"secret_ref\": cannot resolve \"env:KEYMUX_TEST_MISSING\": not found"},
	{"keys-weight-negative", "keys/k1: field \"weight\": must be > 0"},
	{"keys-weight-string", "keys/k1: field \"weight\": want number, got string"},
	{"keys-weight-zero", "keys/k1: field \"weight\": must be > 0"},
	{"rules-bad-key", "rules/r1: field \"key\": want a key id or \"*\""},
	{"rules-enabled-number", "rules/r1: field \"enabled\": want boolean, got number"},
	{"rules-from-reserved", "rules/r1: field \"from\": \"*\" is reserved"},
	{"rules-missing-from", "rules/r1: field \"from\": required"},
	{"rules-missing-key", "rules/r1: field \"key\": required (a key id or \"*\")"},
	{"rules-missing-to", "rules/r1: field \"to\": required"},
	{"rules-same-from-to", "rules/r1: field \"to\": same as \"from\""},
	{"rules-unknown-field", "rules/r1: unknown field \"model\""},
	{"settings-auth-mode", "settings: field \"auth.mode\": unknown mode \"oauth\" (want none, client_keys, jwt_claim)"},
	{"settings-bad-duration", "settings: field \"health.interval\": want a duration like \"10m\", got \"10 minutes\""},
	{"settings-consecutive-zero", "settings: field \"ejection.consecutive_failures\": must be >= 1"},
	{"settings-duration-number", "settings: field \"health.interval\": want string, got number"},
	{"settings-error-rate", "settings: field \"alerts.error_rate\": must be between 0 and 1"},
	{"settings-error-window-long", "settings: field \"ejection.error_window\": must be between 1s and 5m0s"},
	{"settings-max-body-zero", "settings: field \"max_body_bytes\": must be > 0"},
	{"settings-max-lt-base", "settings: field \"ejection.max\": must be >= ejection.base (2m0s)"},
	{"settings-negative-duration", "settings: field \"ejection.base\": must be > 0"},
	{"settings-payload-header", "settings: field \"auth.payload_header\": want a lower-case HTTP header name"},
	{"settings-timeout-gt-interval", "settings: field \"health.timeout\": must not exceed health.interval (5s)"},
	{"settings-unknown-field", "settings: unknown field \"ejections\""},
	{"settings-unknown-nested", "settings: unknown field \"ejection.window\""},
	{"settings-unknown-strategy", "settings: field \"strategy\": unknown strategy \"fastest\" (want adjust_by_error_rate, affinity, least_used, random, round_robin, weighted_by_usage)"},
	{"settings-usage-negative", "settings: field \"alerts.usage\": want integer, got number -1"},
	{"keys-field-case", `keys/k1: unknown field "Provider"`},
	{"keys-duplicate-field", `keys/k1: field "provider": appears twice`},
	{"settings-duplicate-nested", `settings: field "health.interval": appears twice`},
	{"clients-limits-case", `clients/c1: unknown field "limits.RPM"`},
	{"keys-truncated", "keys/k1: invalid JSON: unexpected end of input"},
	{"keys-trailing-data", "keys/k1: invalid JSON: data after the document"},
	{"keys-syntax", "keys/k1: invalid JSON at offset 34"},
	{"settings-not-object", "settings: want a JSON object, got string"},
	// Hostile documents: encodings, out-of-range numbers, wrong types, smuggled fields.
	{"keys-bom", `keys/k1: invalid JSON at offset 1`},
	{"keys-secret-raw-nul", `keys/k1: invalid JSON at offset 42`},
	{"keys-weight-nan", `keys/k1: invalid JSON at offset 53`},
	{"keys-priority-huge", `keys/k1: field "priority": want integer, got number 1e10`},
	{"keys-limits-rpm-huge", `keys/k1: field "limits.rpm": want integer, got number 1e20`},
	{"keys-limits-rpm-fraction", `keys/k1: field "limits.rpm": want integer, got number 1.5`},
	{"keys-labels-number", `keys/k1: field "labels": want string, got number`},
	{"keys-provider-null", `keys/k1: field "provider": required (want openai, azure, anthropic, huggingface, openai_compatible)`},
	{"keys-empty", `keys/k1: empty document`},
	{"keys-provider-case", `keys/k1: field "provider": unknown provider "OpenAI" (want openai, azure, anthropic, huggingface, openai_compatible)`},
	{"keys-secret-twice", `keys/k1: field "secret": appears twice`},
	{"keys-secret-ref-no-name", `keys/k1: field "secret_ref": want "env:NAME" or "file:/path" (the value is not shown)`},
	{"keys-azure-version-query", `keys/k1: field "azure.api_version": want a version like "2024-10-21"`},
	{"keys-trailing-comma", `keys/k1: invalid JSON at offset 44`},
	{"keys-single-quotes", `keys/k1: invalid JSON at offset 2`},
	{"keys-comment", `keys/k1: invalid JSON: data after the document`},
	{"rules-key-too-long", `rules/r1: field "key": want a key id or "*"`},
	{"rules-key-dot-dot", `rules/r1: field "key": want a key id or "*"`},
	{"rules-from-twice", `rules/r1: field "from": appears twice`},
	{"rules-from-number", `rules/r1: field "from": want string, got number`},
	{"clients-token-non-ascii", `clients/c1: field "token_sha256": want 64 hex digits`},
	{"clients-limits-huge", `clients/c1: field "limits.rpm": want integer, got number 1e20`},
	{"clients-limits-string", `clients/c1: field "limits.tpm": want integer, got string`},
	{"clients-models-number", `clients/c1: field "models": want string, got number`},
	{"clients-enabled-string", `clients/c1: field "enabled": want boolean, got string`},
	{"clients-secret-field", `clients/c1: unknown field "secret"`},
	{"clients-not-object", `clients/c1: want a JSON object, got string`},
	{"settings-max-body-huge", `settings: field "max_body_bytes": want integer, got number 1e30`},
	{"settings-max-body-fraction", `settings: field "max_body_bytes": want integer, got number 1.5`},
	{"settings-error-rate-negative", `settings: field "alerts.error_rate": must be between 0 and 1`},
	{"settings-usage-huge", `settings: field "alerts.usage": want integer, got number 1e30`},
	{"settings-interval-overflow", `settings: field "health.interval": want a duration like "10m", got "99999999999h"`},
	{"settings-interval-tiny", `settings: field "health.timeout": must not exceed health.interval (1ns)`},
	{"settings-consecutive-huge", `settings: field "ejection.consecutive_failures": want integer, got number 1e20`},
	{"settings-cooldown-zero", `settings: field "ejection.cooldown": must be > 0`},
	{"settings-claim-empty", `settings: field "auth.claim": must not be empty`},
	{"settings-payload-header-crlf", `settings: field "auth.payload_header": want a lower-case HTTP header name`},
	{"settings-stream-usage-string", `settings: field "stream_usage": want boolean, got string`},
	{"settings-auth-string", `settings: field "auth": want a JSON object, got string`},
	{"settings-array", `settings: want a JSON object, got array`},
	{"settings-unknown-paths", `settings: field "unknown_paths": unknown value "allow" (want refuse or forward)`},
}

func TestParseBadFixtures(t *testing.T) {
	for _, tc := range badFixtures {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", tc.name+".bad.json"))
			if err != nil {
				t.Fatal(err)
			}
			v, err := parseFixture(tc.name, raw)
			if err == nil {
				t.Fatalf("accepted: %+v", v)
			}
			if err.Error() != tc.err {
				t.Fatalf("error\n got: %s\nwant: %s", err, tc.err)
			}
			var de *DocError
			if !errors.As(err, &de) {
				t.Errorf("error is %T, want *DocError", err)
			}
			if strings.Contains(err.Error(), "sk-test") {
				t.Errorf("error leaks a secret: %s", err)
			}
		})
	}
}

// TestFixturesCovered fails when a fixture file has no test case.
func TestFixturesCovered(t *testing.T) {
	known := map[string]bool{}
	for _, tc := range badFixtures {
		known[tc.name] = true
	}
	bad, _ := filepath.Glob("testdata/*.bad.json")
	if len(bad) < 25 {
		t.Errorf("%d bad fixtures, want at least 25", len(bad))
	}
	for _, f := range bad {
		name := strings.TrimSuffix(filepath.Base(f), ".bad.json")
		if !known[name] {
			t.Errorf("%s has no expected error in badFixtures", f)
		}
	}
	good, _ := filepath.Glob("testdata/*.good.json")
	for _, f := range good {
		if _, err := os.Stat(strings.TrimSuffix(f, ".good.json") + ".golden"); err != nil && !*update {
			t.Errorf("%s has no golden file", f)
		}
	}
}

// goldenView renders a parsed document for golden files: durations as
// strings, tokens as hex, secrets as their source.
func goldenView(v any) any {
	switch v := v.(type) {
	case policy.Settings:
		return map[string]any{
			"strategy":       v.Strategy,
			"health":         map[string]string{"interval": v.Health.Interval.String(), "timeout": v.Health.Timeout.String()},
			"ejection":       map[string]any{"consecutive_failures": v.Ejection.ConsecutiveFailures, "base": v.Ejection.Base.String(), "max": v.Ejection.Max.String(), "cooldown": v.Ejection.Cooldown.String(), "error_window": v.Ejection.ErrorWindow.String()},
			"auth":           v.Auth,
			"alerts":         v.Alerts,
			"max_body_bytes": v.MaxBodyBytes,
		}
	case *policy.Client:
		return map[string]any{"id": v.ID, "name": v.Name, "token_sha256": hex.EncodeToString(v.TokenSHA256[:]),
			"models": v.Models, "enabled": v.Enabled, "limits": v.Limits}
	case *policy.Key:
		cp := *v
		// The secret is compared as the value it resolved to, in a fake-only fixture.
		return struct {
			policy.Key
			SecretValue string
		}{cp, v.Secret.Reveal()}
	}
	return v
}

func TestParseGoodFixtures(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.good.json")
	if len(files) < 10 {
		t.Fatalf("%d good fixtures", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".good.json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := parseFixture(name, raw)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			got, err := json.MarshalIndent(goldenView(v), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("%s differs (go test -run TestParseGoodFixtures -update)\n got: %s\nwant: %s", golden, got, want)
			}
		})
	}
}

func TestParseSettingsUnknownPaths(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{}`, policy.UnknownPathsRefuse},
		{`{"unknown_paths":"refuse"}`, policy.UnknownPathsRefuse},
		{`{"unknown_paths":"forward"}`, policy.UnknownPathsForward},
	} {
		s, err := ParseSettings([]byte(tc.doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		if s.UnknownPaths != tc.want {
			t.Errorf("%s: unknown_paths = %q, want %q", tc.doc, s.UnknownPaths, tc.want)
		}
	}
}
