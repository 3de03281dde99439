package consul

import (
	"context"
	"strings"
	"testing"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/consultest"
)

func TestWriteAllReportsEveryFailedOperation(t *testing.T) {
	a := consultest.Start(t)
	a.Put("keymux/keys/exists", []byte(`{}`))
	a.Put("keymux/keys/moved", []byte(`{}`))
	writes := []Write{
		{Path: "keymux/keys/new", Value: []byte(`{}`), Index: 0},
		{Path: "keymux/keys/exists", Value: []byte(`{}`), Index: 0},
		{Path: "keymux/keys/moved", Value: []byte(`{}`), Index: 1},
	}
	committed := 0
	err := WriteAll(t.Context(), a.Client(), writes, func(int, int) { committed++ })
	if err == nil {
		t.Fatal("WriteAll succeeded, want a rollback")
	}
	for _, w := range []string{"transaction 1 rolled back", "keymux/keys/exists: ", "keymux/keys/moved: "} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "keymux/keys/new:") {
		t.Errorf("error blames the operation that did not fail: %q", err)
	}
	if committed != 0 {
		t.Errorf("%d transactions reported written, want 0", committed)
	}
	if p, _, _ := a.Client().KV().Get("keymux/keys/new", nil); p != nil {
		t.Error("keymux/keys/new written although its transaction rolled back")
	}
}

func TestClassify(t *testing.T) {
	s := &Source{opts: Options{Prefix: "keymux/"}}
	tests := []struct {
		path   string
		kind   store.Kind
		id     string
		health bool
		ok     bool
	}{
		{"keymux/settings", store.KindSettings, "", false, true},
		{"keymux/keys/k1", store.KindKeys, "k1", false, true},
		{"keymux/rules/r1", store.KindRules, "r1", false, true},
		{"keymux/clients/c1", store.KindClients, "c1", false, true},
		{"keymux/keys/a/b", store.KindKeys, "a/b", false, true}, // refused by the builder: invalid id
		{"keymux/health/k1", "", "k1", true, true},
		{"keymux/keys/", "", "", false, false},
		{"keymux/", "", "", false, false},
		{"keymux/settings/x", "", "", false, false},
		{"keymux/usage/k1", "", "", false, false},
		{"keymux/leader", "", "", false, false},
		{"other/keys/k1", "", "", false, false},
	}
	for _, tc := range tests {
		kind, id, health, ok := s.classify(tc.path)
		if kind != tc.kind || id != tc.id || health != tc.health || ok != tc.ok {
			t.Errorf("classify(%q) = %q %q %t %t, want %q %q %t %t", tc.path, kind, id, health, ok, tc.kind, tc.id, tc.health, tc.ok)
		}
	}
}

func TestBucketDoesNotWaitWithinBurst(t *testing.T) {
	b := newBucket(1, 5) // 1 token per second: a wait would be visible
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a bucket that has to wait returns ctx.Err() at once
	for i := range 5 {
		if err := b.wait(ctx); err != nil {
			t.Fatalf("wait %d within the burst: %v, want no wait", i, err)
		}
	}
	if err := b.wait(ctx); err == nil {
		t.Fatal("wait beyond the burst returned nil, want it to wait (and see the cancelled ctx)")
	}
}
