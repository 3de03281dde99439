package policy

// StrategyLeastUsed is the settings.strategy name of LeastUsed.
const StrategyLeastUsed = "least_used"

// LeastUsed picks the candidate with the lowest Usage; candidates tied at the
// lowest usage take turns (the (seq mod ties)-th of them, in the given
// order). Weights are ignored.
type LeastUsed struct{}

var _ Strategy = LeastUsed{}

func init() { Register(LeastUsed{}) }

// Name implements Strategy.
func (LeastUsed) Name() string { return StrategyLeastUsed }

// Pick implements Strategy.
func (LeastUsed) Pick(cands []Candidate, seq uint64, _ float64) int {
	low, ties := cands[0].Usage, uint64(1)
	for i := 1; i < len(cands); i++ {
		switch u := cands[i].Usage; {
		case u < low:
			low, ties = u, 1
		case u == low:
			ties++
		}
	}
	k := seq % ties
	for i := range cands {
		if cands[i].Usage == low {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return 0 // unreachable
}

// Inputs implements InputsReader.
func (LeastUsed) Inputs() (usage, errors bool) { return true, false }
