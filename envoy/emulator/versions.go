package emulator

import "github.com/keymux/keymux/envoy"

// EnvoyVersion is the Envoy release whose behaviour the emulator follows:
// the release the project pins.
const EnvoyVersion = envoy.PinnedEnvoy

// Behaviour is one behaviour that changed between Envoy releases.
type Behaviour struct {
	// Since is the first Envoy release with the behaviour.
	Since string
	// What describes the behaviour as of Since.
	What string
	// Emulated tells whether the emulator reproduces it (it follows
	// EnvoyVersion, so a behaviour older than that is what it does).
	Emulated bool
}

// Behaviours lists every version-gated behaviour the emulator knows, oldest
// first. It is the one place that says which Envoy release a behaviour
// came with; the package documentation repeats it for readers.
var Behaviours = []Behaviour{
	{Since: "1.33.1", Emulated: true, What: "local replies (router 503/504, direct_response, " +
		"buffer-overflow 413, ext_proc errors and immediate responses) are not sent to ext_proc " +
		"on the response path: the Process stream just ends (CVE-2025-30157)"},
	{Since: "1.37", Emulated: true, What: "the Process stream is closed right after the last " +
		"response ext_proc needs (after the response-headers reply when the response body mode is NONE), " +
		"not at the end of the HTTP response"},
	{Since: "1.37", Emulated: true, What: "local replies generated in a cluster's upstream filter " +
		"chain (an upstream ext_proc's error, timeout or immediate response) reach the upstream ext_proc " +
		"filters before the one that made them, on the response path"},
	{Since: "1.38", Emulated: true, What: "envoy.filters.http.sse_to_metadata exists " +
		"(with the envoy.content_parsers.json parser)"},
}
