package policy

// ApplyRule returns the model the upstream gets for a request for model under
// rule r: r.To when r is enabled and r.From equals model exactly (and r.To is
// not empty), else model unchanged. A nil r applies nothing. Which rule
// governs a key (key-specific before "*") is the store's lookup.
func ApplyRule(r *Rule, model string) (final string, applied bool) {
	if r == nil || !r.Enabled || r.From != model || r.To == "" {
		return model, false
	}
	return r.To, true
}
