package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFile replaces path atomically, as editors and config managers do.
func writeFile(path, data string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name, data, err string
	}{
		{"empty", " \n", "bad config file: the file is empty"},
		{"array", `[]`, "bad config file: want an object with settings, keys, rules, clients"},
		{"null", `null`, "bad config file: want an object with settings, keys, rules, clients"},
		{"unknown top-level", `{"key":{}}`, `bad config file: unknown top-level field "key" (want settings, keys, rules, clients)`},
		{"unknown top-level yaml", "keys: {}\nclient: {}\n", `bad config file: unknown top-level field "client" (want settings, keys, rules, clients)`},
		{"keys not an object", `{"keys":["k1"]}`, `bad config file: field "keys": want an object of documents`},
		{"yaml syntax", "keys:\n  k1: {provider: openai\n", "bad config file: neither JSON nor valid YAML: line 2: syntax error"},
		{"yaml tab", "keys:\n\tk1: {}\n", "bad config file: neither JSON nor valid YAML: line 2: syntax error"},
		{"case-insensitive top-level", `{"Keys":{}}`, `bad config file: unknown top-level field "Keys" (want settings, keys, rules, clients)`},
		{"top-level twice", `{"keys":{},"keys":{}}`, `bad config file: top-level field "keys" appears twice`},
		{"key id twice", `{"keys":{"k1":{},"k2":{},"k1":{}}}`, `bad config file: keys/k1 appears twice`},
		{"yaml key id twice", "rules:\n  r1: {}\n  r1: {}\n", `bad config file: neither JSON nor valid YAML: line 3: duplicate key`},
		{"yaml second document", "keys: {}\n---\nkeys: {k1: {provider: openai}}\n", "bad config file: more than one YAML document"},
		// Keys JSON reads as one: the conversion would keep either at random.
		{"yaml keys 4 and \"4\"", "keys:\n  4: {provider: openai, secret: sk-test-a}\n  \"4\": {provider: openai, secret: sk-test-b}\n",
			`bad config file: a mapping has two keys that both read "4" in JSON (e.g. 4 and "4")`},
		{"yaml keys true and \"true\", nested", "keys:\n  k1: {provider: openai, labels: {true: a, \"true\": b}}\n",
			`bad config file: a mapping has two keys that both read "true" in JSON (e.g. 4 and "4")`},
		{"yaml key 0b00 and 0", "keys: {0b00, 0x0: 1}\n", "bad config file: neither JSON nor valid YAML: line 1: duplicate key"},
		{"yaml empty second document", "keys: {}\n---\n", "bad config file: more than one YAML document"},
		{"yaml second document does not parse", "keys: {}\n---\n[\n", "bad config file: more than one YAML document"},
		{"scalar", `"sk-test-oops"`, "bad config file: want an object with settings, keys, rules, clients"},
		// Hostile files.
		{"yaml alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n" +
			"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n" +
			"g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n", "bad config file: neither JSON nor valid YAML: syntax error"},
		{"binary", "\x00\x01\x02\xff", "bad config file: neither JSON nor valid YAML: syntax error"},
		{"yaml binary tag", "keys: !!binary aGVsbG8=\n", `bad config file: field "keys": want an object of documents`},
		{"yaml infinity", "keys:\n  k1: {provider: openai, secret: sk-test-k1, weight: .inf}\n", "bad config file: neither JSON nor valid YAML: syntax error"},
		{"yaml settings twice", "settings: {strategy: random}\nsettings: {strategy: round_robin}\n", "bad config file: neither JSON nor valid YAML: line 2: duplicate key"},
		{"rules an array", `{"rules":[{"key":"*","from":"a","to":"b"}]}`, `bad config file: field "rules": want an object of documents`},
		{"clients a string", "clients: sk-test-oops\n", `bad config file: field "clients": want an object of documents`},
		{"truncated json", `{"keys":{"k1":{"provider":"openai"`, "bad config file: neither JSON nor valid YAML: line 1: syntax error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseFile([]byte(tc.data), testResolve)
			if err == nil || err.Error() != tc.err || !errors.Is(err, ErrBadFile) {
				t.Fatalf("err = %v\nwant %s", err, tc.err)
			}
		})
	}
	_, _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml"), nil)
	if !errors.Is(err, ErrBadFile) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadFile(missing) = %v", err)
	}
}

const (
	fileV1 = `{"keys":{"k1":{"provider":"openai","secret":"sk-test-k1"},"k2":{"provider":"openai","secret":"sk-test-k2","models":["gpt-4o"]}}}`
	// k2 broken, k3 added, settings changed.
	fileV2 = "settings: {strategy: weighted_by_usage}\nkeys:\n  k1: {provider: openai, secret: sk-test-k1}\n  k2: {provider: openai, secret: sk-test-k2, weight: 0}\n  k3: {provider: anthropic, secret: sk-test-k3}\n"
	fileV3 = `{"keys":{"k1":{"provider":"openai","secret":"sk-test-k1"},"k3":{"provider":"anthropic","secret":"sk-test-k3"}}}`
)

func keyIDs(snap *Snapshot) string {
	var ids []string
	for _, e := range snap.Keys() {
		ids = append(ids, e.Key.ID)
	}
	return strings.Join(ids, ",")
}

func TestFileSourceReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keymux.yaml")
	if err := writeFile(path, fileV1); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	fs := NewFileSource(path, st, nil)
	if err := fs.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s := st.Status(); s.Generation != 1 || s.Source != "file:"+path || len(s.Refused) != 0 || keyIDs(st.Read()) != "k1,k2" {
		t.Fatalf("after load: %+v keys %s", s, keyIDs(st.Read()))
	}

	// A file that does not parse: refused whole, the old config serves.
	if err := writeFile(path, `{"keys": {"k1": `); err != nil {
		t.Fatal(err)
	}
	err := fs.Reload(t.Context())
	if !errors.Is(err, ErrBadFile) {
		t.Fatalf("Reload(broken) = %v", err)
	}
	s := st.Status()
	if s.Generation != 1 || keyIDs(st.Read()) != "k1,k2" {
		t.Fatalf("broken file changed the config: %+v", s)
	}
	want := Refusal{Path: path, Reason: "bad config file: neither JSON nor valid YAML: line 1: syntax error"}
	if len(s.Refused) != 1 || s.Refused[0] != want {
		t.Fatalf("refused = %+v, want %+v", s.Refused, want)
	}

	// One bad entry: refused alone, its last good version kept.
	if err := writeFile(path, fileV2); err != nil {
		t.Fatal(err)
	}
	if err := fs.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	snap := st.Read()
	if snap.Generation() != 2 || keyIDs(snap) != "k1,k2,k3" || snap.Key("k2").Key.Weight != 1 || snap.Settings().Strategy != "weighted_by_usage" {
		t.Fatalf("gen %d keys %s k2 %+v", snap.Generation(), keyIDs(snap), snap.Key("k2").Key)
	}
	s = st.Status()
	if want := (Refusal{Path: "keys/k2", Reason: `keys/k2: field "weight": must be > 0`}); len(s.Refused) != 1 || s.Refused[0] != want {
		t.Fatalf("refused = %+v", s.Refused)
	}

	// Fixed: new generation, nothing refused, k2 removed, settings back to defaults.
	if err := writeFile(path, fileV3); err != nil {
		t.Fatal(err)
	}
	if err := fs.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	snap = st.Read()
	if snap.Generation() != 3 || keyIDs(snap) != "k1,k3" || len(st.Status().Refused) != 0 || snap.Settings().Strategy != "round_robin" {
		t.Fatalf("gen %d keys %s status %+v", snap.Generation(), keyIDs(snap), st.Status())
	}
}

func TestFileSourceLoadFails(t *testing.T) {
	st := newStore(t)
	path := filepath.Join(t.TempDir(), "missing.json")
	if err := NewFileSource(path, st, nil).Load(t.Context()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load(missing) = %v", err)
	}
	if st.Ready() {
		t.Fatal("ready without a config")
	}
	if s := st.Status(); len(s.Refused) != 1 || s.Refused[0].Path != path {
		t.Fatalf("status %+v", s)
	}
}

func waitChanged(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second): // a failsafe, not a readiness wait
		t.Fatal("no change signalled")
	}
}

func TestFileSourceRunPolls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keymux.json")
	if err := writeFile(path, fileV1); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	fs := NewFileSource(path, st, nil)
	fs.Interval = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	changed := st.Changed()
	done := make(chan error, 1)
	go func() { done <- fs.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	waitChanged(t, changed) // Run loads the file first
	if g := st.Read().Generation(); g != 1 {
		t.Fatalf("generation %d", g)
	}

	changed = st.Changed()
	if err := writeFile(path, fileV3); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed)
	if snap := st.Read(); snap.Generation() != 2 || keyIDs(snap) != "k1,k3" {
		t.Fatalf("gen %d keys %s", snap.Generation(), keyIDs(snap))
	}

	changed = st.Changed()
	if err := writeFile(path, `{"keyz":{}}`); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed)
	s := st.Status()
	if s.Generation != 2 || len(s.Refused) != 1 || s.Refused[0].Path != path ||
		s.Refused[0].Reason != `bad config file: unknown top-level field "keyz" (want settings, keys, rules, clients)` {
		t.Fatalf("status %+v", s)
	}

	changed = st.Changed()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed)
	if s := st.Status(); s.Generation != 2 || len(s.Refused) != 1 || !strings.Contains(s.Refused[0].Reason, "no such file") {
		t.Fatalf("status after remove %+v", s)
	}

	changed = st.Changed()
	if err := writeFile(path, fileV1); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed)
	if s := st.Status(); s.Generation != 3 || len(s.Refused) != 0 || keyIDs(st.Read()) != "k1,k2" {
		t.Fatalf("status after restore %+v", s)
	}
}

func TestDecodeFileDocs(t *testing.T) {
	f, err := DecodeFile([]byte("clients: {c1: {}}\nrules: {r2: {}, r1: {}}\nsettings: null\nkeys: {k2: {weight: 2}, k1: {}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range f.Docs() {
		got = append(got, string(d.Kind)+"/"+d.ID+"="+string(d.Raw))
	}
	want := []string{"settings/=null", "keys/k1={}", `keys/k2={"weight":2}`, "rules/r1={}", "rules/r2={}", "clients/c1={}"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("Docs() = %q\nwant %q", got, want)
	}
	f, err = DecodeFile([]byte(`{"keys":{}}`))
	if err != nil || len(f.Docs()) != 0 {
		t.Fatalf("DecodeFile(no documents) = %+v, %v; want no documents", f, err)
	}
}
