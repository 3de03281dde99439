package store

import (
	"testing"

	"github.com/keymux/keymux/policy"
)

func TestNamesModel(t *testing.T) {
	off := key("k2", "claude-sonnet-4")
	off.Enabled = false
	cfg := config(key("k1", "gpt-4o", "gpt-4o-mini"), key("k3"), off)
	cfg.Rules["r1"] = &policy.Rule{ID: "r1", KeyID: "k3", From: "gpt-4", To: "o3", Enabled: true}
	cfg.Rules["r2"] = &policy.Rule{ID: "r2", KeyID: "*", From: "gpt-3.5-turbo", To: "gpt-4o-mini"}
	st := newStore(t)
	if st.Read().NamesModel("gpt-4o") {
		t.Fatal("a model is named before any configuration")
	}
	if _, err := st.Apply(cfg, SourceInfo{}); err != nil {
		t.Fatal(err)
	}
	st.SetSourceInfo(SourceInfo{Source: "test", Stale: true})
	snap := st.Read()
	for model, want := range map[string]bool{
		"gpt-4o": true, "gpt-4o-mini": true, "claude-sonnet-4": true, // listed by a key, enabled or not
		"gpt-4": true, "o3": true, "gpt-3.5-turbo": true, // named by a rule, enabled or not
		"llama-3": false, "": false, "*": false, "gpt-4o\xff": false,
	} {
		if got := snap.NamesModel(model); got != want {
			t.Errorf("NamesModel(%q) = %v, want %v", model, got, want)
		}
	}
}
