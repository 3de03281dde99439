package policy

// StrategyAdjustByErrorRate is the settings.strategy name of AdjustByErrorRate.
const StrategyAdjustByErrorRate = "adjust_by_error_rate"

// AdjustByErrorRate steers traffic away from keys that have been failing: a
// candidate is chosen with probability proportional to Weight / (Errors + 1).
//
// Candidate.Errors must be the errors within the sliding window
// settings.ejection.error_window (EjectionSettings.ErrorWindow, default 60s)
// that the caller counts, not a lifetime total: once a key stops failing its
// old errors leave the window and it regains its full share.
type AdjustByErrorRate struct{}

var _ Strategy = AdjustByErrorRate{}

func init() { Register(AdjustByErrorRate{}) }

// Name implements Strategy.
func (AdjustByErrorRate) Name() string { return StrategyAdjustByErrorRate }

// Pick implements Strategy.
func (AdjustByErrorRate) Pick(cands []Candidate, seq uint64, rnd float64) int {
	return weightedPick(cands, seq, rnd, byErrors)
}

// Inputs implements InputsReader.
func (AdjustByErrorRate) Inputs() (usage, errors bool) { return false, true }
