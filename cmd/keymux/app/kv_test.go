package app

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keymux/keymux/testutil/consultest"
)

func TestKVImport(t *testing.T) {
	a := consultest.Start(t)
	file := filepath.Join("testdata", "kv", "import.good.yaml")

	out := mustKV(t, a, "import", "--dry-run", file)
	wantPlan := []string{
		"create    keymux/settings", "create    keymux/keys/k1", "create    keymux/keys/k2",
		"create    keymux/rules/r1", "create    keymux/clients/c1",
		"dry run: 5 to create, 0 to update, 0 unchanged; nothing written",
	}
	for _, w := range wantPlan {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("dry run output lacks %q:\n%s", w, out)
		}
	}
	if pairs, _, _ := a.Client().KV().List(kvPrefix, nil); len(pairs) != 0 {
		t.Fatalf("dry run wrote %d entries", len(pairs))
	}

	out = mustKV(t, a, "import", file)
	if !strings.Contains(out, "transaction 1: 5 operations written\n") || !strings.Contains(out, "imported: 5 created, 0 updated, 0 unchanged\n") {
		t.Errorf("import output:\n%s", out)
	}
	if p := getKV(t, a, "rules/r1"); p == nil || string(p.Value) != `{"from":"gpt-4","key":"k1","to":"gpt-4o"}` {
		t.Errorf("rules/r1 = %v, want the compact JSON document", p)
	}
	if p := getKV(t, a, "keys/k2"); p == nil || !strings.Contains(string(p.Value), `"secret_ref":"env:KEYMUX_TEST_AZURE_KEY"`) {
		t.Errorf("keys/k2 = %v, want its secret_ref", p)
	}

	out = mustKV(t, a, "import", file)
	if !strings.Contains(out, "imported: 0 created, 0 updated, 5 unchanged\n") {
		t.Errorf("re-import output:\n%s", out)
	}

	// An update goes through a CAS at the entry's index.
	put(t, a, "keys/k1", keyK2)
	out = mustKV(t, a, "import", file)
	if !strings.Contains(out, "update    keymux/keys/k1\n") || !strings.Contains(out, "imported: 0 created, 1 updated, 4 unchanged\n") {
		t.Errorf("import over a changed k1:\n%s", out)
	}
}

func TestKVImportRefusesInvalidFiles(t *testing.T) {
	a := consultest.Start(t)
	put(t, a, "keys/in-kv", keyK1) // a rule of the file may name it
	dir := t.TempDir()
	masked := filepath.Join(dir, "masked.json")
	if err := os.WriteFile(masked, []byte(`{"keys":{"k1":{"provider":"openai","secret":"`+maskedSecret+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	notYAML := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(notYAML, []byte("keys:\n  k1: {provider: openai, secret: sk-test-leak\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missingKey := filepath.Join(dir, "missing.json")
	if err := os.WriteFile(missingKey, []byte(`{"rules":{"r-missing":{"key":"nope","from":"a","to":"b"},"r-kv":{"key":"in-kv","from":"a","to":"b"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	unknownTop := filepath.Join(dir, "top.json")
	if err := os.WriteFile(unknownTop, []byte(`{"key":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		file string
		want []string
	}{
		{filepath.Join("testdata", "kv", "import.bad.json"), []string{
			"2 invalid document(s), nothing written",
			`keymux/keys/bad-provider: keys/bad-provider: field "provider": unknown provider "foo"`,
			`keymux/keys/bad-weight: keys/bad-weight: field "weight"`,
		}},
		{missingKey, []string{
			"1 document(s) refused together with the KV contents, nothing written",
			`keymux/rules/r-missing: rules/r-missing: field "key": unknown key "nope"`,
		}},
		{masked, []string{`keymux/keys/k1: keys/k1: field "secret": is the export mask`}},
		// The sidecar's file decoder (store.DecodeFile) words these.
		{notYAML, []string{"bad config file: neither JSON nor valid YAML: line 2: syntax error"}},
		{unknownTop, []string{`bad config file: unknown top-level field "key" (want settings, keys, rules, clients)`}},
	}
	for _, tc := range tests {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			_, err := kvRun(t, a, "import", tc.file)
			if err == nil {
				t.Fatal("import succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "sk-test-leak") {
				t.Errorf("error leaks a secret: %q", err)
			}
			if pairs, _, _ := a.Client().KV().List(kvPrefix, nil); len(pairs) != 1 {
				t.Errorf("a refused import wrote %d entries", len(pairs)-1)
			}
		})
	}
}

func TestKVImportChunksTransactions(t *testing.T) {
	a := consultest.Start(t)
	keys := map[string]any{}
	for i := range 300 {
		keys[fmt.Sprintf("k%03d", i)] = map[string]any{"provider": "openai", "secret": "sk-test-" + fmt.Sprint(i)}
	}
	data, _ := json.Marshal(map[string]any{"keys": keys})
	file := filepath.Join(t.TempDir(), "many.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustKV(t, a, "import", file)
	for _, w := range []string{
		"transaction 1: 128 operations written\n", "transaction 2: 128 operations written\n",
		"transaction 3: 44 operations written\n", "imported: 300 created",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if pairs, _, _ := a.Client().KV().List(kvPrefix+"keys/", nil); len(pairs) != 300 {
		t.Errorf("%d keys in KV, want 300", len(pairs))
	}
}

func TestKVExportMasksSecrets(t *testing.T) {
	a := consultest.Start(t)
	mustKV(t, a, "import", filepath.Join("testdata", "kv", "import.good.yaml"))
	put(t, a, "health/k1", `{"healthy":true}`)

	var got struct {
		Settings map[string]any            `json:"settings"`
		Keys     map[string]map[string]any `json:"keys"`
		Rules    map[string]map[string]any `json:"rules"`
		Clients  map[string]map[string]any `json:"clients"`
	}
	out := mustKV(t, a, "export")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("export is not JSON: %v\n%s", err, out)
	}
	if strings.Contains(out, "sk-test-k1") || got.Keys["k1"]["secret"] != maskedSecret {
		t.Errorf("export without --show-secrets: k1 secret = %v, want %q", got.Keys["k1"]["secret"], maskedSecret)
	}
	if got.Keys["k2"]["secret_ref"] != "env:KEYMUX_TEST_AZURE_KEY" || got.Rules["r1"]["to"] != "gpt-4o" ||
		got.Settings["strategy"] != "round_robin" || got.Clients["c1"]["name"] != "team a" || len(got.Keys) != 2 {
		t.Errorf("export = %s", out)
	}
	if strings.Contains(out, "health") {
		t.Errorf("export includes health entries:\n%s", out)
	}
	// A document written straight to KV with its secret twice: both masked.
	put(t, a, "keys/k3", `{"provider":"openai","secret":"sk-test-dup-1","secret":"sk-test-dup-2"}`)
	if out := mustKV(t, a, "export"); strings.Contains(out, "sk-test-dup") || strings.Count(out, maskedSecret) != 3 { // k1 and k3 twice
		t.Errorf("export of a duplicate secret:\n%s", out)
	}
	mustKV(t, a, "keys", "rm", "k3", "--force")
	out = mustKV(t, a, "export", "--show-secrets")
	if !strings.Contains(out, `"secret": "sk-test-k1"`) {
		t.Errorf("export --show-secrets lacks the secret:\n%s", out)
	}
	// A masked export re-imported is refused; an unmasked one is unchanged.
	file := filepath.Join(t.TempDir(), "export.json")
	os.WriteFile(file, []byte(out), 0o600)
	if out := mustKV(t, a, "import", file); !strings.Contains(out, "0 created, 0 updated, 5 unchanged") {
		t.Errorf("re-import of the export:\n%s", out)
	}
	// A partial import: a rule naming a key that only KV holds.
	partial := filepath.Join(t.TempDir(), "partial.json")
	os.WriteFile(partial, []byte(`{"rules":{"r2":{"key":"k2","from":"gpt-4","to":"gpt-4o"}}}`), 0o600)
	if out := mustKV(t, a, "import", partial); !strings.Contains(out, "1 created, 0 updated, 0 unchanged") {
		t.Errorf("partial import:\n%s", out)
	}
}

func TestKVClientsAdd(t *testing.T) {
	a := consultest.Start(t)
	out := mustKV(t, a, "clients", "add", "c1", "--name", "team a", "--models", "gpt-4o, gpt-4o-mini", "--rpm", "60")
	tokens := regexp.MustCompile(`km-[A-Za-z0-9_-]{43}`).FindAllString(out, -1)
	if len(tokens) != 1 {
		t.Fatalf("output shows %d tokens, want exactly one:\n%s", len(tokens), out)
	}
	p := getKV(t, a, "clients/c1")
	if p == nil {
		t.Fatal("clients/c1 not written")
	}
	sum := sha256.Sum256([]byte(tokens[0]))
	want := `{"limits":{"rpm":60,"tpm":0},"models":["gpt-4o","gpt-4o-mini"],"name":"team a","token_sha256":"` + hex.EncodeToString(sum[:]) + `"}`
	if string(p.Value) != want {
		t.Errorf("clients/c1 = %s\nwant %s", p.Value, want)
	}
	if strings.Contains(string(p.Value), tokens[0]) {
		t.Error("the token itself is stored")
	}
	list := mustKV(t, a, "clients", "list")
	if !regexp.MustCompile(`(?m)^c1\s+team a\s+true\s+gpt-4o,gpt-4o-mini\s+60\s+0$`).MatchString(list) || strings.Contains(list, "km-") {
		t.Errorf("clients list:\n%s", list)
	}
	_, err := kvRun(t, a, "clients", "add", "c1")
	if err == nil || !strings.Contains(err.Error(), "keymux/clients/c1: already exists") {
		t.Errorf("second clients add c1: %v, want already exists naming the path", err)
	}
	mustKV(t, a, "clients", "rm", "c1")
	if getKV(t, a, "clients/c1") != nil {
		t.Error("clients rm left the entry")
	}
}

func TestKVKeysRulesSettings(t *testing.T) {
	a := consultest.Start(t)
	mustKV(t, a, "keys", "add", "k1", keyK1)
	mustKV(t, a, "keys", "add", "k2", "--provider", "openai", "--secret-ref", "file:/run/secrets/k2", "--priority", "1", "--disabled")
	put(t, a, "keys/broken", `{"provider":"foo","secret":"sk-test-leak"}`)
	list := mustKV(t, a, "keys", "list")
	for _, re := range []string{
		`(?m)^broken\s+INVALID: keys/broken: field "provider": unknown provider "foo"`,
		`(?m)^k1\s+openai\s+http://127.0.0.1:9/v1\s+true\s+0\s+1\s+gpt-4o,gpt-4o-mini\s+inline$`,
		`(?m)^k2\s+openai\s+https://api.openai.com/v1\s+false\s+1\s+1\s+\*\s+file:/run/secrets/k2$`,
	} {
		if !regexp.MustCompile(re).MatchString(list) {
			t.Errorf("keys list lacks %s:\n%s", re, list)
		}
	}
	if strings.Contains(list, "sk-test") {
		t.Errorf("keys list shows a secret:\n%s", list)
	}
	mustKV(t, a, "keys", "enable", "k2")
	if p := getKV(t, a, "keys/k2"); !strings.Contains(string(p.Value), `"enabled":true`) || !strings.Contains(string(p.Value), `"priority":1`) {
		t.Errorf("keys/k2 after enable = %s", p.Value)
	}
	mustKV(t, a, "rules", "add", "r1", "--key", "k1", "--from", "gpt-4", "--to", "gpt-4o")
	if out := mustKV(t, a, "rules", "list"); !regexp.MustCompile(`(?m)^r1\s+k1\s+gpt-4\s+gpt-4o\s+true$`).MatchString(out) {
		t.Errorf("rules list:\n%s", out)
	}

	errs := []struct {
		args []string
		want string
	}{
		{[]string{"keys", "enable", "nope"}, "keymux/keys/nope: not found"},
		{[]string{"keys", "rm", "nope", "--force"}, "keymux/keys/nope: not found"},
		{[]string{"keys", "add", "k1", keyK2}, "keymux/keys/k1: already exists"},
		{[]string{"keys", "add", "k3", `{"provider":"foo","secret":"sk-test-leak"}`}, `keymux/keys/k3: keys/k3: field "provider": unknown provider "foo"`},
		{[]string{"keys", "add", "k3", `{"provider":`}, "keymux/keys/k3: not valid JSON"},
		{[]string{"keys", "rm", "k1"}, "keymux/keys/k1: named by keymux/rules/r1"},
		{[]string{"rules", "add", "r2", "--key", "nope", "--from", "a", "--to", "b"}, `keymux/rules/r2: field "key": key "nope" does not exist at keymux/keys/nope`},
		{[]string{"rules", "rm", "nope"}, "keymux/rules/nope: not found"},
		{[]string{"settings", "set", `{"strategy":"nope"}`}, `keymux/settings: settings: field "strategy"`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"keys", "frobnicate"}, `unknown subcommand "frobnicate"`},
	}
	for _, e := range errs {
		_, err := kvRun(t, a, e.args...)
		if err == nil || !strings.Contains(err.Error(), e.want) {
			t.Errorf("kv %v: error %v, want one containing %q", e.args, err, e.want)
		}
		if err != nil && strings.Contains(err.Error(), "sk-test") {
			t.Errorf("kv %v: error leaks a secret: %v", e.args, err)
		}
	}
	mustKV(t, a, "keys", "rm", "k1", "--force")
	if getKV(t, a, "keys/k1") != nil {
		t.Error("keys rm --force left k1")
	}

	if out := mustKV(t, a, "settings", "get"); out != "{}\n" {
		t.Errorf("settings get (unset) = %q, want {}", out)
	}
	mustKV(t, a, "settings", "set", `{"strategy": "weighted_by_usage"}`)
	if out := mustKV(t, a, "settings", "get"); out != "{\n  \"strategy\": \"weighted_by_usage\"\n}\n" {
		t.Errorf("settings get = %q", out)
	}

	// Another prefix, given without its trailing slash.
	mustKV(t, a, "--consul-prefix", "team-b", "keys", "add", "k1", keyK1)
	if p, _, _ := a.Client().KV().Get("team-b/keys/k1", nil); p == nil {
		t.Error("--consul-prefix team-b: team-b/keys/k1 not written")
	}
}

// TestKVReadsStdin: `--file -` (and import's FILE -) read Env.Stdin.
func TestKVReadsStdin(t *testing.T) {
	a := consultest.Start(t)
	steps := []struct {
		stdin string
		args  []string
		rel   string // the entry written
		want  string // its value
	}{
		{keyK1, []string{"keys", "add", "k1", "--file", "-"}, "keys/k1", keyK1},
		{"{\n  \"key\": \"k1\", \"from\": \"gpt-4\", \"to\": \"gpt-4o\"\n}\n", []string{"rules", "add", "r1", "--file", "-"}, "rules/r1", `{"key":"k1","from":"gpt-4","to":"gpt-4o"}`},
		{`{"strategy": "least_used"}`, []string{"settings", "set", "--file", "-"}, "settings", `{"strategy":"least_used"}`},
		{"clients:\n  c1: {name: team a, token_sha256: \"" + strings.Repeat("ab", 32) + "\"}\n", []string{"import", "-"}, "clients/c1",
			`{"name":"team a","token_sha256":"` + strings.Repeat("ab", 32) + `"}`},
	}
	for _, s := range steps {
		if _, err := kvRunIn(t, a, s.stdin, s.args...); err != nil {
			t.Fatalf("kv %v: %v", s.args, err)
		}
		if p := getKV(t, a, s.rel); p == nil || string(p.Value) != s.want {
			t.Errorf("kv %v: %s = %v, want %s", s.args, s.rel, p, s.want)
		}
	}
	_, err := kvRunIn(t, a, keyK2, "keys", "add", "k2", keyK2, "--file", "-")
	if err == nil || err.Error() != "kv keys add: give the document either as an argument or with --file, not both" {
		t.Errorf("keys add with a DOC and --file -: %v", err)
	}
	_, err = kvRunIn(t, a, `{"provider":"openai","secret":"sk-test-leak","weight":0}`, "keys", "add", "k2", "--file", "-")
	if err == nil || err.Error() != `keymux/keys/k2: keys/k2: field "weight": must be > 0` || getKV(t, a, "keys/k2") != nil {
		t.Errorf("keys add of a bad document from stdin: %v", err)
	}
}

func TestMaskSecret(t *testing.T) {
	const m = `"` + maskedSecret + `"`
	for _, tc := range []struct{ name, in, want string }{
		{"one secret", `{"provider":"openai","secret":"sk-a"}`, `{"provider":"openai","secret":` + m + `}`},
		{"duplicate secret", `{"secret":"sk-a","secret":"sk-b"}`, `{"secret":` + m + `,"secret":` + m + `}`},
		{"escaped name", `{"secr\u0065t":"sk-a"}`, `{"secret":` + m + `}`},
		{"other case", `{"SECRET":"sk-a"}`, `{"SECRET":` + m + `}`},
		{"non-string secret", `{"secret":{"v":"sk-a"}}`, `{"secret":` + m + `}`},
		{"env reference kept", `{"secret_ref":"env:OPENAI_API_KEY"}`, `{"secret_ref":"env:OPENAI_API_KEY"}`},
		{"file reference kept", `{"secret_ref":"file:/run/secrets/k"}`, `{"secret_ref":"file:/run/secrets/k"}`},
		{"pasted secret_ref", `{"secret_ref":"sk-a"}`, `{"secret_ref":` + m + `}`},
		{"nested secret kept", `{"labels":{"secret":"x"}}`, `{"labels":{"secret":"x"}}`},
		{"not an object", `["sk-a"]`, `{"error":"cannot mask this document"}`},
		{"trailing data", `{"secret":"sk-a"} "sk-b"`, `{"error":"cannot mask this document"}`},
		{"truncated", `{"secret":"sk-a","secret":`, `{"error":"cannot mask this document"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(maskSecret([]byte(tc.in))); got != tc.want {
				t.Errorf("maskSecret(%s) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}
