package consultest

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestBinaryMissingSaysHowToBuild(t *testing.T) {
	root := t.TempDir()
	_, err := binaryIn(root)
	if err == nil || !strings.Contains(err.Error(), "tools/build.sh consul") || !strings.Contains(err.Error(), filepath.Join(root, "tools", "bin", "consul")) {
		t.Errorf("binaryIn(empty root) = %v, want the path and the build command", err)
	}
	t.Setenv(EnvBinary, filepath.Join(root, "nope"))
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "$"+EnvBinary) {
		t.Errorf("Binary() with a missing $%s = %v, want an error naming it", EnvBinary, err)
	}
}

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
