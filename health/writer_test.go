package health

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Ops waiting when the writer looks are sent in full batches of MaxTxnOps,
// in order; the rest closes when the linger ends.
func TestBatchesOfAtMostMaxOps(t *testing.T) {
	ops := make(chan kvOp, 150)
	for i := range 150 {
		ops <- kvOp{id: "k" + strconv.Itoa(i), value: []byte("{}")}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan []string, 3)
	go batches(ctx, ops, MaxTxnOps, 10*time.Millisecond, func(b []kvOp) {
		var ids []string
		for _, op := range b {
			ids = append(ids, op.id)
		}
		got <- ids
	})
	var all []string
	for _, want := range []int{64, 64, 22} {
		select {
		case ids := <-got:
			if len(ids) != want {
				t.Fatalf("batch of %d, want %d", len(ids), want)
			}
			all = append(all, ids...)
		case <-time.After(10 * time.Second):
			t.Fatalf("no batch of %d", want)
		}
	}
	for i, id := range all {
		if id != "k"+strconv.Itoa(i) {
			t.Fatalf("op %d is %s: order lost", i, id)
		}
	}
	ops <- kvOp{id: "late"}
	select {
	case ids := <-got:
		if !slices.Equal(ids, []string{"late"}) {
			t.Fatalf("batch %v, want [late]", ids)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a lone op was never flushed")
	}
}
