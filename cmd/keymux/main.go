// Command keymux is the Envoy external processor that shares a pool of LLM
// API keys among a team. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keymux/keymux/cmd/keymux/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "keymux:", err)
		os.Exit(app.ExitCode(err))
	}
}
