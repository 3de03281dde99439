package consul

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
)

func TestDocsAndDocPath(t *testing.T) {
	var pairs api.KVPairs
	for _, k := range []string{"keymux/", "keymux/clients/c1", "keymux/health/k1", "keymux/keys/", "keymux/keys/k1",
		"keymux/leader/health", "keymux/rules/r1", "keymux/settings", "other/keys/k2"} {
		pairs = append(pairs, &api.KVPair{Key: k})
	}
	var got []string
	for _, d := range Docs("keymux/", pairs) {
		if p := DocPath("keymux/", d.Kind, d.ID); p != d.Pair.Key {
			t.Errorf("DocPath(%q, %q) = %q, want %q", d.Kind, d.ID, p, d.Pair.Key)
		}
		got = append(got, fmt.Sprintf("%s:%s", d.Kind, d.ID))
	}
	if want := "clients:c1 keys:k1 rules:r1 settings:"; strings.Join(got, " ") != want {
		t.Errorf("Docs = %q, want %q", got, want)
	}
	if p := DocPath("team-b/", store.KindSettings, "ignored"); p != "team-b/settings" {
		t.Errorf("DocPath(settings) = %q", p)
	}
}
