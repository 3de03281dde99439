package policy

// StrategyRandom is the settings.strategy name of Random.
const StrategyRandom = "random"

// Random is weighted random selection: a candidate is chosen with
// probability Weight / ΣWeight (a weight that is not a positive finite
// number counts as 1).
type Random struct{}

var _ Strategy = Random{}

func init() { Register(Random{}) }

// Name implements Strategy.
func (Random) Name() string { return StrategyRandom }

// Pick implements Strategy.
func (Random) Pick(cands []Candidate, seq uint64, rnd float64) int {
	return weightedPick(cands, seq, rnd, byWeight)
}

// Inputs implements InputsReader.
func (Random) Inputs() (usage, errors bool) { return false, false }
