package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/keymux/keymux/envoy"
	"github.com/keymux/keymux/envoy/emulator"
	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/policy"
)

// extprocCluster is the bootstrap cluster whose address follows --grpc.
const extprocCluster = "keymux_extproc"

const defaultEnvoyFile = "envoy/envoy.yaml"

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o serveOptions
	var envoyFile, listenAddr string
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	o.register(fs)
	fs.StringVar(&envoyFile, "envoy", defaultEnvoyFile, "Envoy bootstrap the emulator runs")
	fs.StringVar(&listenAddr, "listen", "127.0.0.1:10000", "address of the emulated Envoy listener (replaces the bootstrap's)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	if err := checkAddr(listenAddr, false); err != nil {
		return &usageError{msg: fmt.Sprintf("--listen %q: %v", listenAddr, err)}
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	boot, err := loadDevBootstrap(envoyFile)
	if err != nil {
		return err
	}

	// The mock upstream and local test servers run on loopback; Envoy's
	// admin address stays refused.
	o.devUpstreams = []string{"127.0.0.0/8", "::1/128", "localhost"}
	if sa := boot.GetAdmin().GetAddress().GetSocketAddress(); sa.GetAddress() != "" {
		o.adminAddrs = append(o.adminAddrs, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
	}
	demo := o.config == "" && !o.consul
	if demo {
		mock := mockupstream.New(mockupstream.Options{Logger: log})
		if err := mock.Start("127.0.0.1:0"); err != nil {
			return fmt.Errorf("mock upstream: %w", err)
		}
		defer mock.Close()
		dir, err := os.MkdirTemp("", "keymux-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.config = filepath.Join(dir, "keymux.yaml")
		if err := os.WriteFile(o.config, mockupstream.DemoConfig(mock.URL()), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "keymux dev: demo config %s (3 keys on the mock upstream %s, rule k2: gpt-4 → gpt-4o-mini)\n", o.config, mock.URL())
	}

	sc, err := startSidecar(ctx, o, log, stdout)
	if err != nil {
		if stopped(ctx, err) {
			return nil
		}
		return err
	}
	em, err := emulator.New(emulator.Config{
		Bootstrap:    boot,
		ListenAddr:   listenAddr,
		ClusterAddrs: map[string]string{extprocCluster: sc.grpcAddr()},
		Logger:       log,
		AccessLog:    stderr,
	})
	if err == nil {
		err = em.Start(ctx)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("envoy emulator: %w", err), sc.close())
	}
	if msg := openListenerWarning(listenAddr, sc.store.Read().Settings().Auth.Mode); msg != "" {
		log.Warn(msg, "listen", listenAddr)
	}
	fmt.Fprintf(stdout, "keymux ready grpc=%s admin=%s listen=%s\n", sc.grpcAddr(), sc.adminAddr(), em.Addr())
	if demo {
		fmt.Fprintf(stdout, "try:\n  curl -s %s/v1/chat/completions -H 'content-type: application/json' -d '{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'\n", em.URL())
	}
	<-ctx.Done()
	return errors.Join(em.Close(), sc.close())
}

// loadDevBootstrap loads --envoy; the default path falls back to the copy
// built into the binary when keymux runs outside the repository.
func loadDevBootstrap(path string) (*bootstrapv3.Bootstrap, error) {
	b, err := envoy.LoadBootstrap(path)
	if err == nil {
		return b, nil
	}
	if path != defaultEnvoyFile || !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("--envoy: %w", err)
	}
	b = &bootstrapv3.Bootstrap{}
	if err := envoy.Unmarshal(envoy.DefaultBootstrapYAML, b); err != nil {
		return nil, fmt.Errorf("built-in envoy.yaml: %w", err)
	}
	return b, nil
}

// openListenerWarning is the warning for a listener beyond loopback that
// lets anyone use the keys (auth.mode none), "" when there is none.
func openListenerWarning(listenAddr string, mode policy.AuthMode) string {
	if mode != policy.AuthNone {
		return ""
	}
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return ""
	}
	if ip, err := netip.ParseAddr(host); host == "localhost" || (err == nil && ip.Unmap().IsLoopback()) {
		return ""
	}
	return "auth.mode is none on a listener beyond loopback: anyone who reaches it uses the pool's keys; set auth.mode client_keys or jwt_claim"
}
