package extproc

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/keymux/keymux/policy"
)

// upstreamTarget is how the request must look for the chosen key's provider.
type upstreamTarget struct {
	scheme    string // "https" | "http": selects Envoy's cluster
	authority string
	path      string // with query
	headers   []*corev3.HeaderValueOption
}

// target computes the upstream request for key k, operation op at path (below
// the API prefix), the model the upstream gets (after the key's rule) and the
// client's query string, as the provider table (policy.ProviderSpec) shapes it.
func target(k *policy.Key, op *operation, path, model, query, clientAnthropicVersion string) upstreamTarget {
	u := policy.Shape(k, policy.Request{
		Path: path, Query: query, Model: model,
		PerModel: op.modelBearing() || (op.model == modelJSON && model != ""), Native: op.anthropic,
		Version: clientAnthropicVersion, QueryModel: op.model == modelQuery,
	})
	t := upstreamTarget{scheme: k.Scheme, authority: k.Host, path: k.PathPrefix + u.Path}
	t.headers = append(t.headers, setHeader(u.Auth.Name, u.Auth.Value))
	if u.Version.Name != "" {
		t.headers = append(t.headers, setHeader(u.Version.Name, u.Version.Value))
	}
	return t
}
