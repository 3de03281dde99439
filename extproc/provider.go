package extproc

import (
	"github.com/keymux/keymux/policy"
)

// upstreamTarget is how the request must look for the chosen key's provider.
type upstreamTarget struct {
	scheme    string // "https" | "http": selects Envoy's cluster
	authority string
	prefix    string // the key's base path
	path      string // below prefix, with query
	auth      policy.Credential
	secret    policy.Secret
	version   policy.Header // Name "" when the API takes none
}

// target computes the upstream request for key k, operation op at path (below
// the API prefix), the model the upstream gets (after the key's rule) and the
// client's query string, as the provider table (policy.ProviderSpec) shapes it.
func target(k *policy.Key, op *operation, path, model, query, clientAnthropicVersion string) upstreamTarget {
	spec := policy.SpecFor(k.Provider)
	u, cred := spec.ShapeParts(k, policy.Request{
		Path: path, Query: query, Model: model,
		PerModel: op.modelBearing() || (op.model == modelJSON && model != ""), Native: op.anthropic,
		Version: clientAnthropicVersion, QueryModel: op.model == modelQuery,
	})
	return upstreamTarget{scheme: k.Scheme, authority: k.Host, prefix: k.PathPrefix, path: u.Path,
		auth: cred, secret: k.Secret, version: u.Version}
}

// fullPath is the upstream :path (joined: an allocation).
func (t *upstreamTarget) fullPath() string { return t.prefix + t.path }

// eachHeader calls set with the provider's headers of the target, each
// value as two parts to be joined: the credential (its prefix and the
// secret), then the version header when the API takes one.
func (t *upstreamTarget) eachHeader(set func(name, part1, part2 string)) {
	set(t.auth.Header, t.auth.Prefix, t.secret.Reveal())
	if t.version.Name != "" {
		set(t.version.Name, t.version.Value, "")
	}
}
