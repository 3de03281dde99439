package consul

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSnapshotRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	in := &Snapshot{
		Prefix: "keymux/", Index: 42, ReadAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Entries: []Entry{{"keymux/keys/k2", []byte(`{"b":1}`)}, {"keymux/keys/k1", []byte(`{"a":1}`)}},
	}
	if err := WriteSnapshot(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := LoadSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if out.Version != 1 || out.Prefix != in.Prefix || out.Index != 42 || !out.ReadAt.Equal(in.ReadAt) || len(out.Entries) != 2 ||
		out.Entries[0].Path != "keymux/keys/k1" || string(out.Entries[0].Value) != `{"a":1}` ||
		out.Entries[1].Path != "keymux/keys/k2" || string(out.Entries[1].Value) != `{"b":1}` {
		t.Errorf("LoadSnapshot = %+v, want %+v sorted by path", out, in)
	}
	fi, err := os.Stat(filepath.Join(dir, SnapshotFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot file: %v, %v; want mode 0600", fi, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("state dir holds %d files, want only the snapshot (no temp files left)", len(ents))
	}
	// Overwrite.
	in.Index = 43
	if err := WriteSnapshot(dir, in); err != nil {
		t.Fatal(err)
	}
	if out, err := LoadSnapshot(dir); err != nil || out.Index != 43 {
		t.Errorf("after overwrite: %+v, %v; want index 43", out, err)
	}
}

func TestLoadSnapshotRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadSnapshot(dir); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("empty dir: %v, want ErrNoSnapshot", err)
	}
	if err := WriteSnapshot(dir, &Snapshot{Prefix: "keymux/", Index: 7, Entries: []Entry{{"keymux/settings", []byte(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, SnapshotFile))
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"flipped byte", bytes.Replace(good, []byte(`"index":7`), []byte(`"index":8`), 1), "checksum mismatch"},
		{"truncated", good[:len(good)/2], "unusable snapshot"},
		{"bad sum", bytes.Replace(good, []byte(`"sha256":"`), []byte(`"sha256":"zz`), 1), "bad sha256 field"},
		{"empty", nil, "unusable snapshot"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, SnapshotFile), tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadSnapshot(dir)
			if !errors.Is(err, ErrBadSnapshot) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Errorf("LoadSnapshot = %v, want ErrBadSnapshot mentioning %q", err, tc.want)
			}
		})
	}
}

// FuzzDecodeSnapshot: a snapshot file is read back from disk, so any bytes
// must give an error or a checksum-verified snapshot, never a panic.
func FuzzDecodeSnapshot(f *testing.F) {
	dir := f.TempDir()
	if err := WriteSnapshot(dir, &Snapshot{Prefix: "keymux/", Index: 3, Entries: []Entry{{"keymux/keys/k1", []byte(`{"provider":"openai"}`)}}}); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, SnapshotFile))
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"sha256":"","snapshot":null}`))
	f.Add([]byte(`{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","snapshot":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeSnapshot("fuzz", data)
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("error %v does not wrap ErrBadSnapshot", err)
			}
			return
		}
		if s.Version != snapshotVersion {
			t.Fatalf("accepted version %d", s.Version)
		}
	})
}
