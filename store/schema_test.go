package store

import (
	"bytes"
	"testing"

	"github.com/hashicorp/go-memdb"

	"github.com/keymux/keymux/policy"
)

// sampleRows has one row per table and, per index, the FromArgs arguments
// that must find it.
func sampleRows() map[string]struct {
	row  any
	args map[string][]any
} {
	tok := [32]byte{1, 2, 3}
	return map[string]struct {
		row  any
		args map[string][]any
	}{
		tableKeys: {
			row:  &keyRow{ID: "k1", Enabled: true, Entry: &Entry{Key: &policy.Key{ID: "k1"}, RT: NewRuntime()}},
			args: map[string][]any{indexID: {"k1"}, indexEnabled: {true}},
		},
		tableClients: {
			row:  &clientRow{ID: "c1", Client: &policy.Client{ID: "c1", TokenSHA256: tok}},
			args: map[string][]any{indexID: {"c1"}, indexTokenSHA256: {tok}},
		},
		tableSettings: {
			row:  &settingsRow{ID: singletonID, Settings: &policy.Settings{}},
			args: map[string][]any{indexID: {singletonID}},
		},
		tableMeta: {
			row:  &metaRow{ID: singletonID},
			args: map[string][]any{indexID: {singletonID}},
		},
	}
}

func TestSchema(t *testing.T) {
	s := schema()
	if err := s.Validate(); err != nil {
		t.Fatalf("schema invalid: %v", err)
	}
	samples := sampleRows()
	if len(samples) != len(s.Tables) {
		t.Fatalf("%d sample rows for %d tables", len(samples), len(s.Tables))
	}
	for name, table := range s.Tables {
		if table.Name != name {
			t.Errorf("table %q is named %q", name, table.Name)
		}
		sample, ok := samples[name]
		if !ok {
			t.Errorf("table %q has no sample row", name)
			continue
		}
		if len(sample.args) != len(table.Indexes) {
			t.Errorf("table %q: %d sample args for %d indexes", name, len(sample.args), len(table.Indexes))
		}
		for iname, idx := range table.Indexes {
			if idx.Name != iname {
				t.Errorf("%s: index %q is named %q", name, iname, idx.Name)
			}
			single, ok := idx.Indexer.(memdb.SingleIndexer)
			if !ok {
				t.Errorf("%s.%s: not a SingleIndexer", name, iname)
				continue
			}
			ok, fromObj, err := single.FromObject(sample.row)
			if err != nil || !ok {
				t.Errorf("%s.%s: FromObject = %v, %v", name, iname, ok, err)
				continue
			}
			fromArgs, err := idx.Indexer.FromArgs(sample.args[iname]...)
			if err != nil {
				t.Errorf("%s.%s: FromArgs: %v", name, iname, err)
				continue
			}
			if !bytes.Equal(fromObj, fromArgs) {
				t.Errorf("%s.%s: FromObject %q != FromArgs %q", name, iname, fromObj, fromArgs)
			}
		}
	}
}

func TestCustomIndexersRejectBadInput(t *testing.T) {
	tests := []struct {
		name string
		fn   func() error
	}{
		{"token no args", func() error { _, err := tokenIndex{}.FromArgs(); return err }},
		{"token short slice", func() error { _, err := tokenIndex{}.FromArgs([]byte{1, 2}); return err }},
		{"token string", func() error { _, err := tokenIndex{}.FromArgs("aa"); return err }},
		{"token wrong row", func() error { _, _, err := tokenIndex{}.FromObject(&keyRow{}); return err }},
		{"enabled wrong row", func() error {
			_, _, err := keysTableSchema().Indexes[indexEnabled].Indexer.(memdb.SingleIndexer).FromObject(&clientRow{})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.fn(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
