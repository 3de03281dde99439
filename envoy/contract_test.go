package envoy_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	dfpclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	jsonparserv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	jsonmetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	ssemetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keymux/keymux/envoy"
	"github.com/keymux/keymux/extproc"
)

// The Envoy ⇄ keymux routing contract (envoy/README.md, "Names keymux and
// these files share"). keymux's extproc
// package pins the same values on its side.
const (
	listenerName      = "keymux_listener"
	extProcCluster    = "keymux_extproc"
	httpsCluster      = "keymux_upstream_https"
	httpCluster       = "keymux_upstream_http"
	upstreamHeader    = "x-keymux-upstream"
	metadataNamespace = "keymux"
	jwtPayloadHeader  = "x-jwt-payload"
	extProcFilter     = "envoy.filters.http.ext_proc"
	dfpFilter         = "envoy.filters.http.dynamic_forward_proxy"
	jsonMetaFilter    = "envoy.filters.http.json_to_metadata"
	sseMetaFilter     = "envoy.filters.http.sse_to_metadata"
	usageNamespace    = "keymux.usage"
	maxPromptBytes    = 32 << 20 // the multipart audio forms (25 MB files) included
	systemCABundle    = "/etc/ssl/certs/ca-certificates.crt"
	unixSocketPath    = "/var/run/keymux/extproc.sock"
)

var metadataFields = []string{"key_id", "model_original", "model_final", "client_id"}

func mustUnpack[T proto.Message](t *testing.T, a *anypb.Any) T {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
	}
	v, ok := m.(T)
	if !ok {
		var zero T
		t.Fatalf("typed_config is %T, want %T", m, zero)
	}
	return v
}

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := envoy.LoadBootstrap(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// theHCM returns the only listener's only HttpConnectionManager.
func theHCM(t *testing.T, b *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || len(ls[0].GetFilterChains()) != 1 || len(ls[0].GetFilterChains()[0].GetFilters()) != 1 {
		t.Fatalf("want one listener with one filter chain holding one filter")
	}
	return mustUnpack[*hcmv3.HttpConnectionManager](t, ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
}

func clusterByName(t *testing.T, cs []*clusterv3.Cluster, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range cs {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

func filterByName(t *testing.T, fs []*hcmv3.HttpFilter, name string) *hcmv3.HttpFilter {
	t.Helper()
	for _, f := range fs {
		if f.GetName() == name {
			return f
		}
	}
	t.Fatalf("no http filter %q", name)
	return nil
}

// matchRoute picks the first route matching path and headers, the way Envoy
// walks a virtual host. It refuses match features it does not model, so a
// config change cannot make it pass by accident.
func matchRoute(t *testing.T, routes []*routev3.Route, path string, hdr map[string]string) *routev3.Route {
	t.Helper()
	for _, r := range routes {
		m := r.GetMatch()
		var ok bool
		switch ps := m.GetPathSpecifier().(type) {
		case *routev3.RouteMatch_Prefix:
			ok = strings.HasPrefix(path, ps.Prefix)
		case *routev3.RouteMatch_PathSeparatedPrefix:
			p := ps.PathSeparatedPrefix
			ok = path == p || strings.HasPrefix(path, p+"/") || strings.HasPrefix(path, p+"?")
		default:
			t.Fatalf("route %q: path match %T not modelled by this test", r.GetName(), ps)
		}
		if len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil || m.GetGrpc() != nil {
			t.Fatalf("route %q: match feature not modelled by this test", r.GetName())
		}
		for _, h := range m.GetHeaders() {
			exact := h.GetStringMatch().GetExact()
			if exact == "" || h.GetInvertMatch() {
				t.Fatalf("route %q: header match %v not modelled by this test", r.GetName(), h)
			}
			if v, present := hdr[h.GetName()]; !present || v != exact {
				ok = false
			}
		}
		if ok {
			return r
		}
	}
	return nil
}

// checkExtProc pins the ext_proc settings of the contract.
// checkGRPCAccessLog: every request's entry goes to keymux's
// AccessLogService on the ext_proc cluster, flushed often enough for health.
func checkGRPCAccessLog(t *testing.T, c *grpcalsv3.HttpGrpcAccessLogConfig) {
	t.Helper()
	cc := c.GetCommonConfig()
	if got := cc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != extProcCluster {
		t.Errorf("http_grpc access log cluster = %q, want %q", got, extProcCluster)
	}
	if d := cc.GetBufferFlushInterval(); d == nil || d.AsDuration() > 200*time.Millisecond {
		t.Errorf("http_grpc buffer_flush_interval = %v, want <= 200ms", d)
	}
}

// checkUsageRules: the JSON and SSE filters write the token counts keymux
// reads (keymux.usage input_tokens and output_tokens) as numbers.
func checkUsageRules(t *testing.T, j *jsonmetav3.JsonToMetadata, s *ssemetav3.SseToMetadata) {
	t.Helper()
	keys := map[string]int{}
	for _, r := range j.GetResponseRules().GetRules() {
		if kv := r.GetOnPresent(); kv.GetMetadataNamespace() == usageNamespace {
			keys["json:"+kv.GetKey()]++
		}
	}
	var parser jsonparserv3.JsonContentParser
	if err := s.GetResponseRules().GetContentParser().GetTypedConfig().UnmarshalTo(&parser); err != nil {
		t.Fatalf("sse_to_metadata content parser: %v", err)
	}
	for _, r := range parser.GetRules() {
		if kv := r.GetRule().GetOnPresent(); kv.GetMetadataNamespace() == usageNamespace {
			keys["sse:"+kv.GetKey()]++
		}
	}
	for _, k := range []string{"json:input_tokens", "json:output_tokens", "sse:input_tokens", "sse:output_tokens"} {
		if keys[k] == 0 {
			t.Errorf("no usage rule writes %s", k)
		}
	}
}

func checkExtProc(t *testing.T, c *extprocv3.ExternalProcessor) {
	t.Helper()
	if got := c.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != extProcCluster {
		t.Errorf("ext_proc cluster = %q, want %q", got, extProcCluster)
	}
	if c.GetGrpcService().GetTimeout() != nil {
		t.Errorf("ext_proc grpc_service.timeout set: it would cut long streams")
	}
	pm := c.GetProcessingMode()
	got := []string{pm.GetRequestHeaderMode().String(), pm.GetRequestBodyMode().String(), pm.GetResponseHeaderMode().String(),
		pm.GetResponseBodyMode().String(), pm.GetRequestTrailerMode().String(), pm.GetResponseTrailerMode().String()}
	want := []string{"SEND", "BUFFERED", "SEND", "NONE", "SKIP", "SKIP"}
	if !slices.Equal(got, want) {
		t.Errorf("processing modes (req hdr, req body, resp hdr, resp body, req trl, resp trl) = %v, want %v", got, want)
	}
	if !c.GetAllowModeOverride() {
		t.Error("allow_mode_override = false, want true (keymux switches SSE responses to STREAMED)")
	}
	if c.GetFailureModeAllow() {
		t.Error("failure_mode_allow = true, want false (fail closed)")
	}
	if got := c.GetMessageTimeout().AsDuration(); got != 5*time.Second {
		t.Errorf("message_timeout = %v, want 5s (200ms default times out on multi-MB bodies)", got)
	}
	if c.GetMaxMessageTimeout() != nil {
		t.Errorf("max_message_timeout = %v: keymux never sends override_message_timeout, drop it", c.GetMaxMessageTimeout().AsDuration())
	}
	if !c.GetMutationRules().GetAllowAllRouting().GetValue() {
		t.Error("mutation_rules.allow_all_routing != true: keymux could not set :authority")
	}
	if !c.GetMutationRules().GetAllowEnvoy().GetValue() {
		t.Error("mutation_rules.allow_envoy != true: keymux could not set x-envoy-max-retries")
	}
	if got := c.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); !slices.Equal(got, []string{metadataNamespace}) {
		t.Errorf("receiving_namespaces.untyped = %v, want [%s]", got, metadataNamespace)
	}
	// keymux's jwt_claim mode reads the verified claims there and nowhere else.
	if got := c.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(); !slices.Equal(got, []string{extproc.JWTMetadataNamespace}) {
		t.Errorf("forwarding_namespaces.untyped = %v, want [%s]", got, extproc.JWTMetadataNamespace)
	}
	if c.GetRouteCacheAction() != extprocv3.ExternalProcessor_DEFAULT || c.GetDisableClearRouteCache() {
		t.Error("route cache clearing must stay on: it is how x-keymux-upstream re-routes")
	}
}

// checkUpstreamRoute pins one forward-proxy route.
func checkUpstreamRoute(t *testing.T, r *routev3.Route, cluster string, mustRemove ...string) {
	t.Helper()
	if r == nil {
		t.Fatalf("no route for %s", cluster)
	}
	if got := r.GetRoute().GetCluster(); got != cluster {
		t.Errorf("route %q cluster = %q, want %q", r.GetName(), got, cluster)
	}
	for _, h := range append([]string{upstreamHeader}, mustRemove...) {
		if !slices.Contains(r.GetRequestHeadersToRemove(), h) {
			t.Errorf("route %q request_headers_to_remove = %v, want it to contain %q", r.GetName(), r.GetRequestHeadersToRemove(), h)
		}
	}
	a := r.GetRoute()
	if got := a.GetTimeout().AsDuration(); got != 600*time.Second {
		t.Errorf("route %q timeout = %v, want 600s", r.GetName(), got)
	}
	if got := a.GetIdleTimeout().AsDuration(); got != 300*time.Second {
		t.Errorf("route %q idle_timeout = %v, want 300s", r.GetName(), got)
	}
	checkRetryPolicy(t, r.GetName(), a.GetRetryPolicy())
}

// checkUploadRoute pins an upload route: keymux's upload value of
// x-keymux-upstream, the forward-proxy cluster, no retry policy (the
// router would keep a copy of the body for retries).
func checkUploadRoute(t *testing.T, r *routev3.Route, cluster string) {
	t.Helper()
	if r == nil {
		t.Fatalf("no upload route for %s", cluster)
	}
	if got := r.GetRoute().GetCluster(); got != cluster {
		t.Errorf("route %q cluster = %q, want %q", r.GetName(), got, cluster)
	}
	if !slices.Contains(r.GetRequestHeadersToRemove(), upstreamHeader) {
		t.Errorf("route %q does not remove %s", r.GetName(), upstreamHeader)
	}
	if r.GetRoute().GetRetryPolicy() != nil || r.GetRoute().GetTimeout().AsDuration() != 600*time.Second {
		t.Errorf("route %q: retry_policy %v, timeout %v; want none and 600s", r.GetName(), r.GetRoute().GetRetryPolicy(), r.GetRoute().GetTimeout().AsDuration())
	}
}

// checkRetryPolicy pins what Envoy may retry: a key's failure or what was
// provably not processed, never a client error nor a 500/504; no retry
// unless keymux's x-envoy-max-retries asks for one.
func checkRetryPolicy(t *testing.T, route string, p *routev3.RetryPolicy) {
	t.Helper()
	if got, want := p.GetRetryOn(), "retriable-status-codes,reset,connect-failure,refused-stream"; got != want {
		t.Errorf("route %q retry_on = %q, want %q", route, got, want)
	}
	if got, want := p.GetRetriableStatusCodes(), []uint32{429, 401, 403, 502, 503}; !slices.Equal(got, want) {
		t.Errorf("route %q retriable_status_codes = %v, want %v", route, got, want)
	}
	if p.GetNumRetries().GetValue() != 0 {
		t.Errorf("route %q num_retries = %d, want 0 (keymux sets x-envoy-max-retries)", route, p.GetNumRetries().GetValue())
	}
}

// checkUpstreamFilters pins a forward-proxy cluster's upstream filter chain:
// keymux's ext_proc on every attempt, marked as the upstream filter by its
// gRPC initial metadata, then the codec.
func checkUpstreamFilters(t *testing.T, c *clusterv3.Cluster, hpo *upstreamhttpv3.HttpProtocolOptions) {
	t.Helper()
	fs := hpo.GetHttpFilters()
	if len(fs) != 2 || fs[0].GetName() != "envoy.filters.http.ext_proc" || fs[1].GetName() != "envoy.filters.http.upstream_codec" {
		t.Fatalf("%s http_filters = %v, want ext_proc then upstream_codec", c.GetName(), fs)
	}
	ep := mustUnpack[*extprocv3.ExternalProcessor](t, fs[0].GetTypedConfig())
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != extProcCluster {
		t.Errorf("%s upstream ext_proc cluster = %q, want %q", c.GetName(), got, extProcCluster)
	}
	md := ep.GetGrpcService().GetInitialMetadata()
	if len(md) != 1 || md[0].GetKey() != extproc.FilterMetadataKey || md[0].GetValue() != extproc.FilterUpstream {
		t.Errorf("%s upstream ext_proc initial_metadata = %v, want %s: %s", c.GetName(), md, extproc.FilterMetadataKey, extproc.FilterUpstream)
	}
	pm := ep.GetProcessingMode()
	got := []string{pm.GetRequestHeaderMode().String(), pm.GetRequestBodyMode().String(), pm.GetResponseHeaderMode().String(), pm.GetResponseBodyMode().String()}
	if want := []string{"SEND", "BUFFERED", "SEND", "NONE"}; !slices.Equal(got, want) {
		t.Errorf("%s upstream processing modes = %v, want %v", c.GetName(), got, want)
	}
	if !ep.GetAllowModeOverride() {
		t.Errorf("%s upstream ext_proc: allow_mode_override = false, want true (keymux turns an upload's body to NONE)", c.GetName())
	}
	if ep.GetFailureModeAllow() || !ep.GetMutationRules().GetAllowAllRouting().GetValue() {
		t.Errorf("%s upstream ext_proc: failure_mode_allow = %v, allow_all_routing = %v; want false, true", c.GetName(), ep.GetFailureModeAllow(), ep.GetMutationRules().GetAllowAllRouting().GetValue())
	}
}

// checkNotRouted pins the JSON 404 for requests keymux did not route.
func checkNotRouted(t *testing.T, r *routev3.Route) {
	t.Helper()
	if r == nil || r.GetDirectResponse() == nil {
		t.Fatalf("route %v: want a direct_response", r)
	}
	dr := r.GetDirectResponse()
	if dr.GetStatus() != 404 {
		t.Errorf("route %q status = %d, want 404", r.GetName(), dr.GetStatus())
	}
	var body struct {
		Error struct {
			Message, Type, Code string
			Param               any
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(dr.GetBody().GetInlineString()), &body); err != nil {
		t.Fatalf("route %q body is not JSON: %v", r.GetName(), err)
	}
	if body.Error.Message == "" || body.Error.Type != "invalid_request_error" || body.Error.Code != "not_found" {
		t.Errorf("route %q body = %+v, want an OpenAI-style not_found error", r.GetName(), body.Error)
	}
	var ct bool
	for _, h := range r.GetResponseHeadersToAdd() {
		if h.GetHeader().GetKey() == "content-type" && h.GetHeader().GetValue() == "application/json" {
			ct = true
		}
	}
	if !ct {
		t.Errorf("route %q does not set content-type: application/json", r.GetName())
	}
}

func checkEarlyMutation(t *testing.T, exts []*anypb.Any, removed ...string) {
	t.Helper()
	var got []string
	for _, a := range exts {
		for _, m := range mustUnpack[*earlyv3.HeaderMutation](t, a).GetMutations() {
			got = append(got, m.GetRemove())
		}
	}
	if !slices.Equal(got, removed) {
		t.Errorf("early header mutation removes %v, want %v", got, removed)
	}
}

func checkDFPCluster(t *testing.T, c *clusterv3.Cluster, tls bool) {
	t.Helper()
	if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("%s lb_policy = %v", c.GetName(), c.GetLbPolicy())
	}
	cfg := mustUnpack[*dfpclusterv3.ClusterConfig](t, c.GetClusterType().GetTypedConfig())
	if cfg.GetDnsCacheConfig().GetName() != "keymux_dns_cache" || cfg.GetAllowInsecureClusterOptions() {
		t.Errorf("%s dns cache = %q, allow_insecure = %v", c.GetName(), cfg.GetDnsCacheConfig().GetName(), cfg.GetAllowInsecureClusterOptions())
	}
	hpo := mustUnpack[*upstreamhttpv3.HttpProtocolOptions](t, c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])
	if u := hpo.GetUpstreamHttpProtocolOptions(); !u.GetAutoSni() || !u.GetAutoSanValidation() {
		t.Errorf("%s: auto_sni/auto_san_validation = %v/%v, want true/true", c.GetName(), u.GetAutoSni(), u.GetAutoSanValidation())
	}
	checkUpstreamFilters(t, c, hpo)
	if !tls {
		if c.GetTransportSocket() != nil {
			t.Errorf("%s has a transport socket, want plain HTTP", c.GetName())
		}
		return
	}
	utc := mustUnpack[*tlsv3.UpstreamTlsContext](t, c.GetTransportSocket().GetTypedConfig())
	if got := utc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); got != systemCABundle {
		t.Errorf("%s trusted_ca = %q, want %q", c.GetName(), got, systemCABundle)
	}
	if utc.GetSni() != "" {
		t.Errorf("%s has a fixed sni %q; auto_sni must choose it per request", c.GetName(), utc.GetSni())
	}
}

func checkExtProcCluster(t *testing.T, c *clusterv3.Cluster, unix bool) {
	t.Helper()
	if c.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("%s type = %v, want STATIC", c.GetName(), c.GetType())
	}
	hpo := mustUnpack[*upstreamhttpv3.HttpProtocolOptions](t, c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])
	if hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("%s does not speak HTTP/2", c.GetName())
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("%s: want exactly one endpoint", c.GetName())
	}
	addr := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	if unix {
		if got := addr.GetPipe().GetPath(); got != unixSocketPath {
			t.Errorf("%s pipe = %q, want %q", c.GetName(), got, unixSocketPath)
		}
		return
	}
	if sa := addr.GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 50051 {
		t.Errorf("%s address = %s:%d, want 127.0.0.1:50051", c.GetName(), sa.GetAddress(), sa.GetPortValue())
	}
}

// TestBootstrapContract reads the shipped bootstraps and checks every value
// the routing contract fixes, so the YAML cannot drift from keymux's code.
func TestBootstrapContract(t *testing.T) {
	for _, tc := range []struct {
		file string
		unix bool
	}{{"envoy.yaml", false}, {"envoy-unix.yaml", true}} {
		t.Run(tc.file, func(t *testing.T) {
			b := loadBootstrap(t, tc.file)
			if sa := b.GetAdmin().GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 9901 {
				t.Errorf("admin = %s:%d, want 127.0.0.1:9901", sa.GetAddress(), sa.GetPortValue())
			}
			l := b.GetStaticResources().GetListeners()[0]
			if sa := l.GetAddress().GetSocketAddress(); l.GetName() != listenerName || sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 10000 {
				t.Errorf("listener %q on %s:%d, want %s on 0.0.0.0:10000", l.GetName(), sa.GetAddress(), sa.GetPortValue(), listenerName)
			}
			if got := l.GetPerConnectionBufferLimitBytes().GetValue(); got < maxPromptBytes {
				t.Errorf("per_connection_buffer_limit_bytes = %d, want >= %d (BUFFERED prompts)", got, maxPromptBytes)
			}

			hcm := theHCM(t, b)
			var early []*anypb.Any
			for _, e := range hcm.GetEarlyHeaderMutationExtensions() {
				early = append(early, e.GetTypedConfig())
			}
			checkEarlyMutation(t, early, upstreamHeader, jwtPayloadHeader)
			// An h2c stream's buffer limit is its window, not the listener's limit.
			h2 := hcm.GetHttp2ProtocolOptions()
			if s, c := h2.GetInitialStreamWindowSize().GetValue(), h2.GetInitialConnectionWindowSize().GetValue(); s == 0 || s > maxPromptBytes || c == 0 || c > maxPromptBytes {
				t.Errorf("http2_protocol_options windows stream %d, connection %d: want both set and <= %d (Envoy's 256 MiB default lets h2c bodies past the limit)", s, c, maxPromptBytes)
			}
			if !hcm.GetSchemeHeaderTransformation().GetMatchUpstream() || hcm.GetSchemeHeaderTransformation().GetSchemeToOverwrite() != "" {
				t.Errorf("scheme_header_transformation = %v, want match_upstream (https to TLS upstreams)", hcm.GetSchemeHeaderTransformation())
			}

			// Filter order: ext_proc, the usage readers, then the forward proxy, then the router.
			fs := hcm.GetHttpFilters()
			var names []string
			for _, f := range fs {
				names = append(names, f.GetName())
			}
			if want := []string{extProcFilter, jsonMetaFilter, sseMetaFilter, dfpFilter, "envoy.filters.http.router"}; !slices.Equal(names, want) {
				t.Fatalf("http_filters = %v, want %v", names, want)
			}
			checkExtProc(t, mustUnpack[*extprocv3.ExternalProcessor](t, fs[0].GetTypedConfig()))
			checkUsageRules(t, mustUnpack[*jsonmetav3.JsonToMetadata](t, fs[1].GetTypedConfig()), mustUnpack[*ssemetav3.SseToMetadata](t, fs[2].GetTypedConfig()))
			if got := mustUnpack[*dfpfilterv3.FilterConfig](t, fs[3].GetTypedConfig()).GetDnsCacheConfig().GetName(); got != "keymux_dns_cache" {
				t.Errorf("dynamic_forward_proxy filter cache = %q", got)
			}
			if !mustUnpack[*routerv3.Router](t, fs[4].GetTypedConfig()).GetSuppressEnvoyHeaders() {
				t.Error("router suppress_envoy_headers = false: x-envoy-* would reach providers")
			}

			// Access log: keymux's metadata next to the usual fields.
			if len(hcm.GetAccessLog()) != 2 {
				t.Fatalf("access_log entries = %d, want 2 (stdout, keymux's AccessLogService)", len(hcm.GetAccessLog()))
			}
			checkGRPCAccessLog(t, mustUnpack[*grpcalsv3.HttpGrpcAccessLogConfig](t, hcm.GetAccessLog()[1].GetTypedConfig()))
			fields := mustUnpack[*streamv3.StdoutAccessLog](t, hcm.GetAccessLog()[0].GetTypedConfig()).GetLogFormat().GetJsonFormat().GetFields()
			for _, f := range metadataFields {
				want := "%DYNAMIC_METADATA(" + metadataNamespace + ":" + f + ")%"
				if got := fields[f].GetStringValue(); got != want {
					t.Errorf("access log %q = %q, want %q", f, got, want)
				}
			}
			for _, f := range []string{"method", "path", "status", "duration_ms", "upstream_host", "request_id"} {
				if fields[f].GetStringValue() == "" {
					t.Errorf("access log lacks %q", f)
				}
			}
			for k, v := range fields {
				if s := strings.ToLower(v.GetStringValue()); strings.Contains(s, "authorization") || strings.Contains(s, "api-key") {
					t.Errorf("access log field %q logs a credential header: %s", k, v.GetStringValue())
				}
			}

			// Routing: what Envoy picks after keymux's reply.
			vhs := hcm.GetRouteConfig().GetVirtualHosts()
			if len(vhs) != 1 || !slices.Equal(vhs[0].GetDomains(), []string{"*"}) {
				t.Fatalf("want one virtual host for domains [*] (keymux rewrites :authority)")
			}
			routes := vhs[0].GetRoutes()
			checkUpstreamRoute(t, matchRoute(t, routes, "/v1/chat/completions", map[string]string{upstreamHeader: "https"}), httpsCluster, jwtPayloadHeader)
			checkUpstreamRoute(t, matchRoute(t, routes, "/openai/deployments/gpt/chat/completions?api-version=2024-10-21", map[string]string{upstreamHeader: "https"}), httpsCluster, jwtPayloadHeader)
			checkUpstreamRoute(t, matchRoute(t, routes, "/v1/messages", map[string]string{upstreamHeader: "http"}), httpCluster, jwtPayloadHeader)
			checkUploadRoute(t, matchRoute(t, routes, "/v1/files", map[string]string{upstreamHeader: "https" + extproc.UploadSuffix}), httpsCluster)
			checkUploadRoute(t, matchRoute(t, routes, "/v1/uploads/u1/parts", map[string]string{upstreamHeader: "http" + extproc.UploadSuffix}), httpCluster)
			checkNotRouted(t, matchRoute(t, routes, "/v1/chat/completions", nil))
			checkNotRouted(t, matchRoute(t, routes, "/v1/chat/completions", map[string]string{upstreamHeader: "ftp"}))

			cs := b.GetStaticResources().GetClusters()
			if len(cs) != 3 {
				t.Errorf("clusters = %d, want 3", len(cs))
			}
			checkExtProcCluster(t, clusterByName(t, cs, extProcCluster), tc.unix)
			checkDFPCluster(t, clusterByName(t, cs, httpsCluster), true)
			checkDFPCluster(t, clusterByName(t, cs, httpCluster), false)
		})
	}
}

// TestUnixVariantDiffersOnlyInExtProcAddress: envoy-unix.yaml is envoy.yaml
// with keymux_extproc on a unix socket, nothing else.
func TestUnixVariantDiffersOnlyInExtProcAddress(t *testing.T) {
	tcp := loadBootstrap(t, "envoy.yaml")
	unix := loadBootstrap(t, "envoy-unix.yaml")
	ep := func(b *bootstrapv3.Bootstrap) *clusterv3.Cluster {
		return clusterByName(t, b.GetStaticResources().GetClusters(), extProcCluster)
	}
	tcpEP := ep(tcp).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	unixEP := ep(unix).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	if proto.Equal(tcpEP, unixEP) {
		t.Fatal("keymux_extproc endpoints are equal, want TCP vs unix socket")
	}
	unixEP.Address = proto.Clone(tcpEP.GetAddress()).(*corev3.Address)
	if !proto.Equal(tcp, unix) {
		t.Fatal("envoy-unix.yaml differs from envoy.yaml beyond keymux_extproc's address")
	}
}

// TestSnippetContract checks an ingress snippet against envoy.yaml: the same
// ext_proc, forward proxy, routes and clusters, wired for an existing ingress.
func TestSnippetContract(t *testing.T) {
	b := loadBootstrap(t, "envoy.yaml")
	hcm := theHCM(t, b)
	ref := map[string]*hcmv3.HttpFilter{}
	for _, f := range hcm.GetHttpFilters() {
		ref[f.GetName()] = f
	}
	refRoutes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()

	for _, tc := range []struct {
		file    string
		jwt     bool
		removed []string
	}{
		{"ingress-snippet.yaml", false, []string{upstreamHeader, jwtPayloadHeader}},
		{"ingress-jwt-snippet.yaml", true, []string{upstreamHeader, jwtPayloadHeader}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s, err := envoy.LoadSnippet(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			var early []*anypb.Any
			for _, e := range s.EarlyHeaderMutationExtensions {
				early = append(early, e.GetTypedConfig())
			}
			checkEarlyMutation(t, early, tc.removed...)

			var names []string
			for _, f := range s.HTTPFilters {
				names = append(names, f.GetName())
			}
			want := []string{extProcFilter, jsonMetaFilter, sseMetaFilter, dfpFilter}
			if tc.jwt {
				want = append([]string{"envoy.filters.http.jwt_authn"}, want...)
			}
			if !slices.Equal(names, want) {
				t.Fatalf("http_filters = %v, want %v", names, want)
			}
			ep := filterByName(t, s.HTTPFilters, extProcFilter)
			if !ep.GetDisabled() {
				t.Error("ext_proc not disabled by default: every request of the ingress would go to keymux")
			}
			if !proto.Equal(ep.GetTypedConfig(), ref[extProcFilter].GetTypedConfig()) {
				t.Error("ext_proc config differs from envoy.yaml's")
			}
			if !proto.Equal(filterByName(t, s.HTTPFilters, dfpFilter), ref[dfpFilter]) {
				t.Error("dynamic_forward_proxy filter differs from envoy.yaml's")
			}
			// The usage readers: envoy.yaml's, off but on the routes to the providers.
			for _, name := range []string{jsonMetaFilter, sseMetaFilter} {
				f := filterByName(t, s.HTTPFilters, name)
				if !f.GetDisabled() || !proto.Equal(f.GetTypedConfig(), ref[name].GetTypedConfig()) {
					t.Errorf("%s: disabled %v, or config differs from envoy.yaml's", name, f.GetDisabled())
				}
			}
			// keymux's AccessLogService logger, as envoy.yaml's.
			if len(s.AccessLog) != 1 || !proto.Equal(s.AccessLog[0], hcm.GetAccessLog()[1]) {
				t.Errorf("access_log %v, want envoy.yaml's http_grpc logger alone", s.AccessLog)
			}
			for _, name := range []string{extProcCluster, httpsCluster, httpCluster} {
				if !proto.Equal(clusterByName(t, s.Clusters, name), clusterByName(t, b.GetStaticResources().GetClusters(), name)) {
					t.Errorf("cluster %s differs from envoy.yaml's", name)
				}
			}

			// Entry: the client's request reaches a route that turns ext_proc on.
			for _, p := range []string{"/v1/chat/completions", "/v1/models", "/api/openai/v1/chat/completions"} {
				r := matchRoute(t, s.Routes, p, nil)
				if r == nil {
					t.Fatalf("no entry route for %s", p)
				}
				if _, ok := r.GetTypedPerFilterConfig()[extProcFilter]; !ok {
					t.Errorf("entry route %q does not enable ext_proc", r.GetName())
				}
				checkNotRouted(t, r)
			}
			if r := matchRoute(t, s.Routes, "/v1beta/x", nil); r != nil {
				t.Errorf("/v1beta/x matched entry route %q; the snippet must not take over other paths", r.GetName())
			}
			if r := matchRoute(t, s.Routes, "/healthz", map[string]string{upstreamHeader: "https"}); r != nil {
				t.Errorf("entry routes must not match arbitrary paths, got %q", r.GetName())
			}

			// After keymux's reply: the catch-all virtual host, by header.
			if len(s.VirtualHosts) != 1 || !slices.Equal(s.VirtualHosts[0].GetDomains(), []string{"*"}) {
				t.Fatal("want one catch-all virtual host (keymux rewrites :authority)")
			}
			vr := s.VirtualHosts[0].GetRoutes()
			for _, c := range []struct{ val, cluster string }{{"https", httpsCluster}, {"http", httpCluster}} {
				r := matchRoute(t, vr, "/v1/chat/completions", map[string]string{upstreamHeader: c.val})
				checkUpstreamRoute(t, r, c.cluster, tc.removed[1:]...)
				for _, name := range []string{jsonMetaFilter, sseMetaFilter} {
					if _, ok := r.GetTypedPerFilterConfig()[name]; !ok {
						t.Errorf("route to %s does not enable %s: no usage from its responses", c.cluster, name)
					}
				}
				refR := matchRoute(t, refRoutes, "/v1/chat/completions", map[string]string{upstreamHeader: c.val})
				if !proto.Equal(r.GetRoute(), refR.GetRoute()) || !proto.Equal(r.GetMatch(), refR.GetMatch()) {
					t.Errorf("route to %s differs from envoy.yaml's", c.cluster)
				}
			}
			for _, c := range []struct{ val, cluster string }{{"https", httpsCluster}, {"http", httpCluster}} {
				checkUploadRoute(t, matchRoute(t, vr, "/v1/files", map[string]string{upstreamHeader: c.val + extproc.UploadSuffix}), c.cluster)
			}
			if r := matchRoute(t, vr, "/anything", nil); r != nil {
				t.Errorf("catch-all virtual host answers requests keymux did not route (route %q): it would shadow the ingress's own", r.GetName())
			}
		})
	}
}

// TestJWTSnippet: jwt_authn verifies before keymux runs and hands it the
// verified claims in dynamic metadata (never a header) on both of keymux's
// path prefixes.
func TestJWTSnippet(t *testing.T) {
	s, err := envoy.LoadSnippet("ingress-jwt-snippet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ja := mustUnpack[*jwtv3.JwtAuthentication](t, filterByName(t, s.HTTPFilters, "envoy.filters.http.jwt_authn").GetTypedConfig())
	if len(ja.GetProviders()) != 1 {
		t.Fatalf("providers = %d, want 1", len(ja.GetProviders()))
	}
	var provider string
	for name, p := range ja.GetProviders() {
		provider = name
		if p.GetPayloadInMetadata() != extproc.JWTPayloadKey {
			t.Errorf("payload_in_metadata = %q, want %q", p.GetPayloadInMetadata(), extproc.JWTPayloadKey)
		}
		if h := p.GetForwardPayloadHeader(); h != "" {
			t.Errorf("forward_payload_header = %q: keymux reads the metadata, and a header invites trusting one", h)
		}
		if p.GetForward() {
			t.Error("forward = true: the JWT would travel on towards keymux and providers")
		}
		if p.GetIssuer() == "" || len(p.GetAudiences()) == 0 {
			t.Error("provider without issuer or audiences")
		}
		if c := p.GetRemoteJwks().GetHttpUri().GetCluster(); c != "" {
			clusterByName(t, s.Clusters, c)
		} else if p.GetLocalJwks() == nil {
			t.Error("provider has neither remote_jwks nor local_jwks")
		}
	}
	for _, path := range []string{"/v1/chat/completions", "/api/openai/v1/chat/completions"} {
		var required bool
		for _, r := range ja.GetRules() {
			if strings.HasPrefix(path, r.GetMatch().GetPrefix()) && r.GetMatch().GetPrefix() != "" && r.GetRequires().GetProviderName() == provider {
				required = true
				break
			}
		}
		if !required {
			t.Errorf("no rule requires provider %q on %s", provider, path)
		}
	}
}
