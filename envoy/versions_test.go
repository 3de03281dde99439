package envoy

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestShippedConfigsEnvoyVersion: every shipped configuration needs exactly
// MinEnvoy (nothing newer than the pinned release), and envoy/README.md
// states both releases.
func TestShippedConfigsEnvoyVersion(t *testing.T) {
	if versionLess(PinnedEnvoy, MinEnvoy) {
		t.Fatalf("pinned %s is older than the minimum %s", PinnedEnvoy, MinEnvoy)
	}
	// examples/k8s is envoy-unix.yaml (deploy's TestConfigMapGenerated).
	for _, f := range []string{"envoy.yaml", "envoy-unix.yaml", "envoy-compose.yaml"} {
		b, err := LoadBootstrap(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := requiredEnvoy(b); got != MinEnvoy {
			t.Errorf("%s needs Envoy %q, want %s", f, got, MinEnvoy)
		}
	}
	for _, f := range []string{"ingress-snippet.yaml", "ingress-jwt-snippet.yaml"} {
		s, err := LoadSnippet(f)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []proto.Message
		for _, f := range s.HTTPFilters {
			msgs = append(msgs, f)
		}
		for _, a := range s.AccessLog {
			msgs = append(msgs, a)
		}
		if got := requiredEnvoy(msgs...); got != MinEnvoy {
			t.Errorf("%s needs Envoy %q, want %s", f, got, MinEnvoy)
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Envoy " + MinEnvoy + " or newer", "pinned release is " + PinnedEnvoy} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("envoy/README.md does not say %q", want)
		}
	}
}

// TestNewerThanPinnedRefused: a typed configuration from a release newer
// than the pinned one fails validation, naming the release.
func TestNewerThanPinnedRefused(t *testing.T) {
	const name = "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
	extensionSince[name] = "1.40"
	t.Cleanup(func() { delete(extensionSince, name) })
	err := ValidateFile("envoy.yaml")
	if err == nil || !strings.Contains(err.Error(), name+" needs Envoy 1.40, newer than the pinned "+PinnedEnvoy) {
		t.Fatalf("Validate: %v", err)
	}
	if _, err := LoadBootstrap("envoy.yaml"); err == nil {
		t.Error("LoadBootstrap took a configuration newer than the pinned release")
	}
}

// requiredEnvoy is the newest release extensionSince names for a typed
// configuration inside msgs ("" when none).
func requiredEnvoy(msgs ...proto.Message) string {
	req := ""
	var walk func(m proto.Message)
	walk = func(m proto.Message) {
		if v, ok := extensionSince[m.ProtoReflect().Descriptor().FullName()]; ok && versionLess(req, v) {
			req = v
		}
		walkAnys(m.ProtoReflect(), "", func(_ string, a *anypb.Any) {
			if inner, err := a.UnmarshalNew(); err == nil {
				walk(inner)
			}
		})
	}
	for _, m := range msgs {
		walk(m)
	}
	return req
}
