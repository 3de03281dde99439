package policy

import (
	"net/url"
	"strings"
)

// Provider names an upstream API family.
type Provider string

// The providers keymux knows how to call; each has one entry in providerSpecs.
const (
	ProviderOpenAI           Provider = "openai"
	ProviderAzure            Provider = "azure"
	ProviderAnthropic        Provider = "anthropic"
	ProviderHuggingFace      Provider = "huggingface"
	ProviderOpenAICompatible Provider = "openai_compatible"
)

// Header names of the provider table.
const (
	HeaderAuthorization    = "authorization"
	HeaderAPIKey           = "api-key"   // Azure
	HeaderXAPIKey          = "x-api-key" // Anthropic
	HeaderAnthropicVersion = "anthropic-version"
)

// AnthropicVersion is the anthropic-version sent on native Anthropic calls
// (and probes) when the client named none.
const AnthropicVersion = "2023-06-01"

// Credential is how a provider takes the key: the header and the text
// before the secret.
type Credential struct {
	Header string // lower-case header name
	Prefix string // "Bearer " or ""
}

// API is one dialect a provider speaks: how it takes the key and which
// version header it wants.
type API struct {
	Auth          Credential
	VersionHeader string // "" when the API takes none
	Version       string // sent when the client named none
}

// ProviderSpec is everything keymux knows about calling one provider. The
// store (validation, defaults), the request path (extproc) and the active
// probes (health) all read it: adding a provider is one entry in
// providerSpecs.
type ProviderSpec struct {
	Provider Provider
	// DefaultBaseURL is used for a key without base_url; "" means the key
	// must name one.
	DefaultBaseURL string
	// OpenAI is the OpenAI-compatible dialect, used for every operation.
	OpenAI API
	// Native, when set, is the provider's own dialect, used instead of
	// OpenAI for the operations of its native API (Request.Native).
	Native *API
	// Azure: the key carries an azure section (api_version, required, and
	// deployments).
	Azure bool
	// StreamOptions: OpenAI-style streams accept
	// stream_options.include_usage (settings.stream_usage).
	StreamOptions bool
	// Path shapes the upstream path below the key's base URL; nil means
	// Request.Path followed by the client's query.
	Path func(k *Key, r Request) string
	// Probe is the cheapest request that proves a key works (no tokens).
	Probe Probe
}

// Probe is a provider's health probe: a method and the request it shapes.
type Probe struct {
	Method  string
	Request Request
}

// Request is what the shape of an upstream request depends on.
type Request struct {
	Path     string // below the API prefix: "/chat/completions", "/files/f-1"
	Query    string // the client's query: "" or "?…"
	Model    string // the model the upstream gets ("" without one)
	PerModel bool   // the operation is served per model (Azure: by a deployment)
	Native   bool   // an operation of the provider's native API (Anthropic Messages)
	Version  string // the client's version header ("" when it sent none)
	// QueryModel: the operation names its model in the query's "model"
	// parameter (Realtime), which the upstream gets set to Model (Azure:
	// the deployment in a "deployment" parameter instead).
	QueryModel bool
}

// Header is one request header.
type Header struct{ Name, Value string }

// Upstream is the shape of one upstream request.
type Upstream struct {
	Path    string // below the key's base URL, with query
	Auth    Header // the credential: Value holds the secret, never log it
	Version Header // Name "" when the API takes no version header
}

var providerSpecs = []ProviderSpec{
	{
		Provider:       ProviderOpenAI,
		DefaultBaseURL: "https://api.openai.com/v1",
		OpenAI:         API{Auth: bearer},
		StreamOptions:  true,
		Probe:          modelsProbe,
	},
	{
		Provider:      ProviderAzure,
		OpenAI:        API{Auth: Credential{Header: HeaderAPIKey}},
		Azure:         true,
		StreamOptions: true,
		Path:          azurePath,
		Probe:         modelsProbe,
	},
	{
		Provider:       ProviderAnthropic,
		DefaultBaseURL: "https://api.anthropic.com/v1",
		// Anthropic's OpenAI-compatible endpoint takes the key as a Bearer token.
		OpenAI: API{Auth: bearer},
		Native: &API{Auth: Credential{Header: HeaderXAPIKey}, VersionHeader: HeaderAnthropicVersion, Version: AnthropicVersion},
		Probe:  Probe{Method: "GET", Request: Request{Path: "/models", Native: true}},
	},
	{
		Provider:       ProviderHuggingFace,
		DefaultBaseURL: "https://router.huggingface.co/v1",
		OpenAI:         API{Auth: bearer},
		StreamOptions:  true,
		Probe:          modelsProbe,
	},
	{
		Provider:      ProviderOpenAICompatible,
		OpenAI:        API{Auth: bearer},
		StreamOptions: true,
		Probe:         modelsProbe,
	},
}

var (
	bearer      = Credential{Header: HeaderAuthorization, Prefix: "Bearer "}
	modelsProbe = Probe{Method: "GET", Request: Request{Path: "/models"}}
)

// Providers returns the provider table in its stable order.
func Providers() []ProviderSpec {
	out := make([]ProviderSpec, len(providerSpecs))
	copy(out, providerSpecs)
	return out
}

// LookupProvider returns the spec of provider p.
func LookupProvider(p Provider) (ProviderSpec, bool) {
	for i := range providerSpecs {
		if providerSpecs[i].Provider == p {
			return providerSpecs[i], true
		}
	}
	return ProviderSpec{}, false
}

// CredentialHeaders lists every header some provider takes a key in, in
// table order, each once.
func CredentialHeaders() []string {
	var out []string
	add := func(h string) {
		if h != "" && !contains(out, h) {
			out = append(out, h)
		}
	}
	for _, s := range providerSpecs {
		add(s.OpenAI.Auth.Header)
		if s.Native != nil {
			add(s.Native.Auth.Header)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// SpecFor returns the spec of provider p; a provider missing from the table
// (the store refuses such keys) is called like an OpenAI-compatible one.
func SpecFor(p Provider) ProviderSpec {
	if s, ok := LookupProvider(p); ok {
		return s
	}
	s, _ := LookupProvider(ProviderOpenAICompatible)
	return s
}

// Shape returns how request r must look for key k's provider.
func Shape(k *Key, r Request) Upstream {
	s := SpecFor(k.Provider)
	return s.Shape(k, r)
}

// Shape returns how request r must look for key k under this spec.
func (s *ProviderSpec) Shape(k *Key, r Request) Upstream {
	var u Upstream
	if s.Path != nil {
		u.Path = s.Path(k, r)
	} else {
		q := r.Query
		if r.QueryModel {
			q = WithQueryParam(q, "model", r.Model)
		}
		u.Path = r.Path + q
	}
	api := &s.OpenAI
	if r.Native && s.Native != nil {
		api = s.Native
	}
	u.Auth = Header{Name: api.Auth.Header, Value: api.Auth.Prefix + k.Secret.Reveal()}
	if api.VersionHeader != "" {
		v := r.Version
		if v == "" {
			v = api.Version
		}
		u.Version = Header{Name: api.VersionHeader, Value: v}
	}
	return u
}

// azurePath is Azure OpenAI's layout: /openai/deployments/{deployment}/…
// for operations served per model (the key's deployment for the model, else
// the model name), /openai/… for the others, always with the key's
// api-version; Realtime (QueryModel) names the deployment in the query:
// /openai/realtime?api-version=…&deployment=….
func azurePath(k *Key, r Request) string {
	deployment := r.Model
	if d, ok := k.Azure.Deployments[r.Model]; ok {
		deployment = d
	}
	if r.QueryModel {
		// Realtime: /openai/realtime?api-version=…&deployment=…
		q := WithQueryParam(WithQueryParam(r.Query, "model", ""), "deployment", deployment)
		return "/openai" + r.Path + azureQuery(q, k.Azure.APIVersion)
	}
	q := azureQuery(r.Query, k.Azure.APIVersion)
	if !r.PerModel {
		return "/openai" + r.Path + q
	}
	return "/openai/deployments/" + pathSegment(deployment) + r.Path + q
}

// pathSegment escapes s into one path segment that is never a dot segment:
// "/" is escaped by url.PathEscape, and "." or ".." get their dots
// percent-encoded so the upstream path cannot climb out of its prefix.
func pathSegment(s string) string {
	if s == "." || s == ".." {
		return strings.Repeat("%2E", len(s))
	}
	return url.PathEscape(s)
}

// azureQuery sets api-version on the client's query, replacing any the
// client sent: parameter names are compared percent-decoded and
// case-insensitively (api%2Dversion, API-Version), and a part whose name does
// not decode is dropped.
func azureQuery(query, apiVersion string) string {
	q := strings.TrimPrefix(query, "?")
	var b strings.Builder
	b.WriteString("?api-version=")
	b.WriteString(url.QueryEscape(apiVersion))
	for _, p := range strings.Split(q, "&") {
		if match, bad := paramName(p, "api-version"); p == "" || match || bad {
			continue
		}
		b.WriteByte('&')
		b.WriteString(p)
	}
	return b.String()
}
