// Package e2e drives keymux end to end: the `keymux dev` wiring (sidecar +
// Envoy emulator running envoy/envoy.yaml) over real gRPC, the mock upstream
// from examples/, and the official openai-go client.
package e2e

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/keymux/keymux/cmd/keymux/app"
	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/syncbuf"
)

// gateway is one running keymux dev instance in front of a mock upstream.
type gateway struct {
	t       *testing.T
	mock    *mockupstream.Server
	url     string // the emulated Envoy listener, http://127.0.0.1:PORT
	admin   string // http://127.0.0.1:PORT
	grpc    string
	config  string // the config file keymux follows
	stderr  *syncBuffer
	stopped chan error
}

type syncBuffer = syncbuf.Buffer

// mockURL is substituted in configs by the mock's base URL.
const mockURL = "{{MOCK}}"

// startGateway starts a mock upstream and `keymux dev --config` with cfg
// (YAML, where {{MOCK}} stands for the mock's URL) on free ports, and waits
// for its readiness line.
func startGateway(t *testing.T, cfg string, extraArgs ...string) *gateway {
	t.Helper()
	return startGatewayWith(t, startMock(t, mockupstream.Options{}), cfg, extraArgs...)
}

// startMock starts a mock upstream with opts on a free port, closed when
// the test ends.
func startMock(t *testing.T, opts mockupstream.Options) *mockupstream.Server {
	t.Helper()
	mock := mockupstream.New(opts)
	if err := mock.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("mock upstream: %v", err)
	}
	t.Cleanup(func() { mock.Close() })
	return mock
}

func startGatewayWith(t *testing.T, mock *mockupstream.Server, cfg string, extraArgs ...string) *gateway {
	t.Helper()
	g := &gateway{t: t, mock: mock, stderr: &syncBuffer{}, stopped: make(chan error, 1)}
	g.config = filepath.Join(t.TempDir(), "keymux.yaml")
	g.writeConfig(cfg)
	args := append([]string{"dev",
		"--config", g.config,
		"--envoy", "../envoy/envoy.yaml",
		"--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0",
		"--log-level", "warn",
	}, extraArgs...)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() {
		err := app.Run(ctx, args, pw, g.stderr)
		pw.CloseWithError(io.EOF)
		g.stopped <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-g.stopped:
			if err != nil {
				t.Errorf("keymux dev ended with %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("keymux dev did not stop within 15s")
		}
	})
	if g.readReady(pr) {
		return g
	}
	t.Fatalf("keymux dev exited before it was ready: %v\nstderr:\n%s", <-g.stopped, g.stderr.String())
	return nil
}

// readReady reads keymux's stdout up to its readiness line
// ("keymux ready grpc=… admin=… listen=…"), takes the addresses from it and
// drains the rest; false when the output ended first.
func (g *gateway) readReady(out io.Reader) bool {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "keymux ready ")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "grpc":
				g.grpc = v
			case "admin":
				g.admin = "http://" + v
			case "listen":
				g.url = "http://" + v
			}
		}
		go io.Copy(io.Discard, out)
		return true
	}
	return false
}

func (g *gateway) writeConfig(cfg string) {
	g.t.Helper()
	cfg = strings.ReplaceAll(cfg, mockURL, g.mock.URL())
	tmp := g.config + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg), 0o600); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Rename(tmp, g.config); err != nil {
		g.t.Fatal(err)
	}
}

// client is the official OpenAI Go SDK pointed at the gateway, with retries
// off so that every call is one request.
func (g *gateway) client(apiKey string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(g.url + "/v1/"),
		option.WithAPIKey(apiKey),
		option.WithMaxRetries(0),
	}, opts...)...)
}

// do sends a raw HTTP request to the gateway.
func (g *gateway) do(method, path string, header map[string]string, body string) (*http.Response, []byte) {
	g.t.Helper()
	req, err := http.NewRequest(method, g.url+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	if body == "" {
		req.Body = nil
	}
	for k, v := range header {
		if strings.EqualFold(k, "host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

func (g *gateway) getAdmin(path string) []byte {
	g.t.Helper()
	resp, err := http.Get(g.admin + path)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		g.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// credentials lists the upstream credential of every request the mock got.
func (g *gateway) credentials() []string {
	var out []string
	for _, r := range g.requests() {
		out = append(out, r.Credential)
	}
	return out
}

// threeKeys is a pool of three openai_compatible keys on the mock.
const threeKeys = `
settings:
  strategy: round_robin
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3}
`

// requests is what the mock received for client calls: the active health
// probes (GET …/models) that keymux sends on its own schedule are left out.
func (g *gateway) requests() []mockupstream.Recorded {
	var out []mockupstream.Recorded
	for _, r := range g.mock.Requests() {
		if r.Method == "GET" && strings.HasSuffix(r.Path, "/models") {
			continue
		}
		out = append(out, r)
	}
	return out
}
