package emulator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	jsonmetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	jwtauthnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	ssemetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyhmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keymux/keymux/internal/backoff"

	// The emulator loads bootstraps through package envoy, which registers
	// every extension type the shipped YAML may carry.
	_ "github.com/keymux/keymux/envoy"
)

// Config configures an Emulator.
type Config struct {
	// Bootstrap is the Envoy v3 bootstrap to run (envoy.LoadBootstrap).
	Bootstrap *bootstrapv3.Bootstrap
	// ListenAddr replaces the first listener's address ("127.0.0.1:0" in tests).
	ListenAddr string
	// ClusterAddrs overrides a static cluster's address by cluster name:
	// "127.0.0.1:PORT" or "unix:/path/to.sock".
	ClusterAddrs map[string]string
	// UpstreamTLS, when set, replaces the certificate validation of TLS
	// upstreams (RootCAs in tests). nil = what the cluster configures.
	UpstreamTLS *tls.Config
	// Logger receives debug events; nil discards them.
	Logger *slog.Logger
	// AccessLog, when set, receives every access log line instead of the
	// configured file or stdout.
	AccessLog io.Writer
}

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("emulator closed")

// defaultBufferLimit is Envoy's per_connection_buffer_limit_bytes default.
const defaultBufferLimit = 1 << 20

// Emulator is one Envoy listener with its HTTP connection manager, running
// the configuration of a bootstrap.
type Emulator struct {
	log                  *slog.Logger
	cfg                  Config
	listenAddr           string
	bufferLimit          int
	hcm                  *hcmv3.HttpConnectionManager
	upgrades             map[string]bool // upgrade_configs: type (lower case) → enabled
	routes               *routeTable
	filters              []*httpFilter
	clusters             map[string]*cluster
	grpcConns            map[string]*grpc.ClientConn
	accessLogs           []*accessLogger
	grpcLogs             []*grpcAccessLogger
	serverName           string
	early                []*mutationrulesv3.HeaderMutation
	suppressEnvoyHeaders bool
	// sleep waits out a retry back-off and randN draws its jitter in
	// [0, n); tests replace them.
	sleep func(ctx context.Context, d time.Duration) bool
	randN func(n uint64) uint64

	mu       sync.Mutex
	ln       net.Listener
	srv      *http.Server
	closed   bool
	bg       sync.WaitGroup // ext_proc stream closers and server goroutine
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

// filterKind is an HTTP filter the emulator knows.
type filterKind int

const (
	filterExtProc filterKind = iota
	filterDFP
	filterRouter
	filterJWT
	filterHeaderMutation
	filterJSONMeta
	filterSSEMeta
)

type httpFilter struct {
	name     string
	kind     filterKind
	disabled bool // HttpFilter.disabled: on only where a route enables it
	extProc  *extProcFilter
	jwt      *jwtFilter
	hm       *headermutationv3.HeaderMutation
	jsonMeta *jsonMetaFilter
	sseMeta  *sseMetaFilter
}

// New validates cfg and builds the emulator; it does not listen yet.
func New(cfg Config) (*Emulator, error) {
	if cfg.Bootstrap == nil {
		return nil, errors.New("emulator: config: Bootstrap is nil")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Emulator{log: log, cfg: cfg, clusters: map[string]*cluster{}, grpcConns: map[string]*grpc.ClientConn{},
		sleep: backoff.Sleep, randN: defaultRandN}
	e.bgCtx, e.bgCancel = context.WithCancel(context.Background())
	sr := cfg.Bootstrap.GetStaticResources()
	if len(sr.GetListeners()) == 0 {
		return nil, errors.New("emulator: bootstrap has no static listener")
	}
	l := sr.GetListeners()[0]
	e.listenAddr = cfg.ListenAddr
	if e.listenAddr == "" {
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			return nil, fmt.Errorf("emulator: listener %q: only socket_address listeners are supported", l.GetName())
		}
		e.listenAddr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	}
	e.bufferLimit = defaultBufferLimit
	if v := l.GetPerConnectionBufferLimitBytes(); v != nil {
		e.bufferLimit = int(v.GetValue())
	}
	hcm, err := findHCM(l)
	if err != nil {
		return nil, err
	}
	e.hcm = hcm
	if e.upgrades, err = upgradeTypes(hcm); err != nil {
		return nil, fmt.Errorf("emulator: http_connection_manager: %w", err)
	}
	e.serverName = hcm.GetServerName()
	if e.serverName == "" {
		e.serverName = "envoy"
	}
	for _, c := range sr.GetClusters() {
		cl, err := newCluster(c, cfg)
		if err != nil {
			return nil, fmt.Errorf("emulator: cluster %q: %w", c.GetName(), err)
		}
		e.clusters[c.GetName()] = cl
	}
	for _, c := range sr.GetClusters() {
		if err := e.newUpstreamFilters(e.clusters[c.GetName()]); err != nil {
			return nil, fmt.Errorf("emulator: cluster %q: %w", c.GetName(), err)
		}
	}
	for i, ext := range hcm.GetEarlyHeaderMutationExtensions() {
		m, err := anypb.UnmarshalNew(ext.GetTypedConfig(), proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("emulator: early_header_mutation_extensions[%d]: %w", i, err)
		}
		hm, ok := m.(*earlyhmv3.HeaderMutation)
		if !ok {
			return nil, fmt.Errorf("emulator: early_header_mutation_extensions[%d]: %s is not emulated", i, m.ProtoReflect().Descriptor().FullName())
		}
		e.early = append(e.early, hm.GetMutations()...)
	}
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return nil, errors.New("emulator: http_connection_manager: only an inline route_config is supported (no rds)")
	}
	if e.routes, err = newRouteTable(rc); err != nil {
		return nil, fmt.Errorf("emulator: route_config: %w", err)
	}
	for i, hf := range hcm.GetHttpFilters() {
		f, err := e.newFilter(hf)
		if err != nil {
			return nil, fmt.Errorf("emulator: http_filters[%d] %q: %w", i, hf.GetName(), err)
		}
		e.filters = append(e.filters, f)
	}
	for i, al := range hcm.GetAccessLog() {
		if al.GetTypedConfig().MessageIs(&grpcalsv3.HttpGrpcAccessLogConfig{}) {
			var c grpcalsv3.HttpGrpcAccessLogConfig
			if err := al.GetTypedConfig().UnmarshalTo(&c); err != nil {
				return nil, fmt.Errorf("emulator: access_log[%d]: %w", i, err)
			}
			g, err := e.newGRPCAccessLogger(&c)
			if err != nil {
				return nil, fmt.Errorf("emulator: access_log[%d]: %w", i, err)
			}
			e.grpcLogs = append(e.grpcLogs, g)
			continue
		}
		a, err := newAccessLogger(al, cfg.AccessLog)
		if err != nil {
			return nil, fmt.Errorf("emulator: access_log[%d]: %w", i, err)
		}
		e.accessLogs = append(e.accessLogs, a)
	}
	return e, nil
}

func findHCM(l *listenerv3.Listener) (*hcmv3.HttpConnectionManager, error) {
	for _, fc := range l.GetFilterChains() {
		for _, nf := range fc.GetFilters() {
			if nf.GetTypedConfig() == nil {
				continue
			}
			m, err := anypb.UnmarshalNew(nf.GetTypedConfig(), proto.UnmarshalOptions{})
			if err != nil {
				return nil, fmt.Errorf("emulator: listener %q filter %q: %w", l.GetName(), nf.GetName(), err)
			}
			if h, ok := m.(*hcmv3.HttpConnectionManager); ok {
				return h, nil
			}
		}
	}
	return nil, fmt.Errorf("emulator: listener %q has no http_connection_manager", l.GetName())
}

func (e *Emulator) newFilter(hf *hcmv3.HttpFilter) (*httpFilter, error) {
	if hf.GetTypedConfig() == nil {
		return nil, errors.New("filter without typed_config is not supported")
	}
	m, err := anypb.UnmarshalNew(hf.GetTypedConfig(), proto.UnmarshalOptions{})
	if err != nil {
		return nil, err
	}
	f := &httpFilter{name: hf.GetName(), disabled: hf.GetDisabled()}
	switch c := m.(type) {
	case *extprocv3.ExternalProcessor:
		f.kind = filterExtProc
		if f.extProc, err = e.newExtProcFilter(hf.GetName(), c); err != nil {
			return nil, err
		}
	case *dfpfilterv3.FilterConfig:
		f.kind = filterDFP
	case *routerv3.Router:
		f.kind = filterRouter
		e.suppressEnvoyHeaders = c.GetSuppressEnvoyHeaders()
	case *jwtauthnv3.JwtAuthentication:
		f.kind = filterJWT
		if f.jwt, err = e.newJWTFilter(c); err != nil {
			return nil, err
		}
	case *headermutationv3.HeaderMutation:
		f.kind = filterHeaderMutation
		f.hm = c
	case *jsonmetav3.JsonToMetadata:
		f.kind = filterJSONMeta
		if f.jsonMeta, err = newJSONMetaFilter(c); err != nil {
			return nil, err
		}
	case *ssemetav3.SseToMetadata:
		f.kind = filterSSEMeta
		if f.sseMeta, err = newSSEMetaFilter(c); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("filter type %s is not emulated", m.ProtoReflect().Descriptor().FullName())
	}
	return f, nil
}

// grpcConn returns the (lazily connecting) client connection for a cluster.
func (e *Emulator) grpcConn(clusterName string) (*grpc.ClientConn, error) {
	if cc, ok := e.grpcConns[clusterName]; ok {
		return cc, nil
	}
	cl, ok := e.clusters[clusterName]
	if !ok {
		return nil, fmt.Errorf("grpc_service cluster %q is not defined", clusterName)
	}
	target, err := cl.grpcTarget()
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(target, cl.grpcDialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("grpc client for cluster %q: %w", clusterName, err)
	}
	e.grpcConns[clusterName] = cc
	return cc, nil
}

// Start listens on the configured address and serves until ctx ends or
// Close is called. It returns once the listener is open.
func (e *Emulator) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if e.ln != nil {
		return errors.New("emulator: already started")
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", e.listenAddr)
	if err != nil {
		return fmt.Errorf("emulator: listen %s: %w", e.listenAddr, err)
	}
	e.ln = ln
	e.srv = &http.Server{
		Handler:           http.HandlerFunc(e.serveHTTP),
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		// Envoy's listener speaks HTTP/1.1 here; no TLS, no h2c.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	e.log.Info("envoy emulator listening", "addr", ln.Addr().String())
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		_ = e.srv.Serve(ln)
	}()
	for _, g := range e.grpcLogs {
		e.bg.Add(1)
		go func() {
			defer e.bg.Done()
			g.run(e.bgCtx)
		}()
	}
	stop := context.AfterFunc(ctx, func() { _ = e.Close() })
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		<-e.bgCtx.Done()
		stop()
	}()
	return nil
}

// Addr is the listening address, "127.0.0.1:PORT".
func (e *Emulator) Addr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ln == nil {
		return e.listenAddr
	}
	return e.ln.Addr().String()
}

// URL is "http://" + Addr().
func (e *Emulator) URL() string { return "http://" + e.Addr() }

// Close stops listening, aborts in-flight requests and ext_proc streams,
// and waits for every goroutine the emulator started.
func (e *Emulator) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		e.bg.Wait()
		return nil
	}
	e.closed = true
	srv := e.srv
	e.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Close()
	}
	e.bgCancel()
	e.bg.Wait()
	for _, cc := range e.grpcConns {
		_ = cc.Close()
	}
	for _, c := range e.clusters {
		c.close()
	}
	for _, a := range e.accessLogs {
		a.close()
	}
	return err
}

// socketAddr renders an Envoy address as a dial target.
func socketAddr(a *corev3.Address) (network, addr string, err error) {
	switch {
	case a.GetSocketAddress() != nil:
		sa := a.GetSocketAddress()
		return "tcp", net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), nil
	case a.GetPipe() != nil:
		return "unix", a.GetPipe().GetPath(), nil
	}
	return "", "", errors.New("unsupported address kind")
}
