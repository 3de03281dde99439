package examples_test

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// fakeEnv resolves every env: reference to a fake secret, so the samples
// are checked without real keys in the environment.
func fakeEnv(t *testing.T) store.SecretResolver {
	return func(ref string) (string, error) {
		name, ok := strings.CutPrefix(ref, "env:")
		if !ok {
			t.Errorf("secret_ref %q: the samples use env: references only", ref)
		}
		return "sk-test-" + strings.ToLower(name), nil
	}
}

func TestKeymuxYAML(t *testing.T) {
	data, err := os.ReadFile("keymux.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, refused, err := store.ParseFile(data, fakeEnv(t))
	if err != nil {
		t.Fatalf("ParseFile: %v", err)
	}
	if len(refused) > 0 {
		t.Fatalf("refused: %+v", refused)
	}
	if len(cfg.Keys) != 6 || len(cfg.Rules) != 2 || len(cfg.Clients) != 2 {
		t.Fatalf("%d keys %d rules %d clients, want 6/2/2", len(cfg.Keys), len(cfg.Rules), len(cfg.Clients))
	}
	var providers []string
	for _, k := range cfg.Keys {
		if k.SecretRef == "" || !strings.HasPrefix(k.SecretRef, "env:") {
			t.Errorf("key %s: secret not from env: (%q)", k.ID, k.SecretRef)
		}
		if !slices.Contains(providers, string(k.Provider)) {
			providers = append(providers, string(k.Provider))
		}
	}
	slices.Sort(providers)
	want := []string{"anthropic", "azure", "huggingface", "openai", "openai_compatible"}
	if !slices.Equal(providers, want) {
		t.Errorf("providers %v, want %v", providers, want)
	}
	az := cfg.Keys["azure-eu"]
	if az.Azure.APIVersion != "2024-10-21" || az.Azure.Deployments["gpt-4o"] != "gpt4o-prod" || az.Host != "my-resource.openai.azure.com" {
		t.Errorf("azure key %+v", az.Azure)
	}
	if local := cfg.Keys["local"]; local.BaseURL != "http://127.0.0.1:8000/v1" || local.PathPrefix != "/v1" || local.Enabled {
		t.Errorf("local key base %q prefix %q enabled %v", local.BaseURL, local.PathPrefix, local.Enabled)
	}
	if r := cfg.Rules["k2-gpt-4"]; r.KeyID != "k2" || r.From != "gpt-4" || r.To != "gpt-4o-mini" || !r.Enabled {
		t.Errorf("rule k2-gpt-4 %+v", r)
	}
	if r := cfg.Rules["legacy-turbo"]; r.KeyID != policy.AnyKey {
		t.Errorf("rule legacy-turbo key %q, want *", r.KeyID)
	}
	alice := cfg.Clients["alice"]
	if alice.TokenSHA256 != sha256.Sum256([]byte("km-example-alice-not-a-real-token")) || !alice.AllowsModel("gpt-4") || alice.AllowsModel("text-embedding-3-small") {
		t.Errorf("client alice %+v", alice)
	}
	if cfg.Clients["batch"].TokenSHA256 != sha256.Sum256([]byte("km-example-batch-not-a-real-token")) {
		t.Error("client batch: token_sha256 is not the documented example token's")
	}
	s := cfg.Settings
	if s.Strategy != "round_robin" || s.Auth.Mode != policy.AuthClientKeys || s.Health.Interval != 10*time.Minute ||
		s.Ejection.ConsecutiveFailures != 3 || s.Ejection.Max != 5*time.Minute || s.Alerts.ErrorRate != 0.2 || s.Alerts.Usage != 10000 {
		t.Errorf("settings %+v", s)
	}
}

func TestConsulSeed(t *testing.T) {
	b := store.NewBuilder(fakeEnv(t))
	n := 0
	err := filepath.WalkDir("consul-seed", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		rel, _ := filepath.Rel("consul-seed", path)
		key := strings.TrimSuffix(filepath.ToSlash(rel), ".json")
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		parts := strings.Split(key, "/")
		switch {
		case len(parts) == 2 && parts[0] == "keymux" && parts[1] == "settings":
			err = b.Put(store.KindSettings, "", raw, key)
		case len(parts) == 3 && parts[0] == "keymux":
			err = b.Put(store.Kind(parts[1]), parts[2], raw, key)
		default:
			t.Errorf("%s: not a keymux/ KV entry", path)
		}
		n++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, refused := b.Build()
	if len(refused) > 0 {
		t.Fatalf("refused: %+v", refused)
	}
	if n != 6 || len(cfg.Keys) != 3 || len(cfg.Rules) != 1 || len(cfg.Clients) != 1 {
		t.Fatalf("%d files: %d keys %d rules %d clients", n, len(cfg.Keys), len(cfg.Rules), len(cfg.Clients))
	}
	if r := cfg.Rules["k2-gpt-4"]; r.KeyID != "k2" || r.From != "gpt-4" || r.To != "gpt-4o-mini" {
		t.Errorf("rule %+v", r)
	}
	if cfg.Keys["azure-eu"].Provider != policy.ProviderAzure || cfg.Settings.Auth.Mode != policy.AuthClientKeys {
		t.Errorf("azure key or settings wrong: %+v", cfg.Settings)
	}
}

func TestDemoConfig(t *testing.T) {
	const upstream = "http://127.0.0.1:43210"
	cfg, refused, err := store.ParseFile(mockupstream.DemoConfig(upstream+"/"), nil)
	if err != nil {
		t.Fatalf("ParseFile: %v", err)
	}
	if len(refused) > 0 {
		t.Fatalf("refused: %+v", refused)
	}
	if len(cfg.Keys) != 3 || len(cfg.Rules) != 1 || len(cfg.Clients) != 0 {
		t.Fatalf("%d keys %d rules %d clients", len(cfg.Keys), len(cfg.Rules), len(cfg.Clients))
	}
	for i, id := range []string{"k1", "k2", "k3"} {
		k := cfg.Keys[id]
		if k == nil || k.Provider != policy.ProviderOpenAICompatible || k.BaseURL != upstream+"/v1" || k.Scheme != "http" ||
			k.Host != "127.0.0.1:43210" || k.PathPrefix != "/v1" || k.Secret.Reveal() != "sk-demo-"+string(rune('1'+i)) || !k.Enabled ||
			!slices.Equal(k.Models, mockupstream.DemoModels) {
			t.Errorf("key %s: %+v", id, k)
		}
	}
	for _, r := range cfg.Rules {
		if r.KeyID != "k2" || r.From != "gpt-4" || r.To != "gpt-4o-mini" || !r.Enabled {
			t.Errorf("rule %+v", r)
		}
	}
	if cfg.Settings.Strategy != "round_robin" || cfg.Settings.Auth.Mode != policy.AuthNone {
		t.Errorf("settings %+v", cfg.Settings)
	}
}
