package objects

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/internal/backoff"
)

// Consul keeps one KV entry per record under Prefix (by default
// "keymux-objects/", beside the configuration prefix so that object writes
// never wake the configuration watch), watched by every sidecar.
type Consul struct {
	kv     *api.KV
	prefix string
	table  *Table
	log    *slog.Logger
	now    func() time.Time
	writes atomic.Uint64
	synced chan struct{}
	once   atomic.Bool
}

// ObjectsPrefix is the objects' KV prefix for the configuration prefix
// config ("keymux/" → "keymux-objects/").
func ObjectsPrefix(config string) string {
	return strings.TrimSuffix(config, "/") + "-objects/"
}

// NewConsul returns a Consul backend over table.
func NewConsul(client *api.Client, prefix string, table *Table, log *slog.Logger, now func() time.Time) *Consul {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Consul{kv: client.KV(), prefix: prefix, table: table, log: log.With("objects_prefix", prefix), now: now, synced: make(chan struct{})}
}

// Synced is closed once the first listing is mirrored.
func (c *Consul) Synced() <-chan struct{} { return c.synced }

// Put implements Backend: one KV write.
func (c *Consul) Put(ctx context.Context, r *Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	if _, err := c.kv.Put(&api.KVPair{Key: c.prefix + r.ID, Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul put %s: %w", c.prefix+r.ID, err)
	}
	c.writes.Add(1)
	c.table.Put(r)
	return nil
}

// Delete implements Backend: one KV write.
func (c *Consul) Delete(ctx context.Context, id string) error {
	if _, err := c.kv.Delete(c.prefix+id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul delete %s: %w", c.prefix+id, err)
	}
	c.writes.Add(1)
	c.table.Delete(id)
	return nil
}

// Writes implements Backend.
func (c *Consul) Writes() uint64 { return c.writes.Load() }

// watchWait bounds one blocking query, so that expired records are swept
// at least that often.
const watchWait = time.Minute

// Run implements Backend: a blocking listing of the prefix, mirrored into
// the table after every change; expired records are deleted (a checked
// delete: several sidecars may sweep the same record).
func (c *Consul) Run(ctx context.Context) error {
	var index uint64
	fails := 0
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx)
		pairs, meta, err := c.kv.List(c.prefix, q)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			fails++
			c.log.Warn("cannot list the object records", "error", err)
			backoff.Sleep(ctx, backoff.Delay(fails, 100*time.Millisecond, 10*time.Second, mrand.Float64))
			continue
		}
		fails = 0
		if meta.LastIndex < index {
			index = 0 // Consul's index went backwards (a restored server): start over
		} else {
			index = meta.LastIndex
		}
		c.mirror(ctx, pairs)
	}
	return nil
}

func (c *Consul) mirror(ctx context.Context, pairs api.KVPairs) {
	now := c.now()
	recs := make([]*Record, 0, len(pairs))
	for _, p := range pairs {
		var r Record
		id := strings.TrimPrefix(p.Key, c.prefix)
		if err := json.Unmarshal(p.Value, &r); err != nil || r.ID != id || !ValidID(id) {
			c.log.Warn("ignoring a bad object record", "path", p.Key)
			continue
		}
		if r.Expired(now) {
			if ok, _, err := c.kv.DeleteCAS(p, (&api.WriteOptions{}).WithContext(ctx)); err == nil && ok {
				c.writes.Add(1)
			}
			continue
		}
		recs = append(recs, &r)
	}
	c.table.Replace(recs)
	if c.once.CompareAndSwap(false, true) {
		close(c.synced)
	}
}

// FleetSecret returns the fleet's response-tag secret from path, creating
// it (32 random bytes, a checked write: the first sidecar wins) when absent.
func FleetSecret(ctx context.Context, client *api.Client, path string) ([]byte, error) {
	kv := client.KV()
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	for range 3 {
		p, _, err := kv.Get(path, q)
		if err != nil {
			return nil, fmt.Errorf("consul get %s: %w", path, err)
		}
		if p != nil && len(p.Value) >= 16 {
			return p.Value, nil
		}
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		if _, _, err := kv.CAS(&api.KVPair{Key: path, Value: secret}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("consul cas %s: %w", path, err)
		}
	}
	return nil, fmt.Errorf("consul %s: no secret after three tries", path)
}
