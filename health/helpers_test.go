package health_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/bg"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// waitTimeout bounds every wait for a condition.
const waitTimeout = 20 * time.Second

// startMock runs a mock upstream until the test ends.
func startMock(t testing.TB) *mockupstream.Server {
	t.Helper()
	m := mockupstream.New(mockupstream.Options{})
	if err := m.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// openAIKey is an openai key document pointing at the mock.
func openAIKey(m *mockupstream.Server, secret string) string {
	return fmt.Sprintf(`{"provider":"openai","base_url":%q,"secret":%q}`, m.URL()+"/v1", secret)
}

// newStore returns a store holding keys (id → document) and settings.
func newStore(t testing.TB, settings policy.Settings, keys map[string]string) *store.Store {
	t.Helper()
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &store.Config{Settings: settings, Keys: map[string]*policy.Key{}}
	for id, doc := range keys {
		k, err := store.ParseKey(id, []byte(doc), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Keys[id] = k
	}
	if _, err := st.Apply(cfg, store.SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	return st
}

type syncBuffer = syncbuf.Buffer

type runningChecker struct {
	c    *health.Checker
	logs *syncBuffer
	stop func()
}

// startChecker runs a Checker until the test ends or stop is called. Its
// logs are printed when the test fails and checked for secrets.
func startChecker(t testing.TB, cfg health.Config) *runningChecker {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := health.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := bg.Run(t, "checker", c.Run)
	t.Cleanup(func() {
		stop() // first: the logs are complete once Run returned
		if strings.Contains(logs.String(), "sk-test-") {
			t.Errorf("a secret reached the logs:\n%s", logs.String())
		}
		if t.Failed() {
			t.Logf("checker %s logs:\n%s", cfg.ID, logs.String())
		}
	})
	return &runningChecker{c: c, logs: logs, stop: stop}
}

// waitFor waits until cond holds, re-checked after every checker change and
// every wait.Interval (time-bound states change without an event).
func waitFor(t testing.TB, c *health.Checker, what string, cond func() bool) {
	t.Helper()
	var changed func() <-chan struct{}
	if c != nil {
		changed = c.Changed
	}
	wait.UntilChanged(t, waitTimeout, what, changed, cond)
}

// eligible returns policy.Eligible for key id in st at now.
func eligible(st *store.Store, id string) (bool, policy.Ineligible) {
	e := st.Read().Key(id)
	if e == nil {
		return false, policy.Ineligible{Reason: "missing"}
	}
	return policy.Eligible(e.Key, e.RT.State(), time.Now())
}

func state(st *store.Store, id string) policy.KeyState {
	return st.Read().Key(id).RT.State()
}

func statusOf(c *health.Checker, id string) health.KeyStatus {
	for _, s := range c.Snapshot() {
		if s.ID == id {
			return s
		}
	}
	return health.KeyStatus{}
}

// probesOf returns the mock's GET .../models requests carrying credential
// (all credentials when "").
func probesOf(m *mockupstream.Server, credential string) []mockupstream.Recorded {
	var out []mockupstream.Recorded
	for _, r := range m.Requests() {
		if r.Method == "GET" && strings.HasSuffix(r.Path, "/models") && (credential == "" || r.Credential == credential) {
			out = append(out, r)
		}
	}
	return out
}
