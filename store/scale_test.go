package store

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keymux/keymux/testutil/bigconfig"
)

// Apply trusts a Config that Builder.Build made (checkConfig is skipped):
// whatever the documents, with the conflicts Build refuses, its output
// passes the check it skips.
func TestBuildOutputPassesCheckConfig(t *testing.T) {
	conflicts := []byte(`{"keys":{"k1":{"provider":"openai","secret":"sk-1"},"k2":{"provider":"openai","secret":"sk-2","enabled":false}},
"rules":{"r1":{"key":"k1","from":"a","to":"b"},"r2":{"key":"k1","from":"a","to":"c"},"r3":{"key":"k9","from":"a","to":"b"},
"r4":{"key":"*","from":"a","to":"b"},"r5":{"key":"*","from":"a","to":"d"},"r6":{"key":"k1","from":"a","to":"e","enabled":false}},
"clients":{"c1":{"token_sha256":"` + hex64('a') + `"},"c2":{"token_sha256":"` + hex64('a') + `","enabled":false}}}`)
	files := map[string][]byte{"conflicts": conflicts, "aliases": bigconfig.Aliases(20, 200), "shared": bigconfig.Shared(20, 5)}
	for _, name := range []string{"demo.json", "demo.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = data
	}
	for name, data := range files {
		cfg, refused, err := ParseFile(data, testResolve)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "conflicts" && len(refused) != 4 {
			t.Fatalf("conflicts: refused %v, want c2, r2, r3 and r5", refused)
		}
		if !cfg.built {
			t.Fatalf("%s: Build's Config is not marked built", name)
		}
		checked := *cfg
		checked.built = false
		if err := checkConfig(&checked); err != nil {
			t.Errorf("%s: Build's output fails checkConfig: %v", name, err)
		}
	}
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
