package policy

// StrategyRoundRobin is the settings.strategy name of RoundRobin.
const StrategyRoundRobin = "round_robin"

// RoundRobin rotates strictly through the candidates in the order given
// (stable key-id order): the pick is seq mod len(cands). Because the index
// is computed from the caller's per-pool counter on every call, there is no
// cursor to repair when the eligible set changes: a key that leaves or
// rejoins shifts the rotation, and over many selections every eligible key
// gets an equal share.
type RoundRobin struct{}

var _ Strategy = RoundRobin{}

func init() { Register(RoundRobin{}) }

// Name implements Strategy.
func (RoundRobin) Name() string { return StrategyRoundRobin }

// Pick implements Strategy.
func (RoundRobin) Pick(cands []Candidate, seq uint64, _ float64) int {
	return int(seq % uint64(len(cands)))
}

// Inputs implements InputsReader.
func (RoundRobin) Inputs() (usage, errors bool) { return false, false }
