package objects

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
)

// Record is one object created through keymux.
type Record struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`            // "file", "batch", "vector_store", …
	Account string    `json:"account"`         // the account of the key that created it
	Owner   string    `json:"owner,omitempty"` // the creating client ("" without client authentication)
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// Object is the provider's JSON answer at creation (lists are answered
	// from it); small, bounded by MaxObjectBytes.
	Object json.RawMessage `json:"object,omitempty"`
}

// MaxObjectBytes bounds the provider answer kept in a record.
const MaxObjectBytes = 8 << 10

// Expired reports whether the record's lifetime ended at now.
func (r *Record) Expired(now time.Time) bool { return !r.Expires.IsZero() && !now.Before(r.Expires) }

const (
	tableObjects = "objects"
	indexID      = "id"
)

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableObjects: {Name: tableObjects, Indexes: map[string]*memdb.IndexSchema{
			indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		}},
	}}
}

// Table is the in-memory mirror of the records: readers take no lock
// (go-memdb read transactions), writers are serialised.
type Table struct {
	db *memdb.MemDB

	mu      sync.Mutex
	changed chan struct{} // closed after every write
}

// NewTable returns an empty table.
func NewTable() *Table {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("objects: schema: %v", err)) // a static schema
	}
	return &Table{db: db, changed: make(chan struct{})}
}

// Get returns the record of id, nil when there is none.
func (t *Table) Get(id string) *Record {
	raw, err := t.db.Txn(false).First(tableObjects, indexID, id)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*Record)
}

// Len is the number of records.
func (t *Table) Len() int {
	it, err := t.db.Txn(false).Get(tableObjects, indexID)
	if err != nil {
		return 0
	}
	n := 0
	for it.Next() != nil {
		n++
	}
	return n
}

// Owned returns the records of kind owned by owner that have not expired
// at now, newest first (then by id).
func (t *Table) Owned(owner, kind string, now time.Time) []*Record {
	it, err := t.db.Txn(false).Get(tableObjects, indexID)
	if err != nil {
		return nil
	}
	var out []*Record
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*Record)
		if r.Owner == owner && r.Kind == kind && !r.Expired(now) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *Record) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return cmpString(a.ID, b.ID)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Put inserts or replaces a record.
func (t *Table) Put(r *Record) {
	t.write(func(txn *memdb.Txn) error { return txn.Insert(tableObjects, r) })
}

// Delete removes the record of id, if any.
func (t *Table) Delete(id string) {
	t.write(func(txn *memdb.Txn) error {
		_, err := txn.DeleteAll(tableObjects, indexID, id)
		return err
	})
}

// Replace makes recs the whole content of the table.
func (t *Table) Replace(recs []*Record) {
	t.write(func(txn *memdb.Txn) error {
		if _, err := txn.DeleteAll(tableObjects, indexID); err != nil {
			return err
		}
		for _, r := range recs {
			if err := txn.Insert(tableObjects, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// All returns every record, in id order.
func (t *Table) All() []*Record {
	it, err := t.db.Txn(false).Get(tableObjects, indexID)
	if err != nil {
		return nil
	}
	var out []*Record
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*Record))
	}
	return out
}

// Changed returns a channel closed at the next write.
func (t *Table) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

func (t *Table) write(f func(*memdb.Txn) error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	txn := t.db.Txn(true)
	if err := f(txn); err != nil {
		txn.Abort()
		panic(fmt.Sprintf("objects: write: %v", err)) // the schema accepts every record
	}
	txn.Commit()
	close(t.changed)
	t.changed = make(chan struct{})
}
