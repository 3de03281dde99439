package envoy

import (
	"fmt"
	"maps"
	"regexp"
	"slices"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	dfpclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dnscachev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/dynamic_forward_proxy/v3"
	jsonparserv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	jsonmetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	ssemetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Names from the Envoy ⇄ keymux routing contract that the reference checks
// know about.
const (
	extProcCluster    = "keymux_extproc"
	metadataNamespace = "keymux"
)

// clusterInfo is one defined cluster and where it is.
type clusterInfo struct {
	path string
	c    *clusterv3.Cluster
	dfp  *dfpclusterv3.ClusterConfig // set for a dynamic_forward_proxy cluster
}

// refChecker holds the clusters of one document and checks the references
// Envoy resolves at load time (and a few it only fails on at run time).
type refChecker struct {
	errs     *errList
	clusters map[string]*clusterInfo
	where    string // for messages: "static_resources.clusters" or "this snippet's clusters"
}

// httpChain is an HTTP filter chain with the routes and access logs that go
// with it: an HttpConnectionManager, or the pieces of a snippet.
type httpChain struct {
	filtersPath string
	filters     []*hcmv3.HttpFilter
	routes      []locatedRoute
	perFilter   []map[string]*anypb.Any // typed_per_filter_config of routes and virtual hosts
	accessLogs  []locatedAccessLog
	routerLast  bool // a complete HCM: the router must close the chain
}

type locatedRoute struct {
	path string
	r    *routev3.Route
}

type locatedAccessLog struct {
	path string
	al   *accesslogv3.AccessLog
}

func checkBootstrap(b *bootstrapv3.Bootstrap, errs *errList) {
	rc := newRefChecker(b.GetStaticResources().GetClusters(), "static_resources.clusters", "static_resources.clusters", errs)
	for li, l := range b.GetStaticResources().GetListeners() {
		lp := fmt.Sprintf("static_resources.listeners[%d]", li)
		for ci, fc := range l.GetFilterChains() {
			rc.checkFilterChain(fmt.Sprintf("%s.filter_chains[%d]", lp, ci), fc)
		}
		if fc := l.GetDefaultFilterChain(); fc != nil {
			rc.checkFilterChain(lp+".default_filter_chain", fc)
		}
	}
}

func checkSnippet(s *Snippet, errs *errList) {
	rc := newRefChecker(s.Clusters, "clusters", "this snippet's clusters", errs)
	ch := httpChain{filtersPath: "http_filters", filters: s.HTTPFilters}
	for i, r := range s.Routes {
		ch.routes = append(ch.routes, locatedRoute{fmt.Sprintf("routes[%d]", i), r})
		ch.perFilter = append(ch.perFilter, r.GetTypedPerFilterConfig())
	}
	for vi, vh := range s.VirtualHosts {
		ch.perFilter = append(ch.perFilter, vh.GetTypedPerFilterConfig())
		for ri, r := range vh.GetRoutes() {
			ch.routes = append(ch.routes, locatedRoute{fmt.Sprintf("virtual_hosts[%d].routes[%d]", vi, ri), r})
			ch.perFilter = append(ch.perFilter, r.GetTypedPerFilterConfig())
		}
	}
	for i, al := range s.AccessLog {
		rc.addAccessLog(&ch, fmt.Sprintf("access_log[%d]", i), al)
	}
	rc.checkChain(ch)
}

func newRefChecker(clusters []*clusterv3.Cluster, base, where string, errs *errList) *refChecker {
	rc := &refChecker{errs: errs, clusters: map[string]*clusterInfo{}, where: where}
	for i, c := range clusters {
		info := &clusterInfo{path: fmt.Sprintf("%s[%d]", base, i), c: c}
		if prev, dup := rc.clusters[c.GetName()]; dup {
			errs.add(info.path+".name", "duplicate cluster name %q (first defined at %s)", c.GetName(), prev.path)
			continue
		}
		if d, ok := unpack(c.GetClusterType().GetTypedConfig()).(*dfpclusterv3.ClusterConfig); ok {
			info.dfp = d
		}
		rc.clusters[c.GetName()] = info
		rc.checkCluster(info)
	}
	for _, name := range slices.Sorted(maps.Keys(rc.clusters)) {
		rc.checkUpstreamFilters(rc.clusters[name])
	}
	return rc
}

// checkUpstreamFilters checks a cluster's upstream HTTP filter chain
// (HttpProtocolOptions.http_filters): Envoy needs upstream_codec last, and
// an ext_proc there needs its gRPC cluster.
func (rc *refChecker) checkUpstreamFilters(info *clusterInfo) {
	p, hpo := httpProtocolOptions(info)
	fs := hpo.GetHttpFilters()
	for i, f := range fs {
		fp := fmt.Sprintf("%s.http_filters[%d]", p, i)
		switch c := unpack(f.GetTypedConfig()).(type) {
		case *upstreamcodecv3.UpstreamCodec:
			if i != len(fs)-1 {
				rc.errs.add(fp, "upstream_codec must be the last upstream HTTP filter; the filters after it never run")
			}
		case *extprocv3.ExternalProcessor:
			rc.grpcCluster(fp+".typed_config.grpc_service", c.GetGrpcService())
		}
	}
	if n := len(fs); n > 0 {
		if _, ok := unpack(fs[n-1].GetTypedConfig()).(*upstreamcodecv3.UpstreamCodec); !ok {
			rc.errs.add(fmt.Sprintf("%s.http_filters[%d]", p, n-1), "the last upstream HTTP filter must be envoy.filters.http.upstream_codec")
		}
	}
}

// checkCluster mirrors what Envoy's dynamic_forward_proxy cluster factory
// refuses at load time.
func (rc *refChecker) checkCluster(info *clusterInfo) {
	if info.dfp == nil {
		return
	}
	if info.c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		rc.errs.add(info.path+".lb_policy", "a dynamic_forward_proxy cluster needs CLUSTER_PROVIDED, got %s", info.c.GetLbPolicy())
	}
	if p, hpo := httpProtocolOptions(info); hpo != nil && !info.dfp.GetAllowInsecureClusterOptions() {
		u := hpo.GetUpstreamHttpProtocolOptions()
		if !u.GetAutoSni() || !u.GetAutoSanValidation() {
			rc.errs.add(p+".upstream_http_protocol_options", "a dynamic_forward_proxy cluster with HttpProtocolOptions needs auto_sni and auto_san_validation true (or allow_insecure_cluster_options); Envoy refuses it otherwise")
		}
	}
	// Every cluster and filter naming one DNS cache must configure it alike.
	for _, name := range slices.Sorted(maps.Keys(rc.clusters)) {
		other := rc.clusters[name]
		if other == info || other.dfp == nil {
			continue
		}
		if a, b := info.dfp.GetDnsCacheConfig(), other.dfp.GetDnsCacheConfig(); a != nil && b != nil && a.GetName() == b.GetName() && !proto.Equal(a, b) {
			rc.errs.add(info.path+".cluster_type.typed_config.dns_cache_config", "DNS cache %q is configured differently by cluster %q (%s); Envoy requires one configuration per cache name", a.GetName(), other.c.GetName(), other.path)
		}
	}
}

// httpProtocolOptions returns the cluster's upstream HttpProtocolOptions and
// their path, if any.
func httpProtocolOptions(info *clusterInfo) (string, *upstreamhttpv3.HttpProtocolOptions) {
	opts := info.c.GetTypedExtensionProtocolOptions()
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		if hpo, ok := unpack(opts[k]).(*upstreamhttpv3.HttpProtocolOptions); ok {
			return fmt.Sprintf("%s.typed_extension_protocol_options[%s]", info.path, k), hpo
		}
	}
	return "", nil
}

// speaksHTTP2 tells whether Envoy will talk HTTP/2 (what gRPC needs) to the cluster.
func speaksHTTP2(info *clusterInfo) bool {
	if info.c.GetHttp2ProtocolOptions() != nil { //nolint:staticcheck // the deprecated field still works
		return true
	}
	_, hpo := httpProtocolOptions(info)
	if hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil {
		return true
	}
	// ALPN may pick h2, but only over TLS.
	return hpo.GetAutoConfig().GetHttp2ProtocolOptions() != nil && info.c.GetTransportSocket() != nil
}

// cluster resolves a cluster reference at path.
func (rc *refChecker) cluster(path, name string) *clusterInfo {
	info, ok := rc.clusters[name]
	if !ok {
		rc.errs.add(path, "cluster %q is not defined in %s", name, rc.where)
	}
	return info
}

func (rc *refChecker) checkFilterChain(path string, fc *listenerv3.FilterChain) {
	for fi, f := range fc.GetFilters() {
		hcm, ok := unpack(f.GetTypedConfig()).(*hcmv3.HttpConnectionManager)
		if !ok {
			continue
		}
		hp := fmt.Sprintf("%s.filters[%d].typed_config", path, fi)
		ch := httpChain{filtersPath: hp + ".http_filters", filters: hcm.GetHttpFilters(), routerLast: true}
		// With RDS the routes live elsewhere: nothing to check here.
		for vi, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			ch.perFilter = append(ch.perFilter, vh.GetTypedPerFilterConfig())
			for ri, r := range vh.GetRoutes() {
				ch.routes = append(ch.routes, locatedRoute{fmt.Sprintf("%s.route_config.virtual_hosts[%d].routes[%d]", hp, vi, ri), r})
				ch.perFilter = append(ch.perFilter, r.GetTypedPerFilterConfig())
			}
		}
		for ai, al := range hcm.GetAccessLog() {
			rc.addAccessLog(&ch, fmt.Sprintf("%s.access_log[%d]", hp, ai), al)
		}
		rc.checkChain(ch)
	}
}

// addAccessLog adds an access log at path to ch and resolves the cluster of
// a gRPC access logger.
func (rc *refChecker) addAccessLog(ch *httpChain, path string, al *accesslogv3.AccessLog) {
	ch.accessLogs = append(ch.accessLogs, locatedAccessLog{path, al})
	if g, ok := unpack(al.GetTypedConfig()).(*grpcalsv3.HttpGrpcAccessLogConfig); ok {
		rc.grpcCluster(path+".typed_config.common_config.grpc_service", g.GetCommonConfig().GetGrpcService())
	}
}

func (rc *refChecker) checkChain(ch httpChain) {
	var (
		dfpFilter bool
		extProc   bool
		received  = map[string]bool{}
	)
	for i, f := range ch.filters {
		fp := fmt.Sprintf("%s[%d]", ch.filtersPath, i)
		switch c := unpack(f.GetTypedConfig()).(type) {
		case *routerv3.Router:
			if ch.routerLast && i != len(ch.filters)-1 {
				rc.errs.add(fp, "the router must be the last HTTP filter; the filters after it never run")
			}
		case *extprocv3.ExternalProcessor:
			extProc = true
			rc.checkExtProc(fp+".typed_config", c, received)
		case *jsonmetav3.JsonToMetadata:
			for _, r := range append(c.GetRequestRules().GetRules(), c.GetResponseRules().GetRules()...) {
				addRuleNamespaces(r, received)
			}
		case *ssemetav3.SseToMetadata:
			if jp, ok := unpack(c.GetResponseRules().GetContentParser().GetTypedConfig()).(*jsonparserv3.JsonContentParser); ok {
				for _, r := range jp.GetRules() {
					addRuleNamespaces(r.GetRule(), received)
				}
			}
		case *dfpfilterv3.FilterConfig:
			dfpFilter = true
			rc.checkFilterDNSCache(fp+".typed_config.dns_cache_config", c.GetDnsCacheConfig())
		case *jwtv3.JwtAuthentication:
			providers := c.GetProviders()
			for _, name := range slices.Sorted(maps.Keys(providers)) {
				if u := providers[name].GetRemoteJwks().GetHttpUri(); u != nil {
					rc.cluster(fmt.Sprintf("%s.typed_config.providers[%s].remote_jwks.http_uri.cluster", fp, name), u.GetCluster())
				}
			}
		}
		if f.GetDisabled() && !enabledOnSomeRoute(ch.perFilter, f.GetName()) {
			rc.errs.add(fp+".disabled", "filter %q is disabled by default and no route or virtual host enables it (typed_per_filter_config), so it never runs", f.GetName())
		}
	}
	if n := len(ch.filters); ch.routerLast && n > 0 {
		if _, ok := unpack(ch.filters[n-1].GetTypedConfig()).(*routerv3.Router); !ok {
			rc.errs.add(fmt.Sprintf("%s[%d]", ch.filtersPath, n-1), "the last HTTP filter must be envoy.filters.http.router")
		}
	}
	for _, lr := range ch.routes {
		action := lr.r.GetRoute()
		if action == nil {
			continue
		}
		switch cs := action.GetClusterSpecifier().(type) {
		case *routev3.RouteAction_Cluster:
			p := lr.path + ".route.cluster"
			if info := rc.cluster(p, cs.Cluster); info != nil && info.dfp != nil && !dfpFilter {
				rc.errs.add(p, "routes to dynamic_forward_proxy cluster %q but no envoy.filters.http.dynamic_forward_proxy filter resolves the host", cs.Cluster)
			}
		case *routev3.RouteAction_WeightedClusters:
			for wi, wc := range cs.WeightedClusters.GetClusters() {
				if wc.GetName() != "" {
					rc.cluster(fmt.Sprintf("%s.route.weighted_clusters.clusters[%d].name", lr.path, wi), wc.GetName())
				}
			}
		}
	}
	if !extProc {
		return
	}
	for _, la := range ch.accessLogs {
		for _, ns := range dynamicMetadataNamespaces(la.al) {
			if !received[ns] && !isEnvoyNamespace(ns) {
				rc.errs.add(la.path, "reads dynamic metadata namespace %q, but no ext_proc filter lists it in metadata_options.receiving_namespaces.untyped, so Envoy drops it and the field is always empty", ns)
			}
		}
	}
}

func (rc *refChecker) checkExtProc(path string, c *extprocv3.ExternalProcessor, received map[string]bool) {
	ns := c.GetMetadataOptions().GetReceivingNamespaces().GetUntyped()
	for _, n := range ns {
		received[n] = true
	}
	rc.grpcCluster(path+".grpc_service", c.GetGrpcService())
	if c.GetGrpcService().GetEnvoyGrpc().GetClusterName() == extProcCluster && !slices.Contains(ns, metadataNamespace) {
		rc.errs.add(path+".metadata_options.receiving_namespaces.untyped", "namespace %q is not listed: Envoy drops keymux's dynamic metadata (key_id, model_original, model_final, client_id)", metadataNamespace)
	}
}

// grpcCluster checks that an envoy_grpc service names a cluster that
// speaks HTTP/2.
func (rc *refChecker) grpcCluster(path string, gs *corev3.GrpcService) {
	g := gs.GetEnvoyGrpc()
	if g == nil {
		return
	}
	p := path + ".envoy_grpc.cluster_name"
	if info := rc.cluster(p, g.GetClusterName()); info != nil && !speaksHTTP2(info) {
		rc.errs.add(p, "cluster %q carries gRPC but is not configured for HTTP/2 (typed_extension_protocol_options: HttpProtocolOptions explicit_http_config.http2_protocol_options)", g.GetClusterName())
	}
}

func (rc *refChecker) checkFilterDNSCache(path string, cfg *dnscachev3.DnsCacheConfig) {
	if cfg == nil {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(rc.clusters)) {
		info := rc.clusters[name]
		if other := info.dfp.GetDnsCacheConfig(); other != nil && other.GetName() == cfg.GetName() && !proto.Equal(cfg, other) {
			rc.errs.add(path, "DNS cache %q is configured differently by cluster %q (%s); Envoy requires one configuration per cache name", cfg.GetName(), name, info.path)
		}
	}
}

// enabledOnSomeRoute reports whether a per-route or per-virtual-host config
// turns on a filter that is disabled by default.
func enabledOnSomeRoute(perFilter []map[string]*anypb.Any, name string) bool {
	for _, m := range perFilter {
		a, ok := m[name]
		if !ok {
			continue
		}
		if fc, ok := unpack(a).(*routev3.FilterConfig); ok && fc.GetDisabled() {
			continue
		}
		return true
	}
	return false
}

var dynMetaRE = regexp.MustCompile(`%DYNAMIC_METADATA\(([^:)]+)`)

// dynamicMetadataNamespaces lists the namespaces an access log's format reads.
func dynamicMetadataNamespaces(al *accesslogv3.AccessLog) []string {
	js, err := protojson.Marshal(al)
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range dynMetaRE.FindAllSubmatch(js, -1) {
		if ns := string(m[1]); !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out
}

// addRuleNamespaces records the metadata namespaces a json_to_metadata rule
// writes (an empty one is the filter's own envoy.* name).
func addRuleNamespaces(r *jsonmetav3.JsonToMetadata_Rule, received map[string]bool) {
	for _, kv := range []*jsonmetav3.JsonToMetadata_KeyValuePair{r.GetOnPresent(), r.GetOnMissing(), r.GetOnError()} {
		if ns := kv.GetMetadataNamespace(); ns != "" {
			received[ns] = true
		}
	}
}

// isEnvoyNamespace: Envoy's own filters write under their extension names.
func isEnvoyNamespace(ns string) bool {
	return len(ns) > len("envoy.") && ns[:len("envoy.")] == "envoy."
}

// unpack returns the message an Any holds, or nil.
func unpack(a *anypb.Any) proto.Message {
	if a == nil || a.GetTypeUrl() == "" {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil
	}
	return m
}
