package daemon

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitReady(t *testing.T) {
	cases := []struct {
		name      string
		script    string
		ready     func(n int64) bool // n = how often ready was called
		timeout   time.Duration
		wantErr   string // "" = ready
		wantInUse bool
	}{
		{"ready on the third poll", "exec sleep 30", func(n int64) bool { return n >= 3 }, 10 * time.Second, "", false},
		{"exits first", "echo 'listen tcp 127.0.0.1:9: bind: address already in use'; exit 1", func(int64) bool { return false }, 10 * time.Second,
			"demo exited before it was ready\ndemo output:\nlisten tcp 127.0.0.1:9: bind: address already in use", true},
		{"times out", "exec sleep 30", func(int64) bool { return false }, 100 * time.Millisecond, "demo was not ready after 100ms", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start("demo", "sh", "-c", tc.script)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Stop)
			var n atomic.Int64
			err = p.WaitReady(tc.timeout, func(context.Context) bool { return tc.ready(n.Add(1)) })
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("WaitReady: %v, want ready", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("WaitReady: %v, want an error with %q", err, tc.wantErr)
			}
			if got := p.AddrInUse(); got != tc.wantInUse {
				t.Errorf("AddrInUse = %v, want %v", got, tc.wantInUse)
			}
		})
	}
}

// TestStop: SIGTERM ends a running program, and Stop is idempotent.
func TestStop(t *testing.T) {
	p, err := Start("demo", "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Stop()
	p.Stop()
	if d := time.Since(start); d >= StopTimeout {
		t.Errorf("Stop took %v: SIGTERM did not end sleep", d)
	}
	select {
	case <-p.done:
	default:
		t.Error("the process is still running after Stop")
	}
	if _, err := Start("demo", "/nonexistent/program"); err == nil || !strings.Contains(err.Error(), "start /nonexistent/program") {
		t.Errorf("Start of a missing program: %v", err)
	}
}

func TestFreePort(t *testing.T) {
	port := FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("port %d is not free: %v", port, err)
	}
	l.Close()
}
