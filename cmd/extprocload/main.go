// Command extprocload measures the real `keymux serve` against a no-op
// ext_proc server over loopback gRPC, playing Envoy's side of the exchange.
//
// Per request it opens a Process stream and sends what Envoy sends for a
// chat completion with a buffered body: the request headers (the official
// SDKs' usual headers), a 1 KB chat-completions body (end_of_stream), the
// response headers (200, application/json), then half-closes; it checks the
// kind of every reply. Unless -access-log=false it also plays Envoy's
// access logger (envoy.access_loggers.http_grpc as the shipped envoy.yaml
// configures it): one entry per request — the emulator's entry, with the
// dynamic metadata of the replies (keymux's call_id) and the token usage
// json_to_metadata reads — batched, flushed every 100 ms and streamed to
// the server's AccessLogService; at the end it checks in keymux's /status
// that every entry was booked with its call. It starts both servers as separate processes — the
// keymux binary with a generated configuration of -keys keys, and itself in
// -noop mode (an empty reply of the matching kind to every message) — and
// runs rounds interleaved (keymux, no-op, keymux, no-op, …) at each
// concurrency. It prints p50, p99 and throughput of each and their ratios as
// a Markdown table, then stops both servers.
//
//	go run ./cmd/extprocload                      # builds ./cmd/keymux first
//	go run ./cmd/extprocload -keymux ./keymux -rounds 4 -duration 2s -cpuprofile cpu.pprof
//	go run ./cmd/extprocload -soak 10m                 # keymux alone at -soak-concurrency: RSS, goroutines
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "extprocload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("extprocload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.register(fs)
	var so soakOptions
	so.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.noop {
		return serveNoop(ctx, o.grpc, stdout)
	}
	if err := o.check(); err != nil {
		return err
	}
	if so.duration > 0 {
		if err := so.check(); err != nil {
			return err
		}
		return runSoak(ctx, o, so, stdout, stderr)
	}
	return runLoad(ctx, o, stdout, stderr)
}
