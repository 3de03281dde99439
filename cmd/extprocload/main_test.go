package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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
// table printed; with the access log played (the default), keymux books
// every entry with its call (the tool reads keymux's /status and fails
// otherwise: an entry dropped as malformed, unknown or late). No timing is
// asserted.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keymux")
	}
	t.Setenv("EXTPROCLOAD_AS_COMMAND", "1")
	for _, tc := range []struct {
		name string
		args []string
		last string // the line after the table ("": none)
	}{
		// 2 warm-up requests, then 2 rounds of 5 requests at 2 levels.
		{"access log", nil, "access log: 22 entries sent to keymux, 22 booked with their call, none dropped"},
		{"no access log", []string{"-access-log=false"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			var logs syncbuf.Buffer // both servers' stderr, copied concurrently
			args := append([]string{"-keys", "3", "-rounds", "2", "-requests", "5", "-warmup", "2", "-concurrency", "1,4"}, tc.args...)
			if err := run(t.Context(), args, &out, &logs); err != nil {
				t.Fatalf("run: %v\nlogs:\n%s", err, logs.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			want := 4
			if tc.last != "" {
				want = 6
			}
			if len(lines) != want || tc.last != "" && (lines[4] != "" || lines[5] != tc.last) {
				t.Fatalf("want a header, a rule, 2 rows and %q, got:\n%s", tc.last, out.String())
			}
			for i, prefix := range []string{"| 1 | 10 / 10 |", "| 4 | 10 / 10 |"} {
				if !strings.HasPrefix(lines[2+i], prefix) {
					t.Errorf("row %d = %q, want prefix %q", i, lines[2+i], prefix)
				}
				// The last columns: each server's CPU time per request (from
				// /proc, which this Linux machine has), then the client's
				// while it drove each (getrusage).
				cells := strings.Split(strings.Trim(lines[2+i], "| "), " | ")
				pair := regexp.MustCompile(`^[0-9]+ / [0-9]+$`)
				if len(cells) != 9 || !pair.MatchString(cells[7]) || !pair.MatchString(cells[8]) {
					t.Errorf("row %d = %q, want 9 cells ending with CPU µs per request of keymux / no-op and of the client with each", i, lines[2+i])
				}
			}
		})
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

// TestSoakSmoke runs the soak mode for two short samples against keymux
// built from this module: rows printed, the verdict line, no error.
func TestSoakSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keymux")
	}
	var out bytes.Buffer
	var logs syncbuf.Buffer
	err := run(t.Context(), []string{"-keys", "3", "-warmup", "2", "-soak", "1s", "-soak-sample", "500ms", "-soak-warmup", "0s", "-soak-concurrency", "2", "-soak-max-drift", "100"}, &out, &logs)
	if err != nil {
		t.Fatalf("run: %v\nlogs:\n%s\nout:\n%s", err, logs.String(), out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 10 || !strings.HasPrefix(lines[4], "| 1s |") && !strings.HasPrefix(lines[4], "| 0s |") || !strings.Contains(lines[7], "requests, no error; from ") {
		t.Fatalf("want a title, a header, a rule, 2 rows, the verdict and the access log's join, got:\n%s", out.String())
	}
	// Every request's entry (the warm-up's too) booked with its call.
	m := regexp.MustCompile(`^access log: ([0-9]+) entries sent to keymux, ([0-9]+) booked with their call, none dropped$`).FindStringSubmatch(lines[9])
	if m == nil || m[1] != m[2] || m[1] == "0" {
		t.Errorf("access log line %q, want every entry booked", lines[9])
	}
}

func TestSoakVerdict(t *testing.T) {
	// One row a minute; the first (at 0) is in the 30 s warm-up.
	rows := func(rss ...int) []soakSample {
		s := []soakSample{{requests: 10, rssKB: 1, goroutines: 1}}
		for i, r := range rss {
			s = append(s, soakSample{at: time.Duration(i+1) * time.Minute, requests: 10, rssKB: r, goroutines: 20})
		}
		return s
	}
	// RSS flat, goroutines 20 then g.
	goroutines := func(g int) []soakSample {
		s := rows(1000, 1000)
		s[2].goroutines = g
		return s
	}
	for _, tc := range []struct {
		name    string
		samples []soakSample
		wantErr string
	}{
		{"flat", rows(1000, 1050, 950, 1090), ""},
		{"grows", rows(1000, 1050, 1101), "RSS moved +0.0% / +10.1% from the first sample after the warm-up (limit ±10%)"},
		{"shrinks", rows(1000, 899), "RSS moved -10.1% / +0.0% from the first sample after the warm-up (limit ±10%)"},
		{"goroutines at the limit", goroutines(22), ""},
		{"goroutines past the limit", goroutines(23), "goroutines moved +0.0% / +15.0% from the first sample after the warm-up (limit ±10%)"},
		{"goroutines down to the limit", goroutines(18), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := soakVerdict(&out, tc.samples, 30*time.Second, 0.10)
			if got := fmt.Sprint(err); tc.wantErr == "" && err != nil || tc.wantErr != "" && got != tc.wantErr {
				t.Errorf("soakVerdict = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestWorkerRequestIDs: every request of every worker carries its own
// x-request-id, and the shared messages keep theirs.
func TestWorkerRequestIDs(t *testing.T) {
	x := newExchange()
	rid := func(x *exchange) string {
		for _, h := range x.msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
			if h.GetKey() == "x-request-id" {
				return string(h.GetRawValue())
			}
		}
		return ""
	}
	base := rid(&x)
	a, b := x.worker(0), x.worker(1)
	a.next(0)
	got0 := rid(a)
	a.next(0x1f)
	got1 := rid(a)
	b.next(0x1f)
	want := []string{"00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-00000000001f", "00000001-0000-4000-8000-00000000001f"}
	if got := []string{got0, got1, rid(b)}; !slices.Equal(got, want) {
		t.Errorf("request ids %q, want %q", got, want)
	}
	if rid(&x) != base || a.msgs[1] != x.msgs[1] {
		t.Errorf("the shared exchange changed: x-request-id %q (was %q)", rid(&x), base)
	}
}
