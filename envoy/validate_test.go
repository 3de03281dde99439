package envoy_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/keymux/keymux/envoy"
)

// shipped are the configurations users deploy; the glob below must find them.
var shipped = []string{"envoy.yaml", "envoy-unix.yaml", "ingress-snippet.yaml", "ingress-jwt-snippet.yaml"}

// TestShippedConfigsValidate validates every YAML in envoy/ (a new file is
// covered without editing this test) and every testdata/*.good.yaml. The
// emulator's own fixtures (emulator/testdata) are left out on purpose: some
// are valid Envoy but deliberately odd (e.g. an access log reading a namespace
// ext_proc does not receive) to exercise the emulator.
func TestShippedConfigsValidate(t *testing.T) {
	top, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range shipped {
		if !slices.Contains(top, want) {
			t.Fatalf("glob *.yaml = %v, missing shipped config %s", top, want)
		}
	}
	good, err := filepath.Glob("testdata/*.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(good) < 2 {
		t.Fatalf("testdata/*.good.yaml = %v, want the minimal bootstrap and snippet", good)
	}
	for _, f := range append(top, good...) {
		t.Run(f, func(t *testing.T) {
			if err := envoy.ValidateFile(f); err != nil {
				t.Fatalf("ValidateFile(%s):\n%v", f, err)
			}
		})
	}
}

// brokenFixtures maps each testdata/*.bad.yaml to a substring its error must
// contain: the offending field path and the reason.
var brokenFixtures = map[string]string{
	"unknown_field.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.stat_prefx: ` +
		`unknown field "stat_prefx" in envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor`,
	"bad_enum.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.processing_mode.request_body_mode: ` +
		`invalid value "BUFERED" (want one of NONE, STREAMED, BUFFERED,`,
	"unresolvable_type.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[2].typed_config.@type: ` +
		`unresolvable type "type.googleapis.com/envoy.extensions.filters.http.routr.v3.Router"`,
	"missing_route_cluster.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: ` +
		`cluster "upp" is not defined in static_resources.clusters`,
	"missing_extproc_cluster.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.grpc_service.envoy_grpc.cluster_name: ` +
		`cluster "keymux_ext_proc" is not defined in static_resources.clusters`,
	"empty_route_cluster.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: ` +
		`value length must be at least 1 runes`,
	"pgv_inside_any.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: ` +
		`value length must be at least 1 runes`,
	"pgv_port.bad.yaml": `static_resources.listeners[0].address.socket_address.port_value: ` +
		`value must be less than or equal to 65535`,
	"namespace_not_received.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.metadata_options.receiving_namespaces.untyped: ` +
		`namespace "keymux" is not listed`,
	"router_not_last.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1]: ` +
		`the router must be the last HTTP filter`,
	"bad_duration.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.message_timeout: ` +
		`invalid Duration number 5`,
	"oneof_twice.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster_header: ` +
		`"cluster" and "cluster_header" are both set, but they are alternatives (oneof cluster_specifier)`,
	"wrong_kind.bad.yaml": `static_resources.listeners: want a list, got an object`,
	"dns_cache_mismatch.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.dns_cache_config: ` +
		`DNS cache "c" is configured differently by cluster "up"`,
	"dfp_without_auto_sni.bad.yaml": `static_resources.clusters[1].typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].upstream_http_protocol_options: ` +
		`a dynamic_forward_proxy cluster with HttpProtocolOptions needs auto_sni and auto_san_validation true`,
	"upstream_codec_not_last.bad.yaml": `static_resources.clusters[1].typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].http_filters[1]: ` +
		`the last upstream HTTP filter must be envoy.filters.http.upstream_codec`,
	"grpc_not_http2.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.grpc_service.envoy_grpc.cluster_name: ` +
		`cluster "keymux_extproc" carries gRPC but is not configured for HTTP/2`,
	"als_not_http2.bad.yaml": `static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[1].typed_config.common_config.grpc_service.envoy_grpc.cluster_name: ` +
		`cluster "up" carries gRPC but is not configured for HTTP/2`,
	"snippet_unknown_key.bad.yaml":          `listeners: unknown field "listeners" in an ingress snippet`,
	"snippet_missing_cluster.bad.yaml":      `routes[1].route.cluster: cluster "nowhere" is not defined in this snippet's clusters`,
	"snippet_filter_never_enabled.bad.yaml": `http_filters[0].disabled: filter "envoy.filters.http.ext_proc" is disabled by default and no route or virtual host enables it`,
	"snippet_missing_type.bad.yaml":         `http_filters[1].typed_config: missing "@type"`,
}

func TestBrokenFixturesFail(t *testing.T) {
	bad, err := filepath.Glob("testdata/*.bad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Every fixture has an expectation and every expectation a fixture.
	var names []string
	for _, f := range bad {
		names = append(names, filepath.Base(f))
	}
	for _, n := range names {
		if _, ok := brokenFixtures[n]; !ok {
			t.Errorf("testdata/%s has no expected error in brokenFixtures", n)
		}
	}
	for n := range brokenFixtures {
		if !slices.Contains(names, n) {
			t.Errorf("brokenFixtures names testdata/%s, which does not exist", n)
		}
	}
	for name, want := range brokenFixtures {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name)
			err := envoy.ValidateFile(path)
			if err == nil {
				t.Fatalf("ValidateFile(%s) = nil, want an error containing %q", path, want)
			}
			if !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("error %q does not start with the file name", err)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("ValidateFile(%s) =\n%v\nwant it to contain\n%s", path, err, want)
			}
			var fe *envoy.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %v carries no *envoy.FieldError", err)
			}
		})
	}
}

func TestValidateDocuments(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"empty", "", "empty document"},
		{"top-level list", "[1, 2]", "want an object at the top level, got a list"},
		{"yaml syntax", "static_resources: [", "yaml: line 1"},
		{"key twice", "static_resources:\n  clusters: []\n  clusters: []\n", `key "clusters" already set in map`},
		{"json input", `{"static_resources": {"clusters": [{"name": "a", "type": "STATIK"}]}}`,
			`static_resources.clusters[0].type: invalid value "STATIK"`},
		{"snippet list expected", "http_filters: {}", "http_filters: want a list of envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter, got an object"},
		{"string for bool", "static_resources: {clusters: [{name: a, respect_dns_ttl: maybe}]}", `static_resources.clusters[0].respect_dns_ttl: want true or false, got string "maybe"`},
		{"number for string", "static_resources: {clusters: [{name: 7}]}", "static_resources.clusters[0].name: want a string, got number 7"},
		{"any without type", "static_resources: {clusters: [{name: a, cluster_type: {name: x, typed_config: {foo: 1}}}]}",
			`static_resources.clusters[0].cluster_type.typed_config: missing "@type"`},
		{"map key path", `static_resources: {clusters: [{name: a, typed_extension_protocol_options: {x: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, bogus: 1}}}]}`,
			`static_resources.clusters[0].typed_extension_protocol_options[x].bogus: unknown field "bogus"`},
		{"duplicate cluster", "static_resources: {clusters: [{name: a}, {name: a}]}",
			`static_resources.clusters[1].name: duplicate cluster name "a" (first defined at static_resources.clusters[0])`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := envoy.Validate([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Validate(%q) = nil, want %q", tt.doc, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate(%q) =\n%v\nwant it to contain\n%s", tt.doc, err, tt.want)
			}
			var fe *envoy.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %v carries no *envoy.FieldError", err)
			}
		})
	}
}

// TestUnmarshalNamesPaths: the loader the emulator uses reports paths and
// runs PGV inside Anys too (not only ValidateFile).
func TestUnmarshalNamesPaths(t *testing.T) {
	data, err := os.ReadFile("testdata/pgv_inside_any.bad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	err = envoy.Unmarshal(data, &bootstrapv3.Bootstrap{})
	want := "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: value length must be at least 1 runes"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Unmarshal = %v, want %q", err, want)
	}
	if _, err := envoy.LoadBootstrap("testdata/bad_enum.bad.yaml"); err == nil ||
		!strings.Contains(err.Error(), `processing_mode.request_body_mode: invalid value "BUFERED"`) {
		t.Fatalf("LoadBootstrap(bad_enum) = %v, want the enum path", err)
	}
	// Cross-references are ValidateFile's business: the emulator may load a
	// bootstrap whose clusters it overrides.
	if _, err := envoy.LoadBootstrap("testdata/missing_route_cluster.bad.yaml"); err != nil {
		t.Fatalf("LoadBootstrap(missing_route_cluster) = %v, want nil", err)
	}
}

func TestLoadSnippet(t *testing.T) {
	tests := []struct {
		file                                       string
		early, filters, routes, vhostRoutes, clust int
	}{
		{"ingress-snippet.yaml", 1, 4, 2, 4, 3},
		{"ingress-jwt-snippet.yaml", 1, 5, 2, 4, 4},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			s, err := envoy.LoadSnippet(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.VirtualHosts) != 1 {
				t.Fatalf("virtual_hosts = %d, want 1", len(s.VirtualHosts))
			}
			got := []int{len(s.EarlyHeaderMutationExtensions), len(s.HTTPFilters), len(s.Routes), len(s.VirtualHosts[0].GetRoutes()), len(s.Clusters)}
			want := []int{tt.early, tt.filters, tt.routes, tt.vhostRoutes, tt.clust}
			if !slices.Equal(got, want) {
				t.Fatalf("early/filters/routes/vhost routes/clusters = %v, want %v", got, want)
			}
		})
	}
	if _, err := envoy.LoadSnippet("envoy.yaml"); err == nil || !strings.Contains(err.Error(), "not an ingress snippet") {
		t.Fatalf("LoadSnippet(envoy.yaml) = %v, want a not-a-snippet error", err)
	}
}

func BenchmarkValidateEnvoyYAML(b *testing.B) {
	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := envoy.Validate(data); err != nil {
			b.Fatal(err)
		}
	}
}
