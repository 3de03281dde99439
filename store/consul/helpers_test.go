package consul_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/testutil/bg"
	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// waitTimeout bounds every wait for a condition in these tests.
const waitTimeout = 20 * time.Second

const prefix = "keymux/"

// Documents used across tests; secrets are obviously fake.
const (
	keyK1 = `{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k1","models":["gpt-4o","gpt-4o-mini"]}`
	keyK2 = `{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k2","models":["gpt-4o"]}`
	keyK3 = `{"provider":"anthropic","secret":"sk-test-k3","models":["gpt-4o"]}`
)

type running struct {
	src  *consul.Source
	st   *store.Store
	logs *syncBuffer
	stop func()
}

type syncBuffer = syncbuf.Buffer

// startSource runs a Source over agent a with its own Store until the test
// ends (or stop is called); its client is made by consul.NewClient unless
// opts has one.
func startSource(t testing.TB, a *consultest.Agent, opts consul.Options) *running {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := store.New(store.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	opts.Store = st
	if opts.Client == nil { // each source as its own sidecar
		c, err := consul.NewClient(a.Config())
		if err != nil {
			t.Fatal(err)
		}
		opts.Client = c
	}
	opts.Logger = logger
	if opts.BackoffMax == 0 {
		opts.BackoffBase, opts.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	src, err := consul.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := bg.Run(t, "source", src.Run)
	t.Cleanup(func() {
		stop() // first: the logs are complete once Run returned
		if t.Failed() {
			t.Logf("source logs:\n%s", logs.String())
		}
	})
	return &running{src: src, st: st, logs: logs, stop: stop}
}

// waitStore waits until cond holds for the store (checked after every
// store commit).
func waitStore(t testing.TB, st *store.Store, what string, cond func() bool) {
	t.Helper()
	wait.UntilChanged(t, waitTimeout, what, st.Changed, cond)
}

// waitSource waits until cond holds, checked after every source change.
func waitSource(t testing.TB, src *consul.Source, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := src.Wait(ctx, cond); err != nil {
		t.Fatalf("timed out waiting for %s: %v", what, err)
	}
}

// poolIDs lists the key ids of the pool for model.
func poolIDs(st *store.Store, model string) []string {
	var ids []string
	for _, e := range st.Read().Pool(model).Entries {
		ids = append(ids, e.Key.ID)
	}
	return ids
}

func poolIs(st *store.Store, model string, want ...string) func() bool {
	return func() bool { return slices.Equal(poolIDs(st, model), want) }
}

func put(t testing.TB, a *consultest.Agent, rel, value string) {
	t.Helper()
	a.Put(prefix+rel, []byte(value))
}
