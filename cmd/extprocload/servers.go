package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// options are the command line of extprocload.
type options struct {
	noop         bool
	grpc         string // -noop: the address to serve on
	keymux       string
	keymuxArgs   string
	keys         int
	rounds       int
	duration     time.Duration
	requests     int
	accessLog    bool
	warmup       int
	conc         string
	cpuProfile   string
	allocProfile string
	readyWithin  time.Duration
}

func (o *options) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.noop, "noop", false, "serve the no-op ext_proc processor on -grpc instead of measuring")
	fs.StringVar(&o.grpc, "grpc", "127.0.0.1:0", "-noop: address to serve on")
	fs.StringVar(&o.keymux, "keymux", "", "keymux binary (empty: `go build ./cmd/keymux` into a temporary directory)")
	fs.StringVar(&o.keymuxArgs, "keymux-args", "", "extra arguments of `keymux serve`, space-separated (e.g. \"--grpc-spans\")")
	fs.IntVar(&o.keys, "keys", 10, "keys in the generated configuration")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds per concurrency (each: one keymux phase, one no-op phase)")
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "length of one phase")
	fs.IntVar(&o.requests, "requests", 0, "requests per phase (0: as many as -duration allows); a phase ends at whichever comes first")
	fs.IntVar(&o.warmup, "warmup", 200, "requests sent to each server before measuring")
	fs.BoolVar(&o.accessLog, "access-log", true, "play Envoy's access logger too (envoy.access_loggers.http_grpc, flushed every 100 ms): one entry per request to each server's AccessLogService; at the end, check that keymux booked every entry with its call")
	fs.StringVar(&o.conc, "concurrency", "1,8,64", "concurrency levels, comma-separated")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the keymux process over the measured rounds to this file (starts keymux with --pprof)")
	fs.StringVar(&o.allocProfile, "allocprofile", "", "write the keymux process's allocation profile (since its start) to this file at the end (starts keymux with --pprof)")
	fs.DurationVar(&o.readyWithin, "ready-within", time.Minute, "how long each server may take to become SERVING")
}

func (o *options) check() error {
	if o.keys < 1 || o.rounds < 1 || o.duration <= 0 || o.requests < 0 || o.warmup < 0 {
		return errors.New("-keys and -rounds must be >= 1, -duration > 0, -requests and -warmup >= 0")
	}
	_, err := o.levels()
	return err
}

// levels parses -concurrency.
func (o *options) levels() ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(o.conc, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return nil, fmt.Errorf("-concurrency %q: want positive integers, comma-separated", o.conc)
		}
		out = append(out, n)
	}
	return out, nil
}

// clientToken is the client key the load presents (auth mode client_keys).
const clientToken = "km-load-token"

// writeConfig writes a keymux configuration of n keys (each listing the
// models of the request, with its own fake secret, its base_url on the
// probe stub so that active probes succeed) and one client.
func writeConfig(dir string, n int, upstream string) (string, error) {
	sum := sha256.Sum256([]byte(clientToken))
	var b strings.Builder
	fmt.Fprintf(&b, "settings:\n  strategy: round_robin\n  auth: {mode: client_keys}\nkeys:\n")
	for i := range n {
		fmt.Fprintf(&b, "  k%d: {provider: openai, secret: sk-load-%d, base_url: %q, models: [gpt-4, gpt-4o-mini]}\n", i, i, "http://"+upstream+"/v1")
	}
	fmt.Fprintf(&b, "rules:\n  r0: {key: k0, from: gpt-4, to: gpt-4o-mini}\nclients:\n  load: {name: load, token_sha256: %q}\n", hex.EncodeToString(sum[:]))
	path := filepath.Join(dir, "keymux.yaml")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// probeStub answers keymux's active health probes (GET /v1/models) with 200.
func probeStub() (addr string, stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"object":"list","data":[]}`)
	})}
	go srv.Serve(lis)
	return lis.Addr().String(), func() { srv.Close() }, nil
}

// buildKeymux builds ./cmd/keymux of the module in the working directory.
func buildKeymux(ctx context.Context, dir string, stderr io.Writer) (string, error) {
	bin := filepath.Join(dir, "keymux")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/keymux/keymux/cmd/keymux")
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keymux (run from the keymux module): %w", err)
	}
	return bin, nil
}

// server is a child process serving ext_proc, with a connection to it.
type server struct {
	name  string
	cmd   *exec.Cmd
	addr  string
	admin string // keymux's admin address ("" for the no-op server)
	conn  *grpc.ClientConn
	done  chan error
	als   *accessLog // nil: no access log played
}

// startServer runs bin with args, reads "… grpc=ADDR …" (and admin=ADDR)
// from the first stdout line that carries it (keymux's and -noop's ready
// lines), connects, and waits until the gRPC health check says SERVING;
// then, with accessLog, plays Envoy's access logger towards it. Its logs
// go to logw.
func startServer(ctx context.Context, name, bin string, args []string, logw io.Writer, within time.Duration, accessLog bool) (*server, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logw
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, done: make(chan error, 1)}
	addrCh := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			if a, ok := lineField(sc.Text(), "grpc="); ok && !sent {
				admin, _ := lineField(sc.Text(), "admin=")
				addrCh <- [2]string{a, admin}
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, out)
		s.done <- cmd.Wait()
	}()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	select {
	case a := <-addrCh:
		s.addr, s.admin = a[0], a[1]
	case err := <-s.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v", name, err)
	case <-ctx.Done():
		s.stop()
		return nil, fmt.Errorf("%s: no ready line within %s", name, within)
	}
	if s.conn, err = grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		s.stop()
		return nil, err
	}
	if err := waitServing(ctx, s.conn); err != nil {
		s.stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if accessLog {
		if err := s.playAccessLog(); err != nil {
			s.stop()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return s, nil
}

// lineField finds the value of the field prefix (e.g. "grpc=") in a ready
// line.
func lineField(line, prefix string) (string, bool) {
	for f := range strings.FieldsSeq(line) {
		if a, ok := strings.CutPrefix(f, prefix); ok {
			return a, true
		}
	}
	return "", false
}

// waitServing polls the gRPC health check until SERVING or ctx ends.
func waitServing(ctx context.Context, conn *grpc.ClientConn) error {
	hc := healthpb.NewHealthClient(conn)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not SERVING (last: %v, %v)", r.GetStatus(), err)
		case <-t.C:
		}
	}
}

// stop ends the process with SIGTERM (SIGKILL after 10 s) and closes the
// connection.
func (s *server) stop() error {
	if s.als != nil {
		s.als.stop()
	}
	if s.conn != nil {
		s.conn.Close()
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not stop within 10 s of SIGTERM", s.name)
	}
}

// clockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTicks = 100

// cpuTime is the process's CPU time so far (user and system), from
// /proc/PID/stat; -1 where that cannot be read.
func (s *server) cpuTime() time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/stat")
	if err != nil {
		return -1
	}
	// The fields after the command name, which ends with the last ')':
	// state is field 3, utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
