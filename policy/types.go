// Package policy holds keymux's pure decisions: which keys are eligible, which
// strategy picks among them, how a key's passive health evolves, which model a
// key's switch rule sends upstream, and whether a client may call at all.
//
// Nothing here does I/O, reads a clock or a random source of its own, or
// imports gRPC, Consul or OpenTelemetry: callers pass the current time, a
// sequence number and a random number in, which keeps every decision
// reproducible in tests.
//
// The domain types (Key, Rule, Client, Settings) live here too, because store
// imports policy and not the other way round.
package policy

import (
	"log/slog"
	"time"
)

// Secret is an upstream credential. It redacts itself in every formatting
// path (fmt, slog, JSON) so that it cannot leak by accident; Reveal returns
// the value for the one place that must send it upstream.
type Secret string

const redacted = "[redacted]"

// Reveal returns the credential itself.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer without the value.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer without the value.
func (s Secret) GoString() string { return redacted }

// LogValue implements slog.LogValuer without the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON never writes the value.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// AzureConfig is the Azure OpenAI part of a key.
type AzureConfig struct {
	APIVersion  string            // e.g. "2024-10-21"
	Deployments map[string]string // model → deployment name
}

// Limits are per-minute ceilings; zero means unlimited.
type Limits struct {
	RPM int
	TPM int
}

// Key is one upstream API key of the pool, as validated from its document.
// Objects handed out by the store are immutable: copy before changing.
type Key struct {
	ID         string
	Provider   Provider
	BaseURL    string // normalised: scheme://host[:port][/path], no trailing slash
	Scheme     string // "https" or "http", from BaseURL
	Host       string // host[:port] as the upstream :authority, from BaseURL
	PathPrefix string // path part of BaseURL ("" or "/v1", "/openai", …)
	Secret     Secret
	SecretRef  string   // "env:NAME" or "file:/path" when the secret came from there
	Models     []string // allowed models (after the key's rule); empty = any
	Weight     float64  // > 0; default 1
	Priority   int      // lower is preferred; default 0
	Enabled    bool
	Azure      AzureConfig
	Limits     Limits
	Labels     map[string]string
	// Account is the provider account (organisation/project) the key
	// belongs to; keys of one account share its objects (files, batches,
	// stored responses…). Default: the key's own id.
	Account string
}

// ServesModel reports whether the key accepts model (already rewritten by its rule).
func (k *Key) ServesModel(model string) bool {
	if len(k.Models) == 0 {
		return true
	}
	for _, m := range k.Models {
		if m == model {
			return true
		}
	}
	return false
}

// Rule is a model switch rule (the seed's ModelSwitchRule): requests for From
// that are sent with key KeyID (or with any key when KeyID is "*") reach the
// upstream as To. Matching is exact.
type Rule struct {
	ID      string
	KeyID   string // a key id or "*"
	From    string
	To      string
	Enabled bool
}

// AnyKey is the Rule.KeyID that applies to every key.
const AnyKey = "*"

// Client is a caller allowed in client_keys mode. Only the SHA-256 of its
// token is ever stored.
type Client struct {
	ID          string
	Name        string
	TokenSHA256 [32]byte
	Models      []string // empty = any
	// Endpoints are the operations (Endpoint* names) the client may call;
	// nil = every operation, or only the model-bearing ones for a client
	// with Models (see AuthorizeEndpoint).
	Endpoints []string
	Enabled   bool
	Limits    Limits
}

// AllowsModel reports whether the client may request model.
func (c *Client) AllowsModel(model string) bool {
	if len(c.Models) == 0 {
		return true
	}
	for _, m := range c.Models {
		if m == model {
			return true
		}
	}
	return false
}

// AuthMode says how callers are authenticated.
type AuthMode string

// The authentication modes of settings.auth.mode.
const (
	AuthNone       AuthMode = "none"
	AuthClientKeys AuthMode = "client_keys"
	AuthJWTClaim   AuthMode = "jwt_claim"
)

// AuthSettings configures client authentication.
type AuthSettings struct {
	Mode AuthMode
	// jwt_claim mode: Envoy's jwt_authn verifies the JWT and hands its
	// claims to keymux in dynamic metadata (payload_in_metadata); the claim
	// Claim must equal, or (for an array claim) contain, Value.
	Claim string // default "role"
	Value string // default "ROLE_API_USER"
}

// HealthSettings configures active probes.
type HealthSettings struct {
	Interval time.Duration // default 10m
	Timeout  time.Duration // default 10s
}

// EjectionSettings configures passive health.
type EjectionSettings struct {
	ConsecutiveFailures int           // 5xx/timeouts in a row before ejection; default 3
	Base                time.Duration // first ejection; default 30s
	Max                 time.Duration // cap of the exponential backoff; default 5m
	Cooldown            time.Duration // 429 without Retry-After; default 60s
	ErrorWindow         time.Duration // adjust_by_error_rate window; default 60s
	// SlowStart is how long a key re-admitted after an ejection takes to
	// get its whole share of traffic back (linearly); default 30s.
	SlowStart time.Duration
}

// AlertSettings are the seed's alert thresholds.
type AlertSettings struct {
	ErrorRate float64 // fraction, default 0.2
	Usage     uint64  // tokens, default 10000
}

// Settings is the singleton keymux/settings document.
type Settings struct {
	Strategy string // default "round_robin"
	Health   HealthSettings
	Ejection EjectionSettings
	Auth     AuthSettings
	Alerts   AlertSettings
	// MaxBodyBytes is the largest request body keymux accepts; default 8 MiB.
	MaxBodyBytes int64
	// MaxJSONDepth is how deep arrays and objects may nest in a request
	// body; default 256 (DefaultMaxJSONDepth, which also bounds the
	// forwarded JWT payload).
	MaxJSONDepth int
	// StreamUsage asks OpenAI-style upstreams for the final usage chunk of a
	// stream (stream_options.include_usage) when the client did not, so
	// that token usage is known for every call; default true.
	StreamUsage bool
	Retry       RetrySettings
	// Share decides which key states are shared with the fleet (Consul).
	Share ShareSettings
	// UnknownPaths is what happens to a path below the API prefix that
	// keymux does not know: UnknownPathsRefuse (404, the default) or
	// UnknownPathsForward (forwarded with a key, operation EndpointOther).
	UnknownPaths string
	Objects      ObjectSettings
}

// ObjectSettings govern the account-scoped objects keymux records.
type ObjectSettings struct {
	// DefaultAccount serves ids keymux has no record of (objects created
	// outside keymux); "" answers 404 for them.
	DefaultAccount string
	// Retention is how long a record lives when the object names no
	// expiry of its own; default 30 days.
	Retention time.Duration
	// Max bounds the records (creations beyond it get 503); default 10000.
	Max int
}

// The values of Settings.UnknownPaths.
const (
	UnknownPathsRefuse  = "refuse"
	UnknownPathsForward = "forward"
)

// RetrySettings bound Envoy's retries of a request on another key of the
// same upstream host.
type RetrySettings struct {
	// MaxAttempts is the most upstream attempts of one request (the first
	// included); 1 disables retries. Default 3.
	MaxAttempts int
}
