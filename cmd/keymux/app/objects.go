package app

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keymux/keymux/internal/backoff"
	"github.com/keymux/keymux/store/objects"
)

// startObjects creates the registry of account-scoped objects: with
// --consul, KV entries under "<prefix>-objects/" and the fleet secret of
// response tags at "<prefix>-objects-secret" (created once by the first
// sidecar); without, the file objects.json and the secret object-secret in
// --state-dir (memory and a per-process secret without one).
func (sc *sidecar) startObjects(ctx context.Context, o serveOptions) (*objects.Registry, error) {
	table := objects.NewTable()
	reg := &objects.Registry{Table: table}
	if sc.consul != nil {
		prefix := objects.ObjectsPrefix(o.consulPrefix)
		cb := objects.NewConsul(sc.consul, prefix, table, sc.log, nil)
		reg.Backend, reg.Wait = cb, objects.DefaultWait
		path := strings.TrimSuffix(prefix, "/") + "-secret"
		if !sc.fleetSecret(ctx, reg, path, 2*time.Second) {
			// Consul is not answering: serve, and take the fleet's secret
			// once it does (tags made meanwhile verify on this sidecar only).
			reg.SetSecret(randomSecret())
			go func() {
				for n := 1; !sc.fleetSecret(ctx, reg, path, 10*time.Second); n++ {
					if !backoff.Sleep(ctx, backoff.Delay(n, time.Second, time.Minute, mrand.Float64)) {
						return
					}
				}
			}()
		}
		go func() { _ = cb.Run(ctx) }()
		return reg, nil
	}
	path := ""
	reg.SetSecret(randomSecret())
	if o.stateDir != "" {
		path = filepath.Join(o.stateDir, "objects.json")
		secret, err := localSecret(filepath.Join(o.stateDir, "object-secret"))
		if err != nil {
			return nil, err
		}
		reg.SetSecret(secret)
	} else {
		sc.log.Info("no --state-dir: the records of files, batches and other objects, and the secret of stored responses' ids, last until keymux stops")
	}
	lb, err := objects.NewLocal(table, path, sc.log, nil)
	if err != nil {
		return nil, err
	}
	reg.Backend = lb
	go func() { _ = lb.Run(ctx) }()
	return reg, nil
}

// fleetSecret reads (or creates) the fleet's secret in Consul within
// timeout and sets it; false when Consul did not answer.
func (sc *sidecar) fleetSecret(ctx context.Context, reg *objects.Registry, path string, timeout time.Duration) bool {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	secret, err := objects.FleetSecret(sctx, sc.consul, path)
	if err != nil {
		if ctx.Err() == nil {
			sc.log.Warn("cannot read the fleet's object secret from Consul: stored responses' ids made now verify on this sidecar only", "path", path, "error", err)
		}
		return false
	}
	reg.SetSecret(secret)
	return true
}

func randomSecret() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return b
}

// localSecret reads path, creating it (0600) with a random secret when absent.
func localSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) >= 16 {
		return b, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("object secret: %w", err)
	}
	b = randomSecret()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("object secret: %w", err)
	}
	return b, nil
}
