package objects

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/fakeclock"
)

func TestLocalPersistsAndExpires(t *testing.T) {
	clock := fakeclock.New(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "objects.json")
	table := NewTable()
	lb, err := NewLocal(table, path, nil, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	reg := &Registry{Table: table, Backend: lb}
	ctx := context.Background()
	now := clock.Now()
	for _, r := range []*Record{
		{ID: "file-1", Kind: "file", Account: "acct-a", Owner: "ca", Created: now, Expires: now.Add(time.Hour)},
		{ID: "file-2", Kind: "file", Account: "acct-b", Owner: "ca", Created: now.Add(time.Second), Expires: now.Add(2 * time.Hour)},
		{ID: "batch_1", Kind: "batch", Account: "acct-a", Owner: "cb", Created: now, Expires: now.Add(time.Hour)},
	} {
		if err := reg.Record(ctx, r, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.Record(ctx, &Record{ID: "file-3", Kind: "file"}, 3); err != ErrFull {
		t.Fatalf("a fourth record over max 3: %v, want ErrFull", err)
	}
	if err := reg.Record(ctx, &Record{ID: "a/b", Kind: "file"}, 10); err == nil {
		t.Fatal("an id with a slash was recorded")
	}
	if lb.Writes() != 3 {
		t.Fatalf("%d writes, want 3", lb.Writes())
	}

	// A new process reads the file back.
	table2 := NewTable()
	if _, err := NewLocal(table2, path, nil, clock.Now); err != nil {
		t.Fatal(err)
	}
	owned := table2.Owned("ca", "file", clock.Now())
	if len(owned) != 2 || owned[0].ID != "file-2" || owned[1].ID != "file-1" {
		t.Fatalf("owned files after reload: %+v, want file-2, file-1", owned)
	}
	reg2 := &Registry{Table: table2}
	if r := reg2.Lookup(ctx, "batch_1", clock.Now, false); r == nil || r.Account != "acct-a" || r.Owner != "cb" {
		t.Fatalf("batch_1 after reload: %+v", r)
	}

	clock.Advance(90 * time.Minute)
	if r := reg.Lookup(ctx, "file-1", clock.Now, false); r != nil {
		t.Fatalf("file-1 past its expiry: %+v", r)
	}
	lb.sweep()
	if n := table.Len(); n != 1 || table.Get("file-2") == nil {
		t.Fatalf("after the sweep: %d records, want file-2 alone", n)
	}
	if err := reg.Forget(ctx, "file-2"); err != nil || table.Len() != 0 {
		t.Fatalf("forget: %v, %d records left", err, table.Len())
	}
}

func TestLookupWaitsForAnotherSidecarsRecord(t *testing.T) {
	table := NewTable()
	reg := &Registry{Table: table, Wait: 10 * time.Second}
	go func() {
		// The Put lands before or during Lookup's wait: either way
		// Lookup must return the record.
		table.Put(&Record{ID: "file-9", Kind: "file", Account: "acct-c"})
	}()
	if r := reg.Lookup(context.Background(), "file-9", time.Now, true); r == nil || r.Account != "acct-c" {
		t.Fatalf("Lookup = %+v, want the record put meanwhile", r)
	}
	reg.Wait = time.Millisecond
	if r := reg.Lookup(context.Background(), "file-none", time.Now, true); r != nil {
		t.Fatalf("an unknown id: %+v", r)
	}
}
