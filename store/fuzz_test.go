package store

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/deep"
)

// addFixtureSeeds adds every testdata document of kind as a seed.
func addFixtureSeeds(f *testing.F, kind string, add func([]byte)) {
	f.Helper()
	files, _ := filepath.Glob(filepath.Join("testdata", kind+"-*.json"))
	if len(files) == 0 {
		f.Fatalf("no %s fixtures", kind)
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		add(raw)
	}
}

// checkDocErr asserts err is a DocError naming doc.
func checkDocErr(t *testing.T, err error, doc string) {
	t.Helper()
	var de *DocError
	if !errors.As(err, &de) {
		t.Fatalf("error %T %q is not a *DocError", err, err)
	}
	if !strings.HasPrefix(err.Error(), doc) {
		t.Fatalf("error %q does not name %s", err, doc)
	}
}

// countStrings counts the strings (keys and values) of a decoded JSON value
// that contain s.
func countStrings(v any, s string) int {
	switch v := v.(type) {
	case string:
		if strings.Contains(v, s) {
			return 1
		}
	case []any:
		n := 0
		for _, e := range v {
			n += countStrings(e, s)
		}
		return n
	case map[string]any:
		n := 0
		for k, e := range v {
			n += countStrings(k, s) + countStrings(e, s)
		}
		return n
	}
	return 0
}

// checkNoSecretLeak fails when err quotes the document's secret. Only
// secrets with the marker SECRET that appear nowhere else in the document
// are checked, so that an echoed other field cannot be mistaken for a leak.
func checkNoSecretLeak(t *testing.T, raw []byte, err error) {
	t.Helper()
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return
	}
	s, ok := m["secret"].(string)
	if !ok || !strings.Contains(s, "SECRET") || countStrings(m, s) != 1 {
		return
	}
	if strings.Contains(err.Error(), s) {
		t.Fatalf("error leaks the secret: %q", err)
	}
}

func FuzzParseKey(f *testing.F) {
	addFixtureSeeds(f, "keys", func(raw []byte) { f.Add("k1", raw) })
	f.Add("k1", []byte(`{"provider":"openai","secret":"sk-SECRET-1","weight":0}`))
	f.Add("k1", []byte(`{"provider":"bogus","secret":"sk-SECRET-1"}`))
	f.Add("k1", []byte(`{"provider":"openai","secret":"sk-SECRET-1","base_url":"https://u:sk-SECRET-1@h/v1"}`))
	f.Add("a/b", []byte(`{"provider":"openai","secret":"x"}`))
	f.Fuzz(func(t *testing.T, id string, raw []byte) {
		k, err := ParseKey(id, raw, testResolve)
		if err != nil {
			checkDocErr(t, err, "keys/")
			checkNoSecretLeak(t, raw, err)
			return
		}
		switch {
		case k.ID != id || !ValidID(id):
			t.Fatalf("id %q accepted as %q", id, k.ID)
		case !knownProvider(k.Provider):
			t.Fatalf("provider %q", k.Provider)
		case !(k.Weight > 0):
			t.Fatalf("weight %v", k.Weight)
		case k.Scheme != "http" && k.Scheme != "https":
			t.Fatalf("scheme %q", k.Scheme)
		case k.Host == "" || k.BaseURL != k.Scheme+"://"+k.Host+k.PathPrefix || strings.HasSuffix(k.PathPrefix, "/"):
			t.Fatalf("base url %q host %q prefix %q", k.BaseURL, k.Host, k.PathPrefix)
		case !validSecret(k.Secret.Reveal()):
			t.Fatal("invalid secret accepted")
		case k.Provider == policy.ProviderAzure && k.Azure.APIVersion == "":
			t.Fatal("azure without api_version")
		case slices.Contains(k.Models, "") || slices.Contains(k.Models, ReservedModel):
			t.Fatalf("models %q", k.Models)
		}
	})
}

func FuzzParseSettings(f *testing.F) {
	addFixtureSeeds(f, "settings", func(raw []byte) { f.Add(raw) })
	f.Add([]byte(`{"ejection":{"base":"1h","max":"1s"}}`))
	f.Add([]byte(`{"health":{"interval":"1ns","timeout":"1ns"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := ParseSettings(raw)
		if err != nil {
			checkDocErr(t, err, "settings: ")
			return
		}
		switch {
		case !slices.Contains(KnownStrategies(), s.Strategy):
			t.Fatalf("strategy %q", s.Strategy)
		case s.Health.Interval <= 0 || s.Health.Timeout <= 0 || s.Health.Timeout > s.Health.Interval:
			t.Fatalf("health %+v", s.Health)
		case s.Ejection.ConsecutiveFailures < 1 || s.Ejection.Base <= 0 || s.Ejection.Max < s.Ejection.Base || s.Ejection.Cooldown <= 0:
			t.Fatalf("ejection %+v", s.Ejection)
		case s.Ejection.ErrorWindow < 1e9 || s.Ejection.ErrorWindow > MaxErrorWindow:
			t.Fatalf("error window %v", s.Ejection.ErrorWindow)
		case s.Alerts.ErrorRate < 0 || s.Alerts.ErrorRate > 1 || s.MaxBodyBytes <= 0:
			t.Fatalf("alerts %+v max body %d", s.Alerts, s.MaxBodyBytes)
		case s.Auth.Claim == "" || s.Auth.Value == "":
			t.Fatalf("auth %+v", s.Auth)
		}
		switch s.Auth.Mode {
		case policy.AuthNone, policy.AuthClientKeys, policy.AuthJWTClaim:
		default:
			t.Fatalf("auth mode %q", s.Auth.Mode)
		}
	})
}

func FuzzParseRule(f *testing.F) {
	addFixtureSeeds(f, "rules", func(raw []byte) { f.Add("r1", raw) })
	f.Fuzz(func(t *testing.T, id string, raw []byte) {
		r, err := ParseRule(id, raw)
		if err != nil {
			checkDocErr(t, err, "rules/")
			return
		}
		if r.ID != id || r.From == "" || r.To == "" || r.From == r.To || r.From == ReservedModel || r.To == ReservedModel ||
			(r.KeyID != policy.AnyKey && !ValidID(r.KeyID)) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzParseClient(f *testing.F) {
	addFixtureSeeds(f, "clients", func(raw []byte) { f.Add("c1", raw) })
	f.Fuzz(func(t *testing.T, id string, raw []byte) {
		c, err := ParseClient(id, raw)
		if err != nil {
			checkDocErr(t, err, "clients/")
			return
		}
		if c.ID != id || c.Name == "" || c.TokenSHA256 == ([32]byte{}) && !strings.Contains(string(raw), "000000") ||
			c.Limits.RPM < 0 || c.Limits.TPM < 0 {
			t.Fatalf("accepted %+v", c)
		}
	})
}

func FuzzParseFile(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input byte by byte.
	f.Add([]byte(fileV1))
	f.Add([]byte(fileV2))
	f.Add([]byte("keys:\n  k1: [1, 2]\n"))
	f.Add(append([]byte(`{"keys":{"k1":`), deep.Arrays(policy.DefaultMaxBodyBytes/2, "1")...)) // 8 MiB, nested
	f.Add([]byte(`{"rules":{"r1":{"key":"k9","from":"a","to":"b"}},"clients":{"c1":{"token_sha256":"` + strings.Repeat("a", 64) + `"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, refused, err := ParseFile(data, testResolve)
		if err != nil {
			if !errors.Is(err, ErrBadFile) {
				t.Fatalf("error %q does not wrap ErrBadFile", err)
			}
			return
		}
		for _, r := range refused {
			if r.Path == "" || r.Reason == "" {
				t.Fatalf("refusal %+v", r)
			}
		}
		// Whatever a source builds, the store must accept.
		st, err := New(Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Apply(cfg, SourceInfo{Refused: refused}); err != nil {
			t.Fatalf("Apply(Build()) = %v", err)
		}
		snap := st.Read()
		if len(snap.Keys()) != len(cfg.Keys) || len(snap.Pool("").Entries) > len(cfg.Keys) {
			t.Fatalf("snapshot has %d keys, config %d", len(snap.Keys()), len(cfg.Keys))
		}
	})
}

func knownProvider(p policy.Provider) bool {
	_, ok := policy.LookupProvider(p)
	return ok
}
