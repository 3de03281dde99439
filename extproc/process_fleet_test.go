package extproc

import (
	"sync"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

// With other live members (store.Fleet), a key's rpm is this instance's
// share: 4 over 2 members is 2 here.
func TestKeyLimitIsThisInstancesShare(t *testing.T) {
	r := newRig(t, `
settings: {strategy: round_robin}
keys:
  k1: {provider: openai, secret: sk-test-k1, limits: {rpm: 4}}
  k2: {provider: openai, secret: sk-test-k2}
`)
	r.store.Fleet().SetView(2, 1)
	runSteps(t, r, []step{
		{at: 0, model: "gpt-4o", key: "k1"},
		{at: time.Second, model: "gpt-4o", key: "k2"},
		{at: 2 * time.Second, model: "gpt-4o", key: "k1"},
		{at: 3 * time.Second, model: "gpt-4o", key: "k2"},
		{at: 4 * time.Second, model: "gpt-4o", key: "k2"}, // k1's turn: its share (2) is used
		{at: 5 * time.Second, model: "gpt-4o", key: "k2"},
	})
}

// A client over its share is told so.
func TestClientLimitIsThisInstancesShare(t *testing.T) {
	r := newRig(t, testKeys(settingsClientKeys)) // tokenLimited: rpm 2
	r.store.Fleet().SetView(2, 1)                // share 1
	r.clock.Set(t0)
	if res := r.run(append(chat("gpt-4o", bearer(tokenLimited)...), respHeaders(true, ":status", "200"))...); res.replies[1].GetImmediateResponse() != nil {
		t.Fatalf("first request refused: %s", res.replies[1].GetImmediateResponse().GetBody())
	}
	res := r.run(chat("gpt-4o", bearer(tokenLimited)...)...)
	l := immediate(t, res.replies[0])
	want := "Rate limit reached for client limited on requests per minute: limit 1 (this instance's share of 2 over the fleet)."
	if l.status != 429 || l.code() != "rate_limit_exceeded" || l.err.Message != want {
		t.Fatalf("%d %s %q, want 429 rate_limit_exceeded %q", l.status, l.code(), l.err.Message, want)
	}
}

// Every key-state change the request path makes reaches the fleet's
// observer with the old and the new state.
func TestKeyStateChangesReachTheObserver(t *testing.T) {
	r := newRig(t, `
settings: {strategy: round_robin}
keys:
  k1: {provider: openai, secret: sk-test-k1}
`)
	type seen struct {
		key       string
		old, next policy.KeyState
	}
	var mu sync.Mutex
	var got []seen
	r.store.Fleet().SetObserver(func(id string, old, next policy.KeyState, _ time.Time) {
		mu.Lock()
		got = append(got, seen{id, old, next})
		mu.Unlock()
	})
	r.clock.Set(t0)
	r.run(append(chat("gpt-4o"), respHeaders(true, ":status", "401"))...)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].key != "k1" || got[0].old.Disabled || !got[0].next.Disabled || got[0].next.DisabledReason != policy.DisabledAuth {
		t.Fatalf("observer saw %+v, want k1 going from enabled to disabled (auth)", got)
	}
}
