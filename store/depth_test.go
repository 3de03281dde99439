package store

import (
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/deep"
)

func TestParseSettingsMaxJSONDepth(t *testing.T) {
	tests := []struct {
		raw  string
		want int
		err  string
	}{
		{`{}`, policy.DefaultMaxJSONDepth, ""},
		{`{"max_json_depth":64}`, 64, ""},
		{`{"max_json_depth":10000}`, 10000, ""},
		{`{"max_json_depth":0}`, 0, `settings: field "max_json_depth": must be between 1 and 10000`},
		{`{"max_json_depth":10001}`, 0, `settings: field "max_json_depth": must be between 1 and 10000`},
		{`{"max_json_depth":"64"}`, 0, `settings: field "max_json_depth": want integer, got string`},
	}
	for _, tc := range tests {
		s, err := ParseSettings([]byte(tc.raw))
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("%s: error %v, want %q", tc.raw, err, tc.err)
		case tc.err == "" && (err != nil || s.MaxJSONDepth != tc.want):
			t.Errorf("%s: max_json_depth %d (%v), want %d", tc.raw, s.MaxJSONDepth, err, tc.want)
		}
	}
}

// TestDeepDocuments: KV documents and config files nested far deeper than
// any real one are refused by encoding/json's and YAML's own nesting limit
// (10000 levels; YAML's "exceeded max depth" is shortened to its line, as
// every YAML error) with their usual errors, and scanning them does not grow
// the goroutine stack by more than a few MiB.
func TestDeepDocuments(t *testing.T) {
	const levels = 1 << 20
	deepKey := `{"provider":"openai","secret":"sk-test-1","labels":{"a":` + string(deep.Arrays(levels, "1")) + `}}`
	within := `{"provider":"openai","secret":"sk-test-1","labels":{"a":` + string(deep.Arrays(9990, `"x"`)) + `}}`
	deepYAML := "keys:\n  k1: " + string(deep.Arrays(levels, "1")) + "\n"
	tests := []struct {
		name  string
		parse func() error
		want  string
	}{
		{"key document", func() error { _, err := ParseKey("k1", []byte(deepKey), testResolve); return err }, "keys/k1: invalid JSON at offset 10055"},
		{"key document within the limit", func() error { _, err := ParseKey("k1", []byte(within), testResolve); return err }, `keys/k1: field "labels": want string, got array`},
		{"settings document", func() error { _, err := ParseSettings(deep.Objects(levels, "1")); return err }, `settings: unknown field "a"`},
		{"rule document", func() error {
			_, err := ParseRule("r1", []byte(`{"from":`+string(deep.Arrays(levels, "1"))+`}`))
			return err
		}, "rules/r1: invalid JSON at offset 10008"},
		{"client document", func() error { _, err := ParseClient("c1", deep.Arrays(levels, "1")); return err }, "clients/c1: invalid JSON at offset 10001"},
		{"JSON file", func() error {
			_, _, err := ParseFile([]byte(`{"keys":{"k1":`+string(deep.Arrays(levels, "1"))+`}}`), testResolve)
			return err
		}, "bad config file: neither JSON nor valid YAML: syntax error"},
		{"YAML file", func() error { _, _, err := ParseFile([]byte(deepYAML), testResolve); return err }, "bad config file: neither JSON nor valid YAML: line 2: syntax error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			grew := deep.StackGrowth(func() { err = tc.parse() })
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if grew > 16<<20 {
				t.Fatalf("the stack grew by %d bytes", grew)
			}
			t.Logf("stack growth %d KiB", grew>>10)
		})
	}
}
