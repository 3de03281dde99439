package consul

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

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

// TestProcessStopsWithContext: an answer processed once the source's
// context has ended applies nothing (the stop of a sidecar in the middle of
// a large answer); the same answer applies with a live context.
func TestProcessStopsWithContext(t *testing.T) {
	pairs := api.KVPairs{
		{Key: "keymux/keys/k1", Value: []byte(`{"provider":"openai","secret":"sk-k1"}`), ModifyIndex: 3},
		{Key: "keymux/keys/k2", Value: []byte(`{"provider":"openai","secret":"sk-k2"}`), ModifyIndex: 4},
		{Key: "keymux/rules/r1", Value: []byte(`{"key":"k1","from":"gpt-4","to":"gpt-4o-mini"}`), ModifyIndex: 5},
	}
	for _, tc := range []struct {
		name      string
		cancelled bool
		wantReady bool
	}{
		{"context ended", true, false},
		{"context live", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := store.New(store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			src, err := New(Options{Store: st, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			if tc.cancelled {
				cancel()
			}
			defer cancel()
			src.listing.pairs(pairs)
			src.process(ctx, 5)
			if st.Ready() != tc.wantReady {
				t.Fatalf("store ready = %v, want %v", st.Ready(), tc.wantReady)
			}
			if tc.wantReady && len(st.Read().Keys()) != 2 {
				t.Errorf("%d keys applied, want 2", len(st.Read().Keys()))
			}
		})
	}
}
