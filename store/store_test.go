package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	st, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func loadDemo(t testing.TB, name string) (*Config, []Refusal) {
	t.Helper()
	cfg, refused, err := LoadFile(filepath.Join("testdata", name), testResolve)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, refused
}

func ids(p *Pool) []string {
	out := []string{}
	for _, e := range p.Entries {
		out = append(out, e.Key.ID)
	}
	return out
}

func hexSum(s string) [32]byte {
	var sum [32]byte
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		panic(err)
	}
	return sum
}

var (
	tokA = hexSum(strings.Repeat("a", 64))
	tokB = hexSum(strings.Repeat("b", 64))
)

func TestDemoYAMLEqualsJSON(t *testing.T) {
	fromJSON, rj := loadDemo(t, "demo.json")
	fromYAML, ry := loadDemo(t, "demo.yaml")
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Errorf("configs differ:\njson %+v\nyaml %+v", fromJSON, fromYAML)
	}
	if !reflect.DeepEqual(rj, ry) {
		t.Errorf("refusals differ:\njson %+v\nyaml %+v", rj, ry)
	}
}

// compiledView is the golden form of a snapshot: what the hot path sees.
type compiledView struct {
	Generation uint64              `json:"generation"`
	Strategy   string              `json:"strategy"`
	Cooldown   string              `json:"cooldown"`
	Models     []string            `json:"models"`
	Pools      map[string][]string `json:"pools"`
	Rules      map[string]string   `json:"rules"`
	Clients    map[string]string   `json:"clients"`
	Keys       []string            `json:"keys"`
	Status     Status              `json:"status"`
}

func compile(snap *Snapshot, st Status) compiledView {
	v := compiledView{
		Generation: snap.Generation(),
		Strategy:   snap.Settings().Strategy,
		Cooldown:   snap.Settings().Ejection.Cooldown.String(),
		Models:     snap.Models(),
		Pools:      map[string][]string{},
		Rules:      map[string]string{},
		Clients:    map[string]string{},
		Status:     st,
	}
	v.Status.LastSync = time.Time{}
	for _, m := range append([]string{"", "*", "llama-3", "claude-sonnet-4"}, snap.Models()...) {
		v.Pools[m] = ids(snap.Pool(m))
	}
	for _, e := range snap.Keys() {
		v.Keys = append(v.Keys, fmt.Sprintf("%s %s %s%s enabled=%v", e.Key.ID, e.Key.Provider, e.Key.Host, e.Key.PathPrefix, e.Key.Enabled))
		for _, m := range []string{"gpt-4", "gpt-4o", "gpt-3.5-turbo", "claude-sonnet-4"} {
			r := snap.Rule(e.Key.ID, m)
			if r != nil {
				v.Rules[e.Key.ID+" "+m] = r.ID + " → " + r.To
			}
		}
	}
	for name, sum := range map[string][32]byte{"a": tokA, "b": tokB} {
		c := snap.ClientByTokenSHA256(sum)
		v.Clients[name] = "-"
		if c != nil {
			v.Clients[name] = c.ID
		}
	}
	return v
}

func TestDemoCompiledGolden(t *testing.T) {
	cfg, refused := loadDemo(t, "demo.yaml")
	st := newStore(t)
	if _, err := st.Apply(cfg, SourceInfo{Source: "file:demo.yaml", LastSync: time.Now(), Refused: refused}); err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(compile(st.Read(), st.Status()), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "demo.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("compiled config differs from %s (-update to rewrite)\n got: %s\nwant: %s", golden, got, want)
	}
	if bytes.Contains(got, []byte("sk-test")) {
		t.Error("compiled view leaks a secret")
	}
}

func TestDemoPools(t *testing.T) {
	cfg, _ := loadDemo(t, "demo.json")
	st := newStore(t)
	if _, err := st.Apply(cfg, SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	snap := st.Read()
	tests := []struct {
		model string
		want  []string
	}{
		{"", []string{"k1", "k2", "k3", "k5"}},    // every enabled key
		{"gpt-4o", []string{"k1", "k2", "k3"}},    // k4 is disabled
		{"gpt-4o-mini", []string{"k1", "k2"}},     // k3 only has gpt-4o
		{"gpt-4", []string{"k2", "k3"}},           // r1 and r3 rewrite to gpt-4o; k1 has no rule
		{"gpt-3.5-turbo", []string{"k1", "k2"}},   // r2 ("*") rewrites to gpt-4o-mini
		{"claude-sonnet-4", []string{"k2", "k5"}}, // r4 is disabled
		{"llama-3", []string{"k2"}},               // not listed: keys without models
		{"*", []string{"k2"}},                     // the reserved name is the unlisted pool
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			p := snap.Pool(tc.model)
			if got := ids(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Pool(%q) = %v, want %v", tc.model, got, tc.want)
			}
			if p.Seq == nil {
				t.Error("nil Seq")
			}
		})
	}
	rules := []struct {
		key, model, want string
	}{
		{"k2", "gpt-4", "r1"},
		{"k3", "gpt-4", "r3"},
		{"k1", "gpt-4", ""},
		{"k1", "gpt-3.5-turbo", "r2"},
		{"k3", "gpt-3.5-turbo", "r2"},
		{"k1", "claude-sonnet-4", ""}, // disabled
		{"*", "gpt-3.5-turbo", "r2"},
		{"k9", "gpt-3.5-turbo", "r2"},
	}
	for _, tc := range rules {
		r := snap.Rule(tc.key, tc.model)
		got := ""
		if r != nil {
			got = r.ID
		}
		if got != tc.want {
			t.Errorf("Rule(%q, %q) = %q, want %q", tc.key, tc.model, got, tc.want)
		}
	}
	if c := snap.ClientByTokenSHA256(tokA); c == nil || c.ID != "c1" {
		t.Errorf("client for token a = %+v, want c1", c)
	}
	if c := snap.ClientByTokenSHA256(tokB); c != nil {
		t.Errorf("disabled client returned: %+v", c)
	}
	if c := snap.Client("c3"); c == nil || c.Enabled {
		t.Errorf("Client(c3) = %+v, want the disabled client", c)
	}
	if c := snap.ClientByTokenSHA256(sha256.Sum256([]byte("sk-test-unknown"))); c != nil {
		t.Errorf("unknown token matched %s", c.ID)
	}
	if got, want := snap.Models(), []string{"claude-sonnet-4", "gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Models() = %v, want %v", got, want)
	}
	if e := snap.Key("k2"); e == nil || e.Key.Secret.Reveal() != "sk-test-k2-from-env" || e.Key.Host != "127.0.0.1:8081" || e.Key.Scheme != "http" {
		t.Errorf("Key(k2) = %+v", e)
	}
	var enabled []string
	for _, e := range snap.EnabledKeys() {
		enabled = append(enabled, e.Key.ID)
	}
	if want := []string{"k1", "k2", "k3", "k5"}; !reflect.DeepEqual(enabled, want) {
		t.Errorf("EnabledKeys() = %v, want %v", enabled, want)
	}
	if snap.Key("k6") != nil {
		t.Error("refused key k6 is served")
	}
	if got := len(snap.Rules()); got != 4 {
		t.Errorf("%d rules, want 4 (r5 and r6 refused)", got)
	}
	if got := len(snap.Clients()); got != 2 {
		t.Errorf("%d clients, want 2 (c2 refused)", got)
	}
}

func TestRuleDisabledDoesNotShadow(t *testing.T) {
	cfg := config(key("k1"))
	cfg.Rules["r0"] = &policy.Rule{ID: "r0", KeyID: "k1", From: "a", To: "x"}
	cfg.Rules["r1"] = &policy.Rule{ID: "r1", KeyID: "k1", From: "a", To: "b", Enabled: true}
	cfg.Rules["r2"] = &policy.Rule{ID: "r2", KeyID: "*", From: "c", To: "d"}
	st := newStore(t)
	if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
		t.Fatal(err)
	}
	snap := st.Read()
	if r := snap.Rule("k1", "a"); r == nil || r.ID != "r1" {
		t.Errorf("Rule(k1, a) = %+v, want r1", r)
	}
	if r := snap.Rule("k1", "c"); r != nil {
		t.Errorf("Rule(k1, c) = %+v, want none (r2 disabled)", r)
	}
	if got := len(snap.Rules()); got != 3 {
		t.Errorf("%d rules listed, want 3", got)
	}
}

func TestSnapshotBeforeApply(t *testing.T) {
	st := newStore(t)
	if st.Ready() {
		t.Fatal("ready before Apply")
	}
	snap := st.Read()
	if g := snap.Generation(); g != 0 {
		t.Errorf("generation %d", g)
	}
	if p := snap.Pool("gpt-4o"); p == nil || len(p.Entries) != 0 || p.Seq == nil {
		t.Errorf("Pool = %+v, want empty", p)
	}
	if s := snap.Settings(); !reflect.DeepEqual(*s, DefaultSettings()) {
		t.Errorf("Settings = %+v, want defaults", s)
	}
	if snap.Rule("k1", "x") != nil || snap.ClientByTokenSHA256(tokA) != nil || snap.Key("k1") != nil || len(snap.Keys()) != 0 || snap.Models() != nil {
		t.Error("empty store returned data")
	}
	if st := st.Status(); st.Generation != 0 || st.Refused == nil || len(st.Refused) != 0 {
		t.Errorf("Status = %+v", st)
	}
}

func key(id string, models ...string) *policy.Key {
	return &policy.Key{ID: id, Provider: policy.ProviderOpenAI, Secret: "sk-test-" + policy.Secret(id), Weight: 1, Enabled: true, Models: models,
		Scheme: "https", Host: "api.openai.com", PathPrefix: "/v1", BaseURL: "https://api.openai.com/v1"}
}

func config(keys ...*policy.Key) *Config {
	cfg := &Config{Settings: DefaultSettings(), Keys: map[string]*policy.Key{}, Rules: map[string]*policy.Rule{}, Clients: map[string]*policy.Client{}}
	for _, k := range keys {
		cfg.Keys[k.ID] = k
	}
	return cfg
}

func TestApplyCarriesRuntimeByKeyID(t *testing.T) {
	st := newStore(t)
	gen, err := st.Apply(config(key("k1"), key("k2")), SourceInfo{})
	if err != nil || gen != 1 {
		t.Fatalf("Apply = %d, %v", gen, err)
	}
	old := st.Read()
	rt1 := old.Key("k1").RT
	rt1.AddUsage(42)
	rt2 := old.Key("k2").RT
	old.Pool("").Seq.Add(7)

	k1v2 := key("k1", "gpt-4o")
	k1v2.Weight = 5
	if gen, err = st.Apply(config(k1v2, key("k3")), SourceInfo{}); err != nil || gen != 2 {
		t.Fatalf("Apply = %d, %v", gen, err)
	}
	snap := st.Read()
	e1 := snap.Key("k1")
	if e1.RT != rt1 || e1.RT.Usage() != 42 || e1.Key.Weight != 5 {
		t.Errorf("k1: runtime %p (want %p), usage %d, weight %v", e1.RT, rt1, e1.RT.Usage(), e1.Key.Weight)
	}
	if snap.Key("k2") != nil {
		t.Error("k2 still present")
	}
	if rt3 := snap.Key("k3").RT; rt3 == rt1 || rt3 == rt2 || rt3.Usage() != 0 {
		t.Error("k3 did not get a fresh runtime")
	}
	if got := snap.Pool("").Seq.Load(); got != 7 {
		t.Errorf("pool counter %d, want 7 (carried over)", got)
	}
	// The old snapshot still sees the old generation.
	if old.Generation() != 1 || old.Key("k2") == nil || old.Key("k1").Key.Weight != 1 {
		t.Error("old snapshot changed")
	}
	// A key that comes back starts afresh.
	if _, err := st.Apply(config(key("k1"), key("k2")), SourceInfo{}); err != nil {
		t.Fatal(err)
	}
	if rt := st.Read().Key("k2").RT; rt == rt2 {
		t.Error("re-added k2 reused its old runtime")
	}
}

func TestApplyRefusesInvalidConfig(t *testing.T) {
	dupTok := config(key("k1"))
	dupTok.Clients["c1"] = &policy.Client{ID: "c1", TokenSHA256: tokA, Enabled: true}
	dupTok.Clients["c2"] = &policy.Client{ID: "c2", TokenSHA256: tokA, Enabled: true}
	missingKey := config(key("k1"))
	missingKey.Rules["r1"] = &policy.Rule{ID: "r1", KeyID: "k2", From: "a", To: "b", Enabled: true}
	dupRule := config(key("k1"))
	dupRule.Rules["r1"] = &policy.Rule{ID: "r1", KeyID: "k1", From: "a", To: "b", Enabled: true}
	dupRule.Rules["r2"] = &policy.Rule{ID: "r2", KeyID: "k1", From: "a", To: "c", Enabled: true}
	idMismatch := config(key("k1"))
	idMismatch.Keys["k2"] = key("k1")
	tests := []struct {
		name string
		cfg  *Config
		want string
	}{
		{"nil", nil, "invalid config: nil"},
		{"duplicate token", dupTok, "invalid config: clients/c2: same token_sha256 as clients/c1"},
		{"rule for missing key", missingKey, `invalid config: rules/r1: unknown key "k2"`},
		{"duplicate rule", dupRule, "invalid config: rules/r2: same key and from as rules/r1"},
		{"id mismatch", idMismatch, "invalid config: keys/k2: missing or id mismatch"},
	}
	st := newStore(t)
	if _, err := st.Apply(config(key("k0")), SourceInfo{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := st.Apply(tc.cfg, SourceInfo{})
			if err == nil || err.Error() != tc.want || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want %s", err, tc.want)
			}
			if snap := st.Read(); snap.Generation() != 1 || snap.Key("k0") == nil {
				t.Error("a refused config changed the store")
			}
		})
	}
}

func TestSetSourceInfo(t *testing.T) {
	st := newStore(t)
	if _, err := st.Apply(config(key("k1")), SourceInfo{Source: "consul", LastSync: time.Unix(100, 0)}); err != nil {
		t.Fatal(err)
	}
	changed := st.Changed()
	since := time.Unix(200, 0)
	st.SetSourceInfo(SourceInfo{Source: "consul", LastSync: time.Unix(100, 0), Stale: true, StaleSince: since,
		Refused: []Refusal{{Path: "keymux/keys/k9", Reason: "keys/k9: bad"}}})
	select {
	case <-changed:
	default:
		t.Fatal("Changed not signalled")
	}
	want := Status{Source: "consul", Generation: 1, LastSync: time.Unix(100, 0), Stale: true, StaleSince: since,
		Refused: []Refusal{{Path: "keymux/keys/k9", Reason: "keys/k9: bad"}}, Keys: 1}
	if got := st.Status(); !reflect.DeepEqual(got, want) {
		t.Errorf("Status = %+v\nwant %+v", got, want)
	}
	if _, err := json.Marshal(st.Status()); err != nil {
		t.Fatal(err)
	}
}

// TestReadersNeverSeeAMix applies two alternating configurations while
// readers check that everything they see belongs to one generation.
func TestReadersNeverSeeAMix(t *testing.T) {
	st := newStore(t)
	cfgA := config(key("a1", "m"), key("a2", "m"), key("a3"))
	cfgA.Settings.Strategy = "round_robin"
	cfgB := config(key("b1", "m"), key("b2"), key("b3", "x"), key("b4", "m"), key("b5", "m"))
	cfgB.Settings.Strategy = "weighted_by_usage"
	cfgB.Rules["r1"] = &policy.Rule{ID: "r1", KeyID: "*", From: "alias", To: "m", Enabled: true}
	// Generation g holds cfgA when g is odd, cfgB when even.
	type expect struct {
		prefix   string
		keys     int
		poolM    []string
		strategy string
		models   []string
		hasRule  bool
	}
	exp := map[bool]expect{
		true:  {"a", 3, []string{"a1", "a2", "a3"}, "round_robin", []string{"m"}, false},
		false: {"b", 5, []string{"b1", "b2", "b4", "b5"}, "weighted_by_usage", []string{"alias", "m", "x"}, true},
	}
	if _, err := st.Apply(cfgA, SourceInfo{}); err != nil {
		t.Fatal(err)
	}
	const writes = 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				snap := st.Read()
				g := snap.Generation()
				e := exp[g%2 == 1]
				keys := snap.Keys()
				pool := ids(snap.Pool("m"))
				bad := len(keys) != e.keys || !reflect.DeepEqual(pool, e.poolM) ||
					snap.Settings().Strategy != e.strategy || !reflect.DeepEqual(snap.Models(), e.models) ||
					(snap.Rule("b1", "alias") != nil) != e.hasRule
				for _, k := range keys {
					bad = bad || !strings.HasPrefix(k.Key.ID, e.prefix)
				}
				if bad {
					errs <- fmt.Errorf("generation %d: keys %d, pool(m) %v, strategy %s, models %v", g, len(keys), pool, snap.Settings().Strategy, snap.Models())
					return
				}
			}
		})
	}
	for i := range writes {
		cfg := cfgB
		if i%2 == 1 {
			cfg = cfgA
		}
		if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g := st.Read().Generation(); g != writes+1 {
		t.Errorf("generation %d, want %d", g, writes+1)
	}
}

func TestTruncateMarksTheCutOnARuneBoundary(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"short", 8, "short"},
		{"abcdef", 3, "abc…"},
		{"ab€cd", 3, "ab…"}, // € (3 bytes) does not fit whole
		{"ab€cd", 5, "ab€…"},
	}
	for _, tc := range tests {
		if got := truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
