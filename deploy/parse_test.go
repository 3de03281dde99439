package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/keymux/keymux/cmd/keymux/app"
)

// ---- docker-compose.yml (the subset keymux's file uses; map forms only) ----

type composeFile struct {
	Services map[string]*composeService `json:"services"`
	Volumes  map[string]any             `json:"volumes"`
}

type composeService struct {
	Image       string                      `json:"image"`
	Build       *composeBuild               `json:"build"`
	Command     []string                    `json:"command"`
	Entrypoint  []string                    `json:"entrypoint"`
	Environment map[string]string           `json:"environment"`
	Ports       []string                    `json:"ports"`
	Volumes     []string                    `json:"volumes"`
	DependsOn   map[string]composeDependsOn `json:"depends_on"`
	Healthcheck *composeHealthcheck         `json:"healthcheck"`
	User        string                      `json:"user"`
	GroupAdd    []any                       `json:"group_add"`
}

type composeBuild struct {
	Context    string            `json:"context"`
	Dockerfile string            `json:"dockerfile"`
	Target     string            `json:"target"`
	Args       map[string]string `json:"args"`
}

type composeDependsOn struct {
	Condition string `json:"condition"`
}

type composeHealthcheck struct {
	Test []string `json:"test"`
}

func parseCompose(data []byte) (*composeFile, error) {
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	if len(c.Services) == 0 {
		return nil, errors.New("no services")
	}
	return &c, nil
}

// portMapping is one entry of a service's short-syntax `ports`.
type portMapping struct {
	HostIP        string
	HostPort      int // 0 = not published on a fixed host port
	ContainerPort int
	Raw           string
}

// parsePort reads "[HOST_IP:]HOST:CONTAINER[/PROTO]" or "CONTAINER".
func parsePort(s string) (portMapping, error) {
	pm := portMapping{Raw: s}
	spec, _, _ := strings.Cut(s, "/")
	parts := strings.Split(spec, ":")
	var err error
	switch len(parts) {
	case 1:
		pm.ContainerPort, err = strconv.Atoi(parts[0])
	case 2, 3:
		if len(parts) == 3 {
			pm.HostIP = parts[0]
		}
		if pm.HostPort, err = strconv.Atoi(parts[len(parts)-2]); err == nil {
			pm.ContainerPort, err = strconv.Atoi(parts[len(parts)-1])
		}
	default:
		err = errors.New("want [HOST_IP:]HOST:CONTAINER")
	}
	if err != nil {
		return pm, fmt.Errorf("port %q: %v", s, err)
	}
	return pm, nil
}

// volumeMount is one entry of a service's short-syntax `volumes`.
type volumeMount struct{ Source, Target string }

func parseVolume(s string) volumeMount {
	parts := strings.Split(s, ":")
	if len(parts) == 1 {
		return volumeMount{Target: parts[0]}
	}
	return volumeMount{Source: parts[0], Target: parts[1]}
}

// ---- Dockerfile ----

type dockerStage struct {
	Index      int
	Image      string // FROM argument
	Name       string // AS name ("" if none)
	Expose     []int
	User       string
	Entrypoint []string
	Cmd        []string
	Env        map[string]string
	Runs       []string
	Copies     []string // COPY arguments
}

type dockerfile struct {
	Stages []*dockerStage
	Text   string
}

func (d *dockerfile) stage(name string) *dockerStage {
	for _, s := range d.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// parseDockerfile reads the instructions keymux's Dockerfile uses (line
// continuations joined, comments and parser directives dropped).
func parseDockerfile(data []byte) (*dockerfile, error) {
	d := &dockerfile{Text: string(data)}
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if body, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, errors.New("dangling line continuation at end of file")
	}
	var st *dockerStage
	for _, line := range lines {
		instr, args, _ := strings.Cut(line, " ")
		args = strings.TrimSpace(args)
		instr = strings.ToUpper(instr)
		if instr == "FROM" {
			f := strings.Fields(args)
			if len(f) == 0 {
				return nil, errors.New("FROM without an image")
			}
			st = &dockerStage{Index: len(d.Stages), Image: f[0], Env: map[string]string{}}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			}
			d.Stages = append(d.Stages, st)
			continue
		}
		if st == nil {
			if instr == "ARG" {
				continue
			}
			return nil, fmt.Errorf("%s before the first FROM", instr)
		}
		switch instr {
		case "EXPOSE":
			for _, p := range strings.Fields(args) {
				p, _, _ = strings.Cut(p, "/")
				n, err := strconv.Atoi(p)
				if err != nil {
					return nil, fmt.Errorf("EXPOSE %q: %v", p, err)
				}
				st.Expose = append(st.Expose, n)
			}
		case "COPY":
			st.Copies = append(st.Copies, args)
		case "USER":
			st.User = args
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(args), &v); err != nil {
				return nil, fmt.Errorf("%s must use the exec (JSON) form: %v", instr, err)
			}
			if instr == "CMD" {
				st.Cmd = v
			} else {
				st.Entrypoint = v
			}
		case "ENV":
			for _, kv := range strings.Fields(args) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("ENV %q: want KEY=VALUE", kv)
				}
				st.Env[k] = v
			}
		case "RUN":
			st.Runs = append(st.Runs, args)
		}
	}
	if len(d.Stages) == 0 {
		return nil, errors.New("no FROM")
	}
	return d, nil
}

// imageRef splits "registry/repo:tag@digest" into the repository, tag and digest.
func imageRef(ref string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

// pinned reports why an image reference is not pinned ("" when it is).
func pinned(ref string) string {
	_, tag, digest := imageRef(ref)
	switch {
	case digest != "":
		return ""
	case tag == "":
		return "has no tag (pin a version)"
	case tag == "latest":
		return `uses the floating tag "latest" (pin a version)`
	}
	return ""
}

// ---- Kubernetes manifests (small local structs, no k8s.io dependency) ----

type k8sObject struct {
	File       string            `json:"-"`
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   k8sMeta           `json:"metadata"`
	Data       map[string]string `json:"data"`
	Spec       json.RawMessage   `json:"spec"`
	Resources  []string          `json:"resources"` // Kustomization
}

type k8sMeta struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

type deploymentSpec struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	Template struct {
		Metadata k8sMeta `json:"metadata"`
		Spec     podSpec `json:"spec"`
	} `json:"template"`
}

type podSpec struct {
	SecurityContext *securityContext `json:"securityContext"`
	Volumes         []k8sVolume      `json:"volumes"`
	Containers      []k8sContainer   `json:"containers"`
}

type securityContext struct {
	RunAsNonRoot *bool  `json:"runAsNonRoot"`
	RunAsUser    *int64 `json:"runAsUser"`
	RunAsGroup   *int64 `json:"runAsGroup"`
	FSGroup      *int64 `json:"fsGroup"`
}

type k8sVolume struct {
	Name     string `json:"name"`
	EmptyDir *struct {
		Medium string `json:"medium"`
	} `json:"emptyDir"`
	ConfigMap *struct {
		Name  string `json:"name"`
		Items []struct {
			Key  string `json:"key"`
			Path string `json:"path"`
		} `json:"items"`
	} `json:"configMap"`
}

type k8sContainer struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `json:"name"`
		} `json:"configMapRef"`
		SecretRef *struct {
			Name string `json:"name"`
		} `json:"secretRef"`
	} `json:"envFrom"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	ReadinessProbe *probe `json:"readinessProbe"`
	LivenessProbe  *probe `json:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `json:"requests"`
		Limits   map[string]string `json:"limits"`
	} `json:"resources"`
	SecurityContext *securityContext `json:"securityContext"`
	VolumeMounts    []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `json:"path"`
		Port intOrString `json:"port"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port intOrString `json:"port"`
	} `json:"tcpSocket"`
}

type serviceSpec struct {
	Selector map[string]string `json:"selector"`
	Ports    []struct {
		Name       string      `json:"name"`
		Port       int         `json:"port"`
		TargetPort intOrString `json:"targetPort"`
	} `json:"ports"`
}

// intOrString is a Kubernetes port reference: a number or a port name.
type intOrString struct {
	Int  int
	Name string
}

func (p *intOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &p.Name)
	}
	return json.Unmarshal(b, &p.Int)
}

func (p intOrString) String() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(p.Int)
}

// resolvePort turns a port reference into a number using the container's named ports.
func (c *k8sContainer) resolvePort(p intOrString) int {
	if p.Name == "" {
		return p.Int
	}
	for _, cp := range c.Ports {
		if cp.Name == p.Name {
			return cp.ContainerPort
		}
	}
	return 0
}

func (c *k8sContainer) mountPath(volume string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	return ""
}

// parseManifests splits a multi-document YAML file and decodes each document.
func parseManifests(file string, data []byte) ([]*k8sObject, error) {
	var out []*k8sObject
	docs := regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1)
	for i, doc := range docs {
		var probe map[string]any
		if err := yaml.Unmarshal([]byte(doc), &probe); err != nil {
			return nil, fmt.Errorf("document %d: %v", i+1, err)
		}
		if len(probe) == 0 {
			continue // comments only
		}
		o := &k8sObject{File: file}
		if err := yaml.Unmarshal([]byte(doc), o); err != nil {
			return nil, fmt.Errorf("document %d: %v", i+1, err)
		}
		if o.Kind == "" {
			return nil, fmt.Errorf("document %d: no kind", i+1)
		}
		out = append(out, o)
	}
	return out, nil
}

// ---- keymux's command line ----

// keymuxFlags are the flags of `keymux serve` and their defaults, read from
// the binary's own help so the checks follow the code.
type keymuxFlags struct {
	Defaults map[string]string // flag name → default ("" when none)
	Bool     map[string]bool   // flags that take no value
}

var helpFlagRE = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)( \w+)?\n\s+.*?(?:\(default "([^"]*)"\))?$`)

func serveFlags() (keymuxFlags, error) {
	var stdout, stderr bytes.Buffer
	err := app.Run(context.Background(), []string{"serve", "-h"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		return keymuxFlags{}, fmt.Errorf("keymux serve -h: %v", err)
	}
	f := keymuxFlags{Defaults: map[string]string{}, Bool: map[string]bool{}}
	for _, m := range helpFlagRE.FindAllStringSubmatch(stderr.String(), -1) {
		f.Defaults[m[1]] = m[3]
		f.Bool[m[1]] = m[2] == ""
	}
	if f.Defaults["grpc"] == "" || f.Defaults["admin"] == "" {
		return f, fmt.Errorf("keymux serve -h: no default for --grpc/--admin in:\n%s", stderr.String())
	}
	return f, nil
}

// envFlag maps a KEYMUX_* variable back to its flag name.
func (f keymuxFlags) envFlag(env string) (string, bool) {
	for name := range f.Defaults {
		if app.EnvName(name) == env {
			return name, true
		}
	}
	return "", false
}

// parseArgs reads `serve` flags from a container's args ("--name value" or
// "--name=value"); unknown flags are errors.
func (f keymuxFlags) parseArgs(args []string) (map[string]string, error) {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			if i == 0 && a == "serve" {
				continue
			}
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := f.Defaults[name]; !ok {
			return nil, fmt.Errorf("unknown flag %q", a)
		}
		if !hasVal {
			if f.Bool[name] {
				val = "true"
			} else if i+1 < len(args) {
				i++
				val = args[i]
			} else {
				return nil, fmt.Errorf("flag %q needs a value", a)
			}
		}
		out[name] = val
	}
	return out, nil
}

// hostPort splits a host:port address; port 0 on error.
func hostPort(addr string) (string, int) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
