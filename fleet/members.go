package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store/consul"
)

// memberValue is a member entry's value, for operators.
type memberValue struct {
	ID    string    `json:"id"`
	Since time.Time `json:"since"`
}

// register keeps this instance's entry <prefix>members/<id> alive until ctx
// ends: a session (TTL, behavior delete) holds it, renewed every TTL/3; a
// lost session starts a new term after a backoff.
func (f *Fleet) register(ctx context.Context) {
	consul.RunTerms(ctx, f.cfg.RetryBase, f.cfg.RetryMax, rand.Float64, f.term, func(attempt int, wait time.Duration, err error) {
		f.log.Warn("fleet membership: registering again", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "error", err)
	})
}

// term is one session's life: create it, take the member entry, renew
// until the session is lost or ctx ends, then destroy it (Consul deletes
// the entry with it).
func (f *Fleet) term(ctx context.Context) error {
	sess := f.cfg.Consul.Session()
	id, _, err := sess.Create(&api.SessionEntry{
		Name:     "keymux-member " + f.cfg.ID,
		TTL:      f.cfg.SessionTTL.String(),
		Behavior: api.SessionBehaviorDelete,
		// The entry's name is unique to this process: no other holder
		// needs protecting from a lock-delay.
		LockDelay: time.Millisecond,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	defer f.endSession(ctx, id)
	value, _ := json.Marshal(memberValue{ID: f.cfg.ID, Since: f.now().UTC()})
	path := consul.MemberPath(f.cfg.Prefix, f.cfg.ID)
	ok, _, err := f.kv.Acquire(&api.KVPair{Key: path, Value: value, Session: id}, (&api.WriteOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return fmt.Errorf("register %s: %w", path, err)
	case !ok:
		return fmt.Errorf("register %s: held by another session", path)
	}
	f.registered.Store(true)
	defer f.registered.Store(false)
	f.log.Info("fleet: registered as a member", "path", path, "session_ttl", f.cfg.SessionTTL)
	return consul.RenewSession(ctx, f.cfg.Consul, id, f.cfg.SessionTTL, f.cfg.SessionTTL/3)
}

// endSession destroys session id (its member entry goes with it), with a
// short context of its own: ctx may be done already.
func (f *Fleet) endSession(ctx context.Context, id string) {
	if f.abandon.Load() {
		return // test hook: behave like a crashed process
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := f.cfg.Consul.Session().Destroy(id, (&api.WriteOptions{}).WithContext(dctx)); err != nil {
		f.log.Debug("fleet: session destroy failed", "error", err)
	}
}
