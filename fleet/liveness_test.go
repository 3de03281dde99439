package fleet

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// fakeAgent serves the Consul endpoints a member uses and records the
// calls ("PUT /v1/..."), the service registration and the session created.
type fakeAgent struct {
	refuse bool // the service registration gets ACL's 403

	mu      sync.Mutex
	calls   []string
	service api.AgentServiceRegistration
	session map[string]json.RawMessage
	updates int
}

func (a *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	p := r.URL.Path
	if p != "/v1/agent/check/update/keymux-member-i1" {
		a.calls = append(a.calls, r.Method+" "+p)
	}
	switch {
	case p == "/v1/agent/service/register":
		if a.refuse {
			http.Error(w, "Permission denied: token with AccessorID 'x' lacks permission 'service:write' on \"keymux-member\"", http.StatusForbidden)
			return
		}
		_ = json.Unmarshal(body, &a.service)
	case p == "/v1/session/create":
		_ = json.Unmarshal(body, &a.session)
		_, _ = io.WriteString(w, `{"ID":"s1"}`)
	case p == "/v1/kv/keymux/members/i1":
		_, _ = io.WriteString(w, "true")
	case p == "/v1/session/renew/s1":
		_, _ = io.WriteString(w, `[{"ID":"s1"}]`)
	case p == "/v1/agent/check/update/keymux-member-i1":
		a.updates++
	case p == "/v1/agent/service/deregister/keymux-member-i1":
	case p == "/v1/session/destroy/s1":
		_, _ = io.WriteString(w, "true")
	default:
		http.NotFound(w, r)
	}
}

func (a *fakeAgent) snapshot() (calls []string, updates int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls), a.updates
}

// A member registers its own TTL check and makes its session depend on it
// (with serfHealth), passes it every TTL/3 and deregisters it on a clean
// stop; a crash leaves it to go critical. An agent that refuses the check
// (ACL) leaves the session on Consul's default checks, with a warning
// naming the missing right.
func TestMemberLiveness(t *testing.T) {
	const (
		register   = "PUT /v1/agent/service/register"
		create     = "PUT /v1/session/create"
		acquire    = "PUT /v1/kv/keymux/members/i1"
		deregister = "PUT /v1/agent/service/deregister/keymux-member-i1"
		destroy    = "PUT /v1/session/destroy/s1"
	)
	tests := []struct {
		name          string
		refuse, crash bool
		ttl           time.Duration
		wantCalls     []string // after the stop (renewals left out)
		wantChecks    bool
		wantWarn      string
	}{
		{name: "clean stop", ttl: time.Second, wantChecks: true,
			wantCalls: []string{register, create, acquire, destroy, deregister}},
		{name: "crash", crash: true, ttl: time.Second, wantChecks: true,
			wantCalls: []string{register, create, acquire}},
		{name: "ACL refuses the check", refuse: true, ttl: time.Second,
			wantCalls: []string{register, create, acquire, destroy},
			wantWarn:  `no liveness check; a killed member leaves only when its session expires (up to twice session_ttl)" component=fleet session_ttl=10s error="register check keymux-member-i1 (needs service:write on keymux-member): Unexpected response code: 403`},
		{name: "liveness off", ttl: -1,
			wantCalls: []string{create, acquire, destroy}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{refuse: tt.refuse}
			srv := httptest.NewServer(agent)
			t.Cleanup(srv.Close)
			client, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String()})
			if err != nil {
				t.Fatal(err)
			}
			st, err := store.New(store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var logs syncbuf.Buffer
			f, err := New(Config{Store: st, Consul: client, Prefix: "keymux/", ID: "i1", LivenessTTL: tt.ttl,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			f.abandon.Store(tt.crash)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { defer close(done); _ = f.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })

			wait.Until(t, 5*time.Second, "registered", f.registered.Load)
			if got, want := f.Status().Liveness, map[bool]string{true: "check", false: "session_ttl"}[tt.wantChecks]; got != want {
				t.Errorf("status liveness %q, want %q", got, want)
			}
			if tt.wantChecks {
				wait.Until(t, 5*time.Second, "two liveness updates", func() bool { _, n := agent.snapshot(); return n >= 2 })
			}
			cancel()
			<-done
			calls, updates := agent.snapshot()
			calls = slices.DeleteFunc(calls, func(c string) bool { return strings.HasPrefix(c, "PUT /v1/session/renew/") })
			if !slices.Equal(calls, tt.wantCalls) {
				t.Errorf("calls %q, want %q", calls, tt.wantCalls)
			}
			agent.mu.Lock()
			defer agent.mu.Unlock()
			if tt.wantChecks {
				const want = "keymux-member-i1 keymux member liveness 1s passing 1m0s"
				c := agent.service.Check
				if agent.service.ID != "keymux-member-i1" || agent.service.Name != "keymux-member" || c == nil ||
					strings.Join([]string{c.CheckID, c.Name, c.TTL, c.Status, c.DeregisterCriticalServiceAfter}, " ") != want {
					t.Errorf("service %+v check %+v, want check %q", agent.service, c, want)
				}
				if got := string(agent.session["NodeChecks"]) + " " + string(agent.session["ServiceChecks"]); got != `["serfHealth"] [{"ID":"keymux-member-i1","Namespace":""}]` {
					t.Errorf("session checks %s", got)
				}
			} else {
				if _, ok := agent.session["NodeChecks"]; ok || updates != 0 {
					t.Errorf("session %v, %d liveness updates; want Consul's default checks and none", agent.session, updates)
				}
			}
			if tt.wantWarn != "" && !strings.Contains(logs.String(), tt.wantWarn) {
				t.Errorf("logs lack %q:\n%s", tt.wantWarn, logs.String())
			}
			if tt.wantWarn == "" && strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("unexpected warning:\n%s", logs.String())
			}
		})
	}
}

// New refuses a liveness TTL under a second or over the session TTL.
func TestLivenessTTLBounds(t *testing.T) {
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ttl := range []time.Duration{500 * time.Millisecond, 11 * time.Second} {
		_, err := New(Config{Store: st, LivenessTTL: ttl})
		want := "fleet: liveness TTL " + ttl.String() + ": want 1s up to the session TTL 10s"
		if err == nil || err.Error() != want {
			t.Errorf("LivenessTTL %s: error %v, want %q", ttl, err, want)
		}
	}
}
