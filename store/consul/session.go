package consul

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/internal/backoff"
)

// ErrSessionLost ends a session's term: it could not be renewed or is gone.
var ErrSessionLost = errors.New("consul session lost")

// CheckSessionTTL refuses a session TTL Consul would refuse (10s–24h).
func CheckSessionTTL(ttl time.Duration) error {
	if ttl < 10*time.Second || ttl > 24*time.Hour {
		return fmt.Errorf("session TTL %s outside Consul's 10s–24h", ttl)
	}
	return nil
}

// RenewSession keeps session id (of TTL ttl) alive, renewing it every
// `every` (every second after an error, at most every ttl/4). It returns
// ErrSessionLost when Consul says the session is gone, or when no renewal
// succeeded for a whole TTL: past that point Consul may already have
// ended it. It returns nil when ctx ends.
func RenewSession(ctx context.Context, client *api.Client, id string, ttl, every time.Duration) error {
	wait := every
	last := time.Now()
	for {
		if !backoff.Sleep(ctx, wait) {
			return nil
		}
		entry, _, err := client.Session().Renew(id, (&api.WriteOptions{}).WithContext(ctx))
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if time.Since(last) >= ttl {
				return fmt.Errorf("%w: no renewal for %s: %v", ErrSessionLost, ttl, err)
			}
			wait = min(time.Second, ttl/4)
		case entry == nil:
			return fmt.Errorf("%w: session expired", ErrSessionLost)
		default:
			last = time.Now()
			wait = every
		}
	}
}

// RetryBounds returns the backoff bounds of RunTerms with their defaults:
// base 250ms when not positive, ceil 10s (at least base) when below base.
func RetryBounds(base, ceil time.Duration) (time.Duration, time.Duration) {
	if base <= 0 {
		base = 250 * time.Millisecond
	}
	if ceil < base {
		ceil = max(10*time.Second, base)
	}
	return base, ceil
}

// RunTerms runs term again and again until ctx ends: at once after a term
// that ended without error, after a backoff (base doubling up to ceil, equal
// jitter from rnd) after one that failed, which retrying hears of first.
func RunTerms(ctx context.Context, base, ceil time.Duration, rnd func() float64,
	term func(context.Context) error, retrying func(attempt int, wait time.Duration, err error)) {
	failures := 0
	for ctx.Err() == nil {
		err := term(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			continue
		}
		failures++
		wait := backoff.Delay(failures, base, ceil, rnd)
		retrying(failures, wait, err)
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}
