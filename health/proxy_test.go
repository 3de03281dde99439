package health_test

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/store"
)

// proxyChildEnv marks the child process of TestProbeIgnoresProxyEnv.
const proxyChildEnv = "KEYMUX_TEST_PROXY_CHILD"

// TestProbeIgnoresProxyEnv: with HTTP_PROXY and HTTPS_PROXY pointing at a
// listener, a probe of an http:// and an https:// key through the default
// probe client never reaches the listener (it would see the secret). Go
// reads the proxy variables once per process, so the probes run in a child
// process started with them set.
func TestProbeIgnoresProxyEnv(t *testing.T) {
	if os.Getenv(proxyChildEnv) != "" {
		probeThroughProxyEnv(t)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	seen := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 4096)
			n, _ := c.Read(buf)
			seen <- string(buf[:n])
			c.Close()
		}
	}()
	proxy := "http://" + l.Addr().String()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProbeIgnoresProxyEnv$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), proxyChildEnv+"=1",
		"HTTP_PROXY="+proxy, "HTTPS_PROXY="+proxy, "http_proxy="+proxy, "https_proxy="+proxy, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "probed 2 keys") {
		t.Fatalf("the child did not probe:\n%s", out)
	}
	select {
	case got := <-seen:
		t.Fatalf("the proxy saw a connection:\n%q", got)
	default:
	}
}

func probeThroughProxyEnv(t *testing.T) {
	client := health.NewProbeClient()
	for _, base := range []string{"http://keymux-probe.invalid/v1", "https://keymux-probe.invalid/v1"} {
		k, err := store.ParseKey("k1", []byte(`{"provider":"openai","base_url":"`+base+`","secret":"sk-test-proxy"}`), nil)
		if err != nil {
			t.Fatal(err)
		}
		if res := health.Probe(t.Context(), client, k, 2*time.Second, nil); res.OK {
			t.Fatalf("probe of %s = %+v, want a failure (no such host)", base, res)
		}
	}
	t.Log("probed 2 keys")
}
