package app

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		secret, err := objects.FleetSecret(sctx, sc.consul, strings.TrimSuffix(prefix, "/")+"-secret")
		if err != nil {
			// Tags made now will not verify on other sidecars.
			sc.log.Error("cannot read the fleet's object secret from Consul: stored responses' ids are valid on this sidecar only until it restarts", "error", err)
			secret = randomSecret()
		}
		reg.Secret = secret
		go func() { _ = cb.Run(ctx) }()
		return reg, nil
	}
	path := ""
	reg.Secret = randomSecret()
	if o.stateDir != "" {
		path = filepath.Join(o.stateDir, "objects.json")
		secret, err := localSecret(filepath.Join(o.stateDir, "object-secret"))
		if err != nil {
			return nil, err
		}
		reg.Secret = secret
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
