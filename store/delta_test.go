package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/syncbuf"
)

// cloneConfig copies cfg's maps (the documents stay shared).
func cloneConfig(cfg *Config) *Config {
	return &Config{Settings: cfg.Settings, Keys: maps.Clone(cfg.Keys), Rules: maps.Clone(cfg.Rules), Clients: maps.Clone(cfg.Clients)}
}

// diffConfigs is the Delta that turns a into b (documents compared by
// pointer, as a Builder hands them out).
func diffConfigs(a, b *Config) *Delta {
	d := &Delta{Keys: diffMaps(a.Keys, b.Keys), Rules: diffMaps(a.Rules, b.Rules), Clients: diffMaps(a.Clients, b.Clients)}
	if !reflect.DeepEqual(a.Settings, b.Settings) {
		s := b.Settings
		d.Settings = &s
	}
	return d
}

func diffMaps[V comparable](a, b map[string]V) map[string]V {
	var zero V
	out := map[string]V{}
	for id, v := range b {
		if a[id] != v {
			out[id] = v
		}
	}
	for id := range a {
		if _, ok := b[id]; !ok {
			out[id] = zero
		}
	}
	return out
}

// mutate returns a valid configuration a few random edits away from cfg.
func mutate(rng *rand.Rand, cfg *Config, clientSeq *int) *Config {
	if rng.IntN(20) == 0 {
		next := randomConfig(rng)
		next.Clients = cfg.Clients
		return next
	}
	models := []string{"a", "b", "c", "d", "e", "f"}
	pick := func() string { return models[rng.IntN(len(models))] }
	next := cloneConfig(cfg)
	for range 1 + rng.IntN(3) {
		switch rng.IntN(9) {
		case 0, 1: // a key changed or added
			id := fmt.Sprintf("k%02d", rng.IntN(14))
			var ms []string
			if rng.IntN(4) > 0 {
				for range rng.IntN(4) {
					ms = append(ms, pick())
				}
			}
			next.Keys[id] = &policy.Key{ID: id, Models: ms, Weight: 1, Enabled: rng.IntN(5) > 0}
		case 2: // a key deleted, with its rules
			id := fmt.Sprintf("k%02d", rng.IntN(14))
			delete(next.Keys, id)
			for rid, r := range next.Rules {
				if r.KeyID == id {
					delete(next.Rules, rid)
				}
			}
		case 3, 4, 5: // a rule changed or added
			id := fmt.Sprintf("r%02d", rng.IntN(24))
			keyID := policy.AnyKey
			if ids := slices.Sorted(maps.Keys(next.Keys)); len(ids) > 0 && rng.IntN(3) > 0 {
				keyID = ids[rng.IntN(len(ids))]
			}
			r := &policy.Rule{ID: id, KeyID: keyID, From: pick(), To: pick(), Enabled: rng.IntN(6) > 0}
			for oid, o := range next.Rules {
				if oid != id && o.Enabled && r.Enabled && o.KeyID == r.KeyID && o.From == r.From {
					r.Enabled = false
				}
			}
			next.Rules[id] = r
		case 6: // a rule deleted
			delete(next.Rules, fmt.Sprintf("r%02d", rng.IntN(24)))
		case 7: // a client changed, added or deleted
			id := fmt.Sprintf("c%d", rng.IntN(4))
			if rng.IntN(3) == 0 {
				delete(next.Clients, id)
				continue
			}
			*clientSeq++
			next.Clients[id] = &policy.Client{ID: id, TokenSHA256: [32]byte{byte(*clientSeq), byte(*clientSeq >> 8)}, Enabled: rng.IntN(4) > 0}
		case 8: // the settings
			next.Settings.Strategy = []string{"round_robin", "random", "least_used"}[rng.IntN(3)]
		}
	}
	return next
}

// checkSameGeneration compares what the hot path and /status read of two
// snapshots, a reached by ApplyDelta from prevA and b by Apply from prevB:
// the same documents, pools, rules, models and names, with runtime state
// and pool counters carried over the same way.
func checkSameGeneration(t *testing.T, step int, prevA, a, prevB, b *Snapshot) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d: "+format, append([]any{step}, args...)...)
	}
	ma, mb := a.meta(), b.meta()
	if ma.Generation != mb.Generation || ma.Keys != mb.Keys || ma.Rules != mb.Rules || ma.Clients != mb.Clients {
		fail("meta: delta %d %d/%d/%d, full %d %d/%d/%d", ma.Generation, ma.Keys, ma.Rules, ma.Clients, mb.Generation, mb.Keys, mb.Rules, mb.Clients)
	}
	if !reflect.DeepEqual(a.Settings(), b.Settings()) {
		fail("settings: delta %+v, full %+v", a.Settings(), b.Settings())
	}
	keysOf := func(es []*Entry) []*policy.Key {
		var ks []*policy.Key
		for _, e := range es {
			ks = append(ks, e.Key)
		}
		return ks
	}
	if ka, kb := keysOf(a.Keys()), keysOf(b.Keys()); !slices.Equal(ka, kb) {
		fail("keys: delta %v, full %v", entryIDs(a.Keys()), entryIDs(b.Keys()))
	}
	if !slices.Equal(keysOf(a.EnabledKeys()), keysOf(b.EnabledKeys())) {
		fail("enabled keys: delta %v, full %v", entryIDs(a.EnabledKeys()), entryIDs(b.EnabledKeys()))
	}
	for _, e := range a.Keys() {
		carried := prevA.Key(e.Key.ID) != nil && prevA.Key(e.Key.ID).RT == e.RT
		carriedB := prevB.Key(e.Key.ID) != nil && prevB.Key(e.Key.ID).RT == b.Key(e.Key.ID).RT
		if carried != carriedB {
			fail("keys/%s: runtime carried over: delta %v, full %v", e.Key.ID, carried, carriedB)
		}
	}
	ia, ib := maps.Collect(ma.RuleIndex.all()), maps.Collect(mb.RuleIndex.all())
	if !slices.Equal(a.Rules(), b.Rules()) || !maps.Equal(ia, ib) || ma.RuleIndex.len() != len(ia) || mb.RuleIndex.len() != len(ib) {
		fail("rules differ")
	}
	if !maps.Equal(ma.KeyModels, mb.KeyModels) {
		fail("key models: delta %v, full %v", ma.KeyModels, mb.KeyModels)
	}
	if !slices.Equal(a.Clients(), b.Clients()) || !maps.Equal(a.byToken, b.byToken) {
		fail("clients differ")
	}
	if !slices.Equal(ma.Models, mb.Models) {
		fail("models: delta %v, full %v", ma.Models, mb.Models)
	}
	if !maps.Equal(ma.Named, mb.Named) {
		fail("named: delta %v, full %v", ma.Named, mb.Named)
	}
	if pa, pb := slices.Sorted(maps.Keys(ma.Pools)), slices.Sorted(maps.Keys(mb.Pools)); !slices.Equal(pa, pb) {
		fail("pools: delta %q, full %q", pa, pb)
	}
	for m, pa := range ma.Pools {
		pb := mb.Pools[m]
		if !slices.Equal(keysOf(pa.Entries), keysOf(pb.Entries)) {
			fail("pool %q: delta %v, full %v", m, entryIDs(pa.Entries), entryIDs(pb.Entries))
		}
		for _, e := range pa.Entries {
			if a.Key(e.Key.ID) != e {
				fail("pool %q: keys/%s is not the generation's entry", m, e.Key.ID)
			}
		}
		oa, ob := prevA.meta().Pools[m], prevB.meta().Pools[m]
		if (oa != nil && oa.Seq == pa.Seq) != (ob != nil && ob.Seq == pb.Seq) {
			fail("pool %q: counter carried over differently", m)
		}
	}
}

// applyBothWays drives two stores through the same random configurations,
// one by ApplyDelta and one by Apply, and compares every generation.
func applyBothWays(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 15))
	delta, full := newStore(t), newStore(t)
	clientSeq := 0
	cfg := randomConfig(rng)
	cfg.Clients = map[string]*policy.Client{}
	for _, st := range []*Store{delta, full} {
		if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	for step := range steps {
		next := mutate(rng, cfg, &clientSeq)
		prevA, prevB := delta.Read(), full.Read()
		src := SourceInfo{Source: "test", Version: uint64(step + 1)}
		if _, err := delta.ApplyDelta(context.Background(), prevA.Generation(), diffConfigs(cfg, next), src); err != nil {
			t.Fatalf("step %d: delta: %v", step, err)
		}
		if _, err := full.Apply(next, src); err != nil {
			t.Fatalf("step %d: full: %v", step, err)
		}
		checkSameGeneration(t, step, prevA, delta.Read(), prevB, full.Read())
		cfg = next
	}
}

// bySeeds runs check over seeds 0… with the given number of steps: 40
// seeds in a test, the first 4 as a fuzz target's corpus.
func bySeeds(t *testing.T, check func(*testing.T, uint64, int), steps int) {
	for seed := range uint64(40) {
		check(t, seed, steps)
	}
}

func fuzzSeeds(f *testing.F, check func(*testing.T, uint64, int), steps int) {
	for seed := range uint64(4) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) { check(t, seed, steps) })
}

func TestApplyDeltaMatchesFullApply(t *testing.T) { bySeeds(t, applyBothWays, 60) }

func FuzzApplyDelta(f *testing.F) { fuzzSeeds(f, applyBothWays, 30) }

// TestApplyDeltaRefusesAndKeepsServing: a delta that breaks the checks of
// Apply is refused whole, the generation unchanged; a delta against an
// older generation is refused with ErrStaleBase.
func TestApplyDeltaRefusesAndKeepsServing(t *testing.T) {
	st := newStore(t)
	k1 := &policy.Key{ID: "k1", Models: []string{"a"}, Weight: 1, Enabled: true}
	r1 := &policy.Rule{ID: "r1", KeyID: "k1", From: "x", To: "a", Enabled: true}
	gen, err := st.Apply(&Config{Settings: DefaultSettings(), Keys: map[string]*policy.Key{"k1": k1},
		Rules: map[string]*policy.Rule{"r1": r1}, Clients: map[string]*policy.Client{
			"c1": {ID: "c1", TokenSHA256: [32]byte{1}, Enabled: true}}}, SourceInfo{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name string
		base uint64
		d    *Delta
		want string
	}{
		{"stale base", gen - 1, &Delta{}, "delta base is not the current generation: base 0, store at 1"},
		{"key deleted under its rule", gen, &Delta{Keys: map[string]*policy.Key{"k1": nil}}, `invalid config: rules/r1: unknown key "k1"`},
		{"rule for an unknown key", gen, &Delta{Rules: map[string]*policy.Rule{"r2": {ID: "r2", KeyID: "k9", From: "y", To: "a", Enabled: true}}}, `invalid config: rules/r2: unknown key "k9"`},
		{"duplicate rule", gen, &Delta{Rules: map[string]*policy.Rule{"r2": {ID: "r2", KeyID: "k1", From: "x", To: "b", Enabled: true}}}, "invalid config: rules/r2: same key and from as rules/r1"},
		{"duplicate token", gen, &Delta{Clients: map[string]*policy.Client{"c2": {ID: "c2", TokenSHA256: [32]byte{1}}}}, "invalid config: clients/c2: same token_sha256 as clients/c1"},
		{"id mismatch", gen, &Delta{Keys: map[string]*policy.Key{"k2": k1}}, "invalid config: keys/k2: id mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := st.Read()
			_, err := st.ApplyDelta(ctx, tt.base, tt.d, SourceInfo{})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if tt.name == "stale base" && !errors.Is(err, ErrStaleBase) {
				t.Fatalf("err = %v, want ErrStaleBase", err)
			}
			if st.Read() != before || st.Read().Key("k1").Key != k1 || st.Read().Rule("k1", "x") != r1 || st.Read().Client("c2") != nil {
				t.Fatal("the store changed")
			}
		})
	}
}

// buildBothWays feeds two Builders the same random document edits (some
// of them unparsable, conflicting or dangling) and compares, after each
// round, the configuration one reaches by BuildDelta with the full build
// of the other, refusals included.
func buildBothWays(t *testing.T, seed uint64, rounds int) {
	rng := rand.New(rand.NewPCG(seed, 3))
	inc, ref := NewBuilder(nil), NewBuilder(nil)
	cfg, _ := inc.Build()
	bool01 := func() string { return []string{"true", "false"}[rng.IntN(2)] }
	for round := range rounds {
		for range 1 + rng.IntN(4) {
			var kind Kind
			var id, raw string
			switch rng.IntN(10) {
			case 0, 1, 2:
				kind, id = KindKeys, fmt.Sprintf("k%d", rng.IntN(5))
				raw = fmt.Sprintf(`{"provider":"openai","secret":"sk-test-%d","models":["%c"],"enabled":%s}`, rng.IntN(2), 'a'+rune(rng.IntN(3)), bool01())
			case 3, 4, 5, 6:
				kind, id = KindRules, fmt.Sprintf("r%d", rng.IntN(8))
				key := []string{"*", "k0", "k1", "k2", "k3", "k4"}[rng.IntN(6)]
				raw = fmt.Sprintf(`{"key":%q,"from":"%c","to":"b","enabled":%s}`, key, 'x'+rune(rng.IntN(2)), bool01())
			case 7, 8:
				kind, id = KindClients, fmt.Sprintf("c%d", rng.IntN(4))
				raw = fmt.Sprintf(`{"token_sha256":"%s","enabled":%s}`, strings.Repeat(string(rune('a'+rng.IntN(3))), 64), bool01())
			case 9:
				kind, raw = KindSettings, []string{`{"strategy":"random"}`, `{"strategy":"round_robin"}`}[rng.IntN(2)]
			}
			if rng.IntN(8) == 0 {
				raw = `{"broken"` // refused, the last good version stays
			}
			path := "keymux/" + string(kind) + "/" + id
			if rng.IntN(6) == 0 {
				inc.Delete(kind, id)
				ref.Delete(kind, id)
				continue
			}
			errInc, errRef := inc.Put(kind, id, []byte(raw), path), ref.Put(kind, id, []byte(raw), path)
			if (errInc == nil) != (errRef == nil) {
				t.Fatalf("round %d: Put %s: %v vs %v", round, path, errInc, errRef)
			}
		}
		d, refusedInc, err := inc.BuildDelta(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if d.Settings != nil {
			cfg.Settings = *d.Settings
		}
		patch(cfg.Keys, d.Keys)
		patch(cfg.Rules, d.Rules)
		patch(cfg.Clients, d.Clients)
		want, refusedRef := ref.Build()
		if !reflect.DeepEqual(cfg, want) {
			t.Fatalf("round %d: by deltas %+v\nfull build %+v", round, cfg, want)
		}
		if !slices.Equal(refusedInc, refusedRef) {
			t.Fatalf("round %d: refusals by delta %v\nfull build %v", round, refusedInc, refusedRef)
		}
	}
}

func patch[V comparable](m, d map[string]V) {
	var zero V
	for id, v := range d {
		if v == zero {
			delete(m, id)
		} else {
			m[id] = v
		}
	}
}

func TestBuildDeltaMatchesFullBuild(t *testing.T) { bySeeds(t, buildBothWays, 80) }

func FuzzBuildDelta(f *testing.F) { fuzzSeeds(f, buildBothWays, 40) }

// TestBuildDeltaKeepsAnUnchangedKey: a key put again with the same bytes
// and the same secret is no change (the file source puts every key at
// every reload); a changed secret is one.
func TestBuildDeltaKeepsAnUnchangedKey(t *testing.T) {
	secret := "sk-test-one"
	resolve := func(ref string) (string, error) { return secret, nil }
	b := NewBuilder(resolve)
	raw := []byte(`{"provider":"openai","secret_ref":"env:KEYMUX_TEST_SECRET"}`)
	if err := b.Put(KindKeys, "k1", raw, "keys/k1"); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ := b.BuildContext(context.Background())
	if err := b.Put(KindKeys, "k1", raw, "keys/k1"); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := b.BuildDelta(context.Background()); !d.Empty() {
		t.Fatalf("delta after the same key = %+v, want empty", d)
	}
	secret = "sk-test-two"
	if err := b.Put(KindKeys, "k1", raw, "keys/k1"); err != nil {
		t.Fatal(err)
	}
	d, _, _ := b.BuildDelta(context.Background())
	if k := d.Keys["k1"]; len(d.Keys) != 1 || k == nil || k == cfg.Keys["k1"] || k.Secret.Reveal() != "sk-test-two" {
		t.Fatalf("delta after a new secret = %+v, want k1 with it", d)
	}
}

// TestFileReloadAppliesTheChange: a reload of an edited file applies only
// the change (ApplyDelta) and gives the configuration a fresh load of the
// file gives; unchanged keys keep their runtime state.
func TestFileReloadAppliesTheChange(t *testing.T) {
	const v1 = `{"settings":{"strategy":"round_robin"},
	"keys":{"k1":{"provider":"openai","secret":"sk-test-1","models":["a","b"]},
		"k2":{"provider":"openai","secret":"sk-test-2","models":["b"]},
		"k3":{"provider":"openai","secret":"sk-test-3","models":["c"]}},
	"rules":{"r1":{"key":"k1","from":"x","to":"a"},"r2":{"key":"*","from":"y","to":"b"},"r3":{"key":"k3","from":"x","to":"c"}},
	"clients":{"c1":{"token_sha256":"` + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `"}}}`
	const v2 = `{"settings":{"strategy":"round_robin"},
	"keys":{"k1":{"provider":"openai","secret":"sk-test-1","models":["a","b"]},
		"k2":{"provider":"openai","secret":"sk-test-2","models":["b","c"],"enabled":false},
		"k4":{"provider":"openai","secret":"sk-test-4","models":["c"]}},
	"rules":{"r1":{"key":"k1","from":"x","to":"b"},"r2":{"key":"*","from":"y","to":"c"},"r4":{"key":"k4","from":"x","to":"c"}},
	"clients":{"c1":{"token_sha256":"` + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `"},
		"c2":{"token_sha256":"` + "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" + `"}}}`
	path := filepath.Join(t.TempDir(), "keymux.json")
	if err := os.WriteFile(path, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	st, err := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	fs := NewFileSource(path, st, nil)
	if err := fs.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	rt1 := st.Read().Key("k1").RT
	if err := os.WriteFile(path, []byte(v2), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fs.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "delta=true") {
		t.Fatalf("the reload was not applied as a delta:\n%s", logs.String())
	}
	fresh := newStore(t)
	if err := NewFileSource(path, fresh, nil).Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	a, b := st.Read(), fresh.Read()
	if a.Key("k1").RT != rt1 {
		t.Error("k1 lost its runtime state")
	}
	keyVals := func(s *Snapshot) []policy.Key {
		var out []policy.Key
		for _, e := range s.Keys() {
			out = append(out, *e.Key)
		}
		return out
	}
	ma, mb := a.meta(), b.meta()
	if !reflect.DeepEqual(keyVals(a), keyVals(b)) || !reflect.DeepEqual(a.Rules(), b.Rules()) || !reflect.DeepEqual(a.Clients(), b.Clients()) ||
		!reflect.DeepEqual(a.Settings(), b.Settings()) || !slices.Equal(ma.Models, mb.Models) || !maps.Equal(ma.Named, mb.Named) ||
		!maps.Equal(ma.KeyModels, mb.KeyModels) || st.Status().Rules != 3 || st.Status().Clients != 2 {
		t.Fatalf("reloaded config differs from a fresh load:\nkeys %v / %v\nrules %v / %v\nmodels %v / %v", entryIDs(a.Keys()), entryIDs(b.Keys()), a.Rules(), b.Rules(), ma.Models, mb.Models)
	}
	for m := range mb.Pools {
		if got, want := entryIDs(a.Pool(m).Entries), entryIDs(b.Pool(m).Entries); !slices.Equal(got, want) {
			t.Errorf("pool %q = %v, want %v", m, got, want)
		}
	}
	if got := entryIDs(a.Pool("x").Entries); !slices.Equal(got, []string{"k1", "k4"}) {
		t.Errorf("pool x = %v, want [k1 k4]", got)
	}
}

// TestApplyBuiltAppliesWholeWhenTheStoreMovedOn: when the store is no
// longer at the generation the builder's last apply made (another apply
// came in between), ApplyBuilt applies the builder's whole configuration,
// not the change alone on top of the other one, and logs no error (a
// stale base is expected).
func TestApplyBuiltAppliesWholeWhenTheStoreMovedOn(t *testing.T) {
	var logs syncbuf.Buffer
	st, err := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBuilder(nil)
	put := func(kind Kind, id, raw string) {
		t.Helper()
		if err := b.Put(kind, id, []byte(raw), string(kind)+"/"+id); err != nil {
			t.Fatal(err)
		}
	}
	put(KindKeys, "k1", `{"provider":"openai","secret":"sk-test-1","models":["a"]}`)
	base, _, err := st.ApplyBuilt(t.Context(), b, 0, SourceInfo{Source: "builder"})
	if err != nil {
		t.Fatal(err)
	}
	other := &Config{Settings: DefaultSettings(), Keys: map[string]*policy.Key{
		"other": {ID: "other", Models: []string{"z"}, Weight: 1, Enabled: true}}}
	if _, err := st.Apply(other, SourceInfo{Source: "other"}); err != nil {
		t.Fatal(err)
	}
	put(KindKeys, "k2", `{"provider":"openai","secret":"sk-test-2","models":["b"]}`)
	gen, _, err := st.ApplyBuilt(t.Context(), b, base, SourceInfo{Source: "builder"})
	if err != nil {
		t.Fatalf("ApplyBuilt over a moved store: %v", err)
	}
	snap := st.Read()
	if gen != base+2 || snap.Generation() != gen {
		t.Fatalf("generation %d (store %d), want %d", gen, snap.Generation(), base+2)
	}
	if got := entryIDs(snap.Keys()); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Fatalf("keys %v, want the builder's whole configuration [k1 k2]", got)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("a stale base was logged as an error:\n%s", logs.String())
	}
}
