package fleet

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/consultest"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// On a real Consul agent: the member's first session already depends on
// its check (no retry), a crashed member (nothing deregistered, no more
// passes) loses its entry within the check's TTL rather than the session's
// 10–20 s, and a clean stop deregisters the check at once.
func TestMemberLivenessOnConsul(t *testing.T) {
	a := consultest.Start(t)
	client := a.Client()
	for _, crash := range []bool{true, false} {
		st, err := store.New(store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var logs syncbuf.Buffer
		id := map[bool]string{true: "crashed", false: "stopped"}[crash]
		f, err := New(Config{Store: st, Consul: client, Prefix: "keymux/", ID: id, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		f.abandon.Store(crash)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		wait.Until(t, 10*time.Second, id+" registered", f.registered.Load)

		checks, _, err := client.Health().Checks("keymux-member", nil)
		if err != nil {
			t.Fatal(err)
		}
		var status string
		for _, c := range checks {
			if c.CheckID == "keymux-member-"+id {
				status = c.Status
			}
		}
		if status != "passing" {
			t.Fatalf("%s: check keymux-member-%s %q in the catalog, want passing (%d checks)", id, id, status, len(checks))
		}
		if strings.Contains(logs.String(), "level=WARN") {
			t.Fatalf("%s: warnings:\n%s", id, logs.String())
		}
		cancel()
		<-done
		stopped := time.Now()
		if crash { // the check is still passing (last pass under 1s ago): the entry stays
			if p, _, err := client.KV().Get("keymux/members/"+id, nil); err != nil || p == nil {
				t.Fatalf("members/%s gone at once after a crash (%v): nothing noticed the death", id, err)
			}
		}
		wait.Until(t, 8*time.Second, "members/"+id+" deleted", func() bool {
			p, _, err := client.KV().Get("keymux/members/"+id, nil)
			return err == nil && p == nil
		})
		t.Logf("%s: members/%s deleted %s after the stop", id, id, time.Since(stopped).Round(time.Millisecond))
		services, err := client.Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := services["keymux-member-"+id]; ok == !crash {
			t.Errorf("%s: service keymux-member-%s registered %v after the stop, want %v", id, id, ok, crash)
		}
	}
}
