package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseImportFile: `keymux kv import` reads operator files; any bytes
// give documents that each pass the sidecar's validators, or an error.
func FuzzParseImportFile(f *testing.F) {
	for _, name := range []string{"import.good.yaml", "import.bad.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", "kv", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"keys":{"k1":{"provider":"openai","secret":"sk-test"}},"rules":{"r":{"key":"*","from":"a","to":"b"}}}`))
	f.Add([]byte("keys: [1, 2]"))
	f.Add([]byte("null"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := parseImportFile(data, "keymux/")
		if err != nil {
			return
		}
		for _, d := range docs {
			if err := checkDoc(d.kind, d.id, d.value); err != nil {
				t.Fatalf("accepted %s that the validators refuse: %v", d.path, err)
			}
			if !strings.HasPrefix(d.path, "keymux/") {
				t.Fatalf("path %q outside the prefix", d.path)
			}
		}
	})
}
