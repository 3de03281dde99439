package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const dfpClusterType = "envoy.clusters.dynamic_forward_proxy"

type endpoint struct{ network, addr string }

// cluster is an upstream cluster: a fixed endpoint list (STATIC, STRICT_DNS,
// LOGICAL_DNS) or a dynamic forward proxy that connects to the request's
// :authority.
type cluster struct {
	name           string
	dfp            bool
	endpoints      []endpoint
	tls            *tls.Config
	connectTimeout time.Duration
	transport      *http.Transport
	rr             atomic.Uint64
	upFilterCfgs   []*hcmv3.HttpFilter // HttpProtocolOptions.http_filters
	upFilters      []*httpFilter       // built from upFilterCfgs, upstream_codec left out
}

func newCluster(c *clusterv3.Cluster, cfg Config) (*cluster, error) {
	cl := &cluster{name: c.GetName(), connectTimeout: 5 * time.Second}
	if c.GetConnectTimeout() != nil {
		cl.connectTimeout = c.GetConnectTimeout().AsDuration()
	}
	if ct := c.GetClusterType(); ct != nil {
		if ct.GetName() != dfpClusterType {
			return nil, fmt.Errorf("cluster_type %q is not emulated", ct.GetName())
		}
		cl.dfp = true
	} else {
		switch c.GetType() {
		case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		default:
			if _, ok := cfg.ClusterAddrs[c.GetName()]; !ok {
				return nil, fmt.Errorf("discovery type %s is not emulated", c.GetType())
			}
		}
		for _, lep := range c.GetLoadAssignment().GetEndpoints() {
			for _, ep := range lep.GetLbEndpoints() {
				network, addr, err := socketAddr(ep.GetEndpoint().GetAddress())
				if err != nil {
					return nil, fmt.Errorf("load_assignment: %w", err)
				}
				cl.endpoints = append(cl.endpoints, endpoint{network, addr})
			}
		}
	}
	if o, ok := cfg.ClusterAddrs[c.GetName()]; ok {
		if p, isUnix := strings.CutPrefix(o, "unix:"); isUnix {
			cl.endpoints = []endpoint{{"unix", p}}
		} else {
			cl.endpoints = []endpoint{{"tcp", o}}
		}
	}
	for name, a := range c.GetTypedExtensionProtocolOptions() {
		var hpo upstreamhttpv3.HttpProtocolOptions
		if !a.MessageIs(&hpo) {
			continue
		}
		if err := a.UnmarshalTo(&hpo); err != nil {
			return nil, fmt.Errorf("typed_extension_protocol_options %q: %w", name, err)
		}
		cl.upFilterCfgs = hpo.GetHttpFilters()
	}
	// A cluster without endpoints is accepted, as Envoy accepts it: its
	// requests get the router's 503 "no healthy upstream" (UH).
	if ts := c.GetTransportSocket(); ts != nil && ts.GetTypedConfig() != nil {
		m, err := anypb.UnmarshalNew(ts.GetTypedConfig(), proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		utc, ok := m.(*tlsv3.UpstreamTlsContext)
		if !ok {
			return nil, fmt.Errorf("transport_socket %s is not emulated", m.ProtoReflect().Descriptor().FullName())
		}
		if cl.tls, err = upstreamTLS(utc, cfg.UpstreamTLS); err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
	}
	cl.transport = &http.Transport{
		DialContext:         cl.dial,
		TLSClientConfig:     cl.tls,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     time.Hour,
	}
	return cl, nil
}

// upstreamTLS builds the client TLS config of an UpstreamTlsContext. Like
// Envoy, no validation_context means the peer certificate is not verified.
func upstreamTLS(utc *tlsv3.UpstreamTlsContext, override *tls.Config) (*tls.Config, error) {
	var t *tls.Config
	vc := utc.GetCommonTlsContext().GetValidationContext()
	if cvc := utc.GetCommonTlsContext().GetCombinedValidationContext(); cvc != nil {
		vc = cvc.GetDefaultValidationContext()
	}
	switch {
	case override != nil:
		t = override.Clone()
	case vc == nil:
		t = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // Envoy does not verify without a validation_context
	case vc.GetTrustedCa() != nil:
		pem, err := dataSource(vc.GetTrustedCa())
		if err != nil {
			return nil, fmt.Errorf("trusted_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("trusted_ca: no certificate found")
		}
		t = &tls.Config{RootCAs: pool}
	default:
		t = &tls.Config{} // system roots
	}
	t.MinVersion = tls.VersionTLS12
	if certs := utc.GetCommonTlsContext().GetTlsCertificates(); len(certs) > 0 {
		// The client certificate (mTLS); only the first is used.
		chain, err1 := dataSource(certs[0].GetCertificateChain())
		key, err2 := dataSource(certs[0].GetPrivateKey())
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("tls_certificates: %w", err)
		}
		c, err := tls.X509KeyPair(chain, key)
		if err != nil {
			return nil, fmt.Errorf("tls_certificates: %w", err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	if sni := utc.GetSni(); sni != "" {
		t.ServerName = sni
	}
	t.NextProtos = []string{"http/1.1"}
	return t, nil
}

func dataSource(ds *corev3.DataSource) ([]byte, error) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		return os.ReadFile(s.Filename)
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	case *corev3.DataSource_EnvironmentVariable:
		return []byte(os.Getenv(s.EnvironmentVariable)), nil
	}
	return nil, errors.New("empty data source")
}

// dial connects to the cluster: a dynamic forward proxy dials addr (the
// request's authority), other clusters their endpoints in round robin.
func (c *cluster) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: c.connectTimeout}
	if c.dfp && len(c.endpoints) == 0 {
		return d.DialContext(ctx, network, addr)
	}
	ep := c.endpoints[int(c.rr.Add(1)-1)%len(c.endpoints)]
	return d.DialContext(ctx, ep.network, ep.addr)
}

// hostFor is the upstream host (UPSTREAM_HOST) a request to authority uses.
func (c *cluster) hostFor(authority string) string {
	if c.dfp && len(c.endpoints) == 0 {
		return c.dfpAddr(authority)
	}
	return c.endpoints[0].addr
}

func (c *cluster) dfpAddr(authority string) string {
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority
	}
	if c.tls != nil {
		return net.JoinHostPort(authority, "443")
	}
	return net.JoinHostPort(authority, "80")
}

func (c *cluster) scheme() string {
	if c.tls != nil {
		return "https"
	}
	return "http"
}

func (c *cluster) grpcTarget() (string, error) {
	if len(c.endpoints) == 0 {
		return "", fmt.Errorf("cluster %q has no endpoint for a gRPC service", c.name)
	}
	ep := c.endpoints[0]
	if ep.network == "unix" {
		return "unix:" + ep.addr, nil
	}
	return "passthrough:///" + ep.addr, nil
}

func (c *cluster) grpcDialOptions() []grpc.DialOption {
	creds := insecure.NewCredentials()
	if c.tls != nil {
		t := c.tls.Clone()
		t.NextProtos = nil // gRPC negotiates h2 itself
		creds = credentials.NewTLS(t)
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: c.connectTimeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
	}
}

func (c *cluster) close() {
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// newUpstreamFilters builds a cluster's upstream HTTP filter chain: ext_proc
// and header_mutation filters, ending with envoy.filters.http.upstream_codec.
func (e *Emulator) newUpstreamFilters(cl *cluster) error {
	n := len(cl.upFilterCfgs)
	if n == 0 {
		return nil
	}
	if !cl.upFilterCfgs[n-1].GetTypedConfig().MessageIs(&upstreamcodecv3.UpstreamCodec{}) {
		return errors.New("upstream http_filters must end with envoy.filters.http.upstream_codec")
	}
	for i, hf := range cl.upFilterCfgs[:n-1] {
		if hf.GetTypedConfig().MessageIs(&upstreamcodecv3.UpstreamCodec{}) {
			return fmt.Errorf("upstream http_filters[%d] %q: upstream_codec must be last", i, hf.GetName())
		}
		f, err := e.newFilter(hf)
		if err != nil {
			return fmt.Errorf("upstream http_filters[%d] %q: %w", i, hf.GetName(), err)
		}
		if f.kind != filterExtProc && f.kind != filterHeaderMutation {
			return fmt.Errorf("upstream http_filters[%d] %q: only ext_proc and header_mutation are emulated upstream", i, hf.GetName())
		}
		cl.upFilters = append(cl.upFilters, f)
	}
	return nil
}
