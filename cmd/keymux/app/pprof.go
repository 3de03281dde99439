package app

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves Go's profiling endpoints (/debug/pprof/…) on addr, a
// listener of its own apart from the admin port; only with --pprof, which
// is off by default: profiles expose the process's internals.
func (sc *sidecar) startPprof(addr string) error {
	if addr == "" {
		return nil
	}
	lis, err := listen(addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	sc.pprof = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := sc.pprof.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			sc.log.Error("pprof server", "error", err)
		}
	}()
	return nil
}
