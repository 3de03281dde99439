package app

import (
	"context"
	"fmt"

	"github.com/keymux/keymux/store"
)

// startSource loads the configuration from the chosen source and keeps
// following it in the background.
func (sc *sidecar) startSource(ctx context.Context, o serveOptions) error {
	sc.sourceErr = make(chan error, 1)
	switch {
	case o.config != "":
		fsrc := store.NewFileSource(o.config, sc.store, sc.log)
		if err := fsrc.Load(); err != nil {
			sc.sourceErr = nil
			return fmt.Errorf("--config: %w", err)
		}
		go func() { sc.sourceErr <- fsrc.Run(ctx) }()
	case o.consul:
		return sc.startConsul(ctx, o)
	default:
		sc.sourceErr = nil
	}
	return nil
}
