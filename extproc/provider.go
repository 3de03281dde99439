package extproc

import (
	"net/url"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/keymux/keymux/policy"
)

// anthropicVersion is sent on native Messages calls when the client did not
// name one.
const anthropicVersion = "2023-06-01"

// upstreamTarget is how the request must look for the chosen key's provider.
type upstreamTarget struct {
	scheme    string // "https" | "http": selects Envoy's cluster
	authority string
	path      string // with query
	headers   []*corev3.HeaderValueOption
}

// target computes the upstream request for key k, operation op at path (below
// the API prefix), the model the upstream gets (after the key's rule) and the
// client's query string.
func target(k *policy.Key, op *operation, path, model, query, clientAnthropicVersion string) upstreamTarget {
	t := upstreamTarget{scheme: k.Scheme, authority: k.Host}
	secret := k.Secret.Reveal()
	switch k.Provider {
	case policy.ProviderAzure:
		deployment := model
		if d, ok := k.Azure.Deployments[model]; ok {
			deployment = d
		}
		if op.model == modelNone {
			t.path = k.PathPrefix + "/openai" + path + azureQuery(query, k.Azure.APIVersion)
		} else {
			t.path = k.PathPrefix + "/openai/deployments/" + url.PathEscape(deployment) + path + azureQuery(query, k.Azure.APIVersion)
		}
		t.headers = append(t.headers, setHeader(hdrAPIKey, secret))
	case policy.ProviderAnthropic:
		t.path = k.PathPrefix + path + query
		if op.anthropic {
			v := clientAnthropicVersion
			if v == "" {
				v = anthropicVersion
			}
			t.headers = append(t.headers, setHeader(hdrXAPIKey, secret), setHeader(hdrAnthropicVer, v))
		} else {
			// Anthropic's OpenAI-compatible endpoint takes the key as a Bearer token.
			t.headers = append(t.headers, setHeader(hdrAuthorization, "Bearer "+secret))
		}
	default: // openai, huggingface, openai_compatible
		t.path = k.PathPrefix + path + query
		t.headers = append(t.headers, setHeader(hdrAuthorization, "Bearer "+secret))
	}
	return t
}

// azureQuery sets api-version on the client's query, replacing any the client sent.
func azureQuery(query, apiVersion string) string {
	q := strings.TrimPrefix(query, "?")
	var b strings.Builder
	b.WriteString("?api-version=")
	b.WriteString(url.QueryEscape(apiVersion))
	for _, p := range strings.Split(q, "&") {
		if p == "" || p == "api-version" || strings.HasPrefix(p, "api-version=") {
			continue
		}
		b.WriteByte('&')
		b.WriteString(p)
	}
	return b.String()
}
