package app

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keymux/keymux/testutil/consultest"
)

// badConfigs are the bad configuration files of testdata/badconfig and
// the messages that refuse them, one per problem. `keymux validate --config`
// and `keymux kv import --dry-run` read files with one decoder
// (store.DecodeFile) and one set of validators, so both give these.
var badConfigs = []struct {
	file string
	want []string
}{
	{"empty.json", []string{"bad config file: the file is empty"}},
	{"no-object.yaml", []string{"bad config file: want an object with settings, keys, rules, clients"}},
	{"syntax.yaml", []string{"bad config file: neither JSON nor valid YAML: line 2: syntax error"}},
	{"truncated.json", []string{"bad config file: neither JSON nor valid YAML: line 1: syntax error"}},
	{"key-id-twice.json", []string{"bad config file: keys/k1 appears twice"}},
	{"key-id-twice.yaml", []string{"bad config file: neither JSON nor valid YAML: line 3: duplicate key"}},
	{"unknown-top-level.yaml", []string{`bad config file: unknown top-level field "key" (want settings, keys, rules, clients)`}},
	{"keys-not-object.yaml", []string{`bad config file: field "keys": want an object of documents`}},
	{"unknown-field.json", []string{`keys/k1: unknown field "secrets"`}},
	{"wrong-type.yaml", []string{`keys/k1: field "weight": want number, got string`}},
	{"bad-documents.yaml", []string{
		`keys/k1: field "provider": unknown provider "foo" (want openai, azure, anthropic, huggingface, openai_compatible)`,
		`keys/k2: field "weight": must be > 0`,
	}},
	{"bad-settings.json", []string{`settings: field "strategy": unknown strategy "fastest" (want adjust_by_error_rate, affinity, least_used, random, round_robin, weighted_by_usage)`}},
	{"unknown-key.json", []string{`rules/r1: field "key": unknown key "nope"`}},
	{"two-documents.yaml", []string{"bad config file: more than one YAML document"}},
	{"null-document.yaml", []string{"keys/k1: want a JSON object, got null"}},
}

func TestBadConfigFilesRefusedAlike(t *testing.T) {
	a := consultest.Start(t)
	for _, tc := range badConfigs {
		t.Run(tc.file, func(t *testing.T) {
			file := filepath.Join("testdata", "badconfig", tc.file)

			_, stderr, err := runApp(t, "validate", "--config", file)
			if !errors.Is(err, errInvalid) {
				t.Errorf("validate: %v, want %v", err, errInvalid)
			}
			var lines []string
			for _, l := range strings.Split(strings.TrimSuffix(stderr, "\n"), "\n") {
				lines = append(lines, strings.TrimPrefix(l, file+": "))
			}
			if !slices.Equal(lines, tc.want) {
				t.Errorf("validate --config %s:\n got %q\nwant %q", file, lines, tc.want)
			}

			out, err := kvRun(t, a, "import", "--dry-run", file)
			if got := kvImportProblems(t, err, file); !slices.Equal(got, tc.want) {
				t.Errorf("kv import --dry-run %s:\n got %q\nwant %q", file, got, tc.want)
			}
			if ExitCode(err) != 1 || out != "" {
				t.Errorf("kv import: exit code %d, stdout %q; want 1 and nothing printed", ExitCode(err), out)
			}

			if strings.Contains(stderr, "sk-test-leak") || (err != nil && strings.Contains(err.Error(), "sk-test-leak")) {
				t.Errorf("a secret is shown: validate %q, kv import %v", stderr, err)
			}
		})
	}
	if pairs, _, err := a.Client().KV().List("", nil); err != nil || len(pairs) != 0 {
		t.Errorf("KV holds %d entries (%v) after refused dry runs, want none", len(pairs), err)
	}
}

// kvImportProblems splits the error of `kv import FILE` into its problems:
// the file's one, or each refused document's reason without its KV path.
func kvImportProblems(t *testing.T, err error, file string) []string {
	t.Helper()
	if err == nil {
		t.Fatal("kv import succeeded, want it refused")
	}
	msg, ok := strings.CutPrefix(err.Error(), "kv import "+file+": ")
	if !ok {
		t.Fatalf("kv import error %q does not name the file first", err)
	}
	_, list, ok := strings.Cut(msg, "nothing written:\n  ")
	if !ok {
		return []string{msg}
	}
	var problems []string
	for _, p := range strings.Split(list, "\n  ") {
		path, reason, _ := strings.Cut(p, ": ")
		if !strings.HasPrefix(path, kvPrefix) {
			t.Errorf("problem %q: want it to start with its KV path", p)
		}
		problems = append(problems, reason)
	}
	return problems
}
