package objects

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Local keeps the records in one process: in a file (rewritten on every
// change, atomically) or, with no path, in memory only.
type Local struct {
	table  *Table
	path   string
	log    *slog.Logger
	now    func() time.Time
	mu     sync.Mutex // serialises the file's rewrites
	writes atomic.Uint64
}

// SweepInterval is how often expired records are removed.
const SweepInterval = time.Minute

// NewLocal returns a Local backend over table, loading path when it exists.
func NewLocal(table *Table, path string, log *slog.Logger, now func() time.Time) (*Local, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	l := &Local{table: table, path: path, log: log, now: now}
	if path == "" {
		return l, nil
	}
	b, err := os.ReadFile(path)
	switch {
	case os.IsNotExist(err):
		return l, nil
	case err != nil:
		return nil, fmt.Errorf("objects: read %s: %w", path, err)
	}
	var recs []*Record
	if err := json.Unmarshal(b, &recs); err != nil {
		return nil, fmt.Errorf("objects: %s: %w", path, err)
	}
	kept := recs[:0]
	for _, r := range recs {
		if r != nil && ValidID(r.ID) {
			kept = append(kept, r)
		}
	}
	table.Replace(kept)
	return l, nil
}

// Put implements Backend.
func (l *Local) Put(_ context.Context, r *Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.table.Put(r)
	return l.saveLocked()
}

// Delete implements Backend.
func (l *Local) Delete(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.table.Delete(id)
	return l.saveLocked()
}

// Writes implements Backend.
func (l *Local) Writes() uint64 { return l.writes.Load() }

// Run implements Backend: it removes expired records every SweepInterval.
func (l *Local) Run(ctx context.Context) error {
	t := time.NewTicker(SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			l.sweep()
		}
	}
}

func (l *Local) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now, n := l.now(), 0
	for _, r := range l.table.All() {
		if r.Expired(now) {
			l.table.Delete(r.ID)
			n++
		}
	}
	if n > 0 {
		if err := l.saveLocked(); err != nil {
			l.log.Error("cannot save the object records", "error", err)
		}
	}
}

func (l *Local) saveLocked() error {
	if l.path == "" {
		return nil
	}
	b, err := json.Marshal(l.table.All())
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(l.path), ".objects-*.json")
	if err != nil {
		return fmt.Errorf("write %s: %w", l.path, err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), l.path)
	}
	if werr != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", l.path, werr)
	}
	l.writes.Add(1)
	return nil
}
