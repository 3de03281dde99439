// Package app is the keymux command: flags, subcommands (`keymux kv`, the
// Consul administration, among them: kv*.go) and the wiring of the
// sidecar's parts. Every subcommand runs through Env, so that it can be run,
// and tested, without a process.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/hashicorp/consul/api"
)

// Version is set at build time (-ldflags "-X github.com/keymux/keymux/cmd/keymux/app.Version=…").
var Version = "dev"

const usage = `keymux — an Envoy external processor over a pool of LLM API keys

usage:
  keymux serve    [--config FILE | --consul [--consul-prefix keymux/]] [--grpc ADDR|unix:PATH] [--admin ADDR] [--state-dir DIR]
  keymux dev      [source flags] [--envoy FILE] [--listen ADDR]   (serve + the Envoy emulator; offline demo without a source)
  keymux validate [--config FILE] [--envoy FILE]
  keymux kv       <import|export|keys|rules|clients|settings> …   (Consul administration)
  keymux version

Every flag can also be set from the environment: --consul-prefix ← KEYMUX_CONSUL_PREFIX.
Consul's address, token and TLS come from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ….
`

// Env is what a command reads from and writes to.
type Env struct {
	Stdin  io.Reader // `--file -` of keymux kv
	Stdout io.Writer
	Stderr io.Writer
	// Consul is the client of keymux kv; nil: one from the CONSUL_HTTP_*
	// environment.
	Consul *api.Client
}

// Run runs the keymux command line args (without the program name), reading
// os.Stdin.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return Env{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr}.Run(ctx, args)
}

// Run runs the keymux command line args (without the program name).
func (e Env) Run(ctx context.Context, args []string) error {
	stdout, stderr := e.Stdout, e.Stderr
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{msg: "a subcommand is required"}
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr)
	case "validate":
		return runValidate(ctx, args[1:], stdout, stderr)
	case "kv":
		return e.runKV(ctx, args[1:])
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "keymux %s (%s, %s/%s)\n", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{msg: fmt.Sprintf("unknown subcommand %q", args[0])}
}

// stopped reports whether err is a start given up because ctx ended (a stop
// during startup, e.g. while a large configuration is applied): a normal end.
func stopped(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, ctx.Err())
}

// shutdownOK reports whether err is a normal end of a server.
func shutdownOK(err error) bool {
	return err == nil || errors.Is(err, context.Canceled)
}
