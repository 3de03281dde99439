package policy

import "time"

// Candidate is an eligible key offered to a Strategy, with the counters the
// strategies weigh. Candidates are passed in stable key-id order.
type Candidate struct {
	Key *Key
	// Usage is the number of requests this instance has sent with the key,
	// not tokens (docs/design/0002-weighted-by-usage-counts-requests.md).
	Usage  uint64
	Errors uint64 // errors within the error window
}

// Strategy picks one key among eligible candidates. Implementations are pure
// and safe for concurrent use: every input that varies between calls is an
// argument.
type Strategy interface {
	// Name is the settings.strategy value that selects this strategy.
	Name() string
	// Pick returns an index into cands (len(cands) > 0). seq is a counter the
	// caller increments once per selection for this pool; rnd is uniform in
	// [0, 1).
	Pick(cands []Candidate, seq uint64, rnd float64) int
}

// OutcomeKind classifies an upstream answer for passive health.
type OutcomeKind int

// The outcome classes.
const (
	OutcomeSuccess     OutcomeKind = iota // 1xx–3xx, and 4xx that are the caller's fault
	OutcomeRateLimited                    // 429: cool down until RetryAt
	OutcomeQuota                          // 429/403 insufficient_quota: parked until a probe passes
	OutcomeAuth                           // 401/403: disabled until a probe passes
	OutcomeServer                         // 5xx: counts towards ejection
	OutcomeTimeout                        // 408, 504, no answer in time: counts towards ejection
	OutcomeClient                         // other 4xx: the caller's fault, the key is fine
)

// Outcome is one classified upstream answer.
type Outcome struct {
	Kind    OutcomeKind
	Status  int
	RetryAt time.Time // OutcomeRateLimited: when the key may be used again (zero = use the default cooldown)
}

// KeyState is the passive health of one key at a moment. Values are
// immutable; NextState returns a new one.
type KeyState struct {
	Disabled            bool      // auth failure or quota: out until a probe passes
	DisabledReason      string    // "auth" | "quota"
	CooldownUntil       time.Time // 429
	EjectedUntil        time.Time // consecutive 5xx/timeouts
	Ejections           int       // consecutive ejections, the backoff exponent
	ConsecutiveFailures int
	HalfOpen            bool // ejection expired: the next answer decides
	ProbeFailed         bool // the latest active probe failed
	ProbeError          string
	ProbedAt            time.Time // when the latest active probe finished (zero: never)
	// VerdictAt is when the latest passive verdict that took the key out
	// (a disable, an ejection) was observed: a passing probe that finished
	// before it does not undo it (ProbeResult).
	VerdictAt time.Time
	// DisabledAt is when the latest auth or quota verdict was observed
	// (each one stamps it, on a key already disabled too): the disable a
	// call's own answer caused is the one stamped with its time.
	DisabledAt time.Time
	// SlowStartFrom is when the key came back after its latest ejection
	// (its end, or the probe that cut it short): from then its share of
	// traffic grows over ejection.slow_start (SlowStartShare).
	SlowStartFrom time.Time
}

// InputsReader is implemented by strategies that read only some of a
// Candidate's counters, so that callers can skip computing the others
// (summing an error window over 10k keys is not free).
type InputsReader interface {
	// Inputs reports whether Pick reads Candidate.Usage and Candidate.Errors.
	Inputs() (usage, errors bool)
}

// StrategyInputs reports which counters s reads; a strategy that does not
// say reads both.
func StrategyInputs(s Strategy) (usage, errors bool) {
	if r, ok := s.(InputsReader); ok {
		return r.Inputs()
	}
	return true, true
}
