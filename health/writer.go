package health

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// MaxTxnOps is the most KV operations one transaction of probe results
// carries: half of what keymux allows itself (consul.MaxTxnOps, Consul's
// own limit), so that a batch stays small.
const MaxTxnOps = 64

// writeLinger is how long the writer waits for more results after the
// first one of a batch: probes that end close together share a
// transaction.
const writeLinger = 50 * time.Millisecond

// kvOp is one pending write of the leader: a record to set, or (value nil)
// the record of a removed key to delete.
type kvOp struct {
	id    string
	value []byte
	// passedAt is when a passing probe checked the key (zero otherwise):
	// Config.OnLeaderPass hears of it once the record is written.
	passedAt time.Time
}

// batches reads ops until ctx ends and hands them to flush in batches of
// at most max: a batch starts with the first op that arrives and closes
// after linger, or as soon as it is full.
func batches(ctx context.Context, ops <-chan kvOp, max int, linger time.Duration, flush func([]kvOp)) {
	var batch []kvOp
	for {
		select {
		case <-ctx.Done():
			return
		case op := <-ops:
			batch = append(batch[:0], op)
		}
		t := time.NewTimer(linger)
	fill:
		for len(batch) < max {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case op := <-ops:
				batch = append(batch, op)
			case <-t.C:
				break fill
			}
		}
		t.Stop()
		flush(batch)
	}
}

// enqueue hands one write to the writer (Run's batches); it drops the
// write once ctx ends.
func (c *Checker) enqueue(ctx context.Context, op kvOp) {
	select {
	case c.writes <- op:
	case <-ctx.Done():
	}
}

// flush writes one batch in one Consul transaction, as long as this
// instance leads.
func (c *Checker) flush(ctx context.Context, batch []kvOp) {
	if !c.leader.Load() {
		return
	}
	ops := make(api.TxnOps, 0, len(batch))
	for _, op := range batch {
		kv := &api.KVTxnOp{Verb: api.KVSet, Key: c.healthP + op.id, Value: op.value}
		if op.value == nil {
			kv.Verb = api.KVDelete
		}
		ops = append(ops, &api.TxnOp{KV: kv})
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ok, resp, _, err := c.consul.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(wctx))
	c.kvTxns.Add(1)
	if err == nil && !ok {
		err = txnErrors(resp)
	}
	if err != nil {
		c.kvWriteErrors.Add(uint64(len(batch)))
		c.log.Warn("health: cannot write probe results to Consul", "records", len(batch), "error", err)
		return
	}
	c.kvWrites.Add(uint64(len(batch)))
	if c.cfg.OnLeaderPass != nil {
		for _, op := range batch {
			if !op.passedAt.IsZero() {
				c.cfg.OnLeaderPass(op.id, op.passedAt)
			}
		}
	}
}

// txnErrors is the error of a transaction Consul rolled back.
func txnErrors(resp *api.TxnResponse) error {
	if resp == nil || len(resp.Errors) == 0 {
		return errors.New("transaction rolled back")
	}
	return fmt.Errorf("transaction rolled back at operation %d: %s", resp.Errors[0].OpIndex, resp.Errors[0].What)
}
