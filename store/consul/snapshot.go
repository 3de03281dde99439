package consul

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// SnapshotFile is the snapshot's name inside the state directory.
const SnapshotFile = "consul-snapshot.json"

// snapshotVersion is the format version written in every snapshot.
const snapshotVersion = 1

// ErrNoSnapshot is returned by LoadSnapshot when the state directory holds no
// snapshot.
var ErrNoSnapshot = errors.New("no snapshot")

// ErrBadSnapshot is wrapped by LoadSnapshot for a file that exists but cannot
// be used (corrupt, checksum mismatch, unknown version).
var ErrBadSnapshot = errors.New("unusable snapshot")

// Snapshot is the last-good state of the KV prefix, as written to disk.
type Snapshot struct {
	Version int       `json:"version"`
	Prefix  string    `json:"prefix"`
	Index   uint64    `json:"index"`   // Consul index the entries were read at
	ReadAt  time.Time `json:"read_at"` // when they were read from Consul
	Entries []Entry   `json:"entries"` // sorted by path
}

// Entry is one raw KV document.
type Entry struct {
	Path  string `json:"path"`
	Value []byte `json:"value"` // base64 in the file
}

// snapshotEnvelope is the file: the snapshot bytes and their SHA-256.
type snapshotEnvelope struct {
	SHA256   string          `json:"sha256"`
	Snapshot json.RawMessage `json:"snapshot"`
}

// WriteSnapshot writes snap atomically to dir/SnapshotFile with mode 0600:
// temporary file in dir, fsync, rename, fsync of dir.
func WriteSnapshot(dir string, snap *Snapshot) error {
	s := *snap
	s.Version = snapshotVersion
	s.Entries = append([]Entry(nil), snap.Entries...)
	sort.Slice(s.Entries, func(i, j int) bool { return s.Entries[i].Path < s.Entries[j].Path })
	body, err := json.Marshal(&s)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	sum := sha256.Sum256(body)
	data, err := json.Marshal(snapshotEnvelope{SHA256: hex.EncodeToString(sum[:]), Snapshot: body})
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("snapshot dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+SnapshotFile+".*.tmp")
	if err != nil {
		return fmt.Errorf("snapshot temp file: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("snapshot chmod: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close snapshot: %w", err)
	}
	if err := os.Rename(tmpName, filepath.Join(dir, SnapshotFile)); err != nil {
		return fmt.Errorf("rename snapshot: %w", err)
	}
	tmp = nil
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync snapshot dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync snapshot dir: %w", err)
	}
	return nil
}

// LoadSnapshot reads dir/SnapshotFile and verifies its checksum. It returns
// ErrNoSnapshot when there is none and an error wrapping ErrBadSnapshot when
// the file cannot be trusted.
func LoadSnapshot(dir string) (*Snapshot, error) {
	path := filepath.Join(dir, SnapshotFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoSnapshot
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	return decodeSnapshot(path, data)
}

func decodeSnapshot(path string, data []byte) (*Snapshot, error) {
	var env snapshotEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrBadSnapshot, err)
	}
	want, err := hex.DecodeString(env.SHA256)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("%s: %w: bad sha256 field", path, ErrBadSnapshot)
	}
	sum := sha256.Sum256(env.Snapshot)
	if !bytes.Equal(sum[:], want) {
		return nil, fmt.Errorf("%s: %w: checksum mismatch", path, ErrBadSnapshot)
	}
	var s Snapshot
	if err := json.Unmarshal(env.Snapshot, &s); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrBadSnapshot, err)
	}
	if s.Version != snapshotVersion {
		return nil, fmt.Errorf("%s: %w: version %d (want %d)", path, ErrBadSnapshot, s.Version, snapshotVersion)
	}
	return &s, nil
}
