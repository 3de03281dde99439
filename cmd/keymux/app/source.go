package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keymux/keymux/store"
)

// startSource loads the configuration from the chosen source and keeps
// following it in the background.
func (sc *sidecar) startSource(ctx context.Context, o serveOptions) error {
	sc.sourceErr = make(chan error, 1)
	switch {
	case o.config != "":
		fsrc := store.NewFileSource(o.config, sc.store, sc.log)
		fsrc.SetScope(o.scope())
		if err := fsrc.Load(ctx); err != nil {
			sc.sourceErr = nil
			return fmt.Errorf("--config: %w", err)
		}
		go func() { sc.sourceErr <- fsrc.Run(ctx) }()
		go reloadOnHangup(ctx, fsrc, sc.log)
	case o.consul:
		return sc.startConsul(ctx, o)
	default:
		sc.sourceErr = nil
	}
	return nil
}

// reloadOnHangup re-reads the file on SIGHUP, secrets from secret_ref
// included (the file itself is also followed on its own).
func reloadOnHangup(ctx context.Context, fsrc *store.FileSource, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := fsrc.Reload(ctx); err != nil {
				log.Warn("reload on SIGHUP refused", "source", fsrc.Source(), "error", err)
			} else {
				log.Info("reloaded on SIGHUP", "source", fsrc.Source())
			}
		}
	}
}
