package app

import (
	"context"
	"fmt"

	"github.com/keymux/keymux/store/consul"
)

// startConsul follows the Consul KV prefix (CONSUL_HTTP_* environment).
func (sc *sidecar) startConsul(ctx context.Context, o serveOptions) error {
	src, err := consul.New(consul.Options{
		Client:   sc.consul,
		Prefix:   o.consulPrefix,
		Store:    sc.store,
		StateDir: o.stateDir,
		Logger:   sc.log,
		Scope:    o.scope(),
		OnHealth: sc.health.OnHealth,
		// Shared key states and the live members (package fleet).
		OnState:   sc.fleet.OnState,
		OnMembers: sc.fleet.OnMembers,
	})
	if err != nil {
		sc.sourceErr = nil
		return fmt.Errorf("--consul: %w", err)
	}
	sc.consulSrc.Store(src)
	go func() { sc.sourceErr <- src.Run(ctx) }()
	return nil
}
