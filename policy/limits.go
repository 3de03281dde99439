package policy

// WithinLimits reports whether one more request fits limits l, given the
// requests and tokens already counted in the current minute. Zero limits
// are unlimited.
func WithinLimits(l Limits, requests, tokens uint64) bool {
	return (l.RPM <= 0 || requests < uint64(l.RPM)) && (l.TPM <= 0 || tokens < uint64(l.TPM))
}
