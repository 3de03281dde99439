package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/envoy"
	"github.com/keymux/keymux/envoy/emulator"
	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/syncbuf"
	"github.com/keymux/keymux/testutil/wait"
)

// buildKeymux builds the keymux binary into a temporary directory.
func buildKeymux(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "keymux")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/keymux/keymux/cmd/keymux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// serveProc is one `keymux serve` process.
type serveProc struct {
	cmd    *exec.Cmd
	admin  string // http://127.0.0.1:PORT
	stderr *syncbuf.Buffer
	exited chan struct{} // closed once the process has exited (err is set)
	err    error
}

// startServe runs `keymux serve` with args and waits for its readiness line.
func startServe(t *testing.T, bin string, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{cmd: exec.Command(bin, append([]string{"serve"}, args...)...), stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := &gateway{t: t}
	ok := ready.readReady(out) // then drains the rest of stdout
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	if !ok {
		<-p.exited
		t.Fatalf("keymux serve exited before it was ready: %v\nstderr:\n%s", p.err, p.stderr.String())
	}
	p.admin = ready.admin
	return p
}

// accessLogStreams is /status's access_log.streams.
func (p *serveProc) accessLogStreams(t *testing.T) int {
	t.Helper()
	resp, err := http.Get(p.admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		AccessLog accessLog `json:"access_log"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.AccessLog.Streams
}

// TestRestartDoesNotCutStream: keymux (a separate `keymux serve` process on
// a unix socket) is restarted while a 3-second SSE completion streams
// through the emulated Envoy. The client gets the whole stream: its
// ext_proc stream ended after the response headers (body mode NONE), so
// nothing of the response depends on keymux. The old process drains: it
// waits for the call's access-log entry (which comes after the stream's
// last byte) and books the call with Envoy's duration in its call log
// before it exits; the new process then serves on the same socket.
func TestRestartDoesNotCutStream(t *testing.T) {
	bin := buildKeymux(t)
	mock := startMock(t, mockupstream.Options{})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "keymux.yaml")
	if err := os.WriteFile(cfg, []byte(`keys:
  k1: {provider: openai_compatible, base_url: "`+mock.URL()+`/v1", secret: sk-test-k1}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "keymux.sock")
	args := func(callLog string) []string {
		return []string{"--config", cfg, "--grpc", "unix:" + sock, "--admin", "127.0.0.1:0",
			"--allow-upstream", "127.0.0.1", "--log-level", "warn", "--call-log", filepath.Join(dir, callLog)}
	}
	old := startServe(t, bin, args("calls-old.jsonl")...)

	boot, err := envoy.LoadBootstrap("../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	em, err := emulator.New(emulator.Config{Bootstrap: boot, ListenAddr: "127.0.0.1:0",
		ClusterAddrs: map[string]string{"keymux_extproc": "unix:" + sock}, AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	post := func(body string) (*http.Response, error) {
		return http.Post(em.URL()+"/v1/chat/completions", "application/json", strings.NewReader(body))
	}

	// Envoy opens its access-log stream to a keymux with its first flush.
	resp, err := post(`{"model":"gpt-4o","messages":[]}`)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	wait.Until(t, 5*time.Second, "the access-log stream to the first process", func() bool { return old.accessLogStreams(t) == 1 })

	// 27 words: the role chunk, 27 pieces, the finish and usage chunks and
	// [DONE], 100 ms apart: 3 s.
	mock.Script("sk-test-k1", mockupstream.Behaviour{Path: "/chat/completions", ChunkDelay: 100 * time.Millisecond,
		Content: strings.TrimSpace(strings.Repeat("word ", 27))})
	start := time.Now()
	resp, err = post(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"stream slowly"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(first, "data: ") {
		t.Fatalf("stream start: %d %q %v", resp.StatusCode, first, err)
	}
	// Mid-stream: restart keymux.
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("stream cut after %v: %v", elapsed, err)
	}
	body := first + string(rest)
	if n := strings.Count(body, "data: "); n != 31 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("client got %d events, want 31 ending with [DONE]:\n%s", n, body)
	}
	if elapsed < 2900*time.Millisecond {
		t.Fatalf("stream took %v, want about 3s", elapsed)
	}
	select {
	case <-old.exited:
		if old.err != nil {
			t.Fatalf("old process: %v\nstderr:\n%s", old.err, old.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("old process did not exit within 10s of the stream's end")
	}
	neu := startServe(t, bin, args("calls-new.jsonl")...)

	// The old process booked the stream before it exited, with Envoy's
	// duration (its own view would end at the response headers).
	raw, err := os.ReadFile(filepath.Join(dir, "calls-old.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("old call log has %d lines, want 2:\n%s", len(lines), raw)
	}
	var call struct {
		ResponseTimeMS float64 `json:"response_time_ms"`
		Status         int     `json:"status"`
		Success        bool    `json:"success"`
		OutputTokens   *int64  `json:"output_tokens"`
	}
	if err := json.Unmarshal(lines[1], &call); err != nil {
		t.Fatal(err)
	}
	got := time.Duration(call.ResponseTimeMS * float64(time.Millisecond))
	t.Logf("client observed %v, booked %v", elapsed, got)
	if d := got - elapsed; d < -100*time.Millisecond || d > 100*time.Millisecond || call.Status != 200 || !call.Success || call.OutputTokens == nil {
		t.Errorf("booked %+v (%v), want status 200, usage and the client's %v ±100ms", call, got, elapsed)
	}

	// The new process serves on the same socket.
	resp, err = post(`{"model":"gpt-4o","messages":[]}`)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after the restart: %d %s", resp.StatusCode, b)
	}
	wait.Until(t, 5*time.Second, "the access-log stream to the new process", func() bool { return neu.accessLogStreams(t) == 1 })
}
