package envoy

import _ "embed"

// DefaultBootstrapYAML is envoy/envoy.yaml as shipped, for `keymux dev` run
// outside the repository.
//
//go:embed envoy.yaml
var DefaultBootstrapYAML []byte
