package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/wait"
)

// runApp runs the command line to completion and returns its outputs.
func runApp(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = Run(t.Context(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestCommandLineErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string // substring of the error
	}{
		{"no subcommand", nil, nil, "a subcommand is required"},
		{"unknown subcommand", []string{"frobnicate"}, nil, `unknown subcommand "frobnicate"`},
		{"unknown flag", []string{"serve", "--nope"}, nil, "flag provided but not defined: -nope"},
		{"two sources", []string{"serve", "--config", "x.yaml", "--consul"}, nil, "--config and --consul are exclusive"},
		{"no source", []string{"serve"}, nil, "serve needs a source"},
		{"bad grpc address", []string{"serve", "--config", "x", "--grpc", "nowhere"}, nil, `--grpc "nowhere": want host:port or unix:PATH`},
		{"empty unix socket", []string{"serve", "--config", "x", "--grpc", "unix:"}, nil, "empty socket path"},
		{"mTLS without a client CA", []string{"serve", "--config", "x", "--grpc-tls-cert", "c.pem", "--grpc-tls-key", "k.pem"}, nil, "--grpc-tls-cert, --grpc-tls-key and --grpc-tls-client-ca go together (mutual TLS)"},
		{"bad admin address", []string{"serve", "--config", "x", "--admin", "unix:/tmp/a"}, nil, `--admin "unix:/tmp/a": want host:port`},
		{"prefix with a leading slash", []string{"serve", "--consul", "--consul-prefix", "/keymux"}, nil, `--consul-prefix: prefix "/keymux" must not start with /`},
		{"kv without a command", []string{"kv"}, nil, "kv: missing command"},
		{"kv unknown command", []string{"kv", "frobnicate"}, nil, `kv: unknown command "frobnicate"`},
		{"kv keys without a subcommand", []string{"kv", "keys"}, nil, "kv keys: missing subcommand"},
		{"kv keys add without an id", []string{"kv", "keys", "add", "--replace"}, nil, "kv keys add: want ID [DOC]"},
		{"kv import of two files", []string{"kv", "import", "a.yaml", "b.yaml"}, nil, "kv import: want FILE"},
		{"kv list with an argument", []string{"kv", "rules", "list", "r1"}, nil, "kv rules list: want no arguments"},
		{"kv unknown flag", []string{"kv", "export", "--nope"}, nil, "flag provided but not defined: -nope"},
		{"kv prefix with a leading slash", []string{"kv", "--consul-prefix", "/keymux", "keys", "list"}, nil, `--consul-prefix: prefix "/keymux" must not start with /`},
		{"bad log level from env", []string{"serve", "--config", "x"}, map[string]string{"KEYMUX_LOG_LEVEL": "loud"}, `--log-level "loud"`},
		{"bad bool from env", []string{"serve"}, map[string]string{"KEYMUX_CONSUL": "maybe"}, "environment KEYMUX_CONSUL"},
		{"stray argument", []string{"validate", "--config", "x", "extra"}, nil, `unexpected argument "extra"`},
		{"validate needs a file", []string{"validate"}, nil, "validate needs --config FILE and/or --envoy FILE"},
		{"dev bad listen", []string{"dev", "--listen", "10000"}, nil, `--listen "10000"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, _, err := runApp(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if ExitCode(err) != 2 {
				t.Errorf("exit code %d, want 2 for a usage error", ExitCode(err))
			}
		})
	}
}

// TestConsulPrefixNormalised: serve (and dev) append the missing slash, as
// kv and the health checker do (consul.NormalizePrefix).
func TestConsulPrefixNormalised(t *testing.T) {
	for in, want := range map[string]string{"keymux": "keymux/", "team-b/": "team-b/", "a/b": "a/b/", "": "keymux/"} {
		o := serveOptions{consul: true, consulPrefix: in, grpcAddr: "127.0.0.1:0", adminAddr: "127.0.0.1:0"}
		if err := o.check(); err != nil || o.consulPrefix != want {
			t.Errorf("--consul-prefix %q: %q, %v; want %q", in, o.consulPrefix, err, want)
		}
	}
}

func TestFlagFromEnvironmentIsUsed(t *testing.T) {
	t.Setenv("KEYMUX_CONFIG", filepath.Join(t.TempDir(), "missing.yaml"))
	_, _, err := runApp(t, "serve", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("error = %v, want the KEYMUX_CONFIG file named", err)
	}
	if ExitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", ExitCode(err))
	}
}

func TestVersion(t *testing.T) {
	out, _, err := runApp(t, "version")
	if err != nil || !strings.HasPrefix(out, "keymux dev (go1.") {
		t.Fatalf("version = %q, %v", out, err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("keys:\n  k1: {provider: openai, secret: sk-test-1}\n"), 0o600)
	os.WriteFile(bad, []byte("keys:\n  k1: {provider: openai, secret: sk-test-1}\n  k2: {provider: nope, secret: sk-test-2}\n"), 0o600)
	tests := []struct {
		name    string
		args    []string
		ok      bool
		out     string
		errText string
	}{
		{"good config", []string{"validate", "--config", good}, true, good + ": ok (1 keys, 0 rules, 0 clients, strategy round_robin)", ""},
		{"bad key", []string{"validate", "--config", bad}, false, "", `keys/k2: field "provider": unknown provider "nope"`},
		{"shipped envoy", []string{"validate", "--envoy", "../../../envoy/envoy.yaml"}, true, "../../../envoy/envoy.yaml: ok", ""},
		{"broken envoy", []string{"validate", "--envoy", "../../../envoy/testdata/bad_enum.bad.yaml"}, false, "", "processing_mode.request_body_mode"},
		{"missing file", []string{"validate", "--config", filepath.Join(dir, "nope.yaml")}, false, "", "nope.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := runApp(t, tc.args...)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v (stderr %q), want ok=%v", err, errOut, tc.ok)
			}
			if tc.out != "" && !strings.Contains(out, tc.out) {
				t.Errorf("stdout %q, want %q", out, tc.out)
			}
			if tc.errText != "" && !strings.Contains(errOut, tc.errText) {
				t.Errorf("stderr %q, want %q", errOut, tc.errText)
			}
			if !tc.ok && ExitCode(err) != 1 {
				t.Errorf("exit code %d, want 1", ExitCode(err))
			}
		})
	}
	if _, errOut, _ := runApp(t, "validate", "--config", bad); strings.Contains(errOut, "sk-test-2") {
		t.Errorf("validate printed a secret: %q", errOut)
	}
}

// TestDevOfflineDemo is the README's first command: `keymux dev` with no
// source starts the mock upstream and the demo config and prints a curl
// that works.
func TestDevOfflineDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	var stderr bytes.Buffer
	go func() {
		done <- Run(ctx, []string{"dev", "--envoy", "../../../envoy/envoy.yaml",
			"--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--log-level", "error"}, pw, &stderr)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("dev did not stop")
		}
	})
	var admin, grpcAddr, curl string
	sc := bufio.NewScanner(pr)
	for curl == "" && sc.Scan() {
		line := sc.Text()
		if m := regexp.MustCompile(`grpc=(\S+) admin=(\S+)`).FindStringSubmatch(line); m != nil {
			grpcAddr, admin = m[1], m[2]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "curl ") {
			curl = strings.TrimSpace(line)
		}
	}
	go io.Copy(io.Discard, pr)
	m := regexp.MustCompile(`^curl -s (\S+) -H 'content-type: application/json' -d '(.*)'$`).FindStringSubmatch(curl)
	if m == nil {
		t.Fatalf("no usable curl line printed (got %q); stderr: %s", curl, stderr.String())
	}
	resp, err := http.Post(m[1], "application/json", strings.NewReader(m[2]))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var completion struct {
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&completion); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, decode %v", resp.StatusCode, err)
	}
	if completion.Object != "chat.completion" || len(completion.Choices) != 1 || completion.Choices[0].Message.Content == "" {
		t.Fatalf("not a completion: %+v", completion)
	}
	if completion.Model != "gpt-4" && completion.Model != "gpt-4o-mini" {
		t.Errorf("model %q, want gpt-4 (or gpt-4o-mini through k2's rule)", completion.Model)
	}
	for _, path := range []string{"/healthz", "/readyz", "/status", "/stats", "/metrics"} {
		r, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Errorf("GET %s: %d %s", path, r.StatusCode, b)
		}
		if bytes.Contains(b, []byte("sk-demo-")) {
			t.Errorf("GET %s shows a secret", path)
		}
	}
	// The gRPC health service on the ext_proc port says SERVING once the
	// configuration is loaded.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "envoy.service.ext_proc.v3.ExternalProcessor"} {
		wait.For(t, 5*time.Second, "gRPC health of "+strconv.Quote(svc)+" SERVING", func() error {
			r, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				return err
			}
			if r.Status != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("status %v", r.Status)
			}
			return nil
		})
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		t.Fatal("cancelled early")
	}
}

func TestOpenListenerWarning(t *testing.T) {
	const warn = "auth.mode is none on a listener beyond loopback: anyone who reaches it uses the pool's keys; set auth.mode client_keys or jwt_claim"
	for _, tc := range []struct {
		addr string
		mode policy.AuthMode
		want string
	}{
		{"0.0.0.0:10000", policy.AuthNone, warn},
		{"[::]:10000", policy.AuthNone, warn},
		{"192.0.2.10:10000", policy.AuthNone, warn},
		{":10000", policy.AuthNone, warn},
		{"127.0.0.1:10000", policy.AuthNone, ""},
		{"[::1]:10000", policy.AuthNone, ""},
		{"localhost:10000", policy.AuthNone, ""},
		{"0.0.0.0:10000", policy.AuthClientKeys, ""},
		{"0.0.0.0:10000", policy.AuthJWTClaim, ""},
	} {
		if got := openListenerWarning(tc.addr, tc.mode); got != tc.want {
			t.Errorf("openListenerWarning(%s, %s) = %q, want %q", tc.addr, tc.mode, got, tc.want)
		}
	}
}
