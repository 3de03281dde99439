package envoy

import (
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
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

// checkVersion refuses a typed configuration newer than PinnedEnvoy.
func checkVersion(path string, m proto.Message, errs *errList) {
	name := m.ProtoReflect().Descriptor().FullName()
	if v, ok := extensionSince[name]; ok && versionLess(PinnedEnvoy, v) {
		errs.add(path, "%s needs Envoy %s, newer than the pinned %s", name, v, PinnedEnvoy)
	}
}
