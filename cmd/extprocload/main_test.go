package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/keymux/keymux/testutil/syncbuf"
)

// TestMain lets the test binary stand in for the command: the load starts
// os.Executable() with -noop, which here is this binary.
func TestMain(m *testing.M) {
	if os.Getenv("EXTPROCLOAD_AS_COMMAND") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSmoke runs the whole tool for a few requests: keymux built from this
// module and the no-op server as child processes, every reply checked, the
// table printed. No timing is asserted.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keymux")
	}
	t.Setenv("EXTPROCLOAD_AS_COMMAND", "1")
	var out bytes.Buffer
	var logs syncbuf.Buffer // both servers' stderr, copied concurrently
	err := run(t.Context(), []string{"-keys", "3", "-rounds", "2", "-requests", "5", "-warmup", "2", "-concurrency", "1,4"}, &out, &logs)
	if err != nil {
		t.Fatalf("run: %v\nlogs:\n%s", err, logs.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header, a rule and 2 rows, got:\n%s", out.String())
	}
	for i, prefix := range []string{"| 1 | 10 / 10 |", "| 4 | 10 / 10 |"} {
		if !strings.HasPrefix(lines[2+i], prefix) {
			t.Errorf("row %d = %q, want prefix %q", i, lines[2+i], prefix)
		}
		// The last column: each server's CPU time per request (from
		// /proc, which this Linux machine has).
		cells := strings.Split(strings.Trim(lines[2+i], "| "), " | ")
		if cpu := cells[len(cells)-1]; len(cells) != 8 || !regexp.MustCompile(`^[0-9]+ / [0-9]+$`).MatchString(cpu) {
			t.Errorf("row %d = %q, want 8 cells ending with CPU µs per request of keymux / no-op", i, lines[2+i])
		}
	}
}

func TestEmptyReplyKinds(t *testing.T) {
	for _, m := range newExchange().msgs {
		if err := checkReply(m, emptyReply(m)); err != nil {
			t.Errorf("%s: %v", kindName(m), err)
		}
	}
	x := newExchange()
	if err := checkReply(x.msgs[0], emptyReply(x.msgs[1])); err == nil || !strings.Contains(err.Error(), "reply to RequestHeaders: got *ext_procv3.ProcessingResponse_RequestBody") {
		t.Errorf("mismatched kind: got %v", err)
	}
}

func TestChatBodyIs1KB(t *testing.T) {
	if n := len(chatBody()); n != 1024 {
		t.Errorf("len(chatBody()) = %d, want 1024", n)
	}
}
