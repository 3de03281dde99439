package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/hashicorp/consul/api"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keymux/keymux/extproc"
	"github.com/keymux/keymux/fleet"
	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/telemetry"
)

// maxGRPCMessage bounds one ext_proc message: a whole request body plus headers.
const maxGRPCMessage = 40 << 20

// serveOptions are the flags of serve (and dev).
type serveOptions struct {
	config       string
	consul       bool
	consulPrefix string
	stateDir     string
	grpcAddr     string
	adminAddr    string
	pprofAddr    string
	logLevel     string
	logFormat    string
	callLog      string
	drainTimeout time.Duration
	secretEnv    listFlag
	secretDirs   listFlag
	upstreams    listFlag
	// devUpstreams are allowed in addition to --allow-upstream (dev: the
	// loopback mock); adminAddrs are Envoy admin addresses refused as
	// upstreams (dev: the bootstrap's).
	devUpstreams []string
	adminAddrs   []string
	grpcTLS      grpcTLS

	// usageFromBody: Envoy has no http_grpc logger to keymux or no usage
	// filters; keymux reads usage from response bodies (STREAMED).
	usageFromBody bool
	// grpcSpans: an OpenTelemetry server span per gRPC stream (otelgrpc),
	// besides keymux's own span per request.
	grpcSpans bool
}

// listFlag is a comma-separated list flag; the default stands until the
// flag is given.
type listFlag struct {
	vals []string
	set  bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			l.vals = append(l.vals, f)
		}
	}
	return nil
}

// scope is what key documents may reference (see store.Scope).
func (o *serveOptions) scope() *store.Scope {
	sc := store.DefaultScope()
	sc.SecretEnv = o.secretEnv.vals
	sc.SecretDirs = o.secretDirs.vals
	sc.Upstreams = append(slices.Clone(o.upstreams.vals), o.devUpstreams...)
	sc.AdminAddrs = append(sc.AdminAddrs, o.adminAddrs...)
	return sc
}

func (o *serveOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.config, "config", "", "configuration file (JSON or YAML); reloaded on change")
	fs.BoolVar(&o.consul, "consul", false, "read the configuration from Consul KV (CONSUL_HTTP_* environment)")
	fs.StringVar(&o.consulPrefix, "consul-prefix", consul.DefaultPrefix, "Consul KV prefix (\"/\" appended when missing)")
	fs.StringVar(&o.stateDir, "state-dir", "", "directory for the last-good snapshot of the Consul configuration and, without Consul, the records of account-scoped objects")
	fs.StringVar(&o.grpcAddr, "grpc", "127.0.0.1:50051", "ext_proc gRPC address, host:port or unix:PATH")
	fs.StringVar(&o.adminAddr, "admin", "127.0.0.1:9464", "admin HTTP address (/healthz /readyz /status /stats /metrics)")
	fs.StringVar(&o.pprofAddr, "pprof", "", "serve Go's /debug/pprof/ profiles on this address (off by default)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&o.callLog, "call-log", "", "call log destination: a file path, \"-\" for stdout, empty for none")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on shutdown, how long to wait for open ext_proc streams and their access-log entries")
	fs.BoolVar(&o.grpcSpans, "grpc-spans", false, "trace every gRPC stream (an OpenTelemetry server span per ext_proc stream, each its own trace) besides keymux's span per request")
	fs.BoolVar(&o.usageFromBody, "usage-from-body", false, "read token usage from response bodies (STREAMED, a round trip per chunk): for an Envoy without the http_grpc access logger to keymux or the usage filters")
	o.secretEnv.vals = store.DefaultSecretEnv
	o.secretDirs.vals = store.DefaultSecretDirs
	fs.Var(&o.secretEnv, "secret-env", "environment variables a key's secret_ref env:NAME may name: comma-separated patterns")
	fs.Var(&o.secretDirs, "secret-dir", "directories a key's secret_ref file:PATH may lie under, comma-separated")
	o.grpcTLS.register(fs)
	fs.Var(&o.upstreams, "allow-upstream", "base_url hosts allowed although loopback, link-local or Envoy's admin: host, host:port or CIDR, comma-separated")
}

func (o *serveOptions) check() error {
	if o.config != "" && o.consul {
		return &usageError{msg: "--config and --consul are exclusive: choose one source"}
	}
	if err := o.grpcTLS.check(); err != nil {
		return err
	}
	prefix, err := consul.NormalizePrefix(o.consulPrefix)
	if err != nil {
		return &usageError{msg: fmt.Sprintf("--consul-prefix: %v", err)}
	}
	o.consulPrefix = prefix
	if o.drainTimeout < 0 {
		return &usageError{msg: fmt.Sprintf("--drain-timeout %v: must not be negative", o.drainTimeout)}
	}
	for _, a := range []struct{ flag, addr string }{{"--grpc", o.grpcAddr}, {"--admin", o.adminAddr}} {
		if err := checkAddr(a.addr, a.flag == "--grpc"); err != nil {
			return &usageError{msg: fmt.Sprintf("%s %q: %v", a.flag, a.addr, err)}
		}
	}
	return nil
}

func checkAddr(addr string, unixOK bool) error {
	if unixOK {
		if p, ok := strings.CutPrefix(addr, "unix:"); ok {
			if p == "" {
				return errors.New("empty socket path")
			}
			return nil
		}
	}
	want := "want host:port"
	if unixOK {
		want += " or unix:PATH"
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New(want)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("%s (port %q)", want, port)
	}
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, &usageError{msg: fmt.Sprintf("--log-level %q: want debug, info, warn or error", level)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, &usageError{msg: fmt.Sprintf("--log-format %q: want json or text", format)}
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o serveOptions
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	o.register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	if o.config == "" && !o.consul {
		return &usageError{msg: "serve needs a source: --config FILE or --consul"}
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	sc, err := startSidecar(ctx, o, log, stdout)
	if err != nil {
		if stopped(ctx, err) {
			return nil
		}
		return err
	}
	fmt.Fprintf(stdout, "keymux ready grpc=%s admin=%s\n", sc.grpcAddr(), sc.adminAddr())
	<-ctx.Done()
	return sc.close()
}

// sidecar is keymux's serving part: the config source, the store, the
// ext_proc gRPC server and the admin HTTP server.
type sidecar struct {
	log       *slog.Logger
	store     *store.Store
	tel       *telemetry.Telemetry
	otelDown  func(context.Context) error
	grpc      *grpc.Server
	grpcLis   net.Listener
	grpcHS    *grpchealth.Server
	extproc   *extproc.Server
	drain     time.Duration
	admin     *http.Server
	adminLis  net.Listener
	pprof     *http.Server // nil without --pprof
	callLog   io.Closer
	consul    *api.Client                   // nil without --consul
	consulSrc atomic.Pointer[consul.Source] // set once the Consul source exists
	health    *health.Checker               // active probes (leader-elected with Consul)
	healthErr chan error
	fleet     *fleet.Fleet // shared key states and limit shares (with Consul)
	fleetErr  chan error
	cancel    context.CancelFunc
	sourceErr chan error
}

// startSidecar starts the sidecar's parts in order; on error, those
// already started are stopped.
func startSidecar(parent context.Context, o serveOptions, log *slog.Logger, stdout io.Writer) (sc *sidecar, err error) {
	ctx, cancel := context.WithCancel(parent)
	sc = &sidecar{log: log, cancel: cancel}
	defer func() {
		if err != nil {
			_ = sc.close()
		}
	}()
	if sc.store, err = store.New(store.Options{Logger: log}); err != nil {
		return sc, err
	}
	tp, err := sc.startTelemetry(ctx, o.callLog, stdout)
	if err != nil {
		return sc, err
	}
	// The health checker exists before the source, so that the Consul
	// source can hand it the probe results other instances write.
	if err := sc.newHealth(o); err != nil {
		return sc, err
	}
	if err := sc.startSource(ctx, o); err != nil {
		return sc, err
	}
	sc.healthErr = make(chan error, 1)
	go func() { sc.healthErr <- sc.health.Run(ctx) }()
	sc.fleetErr = make(chan error, 1)
	go func() { sc.fleetErr <- sc.fleet.Run(ctx) }()
	sc.drain = o.drainTimeout
	if err := sc.startGRPC(ctx, o, tp); err != nil {
		return sc, err
	}
	if err := sc.startAdmin(o.adminAddr); err != nil {
		return sc, err
	}
	return sc, sc.startPprof(o.pprofAddr)
}

// startTelemetry sets up OpenTelemetry, the call log and the telemetry
// that reads the store and the key health; it returns the tracer provider
// of the gRPC server.
func (sc *sidecar) startTelemetry(ctx context.Context, callLogDest string, stdout io.Writer) (trace.TracerProvider, error) {
	tp, mp, otelDown, err := telemetry.SetupOTel(ctx)
	if err != nil {
		return nil, fmt.Errorf("opentelemetry: %w", err)
	}
	sc.otelDown = otelDown
	callLog, err := sc.openCallLog(callLogDest, stdout)
	if err != nil {
		return nil, err
	}
	tel, err := telemetry.New(telemetry.Config{Logger: sc.log, CallLog: callLog, TracerProvider: tp, MeterProvider: mp})
	if err != nil {
		return nil, err
	}
	sc.tel = tel
	st := sc.store
	tel.SetKeyHealth(sc.keyHealth)
	tel.SetModelFilter(func(m string) bool { return st.Read().NamesModel(m) })
	tel.SetConfigInfo(func() telemetry.ConfigInfo {
		s := st.Status()
		return telemetry.ConfigInfo{Generation: s.Generation, Source: s.Source, Stale: s.Stale, StaleSince: s.StaleSince, Refused: len(s.Refused),
			Counters: sc.sourceCounters()}
	})
	tel.SetAlerts(func() telemetry.Alerts {
		a := st.Read().Settings().Alerts
		return telemetry.Alerts{ErrorRate: a.ErrorRate, Usage: a.Usage}
	})
	return tp, nil
}

// openCallLog opens --call-log: nil for "", stdout for "-", else the file
// (appended to, closed by close).
func (sc *sidecar) openCallLog(dest string, stdout io.Writer) (io.Writer, error) {
	switch dest {
	case "":
		return nil, nil
	case "-":
		return stdout, nil
	}
	f, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--call-log: %w", err)
	}
	sc.callLog = f
	return f, nil
}

// newHealth creates the health checker (and, with --consul, the Consul
// client that the checker and the source share).
func (sc *sidecar) newHealth(o serveOptions) error {
	if o.consul {
		var err error
		if sc.consul, err = consul.NewClient(api.DefaultConfig()); err != nil {
			return fmt.Errorf("--consul: %w", err)
		}
	}
	if err := sc.newFleet(o); err != nil {
		return err
	}
	hc, err := health.New(health.Config{Store: sc.store, Consul: sc.consul, Prefix: o.consulPrefix, Logger: sc.log,
		OnLeaderPass: sc.fleet.ProbePassed})
	if err != nil {
		return err
	}
	sc.health = hc
	return nil
}

// startGRPC serves ext_proc, Envoy's AccessLogService and the gRPC health
// service on --grpc (with mutual TLS when configured); the health service
// says SERVING once the store is ready.
func (sc *sidecar) startGRPC(ctx context.Context, o serveOptions, tp trace.TracerProvider) error {
	reg, err := sc.startObjects(ctx, o)
	if err != nil {
		return err
	}
	srv, err := extproc.New(extproc.Config{Store: sc.store, Logger: sc.log, Observer: sc.tel, UsageFromBody: o.usageFromBody, Objects: reg})
	if err != nil {
		return err
	}
	if err := sc.tel.RegisterCollector(srv); err != nil {
		return err
	}
	sc.extproc = srv
	go srv.Run(ctx)
	gopts := []grpc.ServerOption{
		// Envoy sends a BUFFERED body in one message; envoy.yaml buffers up
		// to 32 MiB, above grpc-go's 4 MiB default.
		grpc.MaxRecvMsgSize(maxGRPCMessage), grpc.MaxSendMsgSize(maxGRPCMessage),
		extproc.ServerCodec(),
	}
	if o.grpcSpans {
		// keymux's own span covers each request; the stream's span (and
		// the metadata copy and the stats it costs per stream) is opt-in.
		gopts = append(gopts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp))))
	}
	creds, err := o.grpcTLS.serverOption()
	if err != nil {
		return err
	}
	if creds != nil {
		gopts = append(gopts, creds)
	}
	sc.grpc = grpc.NewServer(gopts...)
	extprocv3.RegisterExternalProcessorServer(sc.grpc, srv)
	alsv3.RegisterAccessLogServiceServer(sc.grpc, srv.AccessLogService())
	hs := grpchealth.NewServer()
	sc.grpcHS = hs
	healthpb.RegisterHealthServer(sc.grpc, hs)
	if sc.grpcLis, err = listen(o.grpcAddr); err != nil {
		return fmt.Errorf("--grpc: %w", err)
	}
	go func() {
		if err := sc.grpc.Serve(sc.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			sc.log.Error("grpc server", "error", err)
		}
	}()
	go watchReady(ctx, sc.store, hs)
	return nil
}

// startAdmin serves the admin HTTP endpoints on addr.
func (sc *sidecar) startAdmin(addr string) error {
	var err error
	if sc.adminLis, err = listen(addr); err != nil {
		return fmt.Errorf("--admin: %w", err)
	}
	sc.admin = &http.Server{Handler: sc.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := sc.admin.Serve(sc.adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			sc.log.Error("admin server", "error", err)
		}
	}()
	return nil
}

// watchReady keeps the gRPC health status in step with the store.
func watchReady(ctx context.Context, st *store.Store, hs *grpchealth.Server) {
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if st.Ready() {
			hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			hs.SetServingStatus("envoy.service.ext_proc.v3.ExternalProcessor", healthpb.HealthCheckResponse_SERVING)
		}
		select {
		case <-ctx.Done():
			hs.Shutdown()
			return
		case <-t.C:
		}
	}
}

func listen(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(p) // a stale socket of an earlier run
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return net.Listen("tcp", addr)
}

func (sc *sidecar) grpcAddr() string {
	if sc.grpcLis.Addr().Network() == "unix" {
		return "unix:" + sc.grpcLis.Addr().String()
	}
	return sc.grpcLis.Addr().String()
}

func (sc *sidecar) adminAddr() string { return sc.adminLis.Addr().String() }

func (sc *sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !sc.store.Ready() {
			http.Error(w, "not ready: no configuration loaded yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		type healthDoc struct {
			Stats health.Stats       `json:"stats"`
			Keys  []health.KeyStatus `json:"keys"`
		}
		_ = enc.Encode(struct {
			Version string `json:"version"`
			Ready   bool   `json:"ready"`
			store.Status
			Counters  *telemetry.SourceCounters `json:"source_counters,omitempty"`
			Health    healthDoc                 `json:"health"`
			AccessLog extproc.AccessLogStatus   `json:"access_log"`
			Fleet     fleet.Status              `json:"fleet"`
		}{Version, sc.store.Ready(), sc.store.Status(), sc.sourceCounters(), healthDoc{sc.health.Stats(), sc.health.Snapshot()}, sc.extproc.AccessLogStatus(),
			sc.fleet.Status()})
	})
	mux.Handle("GET /stats", sc.tel.StatsHandler())
	mux.Handle("GET /metrics", sc.tel.MetricsHandler())
	return mux
}

// sourceCounters are the Consul source's totals for /status and /metrics
// (nil for the other sources, which keep none).
func (sc *sidecar) sourceCounters() *telemetry.SourceCounters {
	src := sc.consulSrc.Load()
	if src == nil {
		return nil
	}
	return &telemetry.SourceCounters{Refusals: src.RefusedTotal(), ReadErrors: src.Failures()}
}

// keyHealth is every key's state for /stats and the key gauges.
func (sc *sidecar) keyHealth() []telemetry.KeyHealth {
	if sc.health == nil {
		return nil
	}
	keys := sc.health.Snapshot()
	snap := sc.store.Read()
	out := make([]telemetry.KeyHealth, len(keys))
	for i, k := range keys {
		out[i] = telemetry.KeyHealth{ID: k.ID, State: k.State, Until: k.Until, Requests: k.Requests, Errors: k.Errors, Tokens: k.Tokens}
		if e := snap.Key(k.ID); e != nil {
			out[i].Ejections, out[i].Cooldowns = e.RT.Ejections(), e.RT.Cooldowns()
			out[i].RateLimitHeaderErrors = e.RT.BadHeaders()
			out[i].Models = modelHealth(snap, e, time.Now())
		}
	}
	return out
}

// modelHealth is key e's state per model the configuration names (metric
// labels stay bounded whatever models clients ask for).
func modelHealth(snap *store.Snapshot, e *store.Entry, now time.Time) []telemetry.ModelHealth {
	var out []telemetry.ModelHealth
	probedAt := e.RT.State().ProbedAt
	for _, m := range e.RT.Models() {
		if !snap.NamesModel(m.Model) {
			continue
		}
		v := m.View(probedAt, now)
		out = append(out, telemetry.ModelHealth{Model: v.Model, State: v.State, Until: v.Until,
			Requests: headroomBudget(v.Headroom.Requests), Tokens: headroomBudget(v.Headroom.Tokens)})
	}
	return out
}

// headroomBudget is b for /stats and /metrics: what remains until the
// reset, the whole limit once it has passed; nil when neither is known.
func headroomBudget(b policy.Budget) *telemetry.HeadroomBudget {
	switch {
	case b.Known:
		return &telemetry.HeadroomBudget{Limit: b.Limit, Remaining: b.Remaining, Reset: b.Reset}
	case b.Limit > 0:
		return &telemetry.HeadroomBudget{Limit: b.Limit, Remaining: b.Limit}
	}
	return nil
}

// close stops everything in reverse order, waiting boundedly. The gRPC
// health service says NOT_SERVING first; then the open ext_proc streams
// and the access-log entries of their calls are waited for (--drain-timeout).
func (sc *sidecar) close() error {
	if sc.grpcHS != nil {
		sc.grpcHS.Shutdown() // NOT_SERVING from now on
	}
	if sc.extproc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), sc.drain)
		if err := sc.extproc.Drain(ctx); err != nil {
			sc.log.Warn("drain incomplete: calls booked without their access-log entry", "error", err)
		}
		cancel()
	}
	if sc.grpc != nil {
		stopped := make(chan struct{})
		go func() { sc.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			sc.grpc.Stop()
		}
	}
	sc.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if sc.admin != nil {
		errs = append(errs, sc.admin.Shutdown(ctx))
	}
	if sc.pprof != nil {
		errs = append(errs, sc.pprof.Close())
	}
	for _, ch := range []chan error{sc.sourceErr, sc.healthErr, sc.fleetErr} {
		if ch != nil {
			if err := <-ch; !shutdownOK(err) {
				errs = append(errs, err)
			}
		}
	}
	if sc.tel != nil {
		errs = append(errs, sc.tel.Shutdown(ctx))
	}
	if sc.otelDown != nil {
		errs = append(errs, sc.otelDown(ctx))
	}
	if sc.callLog != nil {
		errs = append(errs, sc.callLog.Close())
	}
	return errors.Join(errs...)
}
