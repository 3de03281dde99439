// Command mockupstream runs the keymux mock OpenAI-compatible upstream
// standalone, for manual tests against keymux or Envoy:
//
//	go run ./examples/mockupstream/cmd/mockupstream -listen 127.0.0.1:8080
//
// Every request is answered like the real APIs (see package mockupstream)
// and logged at debug level without its credential.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/keymux/keymux/examples/mockupstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mockupstream:", err)
		os.Exit(1)
	}
}

// run starts the mock, prints its URL on stdout and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mockupstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
	useTLS := fs.Bool("tls", false, "serve HTTPS with a fresh self-signed certificate")
	keys := fs.String("keys", "", "comma-separated allow-list of credentials (empty = any)")
	verbose := fs.Bool("v", false, "log every request (never its credential)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	opts := mockupstream.Options{Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))}
	if *keys != "" {
		opts.Keys = strings.Split(*keys, ",")
	}
	srv := mockupstream.New(opts)
	start := srv.Start
	if *useTLS {
		start = srv.StartTLS
	}
	if err := start(*listen); err != nil {
		return err
	}
	fmt.Fprintln(stdout, srv.URL())
	<-ctx.Done()
	return srv.Close()
}
