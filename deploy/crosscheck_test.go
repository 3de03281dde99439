package deploy

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/keymux/keymux/testutil/consultest"
)

var update = flag.Bool("update", false, "rewrite examples/k8s/envoy-configmap.yaml from envoy/envoy-unix.yaml")

var (
	flagsOnce sync.Once
	flagsVal  keymuxFlags
	flagsErr  error
)

// flagsFor returns keymux serve's flags and defaults (from its own help).
func flagsFor(t *testing.T) keymuxFlags {
	t.Helper()
	flagsOnce.Do(func() { flagsVal, flagsErr = serveFlags() })
	if flagsErr != nil {
		t.Fatal(flagsErr)
	}
	return flagsVal
}

// TestCrossCheck: the shipped files agree with one another.
func TestCrossCheck(t *testing.T) {
	for _, err := range crossCheck(newTree(".."), flagsFor(t)) {
		t.Error(err)
	}
}

// TestServeFlags pins what the checks read from `keymux serve -h`, so a
// change in the help format cannot silently empty them.
func TestServeFlags(t *testing.T) {
	f := flagsFor(t)
	for name, want := range map[string]string{"grpc": "127.0.0.1:50051", "admin": "127.0.0.1:9464", "consul-prefix": "keymux/", "state-dir": "", "config": ""} {
		if got, ok := f.Defaults[name]; !ok || got != want {
			t.Errorf("--%s default = %q (known %v), want %q", name, got, ok, want)
		}
	}
	if !f.Bool["consul"] || f.Bool["grpc"] {
		t.Errorf("bool flags = %v, want consul and not grpc", f.Bool)
	}
	if name, ok := f.envFlag("KEYMUX_STATE_DIR"); !ok || name != "state-dir" {
		t.Errorf("envFlag(KEYMUX_STATE_DIR) = %q, %v", name, ok)
	}
	got, err := f.parseArgs([]string{"serve", "--consul", "--grpc", "unix:/s", "--admin=0.0.0.0:1"})
	if err != nil || got["consul"] != "true" || got["grpc"] != "unix:/s" || got["admin"] != "0.0.0.0:1" {
		t.Errorf("parseArgs = %v, %v", got, err)
	}
	if _, err := f.parseArgs([]string{"serve", "--grcp", "x"}); err == nil {
		t.Error("parseArgs accepted an unknown flag")
	}
}

// TestCrossCheckCatchesDrift changes one thing in a copy of one file and
// requires the checker to report it: each case is a drift the check exists for.
func TestCrossCheckCatchesDrift(t *testing.T) {
	const (
		compose   = composePath
		sidecar   = "examples/k8s/keymux-sidecar.yaml"
		envoyComp = "envoy/envoy-compose.yaml"
		seedKey   = "examples/compose-seed/keymux/keys/mock-1.json"
		seedSet   = "examples/compose-seed/keymux/settings.json"
		promCfg   = "examples/prometheus/prometheus.yml"
		grafanaDS = "examples/grafana/provisioning/datasources/prometheus.yaml"
		grafanaDP = "examples/grafana/provisioning/dashboards/keymux.yaml"
	)
	cases := []struct {
		name      string
		file      string
		old, new  string
		nth       int // which occurrence of old (1-based)
		wantError string
	}{
		// Ports in docker-compose.yml.
		{"compose envoy container port", compose, `"10000:10000"`, `"10000:10001"`, 1,
			`service envoy: publishes "10000:10001" but the listener keymux_listener is on port 10000`},
		{"compose envoy host port", compose, `"10000:10000"`, `"10080:10000"`, 1,
			`service envoy: listener port 10000 published as "10080:10000", want host port 10000`},
		{"compose keymux on TCP", compose, `KEYMUX_GRPC: unix:/run/keymux/extproc.sock`, `KEYMUX_GRPC: 0.0.0.0:50051`, 1,
			`service keymux: KEYMUX_GRPC="0.0.0.0:50051", want unix:/PATH in a volume shared with envoy only`},
		{"compose keymux socket path", compose, `KEYMUX_GRPC: unix:/run/keymux/extproc.sock`, `KEYMUX_GRPC: unix:/run/keymux/grpc.sock`, 1,
			`cluster keymux_extproc's pipe is /run/keymux/extproc.sock, but keymux listens on unix:/run/keymux/grpc.sock`},
		{"compose keymux socket not in a volume", compose, `KEYMUX_GRPC: unix:/run/keymux/extproc.sock`, `KEYMUX_GRPC: unix:/tmp/extproc.sock`, 1,
			`service keymux: the socket's folder /tmp is not a named volume`},
		{"compose keymux socket on a host folder", compose, `      - keymux-socket:/run/keymux`, `      - ./run:/run/keymux`, 2,
			`service keymux: the socket's folder /run/keymux is not a named volume`},
		{"compose envoy without the socket volume", compose, `      - keymux-socket:/run/keymux`, `      - keymux-other:/run/keymux`, 1,
			`service envoy: does not mount volume keymux-socket at /run/keymux`},
		{"compose envoy outside keymux's group", compose, `user: "101:65532"`, `user: "101:101"`, 1,
			`service envoy: user "101:101", group_add []: neither keymux's uid 65532 nor its group 65532`},
		{"compose envoy in keymux's group by group_add", compose, `user: "101:65532"`, "user: \"101:101\"\n    group_add: [65532]", 1,
			""}, // a control case: the added group suffices
		{"compose envoy as the image's user", compose, "    user: \"101:65532\"\n", "", 1,
			`service envoy: user "", group_add []: neither keymux's uid 65532 nor its group 65532`},
		{"compose keymux admin port", compose, `KEYMUX_ADMIN: 0.0.0.0:9464`, `KEYMUX_ADMIN: 0.0.0.0:9465`, 1,
			`service keymux: KEYMUX_ADMIN port 9465 is not EXPOSEd by the Dockerfile`},
		{"compose healthcheck admin port", compose, `/dev/tcp/keymux/9464`, `/dev/tcp/keymux/9465`, 1,
			`service envoy: healthcheck does not GET /readyz on /dev/tcp/keymux/9464`},
		{"compose keymux admin publish", compose, `"127.0.0.1:9464:9464"`, `"127.0.0.1:9464:9465"`, 1,
			`service keymux: admin port 9464 (KEYMUX_ADMIN) is not published`},
		{"compose publishes ext_proc", compose, `"127.0.0.1:9464:9464"`, "\"127.0.0.1:9464:9464\"\n      - \"50051:50051\"", 1,
			`service keymux: publishes "50051:50051", which keymux does not listen on (ext_proc is the unix socket /run/keymux/extproc.sock`},
		{"compose keymux admin on loopback", compose, `KEYMUX_ADMIN: 0.0.0.0:9464`, `KEYMUX_ADMIN: 127.0.0.1:9464`, 1,
			`KEYMUX_ADMIN listens on loopback 127.0.0.1`},
		{"compose mock port", compose, `"-listen", "0.0.0.0:8080"`, `"-listen", "0.0.0.0:8081"`, 1,
			`key mock-1: base_url http://mockupstream:8080/v1, want the compose mock upstream http://mockupstream:8081/…`},
		{"compose consul port", compose, `CONSUL_HTTP_ADDR: consul:8500`, `CONSUL_HTTP_ADDR: consul:8501`, 1,
			`service keymux: CONSUL_HTTP_ADDR="consul:8501", want consul:8500`},
		{"compose otlp port", compose, `http://jaeger:4318`, `http://jaeger:4317`, 1,
			`OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4317", want http://jaeger:4318`},
		{"compose env typo", compose, `KEYMUX_CONSUL_PREFIX:`, `KEYMUX_CONSUL_PREFX:`, 1,
			`service keymux: KEYMUX_CONSUL_PREFX matches no keymux serve flag`},
		{"compose service renamed", compose, "\n  keymux:\n", "\n  gateway:\n", 1,
			`no service "keymux"`},
		// Image tags.
		{"compose image latest", compose, `envoyproxy/envoy:v1.39.6`, `envoyproxy/envoy:latest`, 1,
			`service envoy: image envoyproxy/envoy:latest uses the floating tag "latest"`},
		{"compose image untagged", compose, `image: hashicorp/consul:1.14.11`, `image: hashicorp/consul`, 1,
			`service consul: image hashicorp/consul has no tag`},
		{"k8s image untagged", sidecar, `envoyproxy/envoy:v1.39.6`, `envoyproxy/envoy`, 1,
			`container envoy: image envoyproxy/envoy has no tag`},
		{"dockerfile base latest", dockerfilePath, `distroless/static-debian12:nonroot AS keymux`, `distroless/static-debian12:latest AS keymux`, 1,
			`FROM gcr.io/distroless/static-debian12:latest uses the floating tag "latest"`},
		// Envoy compose variant.
		{"envoy compose pipe", envoyComp, `pipe: { path: /run/keymux/extproc.sock }`, `pipe: { path: /var/run/keymux/extproc.sock }`, 1,
			`cluster keymux_extproc's pipe is /var/run/keymux/extproc.sock, but keymux listens on unix:/run/keymux/extproc.sock`},
		{"envoy compose over TCP", envoyComp, `pipe: { path: /run/keymux/extproc.sock }`, `socket_address: { address: keymux, port_value: 50051 }`, 1,
			`cluster keymux_extproc: want exactly one pipe endpoint (keymux's unix socket)`},
		{"envoy compose drifts from envoy.yaml", envoyComp, `message_timeout: 5s`, `message_timeout: 6s`, 1,
			`differs from envoy/envoy.yaml beyond keymux_extproc's type`},
		{"envoy compose listener", envoyComp, `port_value: 10000`, `port_value: 10001`, 1,
			`listener keymux_listener on port 10001, the README's curl uses 10000`},
		// Dockerfile.
		{"dockerfile go version", dockerfilePath, `FROM golang:1.26.8 AS build`, `FROM golang:1.25.9 AS build`, 1,
			`builder golang:1.25.9 is Go 1.25, go.mod says go 1.26`},
		{"dockerfile go patch", dockerfilePath, `FROM golang:1.26.8 AS build`, `FROM golang:1.26.0 AS build`, 1,
			`builder golang:1.26.0 is older than go.mod's go 1.26`},
		{"dockerfile expose", dockerfilePath, `EXPOSE 50051 9464`, `EXPOSE 50051 9465`, 1,
			`EXPOSE [50051 9465], want keymux's default ports [50051 9464]`},
		{"dockerfile socket folder owner", dockerfilePath, `--chown=65532:65532 /out/run /run/keymux`, `/out/run /run/keymux`, 1,
			`stage keymux: no COPY --chown=65532:65532 … /run/keymux`},
		{"dockerfile root", dockerfilePath, "USER 65532:65532\n# Where", "USER root\n# Where", 1,
			`stage keymux: USER "root", want a non-root user`},
		{"dockerfile version ldflags", dockerfilePath, `cmd/keymux/app.Version=`, `cmd/keymux/app.version=`, 1,
			`does not build with "-X github.com/keymux/keymux/cmd/keymux/app.Version="`},
		{"dockerfile mock target", compose, `target: mock`, `target: mocks`, 1,
			`service mockupstream: build target "mocks" is no stage of the Dockerfile`},
		// Compose seed.
		{"seed base_url host", seedKey, `http://mockupstream:8080/v1`, `http://mock:8080/v1`, 1,
			`key mock-1: base_url http://mock:8080/v1, want the compose mock upstream http://mockupstream:8080/…`},
		{"seed secret unset", seedKey, `env:MOCK_API_KEY_1`, `env:MOCK_API_KEY_9`, 1,
			`MOCK_API_KEY_9 is not set in the environment of service keymux`},
		{"seed secret not accepted", compose, `MOCK_API_KEY_1: sk-mock-compose-1`, `MOCK_API_KEY_1: sk-mock-compose-9`, 1,
			`key mock-1: its secret (env:MOCK_API_KEY_1) is not one the mockupstream service accepts`},
		{"seed auth", seedSet, `"mode": "none"`, `"mode": "client_keys"`, 1,
			`auth mode "client_keys", but the documented curl sends no client key`},
		{"seed model", "examples/compose-seed/keymux/keys/mock-2.json", `["gpt-4o", "gpt-4o-mini"]`, `["gpt-4o-mini"]`, 1,
			""}, // mock-1 still serves gpt-4o: no error (a control case)
		// Prometheus and Grafana.
		{"prometheus scrape port", promCfg, `"keymux:9464"`, `"keymux:9465"`, 1,
			`scrape targets [keymux:9465] do not include keymux:9464 (keymux's admin port)`},
		{"prometheus scrape path", promCfg, `  - job_name: keymux`, "  - job_name: keymux\n    metrics_path: /stats", 1,
			`job keymux scrapes http://keymux:9464/stats, keymux serves http://keymux:9464/metrics`},
		{"prometheus follows the admin port", compose, `KEYMUX_ADMIN: 0.0.0.0:9464`, `KEYMUX_ADMIN: 0.0.0.0:9465`, 1,
			`scrape targets [keymux:9464] do not include keymux:9465`},
		{"prometheus rule file", promCfg, `  - alerts.yaml`, `  - alert.yaml`, 1,
			`rule file alert.yaml: examples/prometheus/alert.yaml is not in the repository`},
		{"prometheus no rules", promCfg, "rule_files:\n  - alerts.yaml\n", "", 1,
			`no rule_files`},
		{"prometheus config not mounted", compose, `--config.file=/etc/prometheus/prometheus.yml`, `--config.file=/etc/prom/prometheus.yml`, 1,
			`service prometheus: its --config.file /etc/prom/prometheus.yml is not mounted from the repository`},
		{"prometheus mount missing", compose, `./examples/prometheus:/etc/prometheus:ro`, `./examples/prom:/etc/prometheus:ro`, 1,
			`service prometheus: mounts ./examples/prom, which is not in the repository`},
		{"prometheus published port", compose, `"127.0.0.1:9090:9090"`, `"127.0.0.1:9090:9091"`, 1,
			`service prometheus: publishes "127.0.0.1:9090:9091", Prometheus listens on 9090`},
		{"prometheus image untagged", compose, `image: prom/prometheus:v2.42.0`, `image: prom/prometheus`, 1,
			`service prometheus: image prom/prometheus has no tag`},
		{"grafana image latest", compose, `grafana/grafana:12.0.0`, `grafana/grafana:latest`, 1,
			`service grafana: image grafana/grafana:latest uses the floating tag "latest"`},
		{"grafana datasource port", grafanaDS, `url: http://prometheus:9090`, `url: http://prometheus:9091`, 1,
			`data source Prometheus: url "http://prometheus:9091", want the compose Prometheus http://prometheus:9090`},
		{"grafana follows prometheus's port", compose, `--web.listen-address=0.0.0.0:9090`, `--web.listen-address=0.0.0.0:9091`, 1,
			`want the compose Prometheus http://prometheus:9091`},
		{"grafana dashboard folder", grafanaDP, `path: /etc/grafana/dashboards`, `path: /var/lib/grafana/dashboards`, 1,
			`no file dashboard provider whose options.path holds examples/grafana/keymux.json`},
		{"grafana dashboard mount", compose, `./examples/grafana/keymux.json:`, `./examples/grafana/fleet.json:`, 1,
			`service grafana: mounts ./examples/grafana/fleet.json, which is not in the repository`},
		{"grafana provisioning mount", compose, `./examples/grafana/provisioning:/etc/grafana/provisioning:ro`, `./examples/grafana/provisioning:/etc/grafana/prov:ro`, 1,
			`service grafana: nothing of the repository is mounted at its provisioning folder /etc/grafana/provisioning`},
		{"dashboard datasource type", "examples/grafana/keymux.json", `"query": "prometheus"`, `"query": "loki"`, 1,
			`variable datasource: data source type "loki", want "prometheus"`},
		// Kubernetes.
		{"k8s socket path", sidecar, `unix:/var/run/keymux/extproc.sock`, `unix:/var/run/keymux/ext.sock`, 1,
			`--grpc unix:/var/run/keymux/ext.sock, but the Envoy ConfigMap's keymux_extproc pipe is /var/run/keymux/extproc.sock`},
		{"k8s envoy socket mount", sidecar, `mountPath: /var/run/keymux`, `mountPath: /run/keymux`, 2,
			`container envoy: mounts volume extproc-socket at "/run/keymux", but its bootstrap's socket is /var/run/keymux/extproc.sock`},
		{"k8s keymux socket mount", sidecar, `mountPath: /var/run/keymux`, `mountPath: /run/keymux`, 1,
			`container keymux: no volume mounted at /var/run/keymux`},
		{"k8s configmap drift", configMapPath, `port_value: 10000`, `port_value: 10001`, 1,
			`ConfigMap keymux-envoy's envoy.yaml differs from envoy/envoy-unix.yaml`},
		{"k8s envoy -c", sidecar, `- /etc/envoy/envoy.yaml`, `- /etc/envoy/bootstrap.yaml`, 1,
			`container envoy: -c "/etc/envoy/bootstrap.yaml", want "/etc/envoy/envoy.yaml"`},
		{"k8s readiness path", sidecar, `path: /readyz`, `path: /ready`, 1,
			`readinessProbe GET /ready on port admin, want /readyz on the admin port 9464`},
		{"k8s admin port", sidecar, `- 0.0.0.0:9464`, `- 0.0.0.0:9465`, 1,
			`livenessProbe GET /healthz on port admin, want /healthz on the admin port 9465`},
		{"k8s admin loopback", sidecar, `- 0.0.0.0:9464`, `- 127.0.0.1:9464`, 1,
			`--admin 127.0.0.1:9464 is loopback`},
		{"k8s envoy port", sidecar, `containerPort: 10000`, `containerPort: 8080`, 1,
			`container envoy: no containerPort 10000`},
		{"k8s root", sidecar, `runAsNonRoot: true`, `runAsNonRoot: false`, 1,
			`container keymux: not forced non-root`},
		{"k8s requests", sidecar, "cpu: 100m\n", "", 1,
			`container keymux: no resources.requests.cpu`},
		{"k8s consul address", sidecar, `CONSUL_HTTP_ADDR: consul-server.consul.svc:8500`, `CONSUL_ADDR: consul-server.consul.svc:8500`, 1,
			`CONSUL_HTTP_ADDR is set neither in env nor through an envFrom ConfigMap`},
		{"k8s unknown flag", sidecar, `- --state-dir`, `- --statedir`, 1,
			`unknown flag "--statedir"`},
		{"k8s no shared group", sidecar, "        fsGroup: 65532\n", "", 1, ""}, // same runAsGroup still: no error (control)
	}
	base := newTree("..")
	flags := flagsFor(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mut, ok := base.replace(tc.file, tc.old, tc.new, tc.nth)
			if !ok {
				t.Fatalf("%s: occurrence %d of %q not found (the file changed: update this case)", tc.file, tc.nth, tc.old)
			}
			errs := crossCheck(mut, flags)
			if tc.wantError == "" {
				for _, err := range errs {
					t.Errorf("unexpected: %v", err)
				}
				return
			}
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.wantError) {
					return
				}
			}
			t.Errorf("no error contains %q; got %d:\n%v", tc.wantError, len(errs), errors.Join(errs...))
		})
	}
}

// TestConfigMapGenerated: examples/k8s/envoy-configmap.yaml is exactly what
// renderConfigMap makes of envoy/envoy-unix.yaml (-update rewrites it).
func TestConfigMapGenerated(t *testing.T) {
	unix, err := os.ReadFile(filepath.Join("..", envoyUnixPath))
	if err != nil {
		t.Fatal(err)
	}
	want, err := renderConfigMap(unix)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join("..", configMapPath)
	if *update {
		if err := os.WriteFile(file, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go test ./deploy/ -run ConfigMap -update", configMapPath)
	}
	// And the rendering round-trips through a YAML parser to the very bytes.
	objs, err := parseManifests(configMapPath, want)
	if err != nil || len(objs) != 1 || objs[0].Data[configMapKey] != string(unix) {
		t.Fatalf("rendered ConfigMap does not parse back to %s (err %v)", envoyUnixPath, err)
	}
}

// renderConfigMap embeds an Envoy bootstrap in a ConfigMap as a literal
// block scalar (every line indented, so it parses back byte for byte).
func renderConfigMap(envoyYAML []byte) ([]byte, error) {
	text := string(envoyYAML)
	if !strings.HasSuffix(text, "\n") || strings.HasSuffix(text, "\n\n") || strings.Contains(text, "\r") {
		return nil, errors.New("envoy-unix.yaml must end with exactly one newline and use LF line ends")
	}
	if regexp.MustCompile(`(?m)[ \t]+$`).MatchString(text) {
		return nil, errors.New("envoy-unix.yaml has trailing blanks (a block scalar would not keep them)")
	}
	var b strings.Builder
	b.WriteString(`# GENERATED from envoy/envoy-unix.yaml by deploy/crosscheck_test.go — do not edit.
# Regenerate: go test ./deploy/ -run ConfigMap -update
# The Envoy bootstrap of the keymux-gateway pod (keymux-sidecar.yaml): ext_proc over the unix
# socket /var/run/keymux/extproc.sock, listener :10000.
apiVersion: v1
kind: ConfigMap
metadata:
  name: keymux-envoy
  labels:
    app.kubernetes.io/name: keymux-gateway
data:
  envoy.yaml: |
`)
	for line := range strings.Lines(text) {
		if line != "\n" {
			b.WriteString("    ")
		}
		b.WriteString(line)
	}
	return []byte(b.String()), nil
}

// TestSeedScript runs examples/consul-seed/seed.sh (as the compose job does)
// against a real Consul agent and compares the KV with the seed folder.
func TestSeedScript(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal("no sh:", err)
	}
	bin, err := consultest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	agent := consultest.Start(t)
	seedDir := filepath.Join("..", "examples", "compose-seed")
	cmd := exec.CommandContext(t.Context(), sh, filepath.Join("..", "examples", "consul-seed", "seed.sh"), seedDir)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.Addr(), "SEED_RETRIES=5",
		"PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("seed.sh: %v\n%s", err, out)
	}
	files, err := newTree("..").list("examples/compose-seed")
	if err != nil {
		t.Fatal(err)
	}
	kv := agent.Client().KV()
	pairs, _, err := kv.List("", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, p := range pairs {
		got[p.Key] = p.Value
	}
	n := 0
	for _, f := range files {
		key, ok := strings.CutSuffix(strings.TrimPrefix(f, "examples/compose-seed/"), ".json")
		if !ok {
			continue
		}
		n++
		want, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[key], want) {
			t.Errorf("KV %s = %q, want the content of %s", key, got[key], f)
		}
	}
	if n != 4 || len(got) != n {
		t.Errorf("%d seed files, %d KV entries (%v); want 4 and 4", n, len(got), keys(got))
	}
	if !strings.Contains(string(out), "seed.sh: 4 entries from") {
		t.Errorf("seed.sh output:\n%s", out)
	}

	// A folder without documents is an error, not a silent no-op.
	empty := t.TempDir()
	cmd = exec.CommandContext(t.Context(), sh, filepath.Join("..", "examples", "consul-seed", "seed.sh"), empty)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.Addr(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no *.json under") {
		t.Errorf("seed.sh on an empty folder: err %v, output %q", err, out)
	}
}

func keys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
