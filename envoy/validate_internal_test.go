package envoy

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

func TestGoCamelCase(t *testing.T) {
	tests := map[string]string{
		"static_resources":                  "StaticResources",
		"http2_protocol_options":            "Http2ProtocolOptions",
		"ipv4_compat":                       "Ipv4Compat",
		"per_connection_buffer_limit_bytes": "PerConnectionBufferLimitBytes",
		"name":                              "Name",
		"_private":                          "XPrivate",
	}
	for in, want := range tests {
		if got := goCamelCase(in); got != want {
			t.Errorf("goCamelCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSnakeCase(t *testing.T) {
	tests := map[string]string{"StaticResources": "static_resources", "Http2ProtocolOptions": "http2_protocol_options", "Name": "name"}
	for in, want := range tests {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPGVPath(t *testing.T) {
	root := (&bootstrapv3.Bootstrap{}).ProtoReflect().Descriptor()
	p, next := pgvPath("", "StaticResources", root)
	if p != "static_resources" || next == nil || next.FullName() != "envoy.config.bootstrap.v3.Bootstrap.StaticResources" {
		t.Fatalf("StaticResources → %q, %v", p, next)
	}
	p, next = pgvPath(p, "Clusters[3]", next)
	if p != "static_resources.clusters[3]" || next.FullName() != "envoy.config.cluster.v3.Cluster" {
		t.Fatalf("Clusters[3] → %q, %v", p, next)
	}
	cluster := (&clusterv3.Cluster{}).ProtoReflect().Descriptor()
	if p, _ := pgvPath("c", "ClusterDiscoveryType", cluster); p != "c.cluster_discovery_type" {
		t.Fatalf("oneof → %q, want c.cluster_discovery_type", p)
	}
	if p, next := pgvPath("c", "NoSuchField[k]", cluster); p != "c.no_such_field[k]" || next != nil {
		t.Fatalf("unknown → %q, %v", p, next)
	}
}
