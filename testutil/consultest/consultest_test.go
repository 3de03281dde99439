package consultest

import (
	"testing"
)

func TestAgentStartStopRestart(t *testing.T) {
	a := Start(t)
	a.Put("keymux-test/a", []byte("1"))
	p, _, err := a.Client().KV().Get("keymux-test/a", nil)
	if err != nil || p == nil || string(p.Value) != "1" {
		t.Fatalf("get after put = %v, %v; want value 1", p, err)
	}
	a.Stop()
	if a.Running() {
		t.Fatal("Running() after Stop = true")
	}
	if _, _, err := a.Client().KV().Get("keymux-test/a", nil); err == nil {
		t.Fatal("get with the agent stopped: want an error")
	}
	addr := a.Addr()
	a.Restart()
	if a.Addr() != addr {
		t.Fatalf("Addr after Restart = %s, want %s", a.Addr(), addr)
	}
	p, _, err = a.Client().KV().Get("keymux-test/a", nil)
	if err != nil || p != nil {
		t.Fatalf("get after Restart = %v, %v; want an empty store", p, err)
	}
}
