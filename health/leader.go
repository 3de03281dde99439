package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/internal/backoff"
	"github.com/keymux/keymux/store/consul"
)

// Leader election defaults (see the package doc for the reasoning).
const (
	DefaultSessionTTL = 10 * time.Second
	DefaultLockDelay  = 1 * time.Second
	// lockWait bounds one blocking query on the lock key.
	lockWait = 30 * time.Second
)

// lockValue is the lock key's value: who holds it, for operators.
type lockValue struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
}

// elect campaigns for the lock until ctx ends: create a session (TTL,
// lock-delay, behavior release), acquire <prefix>leader/health with it, lead
// while the session is renewed and the key still names it, then start over.
func (c *Checker) elect(ctx context.Context) {
	consul.RunTerms(ctx, c.cfg.RetryBase, c.cfg.RetryMax, c.rand, c.term, func(attempt int, wait time.Duration, err error) {
		c.log.Warn("health leader election: retrying", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "error", err)
	})
}

// term is one session's life: acquire, lead, step down.
func (c *Checker) term(ctx context.Context) error {
	sess := c.consul.Session()
	id, _, err := sess.Create(&api.SessionEntry{
		Name:      "keymux-health " + c.cfg.ID,
		TTL:       c.cfg.SessionTTL.String(),
		LockDelay: c.cfg.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		if err := consul.RenewSession(sctx, c.consul, id, c.cfg.SessionTTL, c.cfg.SessionTTL/2); err != nil {
			cancel(err)
		}
	}()
	held := false
	defer func() {
		c.setLeader(false)
		cancel(context.Canceled)
		<-renewDone
		c.endSession(ctx, id, held)
	}()

	retry := min(max(c.cfg.LockDelay/5, 50*time.Millisecond), time.Second)
	if err := c.acquire(sctx, id, retry); err != nil || sctx.Err() != nil {
		return c.termErr(sctx, ctx, err)
	}
	held = true
	c.terms.Add(1)
	c.setLeader(true)
	c.log.Info("health leader: lock acquired; this instance probes", "lock", c.lockKey, "session_ttl", c.cfg.SessionTTL, "lock_delay", c.cfg.LockDelay)
	if c.hold(sctx, id, retry) {
		held = false
		c.log.Warn("health leader: lock lost; stepping down", "lock", c.lockKey)
		return nil
	}
	return c.termErr(sctx, ctx, nil)
}

// acquire waits until session id holds the lock. It returns nil once held,
// or when sctx ends (the caller checks sctx), or a Consul error.
func (c *Checker) acquire(sctx context.Context, id string, retry time.Duration) error {
	value, _ := json.Marshal(lockValue{Holder: c.cfg.ID, Since: c.now().UTC()})
	var index uint64
	for {
		pair, meta, err := c.kv.Get(c.lockKey, (&api.QueryOptions{WaitIndex: index, WaitTime: lockWait}).WithContext(sctx))
		if err != nil {
			return fmt.Errorf("read lock: %w", err)
		}
		if meta.LastIndex < index {
			index = 0 // the index went backwards: start over
		}
		switch {
		case pair != nil && pair.Session == id:
			return nil
		case pair == nil || pair.Session == "":
			ok, _, err := c.kv.Acquire(&api.KVPair{Key: c.lockKey, Value: value, Session: id}, (&api.WriteOptions{}).WithContext(sctx))
			if err != nil {
				return fmt.Errorf("acquire lock: %w", err)
			}
			if ok {
				return nil
			}
			// Not acquired with no holder: the lock-delay of the previous
			// holder's session is running. Poll until it ends.
			index = 0
			if !backoff.Sleep(sctx, retry) {
				return nil
			}
		default:
			index = max(meta.LastIndex, 1)
		}
	}
}

// hold leads until the lock stops naming session id (it returns true: the
// lock is lost) or sctx ends (false).
func (c *Checker) hold(sctx context.Context, id string, retry time.Duration) (lost bool) {
	var index uint64
	for {
		pair, meta, err := c.kv.Get(c.lockKey, (&api.QueryOptions{WaitIndex: index, WaitTime: lockWait}).WithContext(sctx))
		if err != nil {
			if sctx.Err() != nil {
				return false
			}
			// Consul may be briefly unavailable; the renewal decides
			// whether the session survives.
			c.log.Warn("health leader: lock watch failed", "error", err)
			if !backoff.Sleep(sctx, retry) {
				return false
			}
			index = 0
			continue
		}
		if pair == nil || pair.Session != id {
			return true
		}
		if meta.LastIndex < index {
			index = 0
			continue
		}
		index = max(meta.LastIndex, 1)
	}
}

// endSession releases the lock (when held) and destroys session id, with a
// short context of their own: ctx may be done already.
func (c *Checker) endSession(ctx context.Context, id string, held bool) {
	if c.abandon.Load() {
		return // test hook: behave like a crashed process, leave the session to expire
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	wo := (&api.WriteOptions{}).WithContext(rctx)
	if held {
		if _, _, err := c.kv.Release(&api.KVPair{Key: c.lockKey, Session: id}, wo); err != nil {
			c.log.Warn("health leader: release failed", "error", err)
		}
	}
	if _, err := c.consul.Session().Destroy(id, wo); err != nil {
		c.log.Debug("health leader: session destroy failed", "error", err)
	}
}

func (c *Checker) termErr(sctx, ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}
