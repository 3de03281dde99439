package store

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/keymux/keymux/policy"
)

// oraclePool is the pool computation the store used before it indexed the
// rules and the keys' model lists: every enabled key tested against model.
// It stays as the reference the indexed computation must equal.
func oraclePool(enabled []*Entry, model string, rules *ruleIndex) []*Entry {
	var entries []*Entry
	for _, e := range enabled {
		if oracleServesAfterRule(e, model, rules) {
			entries = append(entries, e)
		}
	}
	return entries
}

// oracleServesAfterRule reports whether e serves a request for model once
// its rule (its own before policy.AnyKey's) has rewritten the model.
func oracleServesAfterRule(e *Entry, model string, rules *ruleIndex) bool {
	to := model
	if r := rules.get(ruleKey{e.Key.ID, model}); r != nil {
		to = r.To
	} else if r := rules.get(ruleKey{policy.AnyKey, model}); r != nil {
		to = r.To
	}
	return e.Key.ServesModel(to)
}

// randomConfig draws a configuration over a small vocabulary of models so
// that rules, "*" rules, keys without a model list, disabled keys and
// disabled rules collide often.
func randomConfig(rng *rand.Rand) *Config {
	models := []string{"a", "b", "c", "d", "e", "f"}
	pick := func() string { return models[rng.IntN(len(models))] }
	cfg := &Config{Settings: DefaultSettings(), Keys: map[string]*policy.Key{}, Rules: map[string]*policy.Rule{}}
	nkeys := 1 + rng.IntN(12)
	for i := range nkeys {
		id := fmt.Sprintf("k%02d", i)
		var ms []string
		if rng.IntN(4) > 0 { // a quarter of the keys serve any model
			for range rng.IntN(4) {
				ms = append(ms, pick())
			}
		}
		cfg.Keys[id] = &policy.Key{ID: id, Models: ms, Weight: 1, Enabled: rng.IntN(5) > 0}
	}
	used := map[[2]string]bool{}
	for i := range rng.IntN(20) {
		keyID := policy.AnyKey
		if rng.IntN(3) > 0 {
			keyID = fmt.Sprintf("k%02d", rng.IntN(nkeys))
		}
		from := pick()
		enabled := rng.IntN(6) > 0
		if enabled && used[[2]string{keyID, from}] {
			continue
		}
		if enabled {
			used[[2]string{keyID, from}] = true
		}
		id := fmt.Sprintf("r%02d", i)
		cfg.Rules[id] = &policy.Rule{ID: id, KeyID: keyID, From: from, To: pick(), Enabled: enabled}
	}
	return cfg
}

func entryIDs(es []*Entry) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.Key.ID)
	}
	return ids
}

// TestPoolsMatchOracle applies random configurations and compares every
// pool the store holds with the reference computation, and the pools of
// models no key or rule names with the unlisted pool.
func TestPoolsMatchOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 3))
	st := newStore(t)
	for round := range 2000 {
		cfg := randomConfig(rng)
		if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		snap := st.Read()
		enabled := snap.EnabledKeys()
		w := writeRules(nil)
		for _, r := range cfg.Rules {
			if r.Enabled {
				w.set(ruleKey{r.KeyID, r.From}, r)
			}
		}
		rules := w.x
		var served []string
		for _, m := range poolModels(keyModels(cfg.Keys), rules) {
			want := entryIDs(oraclePool(enabled, m, rules))
			if got := entryIDs(snap.Pool(m).Entries); !slices.Equal(got, want) {
				t.Fatalf("round %d: pool %q = %v, want %v (config keys %v rules %v)", round, m, got, want, cfg.Keys, cfg.Rules)
			}
			if len(want) > 0 {
				served = append(served, m)
			}
		}
		if got := snap.Models(); !slices.Equal(got, served) {
			t.Fatalf("round %d: models = %v, want %v", round, got, served)
		}
		var unlisted []string
		for _, e := range enabled {
			if len(e.Key.Models) == 0 {
				unlisted = append(unlisted, e.Key.ID)
			}
		}
		if got := entryIDs(snap.Pool("zz-unnamed").Entries); !slices.Equal(got, unlisted) {
			t.Fatalf("round %d: unnamed pool = %v, want %v", round, got, unlisted)
		}
	}
}
