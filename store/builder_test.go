package store

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

const (
	goodK1   = `{"provider":"openai","secret":"sk-test-k1"}`
	goodK1v2 = `{"provider":"openai","secret":"sk-test-k1","weight":4}`
	badK1    = `{"provider":"openai","secret":"sk-test-k1","weight":-1}`
	tokenA   = `"token_sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`
)

func TestBuilderKeepsLastGood(t *testing.T) {
	b := NewBuilder(testResolve)
	if err := b.Put(KindKeys, "k1", []byte(goodK1v2), "keymux/keys/k1"); err != nil {
		t.Fatal(err)
	}
	err := b.Put(KindKeys, "k1", []byte(badK1), "keymux/keys/k1")
	if err == nil || err.Error() != `keys/k1: field "weight": must be > 0` {
		t.Fatalf("Put(bad) = %v", err)
	}
	cfg, refused := b.Build()
	if k := cfg.Keys["k1"]; k == nil || k.Weight != 4 {
		t.Fatalf("k1 = %+v, want the last good version (weight 4)", k)
	}
	want := []Refusal{{Path: "keymux/keys/k1", Reason: `keys/k1: field "weight": must be > 0`}}
	if !reflect.DeepEqual(refused, want) {
		t.Fatalf("refused = %+v, want %+v", refused, want)
	}
	// A fix clears the refusal.
	if err := b.Put(KindKeys, "k1", []byte(goodK1), "keymux/keys/k1"); err != nil {
		t.Fatal(err)
	}
	cfg, refused = b.Build()
	if len(refused) != 0 || cfg.Keys["k1"].Weight != 1 {
		t.Fatalf("after fix: refused %+v, k1 %+v", refused, cfg.Keys["k1"])
	}
	// A document refused with no good version is absent.
	if err := b.Put(KindKeys, "k2", []byte(`{}`), "keymux/keys/k2"); err == nil {
		t.Fatal("accepted an empty key")
	}
	cfg, refused = b.Build()
	if _, ok := cfg.Keys["k2"]; ok || len(refused) != 1 || refused[0].Path != "keymux/keys/k2" {
		t.Fatalf("k2 present=%v refused=%+v", ok, refused)
	}
	// Delete forgets both the document and its refusal.
	b.Delete(KindKeys, "k2")
	b.Delete(KindKeys, "k1")
	cfg, refused = b.Build()
	if len(cfg.Keys) != 0 || len(refused) != 0 {
		t.Fatalf("after delete: keys %v refused %+v", cfg.Keys, refused)
	}
}

func TestBuilderCrossChecks(t *testing.T) {
	b := NewBuilder(testResolve)
	put := func(kind Kind, id, doc string) {
		t.Helper()
		if err := b.Put(kind, id, []byte(doc), "keymux/"+string(kind)+"/"+id); err != nil {
			t.Fatal(err)
		}
	}
	put(KindRules, "r1", `{"key":"k1","from":"gpt-4","to":"gpt-4o"}`)
	put(KindRules, "r2", `{"key":"*","from":"gpt-4","to":"gpt-4o"}`)
	// c2 is older than c1: the newcomer c1 is refused even though it sorts first.
	put(KindClients, "c2", `{`+tokenA+`}`)
	put(KindClients, "c1", `{"token_sha256":"`+strings.Repeat("A", 64)+`"}`)
	cfg, refused := b.Build()
	want := []Refusal{
		{Path: "keymux/clients/c1", Reason: `clients/c1: field "token_sha256": same token as clients/c2`},
		{Path: "keymux/rules/r1", Reason: `rules/r1: field "key": unknown key "k1"`},
	}
	if !reflect.DeepEqual(refused, want) {
		t.Fatalf("refused = %+v\nwant %+v", refused, want)
	}
	if cfg.Rules["r2"] == nil || cfg.Rules["r1"] != nil || cfg.Clients["c2"] == nil || cfg.Clients["c1"] != nil {
		t.Fatalf("cfg = %+v", cfg)
	}
	// The key appears: the rule is accepted. Re-putting c2 unchanged keeps its seniority.
	put(KindKeys, "k1", goodK1)
	put(KindClients, "c2", `{`+tokenA+`}`)
	cfg, refused = b.Build()
	if cfg.Rules["r1"] == nil || len(refused) != 1 || refused[0].Path != "keymux/clients/c1" {
		t.Fatalf("after adding k1: rules %v refused %+v", cfg.Rules, refused)
	}
	// Two enabled rules with the same key and from: the older wins; a disabled one does not conflict.
	put(KindRules, "r0", `{"key":"k1","from":"gpt-4","to":"gpt-4o-mini"}`)
	put(KindRules, "r3", `{"key":"k1","from":"gpt-4","to":"gpt-4o-mini","enabled":false}`)
	cfg, refused = b.Build()
	if cfg.Rules["r0"] != nil || cfg.Rules["r3"] == nil {
		t.Fatalf("rules %v", cfg.Rules)
	}
	if got := refused[1]; got.Path != "keymux/rules/r0" || got.Reason != "rules/r0: same key and from as rules/r1" {
		t.Fatalf("refused %+v", refused)
	}
	if _, err := New(Options{}); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
		t.Fatalf("Build output refused by Apply: %v", err)
	}
}

func TestBuilderSettingsAndKinds(t *testing.T) {
	b := NewBuilder(nil)
	if err := b.Put(KindSettings, "ignored", []byte(`{"strategy":"weighted_by_usage"}`), "keymux/settings"); err != nil {
		t.Fatal(err)
	}
	cfg, _ := b.Build()
	if cfg.Settings.Strategy != "weighted_by_usage" {
		t.Fatalf("strategy %q", cfg.Settings.Strategy)
	}
	b.Delete(KindSettings, "")
	if cfg, _ = b.Build(); !reflect.DeepEqual(cfg.Settings, DefaultSettings()) {
		t.Fatalf("settings after delete: %+v", cfg.Settings)
	}
	err := b.Put("health", "k1", []byte(`{}`), "keymux/health/k1")
	if !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("Put(health) = %v", err)
	}
	if _, refused := b.Build(); len(refused) != 0 {
		t.Fatalf("unknown kind recorded a refusal: %+v", refused)
	}
	for _, id := range []string{"", "a/b", "k 1", strings.Repeat("x", 129), "é"} {
		if err := b.Put(KindKeys, id, []byte(goodK1), "p"); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
	if err := b.Put(KindKeys, strings.Repeat("x", 128), []byte(goodK1), "p"); err != nil {
		t.Errorf("128-character id refused: %v", err)
	}
}

func TestSecretRefResolution(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/k1"
	if err := writeFile(path, "sk-test-from-file\n"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYMUX_STORE_TEST_K1", "sk-test-from-env")
	// A named pipe nobody writes: reading it would block the apply forever.
	if err := syscall.Mkfifo(dir+"/fifo", 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(dir+"/large", strings.Repeat("k", MaxSecretFile+1)); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(dir+"/largest", strings.Repeat("k", MaxSecretFile)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref, want, err string
	}{
		{"env:KEYMUX_STORE_TEST_K1", "sk-test-from-env", ""},
		{"file:" + path, "sk-test-from-file", ""},
		{"env:KEYMUX_STORE_TEST_UNSET", "", "environment variable KEYMUX_STORE_TEST_UNSET is not set"},
		{"file:" + dir + "/missing", "", "cannot read " + dir + "/missing: no such file or directory"},
		{"file:" + dir + "/fifo", "", "cannot read " + dir + "/fifo: not a regular file (p---------)"},
		{"file:/dev/zero", "", "cannot read /dev/zero: not a regular file (Dc---------)"},
		{"file:" + dir, "", "cannot read " + dir + ": not a regular file (d---------)"},
		{"file:" + dir + "/large", "", "cannot read " + dir + "/large: larger than 65536 bytes"},
		{"file:" + dir + "/largest", strings.Repeat("k", MaxSecretFile), ""},
		{"vault:x", "", `want "env:NAME" or "file:/path"`},
		{"env:", "", `want "env:NAME" or "file:/path"`},
	}
	for _, tc := range tests {
		got, err := ResolveSecretRef(tc.ref)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%s: err = %v, want %s", tc.ref, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s = %q, %v", tc.ref, got, err)
		}
	}
	// Through ParseKey with the default resolver, a missing file names the ref, not a value.
	_, err := ParseKey("k1", []byte(`{"provider":"openai","secret_ref":"file:`+dir+`/missing"}`), nil)
	want := `keys/k1: field "secret_ref": cannot resolve "file:` + dir + `/missing": cannot read ` + dir + `/missing: no such file or directory`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
}

// TestBuilderReparses: an unchanged rule is not parsed again (the same
// value stands), a key is (its secret reference is resolved anew), and a
// changed rule is.
func TestBuilderReparses(t *testing.T) {
	calls := 0
	b := NewBuilder(func(string) (string, error) { calls++; return "sk-test-resolved", nil })
	key := []byte(`{"provider":"openai","secret_ref":"env:K1"}`)
	rule := []byte(`{"key":"k1","from":"a","to":"b"}`)
	for range 2 {
		if err := b.Put(KindKeys, "k1", key, "keys/k1"); err != nil {
			t.Fatal(err)
		}
		if err := b.Put(KindRules, "r1", rule, "rules/r1"); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Fatalf("secret resolved %d times, want 2", calls)
	}
	first, _ := b.Build()
	if err := b.Put(KindRules, "r1", rule, "rules/r1"); err != nil {
		t.Fatal(err)
	}
	same, _ := b.Build()
	if first.Rules["r1"] != same.Rules["r1"] {
		t.Fatal("unchanged rule parsed again")
	}
	if err := b.Put(KindRules, "r1", []byte(`{"key":"k1","from":"a","to":"c"}`), "rules/r1"); err != nil {
		t.Fatal(err)
	}
	changed, _ := b.Build()
	if r := changed.Rules["r1"]; r == first.Rules["r1"] || r.To != "c" {
		t.Fatalf("changed rule = %+v, want to c", r)
	}
}
