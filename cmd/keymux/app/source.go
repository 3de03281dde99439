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
		// SIGHUP is taken before the first load: one that comes during it
		// reloads after it instead of ending the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		fsrc := store.NewFileSource(o.config, sc.store, sc.log)
		fsrc.SetScope(o.scope())
		if err := fsrc.Load(ctx); err != nil {
			signal.Stop(hup)
			sc.sourceErr = nil
			return fmt.Errorf("--config: %w", err)
		}
		go func() { sc.sourceErr <- fsrc.Run(ctx) }()
		go reloadOnHangup(ctx, fsrc, hup, sc.log)
	case o.consul:
		return sc.startConsul(ctx, o)
	default:
		sc.sourceErr = nil
	}
	return nil
}

// reloadOnHangup re-reads the file on each SIGHUP hup receives (signal.Notify
// done), secrets from secret_ref included (the file itself is also followed
// on its own).
func reloadOnHangup(ctx context.Context, fsrc *store.FileSource, hup chan os.Signal, log *slog.Logger) {
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
