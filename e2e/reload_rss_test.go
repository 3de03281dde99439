package e2e

import (
	"bufio"
	"bytes"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/bigconfig"
)

var (
	reloadSettle = flag.Duration("reload-rss.settle", 5*time.Second, "BenchmarkServeReloadRSS: how long the process idles after its last reload before the settled RSS is read")
	reloadSame   = flag.Bool("reload-rss.same", false, "BenchmarkServeReloadRSS: reload the unchanged file with SIGHUP (an almost empty change) instead of a file whose every key and rule changed")
	reloadHeap   = flag.String("reload-rss.heap", "", "BenchmarkServeReloadRSS: write the process's heap profile, after the settled RSS is read, to this file")
)

// BenchmarkServeReloadRSS is the memory of the real `keymux serve` binary
// on the configuration of issue 15 (bigconfig.Shared(10000, 10): 10,000
// keys, 100,000 rules), reloaded five times, each reload awaited by its
// "config file loaded" log line. Each reload is of a file whose every key
// (another secret) and every rule (another target model) changed, written
// by rename and picked up by the file poll, so it is a whole apply; with
// -reload-rss.same the unchanged file is reloaded with SIGHUP instead. The keys' base_url is a
// local stub that answers the health probes. It reports VmRSS when ready,
// right after the fifth reload and after -reload-rss.settle of idling
// (what a long-running process keeps), VmHWM (the peak), and the
// process's CPU time. A measurement, not a pass/fail:
//
//	go test ./e2e/ -run '^$' -bench ServeReloadRSS -benchtime 1x [-reload-rss.heap heap.pprof]
func BenchmarkServeReloadRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "keymux")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/keymux/keymux/cmd/keymux").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"object":"list","data":[]}`)
	}))
	b.Cleanup(stub.Close)
	data := bytes.ReplaceAll(bigconfig.Shared(10_000, 10), []byte(`"provider":"openai",`),
		[]byte(`"provider":"openai","base_url":"`+stub.URL+`/v1",`))
	// other is data with every key's secret and every rule's target changed.
	other := bytes.ReplaceAll(bytes.ReplaceAll(data, []byte(`"secret":"sk-shared-`), []byte(`"secret":"sk-other-`)),
		[]byte(`"to":"gpt-4o-mini"`), []byte(`"to":"o3"`))
	dir := b.TempDir()
	path := filepath.Join(dir, "keymux.json")
	write := func(content []byte) {
		tmp := filepath.Join(dir, "next.json")
		if err := os.WriteFile(tmp, content, 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			b.Fatal(err)
		}
	}
	write(data)
	var ready, reloaded, settled, peak, cpu float64
	for b.Loop() {
		args := []string{"serve", "--config", path, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0",
			"--allow-upstream", strings.TrimPrefix(stub.URL, "http://"), "--log-level", "info"}
		pprofAddr := ""
		if *reloadHeap != "" {
			pprofAddr = freeLoopbackAddr(b)
			args = append(args, "--pprof", pprofAddr)
		}
		cmd := exec.Command(bin, args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		loaded := make(chan struct{}, 8)
		go func() {
			sc := bufio.NewScanner(stderr)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"msg":"config file loaded"`) {
					loaded <- struct{}{}
				}
			}
		}()
		await := func(what string) {
			select {
			case <-loaded:
			case <-time.After(5 * time.Minute):
				b.Fatalf("no \"config file loaded\" line %s within 5 minutes", what)
			}
		}
		pid := cmd.Process.Pid
		await("at start")
		ready += procMB(b, pid, "VmRSS")
		for i := range 5 {
			if *reloadSame {
				if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
					b.Fatal(err)
				}
			} else if i%2 == 0 {
				write(other)
			} else {
				write(data)
			}
			await("after reload " + strconv.Itoa(i+1))
		}
		reloaded += procMB(b, pid, "VmRSS")
		time.Sleep(*reloadSettle)
		settled += procMB(b, pid, "VmRSS")
		peak += procMB(b, pid, "VmHWM")
		cpu += procCPU(b, pid).Seconds()
		if pprofAddr != "" {
			writeHeapProfile(b, pprofAddr, *reloadHeap)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	n := float64(b.N)
	b.ReportMetric(ready/n, "ready-MB")
	b.ReportMetric(reloaded/n, "reloaded-MB")
	b.ReportMetric(settled/n, "settled-MB")
	b.ReportMetric(peak/n, "peak-MB")
	b.ReportMetric(cpu/n, "cpu-s")
}

// procMB reads a "kB" field of /proc/PID/status in MiB.
func procMB(b *testing.B, pid int, field string) float64 {
	b.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatalf("RSS is measured on Linux: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatalf("%s: %v", field, err)
			}
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// procCPU is the process's user and system time (/proc/PID/stat, fields
// 14 and 15, in clock ticks of 1/100 s).
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func freeLoopbackAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// writeHeapProfile saves the heap profile of the process serving pprof on
// addr (after a GC) to path.
func writeHeapProfile(b *testing.B, addr, path string) {
	b.Helper()
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?gc=1")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
}
