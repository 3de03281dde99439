package envoy

import (
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// PinnedEnvoy is the Envoy release the project pins: the shipped
// configurations are written for it and the emulator follows it.
const PinnedEnvoy = "1.39"

// MinEnvoy is the oldest Envoy release that runs the shipped configurations
// (envoy.filters.http.sse_to_metadata came with 1.38).
const MinEnvoy = "1.38"

// extensionSince is the Envoy release that brought each typed configuration
// a configuration may hold that is newer than the releases keymux needs
// anyway. Validation refuses one newer than PinnedEnvoy; a type not listed
// is older than MinEnvoy.
var extensionSince = map[protoreflect.FullName]string{
	"envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata": "1.38",
	"envoy.extensions.content_parsers.json.v3.JsonContentParser":     "1.38",
}

// versionLess compares two "MAJOR.MINOR" releases.
func versionLess(a, b string) bool {
	am, an := splitVersion(a)
	bm, bn := splitVersion(b)
	return am < bm || am == bm && an < bn
}

func splitVersion(v string) (int, int) {
	major, minor, _ := strings.Cut(v, ".")
	m, _ := strconv.Atoi(major)
	n, _ := strconv.Atoi(minor)
	return m, n
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

// checkVersion refuses a typed configuration newer than PinnedEnvoy.
func checkVersion(path string, m proto.Message, errs *errList) {
	name := m.ProtoReflect().Descriptor().FullName()
	if v, ok := extensionSince[name]; ok && versionLess(PinnedEnvoy, v) {
		errs.add(path, "%s needs Envoy %s, newer than the pinned %s", name, v, PinnedEnvoy)
	}
}
