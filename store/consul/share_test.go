package consul

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
)

// The fleet's entries go to OnState (changed ones, with their index; nil
// when deleted) and OnMembers (ids held by a session, when they change),
// and never into the configuration.
func TestSourceHandsOutFleetEntries(t *testing.T) {
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	type state struct {
		id    string
		raw   string
		index uint64
	}
	var states []state
	var members [][]string
	src, err := New(Options{Store: st, Prefix: "keymux/", Logger: slog.New(slog.DiscardHandler),
		OnState:   func(id string, raw []byte, index uint64) { states = append(states, state{id, string(raw), index}) },
		OnMembers: func(ids []string) { members = append(members, ids) }})
	if err != nil {
		t.Fatal(err)
	}
	settings := &api.KVPair{Key: "keymux/settings", Value: []byte(`{}`), ModifyIndex: 1}
	answer := func(index uint64, pairs ...*api.KVPair) {
		t.Helper()
		src.listing.pairs(append(api.KVPairs{settings}, pairs...))
		src.process(context.Background(), index)
	}
	k1 := &api.KVPair{Key: "keymux/state/k1", Value: []byte(`{"reason":"auth"}`), ModifyIndex: 5}
	m1 := &api.KVPair{Key: "keymux/members/a", Value: []byte(`{}`), Session: "s1", ModifyIndex: 6}
	m2 := &api.KVPair{Key: "keymux/members/b", Value: []byte(`{}`), Session: "s2", ModifyIndex: 7}
	orphan := &api.KVPair{Key: "keymux/members/c", Value: []byte(`{}`), ModifyIndex: 8} // no session: not live
	nested := &api.KVPair{Key: "keymux/state/x/y", Value: []byte(`{}`), ModifyIndex: 9}

	answer(10, k1, m2, m1, orphan, nested)
	answer(11, k1, m2, m1, orphan, nested) // nothing changed
	answer(12, m2)                         // k1's state deleted, member a gone
	if want := []state{{"k1", `{"reason":"auth"}`, 5}, {"k1", "", 0}}; !slices.Equal(states, want) {
		t.Errorf("OnState calls %+v, want %+v", states, want)
	}
	if len(members) != 2 || !slices.Equal(members[0], []string{"a", "b"}) || !slices.Equal(members[1], []string{"b"}) {
		t.Errorf("OnMembers calls %v, want [[a b] [b]]", members)
	}
	if got := st.Status().Refused; len(got) != 0 {
		t.Errorf("fleet entries reached the configuration: refused %+v", got)
	}
}
