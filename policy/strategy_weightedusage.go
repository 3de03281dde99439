package policy

// StrategyWeightedByUsage is the settings.strategy name of WeightedByUsage.
const StrategyWeightedByUsage = "weighted_by_usage"

// WeightedByUsage favours the keys that have been used least: a candidate is
// chosen with probability proportional to Weight / (Usage + 1), so a fresh key
// (Usage 0) weighs its full Weight and a key that has served many requests
// fades.
type WeightedByUsage struct{}

var _ Strategy = WeightedByUsage{}

func init() { Register(WeightedByUsage{}) }

// Name implements Strategy.
func (WeightedByUsage) Name() string { return StrategyWeightedByUsage }

// Pick implements Strategy.
func (WeightedByUsage) Pick(cands []Candidate, seq uint64, rnd float64) int {
	return weightedPick(cands, seq, rnd, byUsage)
}

// Inputs implements InputsReader.
func (WeightedByUsage) Inputs() (usage, errors bool) { return true, false }
