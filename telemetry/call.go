// Package telemetry turns keymux's calls into observability: OpenTelemetry
// spans and metrics (GenAI semantic conventions), the call log, and the
// /stats document. It imports nothing else of keymux: the request path hands
// it a Call.
package telemetry

import (
	"strings"
	"time"
)

// Call is what keymux knows about one request when its exchange ends. It is
// handed to the Observer; it never holds a secret.
type Call struct {
	RequestID   string
	TraceParent string // as the client (through Envoy) sent it
	TraceState  string
	Start       time.Time
	End         time.Time
	// Overhead is the time keymux spent deciding on the request path
	// (request headers and body phases), excluding Envoy and the upstream.
	Overhead time.Duration

	Method    string
	Path      string // the client's path, without query
	Operation string // "chat", "embeddings", …
	ClientID  string

	KeyID         string
	Provider      string
	UpstreamHost  string
	Strategy      string
	RuleID        string
	ModelOriginal string // what the client asked for
	ModelFinal    string // what the upstream got
	Stream        bool

	Status    int    // HTTP status the client got (0: the exchange ended before any)
	Local     bool   // answered by keymux itself (ImmediateResponse)
	ErrorCode string // keymux's code for a local refusal, or the error class of a failed upstream call:
	// rate_limited, auth, server, timeout, client, stream_cut (set by the request path for every failure)

	Truncated bool // the response ended before its end (stream cut, client abort)

	InputTokens  int64
	OutputTokens int64
	UsageKnown   bool

	// Attempts lists the upstream attempts of a call Envoy retried on
	// other keys, in order (nil: one attempt); KeyID is the last one's.
	Attempts []Attempt
	// Candidates is how many keys of the pool could take the request when
	// its key was chosen; Skipped explains why others could not (the first
	// MaxSkipped, nil when none was skipped; NSkipped counts them all).
	Candidates int
	NSkipped   int
	Skipped    []Skip

	// Data is the Observer's own per-call state (e.g. its span).
	Data any
}

// Attempt is one upstream attempt of a retried call.
type Attempt struct {
	KeyID      string
	Start, End time.Time
	Status     int    // the attempt's response status; 0: none (connect failure, reset)
	Retried    string // why another attempt followed (an error class, or RetryReset); "" for the last
}

// RetryReset is Attempt.Retried for an attempt that got no response
// (connection failed or reset before the response headers).
const RetryReset = "reset"

// MaxSkipped bounds Call.Skipped.
const MaxSkipped = 8

// Skip is a key of the pool that was not chosen, and why: a policy
// reason (cooling_down, ejected, disabled, auth_failed, …), over_limit (its
// rpm/tpm this minute), tried (it failed earlier in this request) or
// other_host (a retry stays on its host).
type Skip struct {
	KeyID  string
	Reason string
	Until  time.Time // when the key is back (zero: unknown or never)
}

// AddSkipped records a key that was not chosen (the first MaxSkipped).
func (c *Call) AddSkipped(s Skip) {
	if len(c.Skipped) < MaxSkipped {
		if c.Skipped == nil {
			c.Skipped = make([]Skip, 0, MaxSkipped)
		}
		c.Skipped = append(c.Skipped, s)
	}
	c.NSkipped++
}

// clean replaces invalid UTF-8 in the strings that become span attributes,
// metric labels and call log fields (with U+FFFD): a label value that is
// not UTF-8 makes the Prometheus registry fail every later scrape.
func (c *Call) clean() {
	for _, p := range [...]*string{&c.RequestID, &c.TraceState, &c.Method, &c.Path, &c.Operation, &c.ClientID,
		&c.KeyID, &c.Provider, &c.UpstreamHost, &c.Strategy, &c.RuleID, &c.ModelOriginal, &c.ModelFinal, &c.ErrorCode} {
		*p = strings.ToValidUTF8(*p, "\uFFFD")
	}
	for i := range c.Attempts {
		c.Attempts[i].KeyID = strings.ToValidUTF8(c.Attempts[i].KeyID, "\uFFFD")
	}
	for i := range c.Skipped {
		c.Skipped[i].KeyID = strings.ToValidUTF8(c.Skipped[i].KeyID, "\uFFFD")
	}
}

// Success reports whether the call counts as successful in statistics.
func (c *Call) Success() bool {
	return !c.Local && !c.Truncated && c.Status >= 100 && c.Status < 400
}

// Observer receives every call. Begin runs on the request path once the key
// is chosen and must not block; it may return a W3C traceparent to send
// upstream. End runs once per exchange, after the last message.
type Observer interface {
	Begin(c *Call) (traceparent string)
	End(c *Call)
}

// Nop is an Observer that does nothing.
type Nop struct{}

// Begin implements Observer.
func (Nop) Begin(*Call) string { return "" }

// End implements Observer.
func (Nop) End(*Call) {}
