package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

	"github.com/keymux/keymux/envoy"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// The files the checker reads (repo-relative).
const (
	composePath      = "docker-compose.yml"
	dockerfilePath   = "Dockerfile"
	goModPath        = "go.mod"
	envoyTCPPath     = "envoy/envoy.yaml"
	envoyUnixPath    = "envoy/envoy-unix.yaml"
	k8sDir           = "examples/k8s"
	configMapPath    = "examples/k8s/envoy-configmap.yaml"
	configMapName    = "keymux-envoy"
	configMapKey     = "envoy.yaml"
	extprocCluster   = "keymux_extproc"
	listenerName     = "keymux_listener"
	versionLDFlag    = "-X github.com/keymux/keymux/cmd/keymux/app.Version="
	clientPort       = 10000 // the port the README's curl uses
	consulHTTPPort   = 8500
	documentedModel  = "gpt-4o" // the model the README's curl asks for
	keymuxStage      = "keymux" // Dockerfile stage of the sidecar image (the default target)
	mockStage        = "mock"   // Dockerfile stage of the mock upstream
	seedScriptSource = "./examples/consul-seed/seed.sh"
)

// Compose service names the files refer to one another by.
const (
	svcEnvoy  = "envoy"
	svcKeymux = "keymux"
	svcConsul = "consul"
	svcSeed   = "consul-seed"
	svcJaeger = "jaeger"
	svcMock   = "mockupstream"
)

// checker collects every inconsistency instead of stopping at the first.
type checker struct {
	t     *tree
	flags keymuxFlags
	errs  []error

	dockerfile *dockerfile
	envoyTCP   *bootstrapv3.Bootstrap
}

func (c *checker) errf(file, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%s: %s", file, fmt.Sprintf(format, args...)))
}

// crossCheck reads the deployment files from t and returns every
// inconsistency found (nil when they agree).
func crossCheck(t *tree, flags keymuxFlags) []error {
	c := &checker{t: t, flags: flags}
	c.checkDockerfile()
	c.envoyTCP = c.loadEnvoy(envoyTCPPath)
	c.checkCompose()
	c.checkK8s()
	return c.errs
}

// loadEnvoy reads and fully validates (protos, PGV, cross references) a bootstrap.
func (c *checker) loadEnvoy(rel string) *bootstrapv3.Bootstrap {
	data, err := c.t.read(rel)
	if err != nil {
		c.errf(rel, "%v", err)
		return nil
	}
	return c.envoyFromBytes(rel, data)
}

func (c *checker) envoyFromBytes(name string, data []byte) *bootstrapv3.Bootstrap {
	if err := envoy.Validate(data); err != nil {
		c.errf(name, "invalid Envoy bootstrap: %v", err)
		return nil
	}
	b := &bootstrapv3.Bootstrap{}
	if err := envoy.Unmarshal(data, b); err != nil {
		c.errf(name, "%v", err)
		return nil
	}
	return b
}

// ---- Dockerfile ----

var goDirectiveRE = regexp.MustCompile(`(?m)^go (\d+)\.(\d+)(?:\.(\d+))?\s*$`)
var golangImageRE = regexp.MustCompile(`^golang:(\d+)\.(\d+)(?:\.(\d+))?(?:-[\w.-]+)?$`)

func (c *checker) checkDockerfile() {
	data, err := c.t.read(dockerfilePath)
	if err != nil {
		c.errf(dockerfilePath, "%v", err)
		return
	}
	d, err := parseDockerfile(data)
	if err != nil {
		c.errf(dockerfilePath, "%v", err)
		return
	}
	c.dockerfile = d
	stageNames := map[string]bool{}
	var golang *dockerStage
	for _, s := range d.Stages {
		if !stageNames[s.Image] && s.Image != "scratch" {
			if why := pinned(s.Image); why != "" {
				c.errf(dockerfilePath, "FROM %s %s", s.Image, why)
			}
		}
		if strings.HasPrefix(s.Image, "golang:") {
			golang = s
		}
		stageNames[s.Name] = true
	}

	// Go version: the builder's major.minor is go.mod's, its patch at least go.mod's.
	mod, err := c.t.read(goModPath)
	if err != nil {
		c.errf(goModPath, "%v", err)
	} else if m := goDirectiveRE.FindStringSubmatch(string(mod)); m == nil {
		c.errf(goModPath, "no go directive")
	} else if golang == nil {
		c.errf(dockerfilePath, "no golang:X.Y.Z builder stage")
	} else if g := golangImageRE.FindStringSubmatch(golang.Image); g == nil {
		c.errf(dockerfilePath, "builder image %s: want golang:MAJOR.MINOR.PATCH[-variant]", golang.Image)
	} else {
		want := strings.Join(slices.DeleteFunc(m[1:], func(s string) bool { return s == "" }), ".")
		if g[1] != m[1] || g[2] != m[2] {
			c.errf(dockerfilePath, "builder %s is Go %s.%s, go.mod says go %s", golang.Image, g[1], g[2], want)
		} else if atoi(g[3]) < atoi(m[3]) {
			c.errf(dockerfilePath, "builder %s is older than go.mod's go %s (the build would need another toolchain)", golang.Image, want)
		}
	}

	// The build itself.
	runs := strings.Join(golangRuns(golang), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", versionLDFlag, "./cmd/keymux", "./examples/mockupstream/cmd/mockupstream"} {
		if !strings.Contains(runs, want) && !(want == "CGO_ENABLED=0" && golang != nil && golang.Env["CGO_ENABLED"] == "0") {
			c.errf(dockerfilePath, "the builder stage does not build with %q", want)
		}
	}

	// The sidecar image: default target, non-root, /keymux serve, EXPOSE = the flag defaults.
	last := d.Stages[len(d.Stages)-1]
	if last.Name != keymuxStage {
		c.errf(dockerfilePath, "the last stage (the default target) is %q, want %q", last.Name, keymuxStage)
	}
	if k := d.stage(keymuxStage); k != nil {
		c.checkNonRoot(k)
		if !slices.Equal(k.Entrypoint, []string{"/keymux"}) {
			c.errf(dockerfilePath, `stage %s: ENTRYPOINT %q, want ["/keymux"]`, k.Name, k.Entrypoint)
		}
		if len(k.Cmd) == 0 || k.Cmd[0] != "serve" {
			c.errf(dockerfilePath, "stage %s: CMD %q does not run serve", k.Name, k.Cmd)
		} else if _, err := c.flags.parseArgs(k.Cmd); err != nil {
			c.errf(dockerfilePath, "stage %s: CMD %q: %v", k.Name, k.Cmd, err)
		}
		var want []int
		for _, f := range []string{"grpc", "admin"} {
			_, p := hostPort(c.flags.Defaults[f])
			want = append(want, p)
		}
		if got := slices.Sorted(slices.Values(k.Expose)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
			c.errf(dockerfilePath, "stage %s: EXPOSE %v, want keymux's default ports %v (--grpc %s, --admin %s)",
				k.Name, k.Expose, want, c.flags.Defaults["grpc"], c.flags.Defaults["admin"])
		}
		for env := range k.Env {
			if strings.HasPrefix(env, "KEYMUX_") {
				if _, ok := c.flags.envFlag(env); !ok {
					c.errf(dockerfilePath, "stage %s: ENV %s matches no keymux serve flag", k.Name, env)
				}
			}
		}
	} else {
		c.errf(dockerfilePath, "no stage %q", keymuxStage)
	}
	if m := d.stage(mockStage); m != nil {
		c.checkNonRoot(m)
		if !slices.Equal(m.Entrypoint, []string{"/mockupstream"}) {
			c.errf(dockerfilePath, `stage %s: ENTRYPOINT %q, want ["/mockupstream"]`, m.Name, m.Entrypoint)
		}
	} else {
		c.errf(dockerfilePath, "no stage %q", mockStage)
	}
}

func golangRuns(s *dockerStage) []string {
	if s == nil {
		return nil
	}
	return s.Runs
}

func (c *checker) checkNonRoot(s *dockerStage) {
	user, _, _ := strings.Cut(s.User, ":")
	if user == "" || user == "0" || user == "root" {
		c.errf(dockerfilePath, "stage %s: USER %q, want a non-root user", s.Name, s.User)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// ---- docker-compose.yml ----

func (c *checker) checkCompose() {
	data, err := c.t.read(composePath)
	if err != nil {
		c.errf(composePath, "%v", err)
		return
	}
	cf, err := parseCompose(data)
	if err != nil {
		c.errf(composePath, "%v", err)
		return
	}
	svc := map[string]*composeService{}
	for _, name := range []string{svcEnvoy, svcKeymux, svcConsul, svcSeed, svcJaeger, svcMock, svcPrometheus, svcGrafana} {
		if svc[name] = cf.Services[name]; svc[name] == nil {
			c.errf(composePath, "no service %q", name)
		}
	}
	ports := map[string][]portMapping{}
	for name, s := range cf.Services {
		switch {
		case s.Image == "" && s.Build == nil:
			c.errf(composePath, "service %s: neither image nor build", name)
		case s.Image != "":
			if why := pinned(s.Image); why != "" {
				c.errf(composePath, "service %s: image %s %s", name, s.Image, why)
			}
		}
		if s.Build != nil {
			if s.Build.Context != "." || (s.Build.Dockerfile != "" && s.Build.Dockerfile != dockerfilePath) {
				c.errf(composePath, "service %s: build context %q / dockerfile %q, want the repository's Dockerfile", name, s.Build.Context, s.Build.Dockerfile)
			}
			if c.dockerfile != nil && c.dockerfile.stage(s.Build.Target) == nil {
				c.errf(composePath, "service %s: build target %q is no stage of the Dockerfile", name, s.Build.Target)
			}
		}
		c.checkMounts(name, s)
		for _, p := range s.Ports {
			pm, err := parsePort(p)
			if err != nil {
				c.errf(composePath, "service %s: %v", name, err)
				continue
			}
			ports[name] = append(ports[name], pm)
		}
	}
	for name := range svc {
		if svc[name] == nil {
			return
		}
	}
	if svc[svcKeymux].Build == nil || svc[svcKeymux].Build.Target != keymuxStage {
		c.errf(composePath, "service %s: must be built from the Dockerfile's %q stage", svcKeymux, keymuxStage)
	}
	if svc[svcMock].Build == nil || svc[svcMock].Build.Target != mockStage {
		c.errf(composePath, "service %s: must be built from the Dockerfile's %q stage", svcMock, mockStage)
	}

	kenv := svc[svcKeymux].Environment
	sock, sockVol, adminPort := c.composeKeymux(svc[svcKeymux], ports[svcKeymux])
	c.composeEnvoy(svc[svcEnvoy], ports[svcEnvoy], sock, sockVol, adminPort)
	c.composeConsul(svc, ports)
	c.composeJaeger(kenv, ports[svcJaeger])
	c.composeGrafana(svc[svcGrafana], c.composePrometheus(svc[svcPrometheus], ports[svcPrometheus], adminPort))
	mockHost := c.composeMock(svc[svcMock])
	c.composeSeed(svc[svcSeed], svc[svcMock], kenv, mockHost)
}

// composeKeymux checks keymux's environment, volumes and ports; it returns
// its ext_proc socket path, the named volume holding it and its admin port.
func (c *checker) composeKeymux(s *composeService, ports []portMapping) (string, string, int) {
	env := s.Environment
	for k := range env {
		if strings.HasPrefix(k, "KEYMUX_") {
			if _, ok := c.flags.envFlag(k); !ok {
				c.errf(composePath, "service %s: %s matches no keymux serve flag (typo? it would be ignored)", svcKeymux, k)
			}
		}
	}
	if env[envOf("consul")] != "true" {
		c.errf(composePath, "service %s: %s=%q, want true (Consul is the compose stack's source)", svcKeymux, envOf("consul"), env[envOf("consul")])
	}
	if env[envOf("config")] != "" {
		c.errf(composePath, "service %s: %s and %s are exclusive", svcKeymux, envOf("config"), envOf("consul"))
	}
	// ext_proc replies carry upstream API keys: no TCP port on the compose
	// network, a unix socket in a named volume that only Envoy shares.
	grpc := c.setting(env, "grpc")
	sock, isUnix := strings.CutPrefix(grpc, "unix:")
	if !isUnix || !path.IsAbs(sock) {
		c.errf(composePath, "service %s: %s=%q, want unix:/PATH in a volume shared with %s only (ext_proc replies carry upstream API keys: no TCP port on the compose network)",
			svcKeymux, envOf("grpc"), grpc, svcEnvoy)
		sock = ""
	}
	vol := ""
	if sock != "" {
		if vol = namedVolumeAt(s, path.Dir(sock)); vol == "" {
			c.errf(composePath, "service %s: the socket's folder %s is not a named volume (%s must mount it too)", svcKeymux, path.Dir(sock), svcEnvoy)
		}
		c.ownedFolder(path.Dir(sock))
	}
	admin := c.setting(env, "admin")
	ah, ap := hostPort(admin)
	if ah == "" && ap == 0 {
		c.errf(composePath, "service %s: %s=%q: want host:port", svcKeymux, envOf("admin"), admin)
		return "", "", 0
	}
	if isLoopback(ah) {
		c.errf(composePath, "service %s: %s listens on loopback %s: unreachable from the other containers", svcKeymux, envOf("admin"), ah)
	}
	if k := c.keymuxStage(); k != nil && !slices.Contains(k.Expose, ap) {
		c.errf(composePath, "service %s: %s port %d is not EXPOSEd by the Dockerfile (%v)", svcKeymux, envOf("admin"), ap, k.Expose)
	}
	adminPublished := false
	for _, pm := range ports {
		if pm.ContainerPort == ap {
			adminPublished = true
		} else {
			c.errf(composePath, "service %s: publishes %q, which keymux does not listen on (ext_proc is the unix socket %s, admin port %d)", svcKeymux, pm.Raw, sock, ap)
		}
	}
	if !adminPublished {
		c.errf(composePath, "service %s: admin port %d (%s) is not published", svcKeymux, ap, envOf("admin"))
	}
	if dir := c.setting(env, "state-dir"); dir != "" && !hasMountTarget(s, dir) {
		c.errf(composePath, "service %s: state dir %s is not a volume (the snapshot would not survive a restart)", svcKeymux, dir)
	}
	for dep, cond := range map[string]string{svcConsul: "service_healthy", svcSeed: "service_completed_successfully"} {
		if s.DependsOn[dep].Condition != cond {
			c.errf(composePath, "service %s: depends_on %s condition %q, want %s", svcKeymux, dep, s.DependsOn[dep].Condition, cond)
		}
	}
	return sock, vol, ap
}

// setting is a serve flag's value as the compose keymux gets it: its
// environment, else the image's ENV, else the flag default.
func (c *checker) setting(env map[string]string, flagName string) string {
	if v, ok := env[envOf(flagName)]; ok {
		return v
	}
	if k := c.keymuxStage(); k != nil {
		if v, ok := k.Env[envOf(flagName)]; ok {
			return v
		}
	}
	return c.flags.Defaults[flagName]
}

func (c *checker) keymuxStage() *dockerStage {
	if c.dockerfile == nil {
		return nil
	}
	return c.dockerfile.stage(keymuxStage)
}

func envOf(flagName string) string {
	return "KEYMUX_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ownedFolder checks that the keymux image creates dir owned by its USER
// (COPY --chown=USER … dir): a named volume starts as a copy of it, and
// keymux could not create its socket in a folder root owns.
func (c *checker) ownedFolder(dir string) {
	k := c.keymuxStage()
	if k == nil {
		return
	}
	for _, cp := range k.Copies {
		f := strings.Fields(cp)
		if len(f) > 0 && path.Clean(f[len(f)-1]) == path.Clean(dir) && slices.Contains(f, "--chown="+k.User) {
			return
		}
	}
	c.errf(dockerfilePath, "stage %s: no COPY --chown=%s … %s: keymux could not create its socket there", keymuxStage, k.User, dir)
}

// namedVolumeAt returns the named volume (not a host path) s mounts at dir.
func namedVolumeAt(s *composeService, dir string) string {
	for _, v := range s.Volumes {
		m := parseVolume(v)
		if path.Clean(m.Target) == path.Clean(dir) && m.Source != "" && !strings.HasPrefix(m.Source, ".") && !strings.HasPrefix(m.Source, "/") {
			return m.Source
		}
	}
	return ""
}

// composeSocketAccess checks that Envoy may open keymux's socket, which keymux
// creates with mode 0660 as its image's USER: Envoy runs with that uid, that
// group, or that group added.
func (c *checker) composeSocketAccess(envoy *composeService) {
	k := c.keymuxStage()
	if k == nil {
		return
	}
	kuid, kgid, _ := strings.Cut(k.User, ":")
	if kgid == "" {
		kgid = kuid
	}
	uid, gid, _ := strings.Cut(envoy.User, ":")
	if envoy.User != "" && (uid == kuid || gid == kgid) {
		return
	}
	for _, g := range envoy.GroupAdd {
		if fmt.Sprint(g) == kgid {
			return
		}
	}
	c.errf(composePath, "service %s: user %q, group_add %v: neither keymux's uid %s nor its group %s, so Envoy cannot open the 0660 socket", svcEnvoy, envoy.User, envoy.GroupAdd, kuid, kgid)
}

func hasMountTarget(s *composeService, target string) bool {
	for _, v := range s.Volumes {
		if path.Clean(parseVolume(v).Target) == path.Clean(target) {
			return true
		}
	}
	return false
}

// composeEnvoy checks the Envoy service against the bootstrap it mounts.
func (c *checker) composeEnvoy(s *composeService, ports []portMapping, sock, sockVol string, adminPort int) {
	cfg := argAfter(s.Command, "-c")
	if cfg == "" {
		cfg = "/etc/envoy/envoy.yaml" // the image's default CMD
	}
	var src string
	for _, v := range s.Volumes {
		if m := parseVolume(v); path.Clean(m.Target) == path.Clean(cfg) {
			src = m.Source
		}
	}
	rel := strings.TrimPrefix(path.Clean(src), "./")
	if src == "" || !strings.HasPrefix(rel, "envoy/") {
		c.errf(composePath, "service %s: no envoy/*.yaml mounted at its -c %s", svcEnvoy, cfg)
		return
	}
	b := c.loadEnvoy(rel)
	if b == nil {
		return
	}
	lport := c.listenerPort(rel, b)
	if lport != clientPort {
		c.errf(rel, "listener %s on port %d, the README's curl uses %d", listenerName, lport, clientPort)
	}
	found := false
	for _, pm := range ports {
		if pm.ContainerPort == lport {
			found = true
			if pm.HostPort != clientPort {
				c.errf(composePath, "service %s: listener port %d published as %q, want host port %d (the README's curl)", svcEnvoy, lport, pm.Raw, clientPort)
			}
		} else {
			c.errf(composePath, "service %s: publishes %q but the listener %s is on port %d", svcEnvoy, pm.Raw, listenerName, lport)
		}
	}
	if !found {
		c.errf(composePath, "service %s: the listener port %d (%s) is not published", svcEnvoy, lport, rel)
	}

	// keymux_extproc = keymux's socket, in the named volume both services mount.
	cl := cluster(b, extprocCluster)
	if cl == nil {
		c.errf(rel, "no cluster %s", extprocCluster)
		return
	}
	addrs := endpoints(cl)
	if len(addrs) != 1 || addrs[0].GetPipe() == nil {
		c.errf(rel, "cluster %s: want exactly one pipe endpoint (keymux's unix socket), got %v", extprocCluster, addrs)
		return
	}
	pipe := addrs[0].GetPipe().GetPath()
	if sock != "" && pipe != sock {
		c.errf(rel, "cluster %s's pipe is %s, but keymux listens on unix:%s (%s in %s)", extprocCluster, pipe, sock, envOf("grpc"), composePath)
	}
	if sockVol != "" && namedVolumeAt(s, path.Dir(pipe)) != sockVol {
		c.errf(composePath, "service %s: does not mount volume %s at %s, the folder of its bootstrap's socket %s", svcEnvoy, sockVol, path.Dir(pipe), pipe)
	}
	c.composeSocketAccess(s)
	if c.envoyTCP != nil && !sameButExtProcAddress(c.envoyTCP, b) {
		c.errf(rel, "differs from %s beyond %s's type, DNS family and address", envoyTCPPath, extprocCluster)
	}
	if s.DependsOn[svcKeymux].Condition == "" {
		c.errf(composePath, "service %s: does not depend on %s", svcEnvoy, svcKeymux)
	}
	// Its healthcheck asks keymux's /readyz (what `docker compose up --wait` waits for).
	hc := ""
	if s.Healthcheck != nil {
		hc = strings.Join(s.Healthcheck.Test, " ")
	}
	want := fmt.Sprintf("/dev/tcp/%s/%d ", svcKeymux, adminPort)
	if !strings.Contains(hc, want) || !strings.Contains(hc, "/readyz") {
		c.errf(composePath, "service %s: healthcheck does not GET /readyz on %s (keymux's admin port %d): %q", svcEnvoy, strings.TrimSpace(want), adminPort, hc)
	}
}

// listenerPort returns the port of keymux's listener, which must listen on all interfaces.
func (c *checker) listenerPort(rel string, b *bootstrapv3.Bootstrap) int {
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == listenerName {
			sa := l.GetAddress().GetSocketAddress()
			if isLoopback(sa.GetAddress()) {
				c.errf(rel, "listener %s on loopback %s: unreachable from outside the container", listenerName, sa.GetAddress())
			}
			return int(sa.GetPortValue())
		}
	}
	c.errf(rel, "no listener %s", listenerName)
	return 0
}

func cluster(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, cl := range b.GetStaticResources().GetClusters() {
		if cl.GetName() == name {
			return cl
		}
	}
	return nil
}

func endpoints(cl *clusterv3.Cluster) []*corev3.Address {
	var out []*corev3.Address
	for _, le := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			out = append(out, lb.GetEndpoint().GetAddress())
		}
	}
	return out
}

// sameButExtProcAddress reports whether two bootstraps are equal once
// keymux_extproc's type, DNS lookup family and endpoints are set aside.
func sameButExtProcAddress(a, b *bootstrapv3.Bootstrap) bool {
	norm := func(x *bootstrapv3.Bootstrap) *bootstrapv3.Bootstrap {
		x = proto.Clone(x).(*bootstrapv3.Bootstrap)
		if cl := cluster(x, extprocCluster); cl != nil {
			cl.ClusterDiscoveryType = nil
			cl.DnsLookupFamily = clusterv3.Cluster_AUTO
			cl.LoadAssignment = nil
		}
		return x
	}
	return proto.Equal(norm(a), norm(b))
}

func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func (c *checker) composeConsul(svc map[string]*composeService, ports map[string][]portMapping) {
	cs := svc[svcConsul]
	if !slices.Contains(cs.Command, "agent") || !slices.Contains(cs.Command, "-dev") || !slices.Contains(cs.Command, "-client=0.0.0.0") {
		c.errf(composePath, "service %s: command %q, want agent -dev -client=0.0.0.0", svcConsul, cs.Command)
	}
	if cs.Healthcheck == nil || len(cs.Healthcheck.Test) == 0 {
		c.errf(composePath, "service %s: no healthcheck (consul-seed and keymux wait for it)", svcConsul)
	}
	for _, pm := range ports[svcConsul] {
		if pm.ContainerPort != consulHTTPPort {
			c.errf(composePath, "service %s: publishes %q, Consul's HTTP API is %d", svcConsul, pm.Raw, consulHTTPPort)
		}
	}
	for _, name := range []string{svcKeymux, svcSeed} {
		addr := svc[name].Environment["CONSUL_HTTP_ADDR"]
		if h, p := hostPort(addr); h != svcConsul || p != consulHTTPPort {
			c.errf(composePath, "service %s: CONSUL_HTTP_ADDR=%q, want %s:%d", name, addr, svcConsul, consulHTTPPort)
		}
	}
	if svc[svcSeed].DependsOn[svcConsul].Condition != "service_healthy" {
		c.errf(composePath, "service %s: must depend on %s being healthy", svcSeed, svcConsul)
	}
	_, ctag, _ := imageRef(cs.Image)
	if srepo, stag, _ := imageRef(svc[svcSeed].Image); stag != ctag || !strings.Contains(srepo, "consul") {
		c.errf(composePath, "service %s: image %s, want the consul service's image %s (it needs the consul CLI)", svcSeed, svc[svcSeed].Image, cs.Image)
	}
}

// composeJaeger: keymux's OTLP endpoint is the jaeger service on an OTLP port it serves.
func (c *checker) composeJaeger(kenv map[string]string, ports []portMapping) {
	ep := kenv["OTEL_EXPORTER_OTLP_ENDPOINT"]
	u, err := url.Parse(ep)
	if ep == "" || err != nil {
		c.errf(composePath, "service %s: OTEL_EXPORTER_OTLP_ENDPOINT=%q, want http://%s:4318", svcKeymux, ep, svcJaeger)
		return
	}
	want := 4318 // OTLP/HTTP
	if kenv["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc" {
		want = 4317
	}
	if u.Hostname() != svcJaeger || atoi(u.Port()) != want {
		c.errf(composePath, "service %s: OTEL_EXPORTER_OTLP_ENDPOINT=%q, want http://%s:%d", svcKeymux, ep, svcJaeger, want)
	}
	if kenv["OTEL_SERVICE_NAME"] != "keymux" {
		c.errf(composePath, "service %s: OTEL_SERVICE_NAME=%q, want keymux", svcKeymux, kenv["OTEL_SERVICE_NAME"])
	}
	have := map[int]bool{}
	for _, pm := range ports {
		have[pm.ContainerPort] = true
	}
	for _, p := range []int{4317, 4318, 16686} {
		if !have[p] {
			c.errf(composePath, "service %s: port %d not published", svcJaeger, p)
		}
	}
}

// composeMock returns the host:port keys must use to reach the mock upstream.
func (c *checker) composeMock(s *composeService) string {
	args := s.Command
	if len(args) == 0 && c.dockerfile != nil {
		if m := c.dockerfile.stage(mockStage); m != nil {
			args = m.Cmd
		}
	}
	listen := argAfter(args, "-listen")
	h, p := hostPort(listen)
	if p == 0 {
		c.errf(composePath, "service %s: no -listen host:port in %q", svcMock, args)
		return ""
	}
	if isLoopback(h) {
		c.errf(composePath, "service %s: -listen %s is loopback: keymux and Envoy could not reach it", svcMock, listen)
	}
	return net.JoinHostPort(svcMock, strconv.Itoa(p))
}

// composeSeed checks the one-shot seeding job and the seed it loads: the
// documents keymux will read, parsed the way keymux parses them.
func (c *checker) composeSeed(s, mock *composeService, kenv map[string]string, mockHost string) {
	var script, seedDir string
	mounts := map[string]string{} // target → source
	for _, v := range s.Volumes {
		m := parseVolume(v)
		mounts[path.Clean(m.Target)] = m.Source
		if m.Source == seedScriptSource {
			script = path.Clean(m.Target)
		}
	}
	args := append(slices.Clone(s.Entrypoint), s.Command...)
	i := slices.Index(args, script)
	if script == "" || i < 0 || i+1 >= len(args) {
		c.errf(composePath, "service %s: does not run %s (mounted) on a seed folder: %q", svcSeed, seedScriptSource, args)
		return
	}
	src, ok := mounts[path.Clean(args[i+1])]
	if !ok {
		c.errf(composePath, "service %s: seed folder %s is not a mount", svcSeed, args[i+1])
		return
	}
	seedDir = strings.TrimPrefix(path.Clean(src), "./")
	files, err := c.t.list(seedDir)
	if err != nil {
		c.errf(composePath, "service %s: seed folder %s: %v", svcSeed, seedDir, err)
		return
	}

	// Load the documents as the seed script puts them (path without .json = KV key).
	prefix := c.setting(kenv, "consul-prefix")
	resolve := func(ref string) (string, error) {
		name, ok := strings.CutPrefix(ref, "env:")
		if !ok {
			return "", fmt.Errorf("secret_ref %q: only env: refs can be checked against the compose file", ref)
		}
		v, ok := kenv[name]
		if !ok {
			return "", fmt.Errorf("%s is not set in the environment of service %s", name, svcKeymux)
		}
		return v, nil
	}
	b := store.NewBuilder(resolve)
	n := 0
	for _, f := range files {
		rel := strings.TrimPrefix(f, seedDir+"/")
		key, ok := strings.CutSuffix(rel, ".json")
		if !ok {
			continue
		}
		n++
		raw, err := c.t.read(f)
		if err != nil {
			c.errf(f, "%v", err)
			continue
		}
		doc, ok := strings.CutPrefix(key, prefix)
		if !ok {
			c.errf(f, "KV key %s is outside keymux's prefix %s", key, prefix)
			continue
		}
		kind, id, _ := strings.Cut(doc, "/")
		if doc == string(store.KindSettings) {
			kind, id = doc, ""
		}
		if err := b.Put(store.Kind(kind), id, raw, key); err != nil {
			c.errf(f, "keymux would refuse it: %v", err)
		}
	}
	if n == 0 {
		c.errf(seedDir, "no *.json documents")
		return
	}
	cfg, refused := b.Build()
	for _, r := range refused {
		c.errf(seedDir, "keymux would refuse %s: %s", r.Path, r.Reason)
	}

	// Every key reaches the mock service on its port, with a credential the mock accepts.
	accepted := strings.Split(argAfter(mock.Command, "-keys"), ",")
	for id, k := range cfg.Keys {
		if k.Host != mockHost || k.Scheme != "http" {
			c.errf(seedDir, "key %s: base_url %s, want the compose mock upstream http://%s/…", id, k.BaseURL, mockHost)
		}
		if accepted[0] != "" && !slices.Contains(accepted, k.Secret.Reveal()) {
			c.errf(seedDir, "key %s: its secret (%s) is not one the %s service accepts (-keys)", id, k.SecretRef, svcMock)
		}
	}
	// The README's curl: no client key, model gpt-4o.
	if cfg.Settings.Auth.Mode != policy.AuthNone {
		c.errf(seedDir, "settings: auth mode %q, but the documented curl sends no client key (want %q)", cfg.Settings.Auth.Mode, policy.AuthNone)
	}
	st, err := store.New(store.Options{})
	if err == nil {
		_, err = st.Apply(cfg, store.SourceInfo{Source: "compose-seed"})
	}
	if err != nil {
		c.errf(seedDir, "store: %v", err)
	} else if len(st.Read().Pool(documentedModel).Entries) == 0 {
		c.errf(seedDir, "no enabled key serves %s, the documented curl's model", documentedModel)
	}
}

// ---- examples/k8s ----

func (c *checker) checkK8s() {
	files, err := c.t.list(k8sDir)
	if err != nil {
		c.errf(k8sDir, "%v", err)
		return
	}
	var objs []*k8sObject
	var kustomized []string
	var yamlFiles []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".yaml") {
			continue
		}
		data, err := c.t.read(f)
		if err != nil {
			c.errf(f, "%v", err)
			continue
		}
		docs, err := parseManifests(f, data)
		if err != nil {
			c.errf(f, "%v", err)
			continue
		}
		for _, o := range docs {
			if o.Kind == "Kustomization" {
				for _, r := range o.Resources {
					kustomized = append(kustomized, path.Join(k8sDir, r))
				}
				continue
			}
			objs = append(objs, o)
			if !slices.Contains(yamlFiles, f) {
				yamlFiles = append(yamlFiles, f)
			}
		}
	}
	for _, f := range yamlFiles {
		if !slices.Contains(kustomized, f) {
			c.errf(f, "not listed in %s/kustomization.yaml's resources", k8sDir)
		}
	}
	find := func(kind, name string) *k8sObject {
		for _, o := range objs {
			if o.Kind == kind && (name == "" || o.Metadata.Name == name) {
				return o
			}
		}
		return nil
	}

	// The ConfigMap carries envoy/envoy-unix.yaml, byte for byte.
	cm := find("ConfigMap", configMapName)
	if cm == nil {
		c.errf(k8sDir, "no ConfigMap %s", configMapName)
		return
	}
	unix, err := c.t.read(envoyUnixPath)
	if err != nil {
		c.errf(envoyUnixPath, "%v", err)
		return
	}
	embedded := cm.Data[configMapKey]
	if embedded != string(unix) {
		c.errf(cm.File, "ConfigMap %s's %s differs from %s (regenerate: go test ./deploy/ -run ConfigMap -update)", configMapName, configMapKey, envoyUnixPath)
	}
	b := c.envoyFromBytes(cm.File+": "+configMapKey, []byte(embedded))
	if b == nil {
		return
	}
	cl := cluster(b, extprocCluster)
	var pipe string
	if cl != nil {
		if a := endpoints(cl); len(a) == 1 {
			pipe = a[0].GetPipe().GetPath()
		}
	}
	if pipe == "" {
		c.errf(cm.File, "%s: cluster %s has no single pipe endpoint", configMapKey, extprocCluster)
		return
	}

	dep := find("Deployment", "")
	if dep == nil {
		c.errf(k8sDir, "no Deployment")
		return
	}
	var ds deploymentSpec
	if err := jsonUnmarshal(dep.Spec, &ds); err != nil {
		c.errf(dep.File, "Deployment %s: %v", dep.Metadata.Name, err)
		return
	}
	pod := &ds.Template.Spec
	var km, ev *k8sContainer
	for i := range pod.Containers {
		ct := &pod.Containers[i]
		switch ct.Name {
		case "keymux":
			km = ct
		case "envoy":
			ev = ct
		}
		if why := pinned(ct.Image); why != "" {
			c.errf(dep.File, "container %s: image %s %s", ct.Name, ct.Image, why)
		}
		for _, r := range []string{"cpu", "memory"} {
			if ct.Resources.Requests[r] == "" {
				c.errf(dep.File, "container %s: no resources.requests.%s", ct.Name, r)
			}
		}
		if !nonRoot(pod.SecurityContext, ct.SecurityContext) {
			c.errf(dep.File, "container %s: not forced non-root (securityContext.runAsNonRoot: true, runAsUser != 0)", ct.Name)
		}
	}
	if km == nil || ev == nil {
		c.errf(dep.File, "Deployment %s: want containers keymux and envoy", dep.Metadata.Name)
		return
	}
	volumes := map[string]k8sVolume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}

	// Socket: keymux's --grpc unix:PATH = the ConfigMap's pipe; its folder = the shared emptyDir.
	args, err := c.flags.parseArgs(km.Args)
	if err != nil {
		c.errf(dep.File, "container keymux: args %q: %v", km.Args, err)
		return
	}
	sock, ok := strings.CutPrefix(args["grpc"], "unix:")
	if !ok {
		c.errf(dep.File, "container keymux: --grpc %q, want unix:%s", args["grpc"], pipe)
	} else if sock != pipe {
		c.errf(dep.File, "container keymux: --grpc unix:%s, but the Envoy ConfigMap's %s pipe is %s", sock, extprocCluster, pipe)
	}
	shared := ""
	for _, m := range km.VolumeMounts {
		if m.MountPath == path.Dir(sock) {
			shared = m.Name
		}
	}
	switch {
	case shared == "":
		c.errf(dep.File, "container keymux: no volume mounted at %s (the socket's folder)", path.Dir(sock))
	case volumes[shared].EmptyDir == nil:
		c.errf(dep.File, "volume %s (the socket's folder) is not an emptyDir", shared)
	case ev.mountPath(shared) != path.Dir(pipe):
		c.errf(dep.File, "container envoy: mounts volume %s at %q, but its bootstrap's socket is %s", shared, ev.mountPath(shared), pipe)
	}
	// keymux creates the socket 0660: Envoy must be in its group.
	if g := pod.SecurityContext; (g == nil || g.FSGroup == nil) && gid(pod.SecurityContext, km.SecurityContext) != gid(pod.SecurityContext, ev.SecurityContext) {
		c.errf(dep.File, "keymux and envoy share no group (no pod fsGroup, different runAsGroup): Envoy cannot open the 0660 socket")
	}

	// Envoy reads the ConfigMap's key through its -c path.
	cfg := argAfter(append(slices.Clone(ev.Command), ev.Args...), "-c")
	var cmVol string
	for n, v := range volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == configMapName {
			cmVol = n
		}
	}
	if cmVol == "" || ev.mountPath(cmVol) == "" {
		c.errf(dep.File, "container envoy: ConfigMap %s is not mounted", configMapName)
	} else if want := path.Join(ev.mountPath(cmVol), configMapKey); cfg != want || len(volumes[cmVol].ConfigMap.Items) > 0 {
		c.errf(dep.File, "container envoy: -c %q, want %q (ConfigMap %s key %s)", cfg, want, configMapName, configMapKey)
	}

	// Envoy's listener port = its containerPort = the Service's target.
	lport := c.listenerPort(cm.File, b)
	envoyPort := ""
	for _, p := range ev.Ports {
		if p.ContainerPort == lport {
			envoyPort = p.Name
		}
	}
	if envoyPort == "" {
		c.errf(dep.File, "container envoy: no containerPort %d (the listener %s)", lport, listenerName)
	}
	if svc := find("Service", ""); svc != nil {
		var ss serviceSpec
		if err := jsonUnmarshal(svc.Spec, &ss); err != nil {
			c.errf(svc.File, "Service %s: %v", svc.Metadata.Name, err)
		} else {
			for _, p := range ss.Ports {
				if ev.resolvePort(p.TargetPort) != lport {
					c.errf(svc.File, "Service %s port %d: targetPort %s is not Envoy's listener port %d", svc.Metadata.Name, p.Port, p.TargetPort, lport)
				}
			}
			for k, v := range ss.Selector {
				if ds.Template.Metadata.Labels[k] != v {
					c.errf(svc.File, "Service %s: selector %s=%s matches no label of the Deployment's pods", svc.Metadata.Name, k, v)
				}
			}
		}
	} else {
		c.errf(k8sDir, "no Service")
	}

	// Probes: /readyz and /healthz on keymux's --admin port, which the kubelet can reach.
	admin := args["admin"]
	if admin == "" {
		admin = c.flags.Defaults["admin"]
	}
	ah, ap := hostPort(admin)
	if isLoopback(ah) {
		c.errf(dep.File, "container keymux: --admin %s is loopback: the kubelet's probes cannot reach it", admin)
	}
	for _, p := range []struct {
		name, path string
		probe      *probe
	}{{"readinessProbe", "/readyz", km.ReadinessProbe}, {"livenessProbe", "/healthz", km.LivenessProbe}} {
		switch {
		case p.probe == nil || p.probe.HTTPGet == nil:
			c.errf(dep.File, "container keymux: no httpGet %s", p.name)
		case p.probe.HTTPGet.Path != p.path || km.resolvePort(p.probe.HTTPGet.Port) != ap:
			c.errf(dep.File, "container keymux: %s GET %s on port %s, want %s on the admin port %d",
				p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path, ap)
		}
	}
	if dir := args["state-dir"]; dir != "" && km.mountPath(stateVolume(km, dir)) != dir {
		c.errf(dep.File, "container keymux: --state-dir %s is not a mounted volume (the root filesystem is read-only)", dir)
	}

	// Consul's address from the environment: env or a ConfigMap the manifests define.
	hasConsul := false
	for _, e := range km.Env {
		hasConsul = hasConsul || e.Name == "CONSUL_HTTP_ADDR" && e.Value != ""
	}
	for _, ef := range km.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		ecm := find("ConfigMap", ef.ConfigMapRef.Name)
		if ecm == nil {
			c.errf(dep.File, "container keymux: envFrom ConfigMap %s is not in %s", ef.ConfigMapRef.Name, k8sDir)
			continue
		}
		for k := range ecm.Data {
			hasConsul = hasConsul || k == "CONSUL_HTTP_ADDR"
			if _, ok := c.flags.envFlag(k); strings.HasPrefix(k, "KEYMUX_") && !ok {
				c.errf(ecm.File, "ConfigMap %s: %s matches no keymux serve flag", ecm.Metadata.Name, k)
			}
		}
	}
	if !hasConsul {
		c.errf(dep.File, "container keymux: CONSUL_HTTP_ADDR is set neither in env nor through an envFrom ConfigMap")
	}
	if args["consul"] != "true" {
		c.errf(dep.File, "container keymux: args %q do not select the Consul source (--consul)", km.Args)
	}
}

func stateVolume(ct *k8sContainer, dir string) string {
	for _, m := range ct.VolumeMounts {
		if m.MountPath == dir {
			return m.Name
		}
	}
	return ""
}

// nonRoot reports whether a container is forced to run as non-root.
func nonRoot(pod, ct *securityContext) bool {
	var nr *bool
	var uid *int64
	for _, s := range []*securityContext{pod, ct} {
		if s == nil {
			continue
		}
		if s.RunAsNonRoot != nil {
			nr = s.RunAsNonRoot
		}
		if s.RunAsUser != nil {
			uid = s.RunAsUser
		}
	}
	return nr != nil && *nr && (uid == nil || *uid != 0)
}

func gid(pod, ct *securityContext) int64 {
	g := int64(-1)
	for _, s := range []*securityContext{pod, ct} {
		if s != nil && s.RunAsGroup != nil {
			g = *s.RunAsGroup
		}
	}
	return g
}

func jsonUnmarshal(raw []byte, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return fmt.Errorf("no spec")
	}
	return json.Unmarshal(raw, v)
}
