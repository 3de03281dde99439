package deploy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// The compose stack's monitoring: Prometheus scrapes keymux, Grafana shows
// examples/grafana/keymux.json over that Prometheus.
const (
	svcPrometheus         = "prometheus"
	svcGrafana            = "grafana"
	dashboardPath         = "examples/grafana/keymux.json"
	prometheusDefaultCfg  = "/etc/prometheus/prometheus.yml" // the image's default --config.file
	prometheusDefaultPort = 9090
	grafanaProvisioning   = "/etc/grafana/provisioning" // the image's default GF_PATHS_PROVISIONING
	dashboardDatasource   = "prometheus"                // the data source type the dashboard asks for
)

// prometheusConfig is the part of a Prometheus configuration file checked.
type prometheusConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		MetricsPath   string `json:"metrics_path"`
		Scheme        string `json:"scheme"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

// grafanaDatasources is a Grafana data source provisioning file.
type grafanaDatasources struct {
	Datasources []struct {
		Name string `json:"name"`
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"datasources"`
}

// grafanaProviders is a Grafana dashboard provisioning file.
type grafanaProviders struct {
	Providers []struct {
		Name    string `json:"name"`
		Type    string `json:"type"`
		Options struct {
			Path string `json:"path"`
		} `json:"options"`
	} `json:"providers"`
}

// checkMounts: every bind mount from the repository names a file or folder
// that exists.
func (c *checker) checkMounts(name string, s *composeService) {
	for _, v := range s.Volumes {
		m := parseVolume(v)
		if !strings.HasPrefix(m.Source, ".") {
			continue // a named volume
		}
		if _, err := c.t.list(repoPath(m.Source)); err != nil {
			c.errf(composePath, "service %s: mounts %s, which is not in the repository", name, m.Source)
		}
	}
}

func repoPath(src string) string { return strings.TrimPrefix(path.Clean(src), "./") }

// mounted maps a path inside service s's container to the repository file
// or folder a bind mount puts there ("" when none does).
func mounted(s *composeService, target string) string {
	target = path.Clean(target)
	best, rel := "", ""
	for _, v := range s.Volumes {
		m := parseVolume(v)
		t := path.Clean(m.Target)
		if !strings.HasPrefix(m.Source, ".") || (t != target && !strings.HasPrefix(target, t+"/")) || len(t) < len(best) {
			continue
		}
		best, rel = t, path.Join(repoPath(m.Source), strings.TrimPrefix(target, t))
	}
	return rel
}

// composePrometheus checks the Prometheus service: its configuration is a
// repository file that scrapes keymux's admin port and loads rule files that
// are mounted too. It returns the port Prometheus listens on.
func (c *checker) composePrometheus(s *composeService, ports []portMapping, adminPort int) int {
	port := prometheusDefaultPort
	if addr := argAfter(s.Command, "--web.listen-address"); addr != "" {
		if _, port = hostPort(addr); port == 0 {
			c.errf(composePath, "service %s: --web.listen-address %q: want host:port", svcPrometheus, addr)
		}
	}
	for _, pm := range ports {
		if pm.ContainerPort != port {
			c.errf(composePath, "service %s: publishes %q, Prometheus listens on %d", svcPrometheus, pm.Raw, port)
		}
	}
	cfgPath := argAfter(s.Command, "--config.file")
	if cfgPath == "" {
		cfgPath = prometheusDefaultCfg
	}
	rel := mounted(s, cfgPath)
	if rel == "" {
		c.errf(composePath, "service %s: its --config.file %s is not mounted from the repository", svcPrometheus, cfgPath)
		return port
	}
	data, err := c.t.read(rel)
	if err != nil {
		c.errf(composePath, "service %s: --config.file %s: %v", svcPrometheus, cfgPath, err)
		return port
	}
	var cfg prometheusConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		c.errf(rel, "%v", err)
		return port
	}
	want := svcKeymux + ":" + strconv.Itoa(adminPort)
	var targets []string
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
			scheme, mp := cmp.Or(sc.Scheme, "http"), cmp.Or(sc.MetricsPath, "/metrics")
			if slices.Contains(st.Targets, want) && (scheme != "http" || mp != "/metrics") {
				c.errf(rel, "job %s scrapes %s://%s%s, keymux serves http://%s/metrics", sc.JobName, scheme, want, mp, want)
			}
		}
	}
	if !slices.Contains(targets, want) {
		c.errf(rel, "scrape targets %v do not include %s (keymux's admin port)", targets, want)
	}
	if len(cfg.RuleFiles) == 0 {
		c.errf(rel, "no rule_files: the alert rules of examples/prometheus/ are not loaded")
	}
	for _, rf := range cfg.RuleFiles {
		in := rf
		if !path.IsAbs(in) {
			in = path.Join(path.Dir(cfgPath), rf) // relative to the configuration file
		}
		if r := mounted(s, in); r == "" {
			c.errf(rel, "rule file %s (%s in the container) is not mounted from the repository", rf, in)
		} else if _, err := c.t.read(r); err != nil {
			c.errf(rel, "rule file %s: %s is not in the repository", rf, r)
		}
	}
	if s.DependsOn[svcKeymux].Condition == "" {
		c.errf(composePath, "service %s: does not depend on %s", svcPrometheus, svcKeymux)
	}
	return port
}

// composeGrafana checks the Grafana service: its provisioning folder is
// mounted from the repository, its Prometheus data source is the prometheus
// service, and a dashboard provider loads the folder keymux.json is mounted in.
func (c *checker) composeGrafana(s *composeService, promPort int) {
	prov := s.Environment["GF_PATHS_PROVISIONING"]
	if prov == "" {
		prov = grafanaProvisioning
	}
	dir := mounted(s, prov)
	if dir == "" {
		c.errf(composePath, "service %s: nothing of the repository is mounted at its provisioning folder %s", svcGrafana, prov)
		return
	}
	files, err := c.t.list(dir)
	if err != nil {
		c.errf(composePath, "service %s: provisioning folder %s: %v", svcGrafana, dir, err)
		return
	}
	wantURL := fmt.Sprintf("http://%s:%d", svcPrometheus, promPort)
	var datasource, provider bool
	for _, f := range files {
		if !strings.HasSuffix(f, ".yaml") && !strings.HasSuffix(f, ".yml") {
			continue
		}
		data, err := c.t.read(f)
		if err != nil {
			c.errf(f, "%v", err)
			continue
		}
		switch path.Base(path.Dir(f)) {
		case "datasources":
			var ds grafanaDatasources
			if err := yaml.Unmarshal(data, &ds); err != nil {
				c.errf(f, "%v", err)
				continue
			}
			for _, d := range ds.Datasources {
				if d.Type != dashboardDatasource {
					continue
				}
				datasource = true
				if u, err := url.Parse(d.URL); err != nil || u.Scheme+"://"+u.Host != wantURL {
					c.errf(f, "data source %s: url %q, want the compose Prometheus %s", d.Name, d.URL, wantURL)
				}
			}
		case "dashboards":
			var dp grafanaProviders
			if err := yaml.Unmarshal(data, &dp); err != nil {
				c.errf(f, "%v", err)
				continue
			}
			for _, p := range dp.Providers {
				if r := mounted(s, path.Join(p.Options.Path, path.Base(dashboardPath))); p.Type == "file" && r == dashboardPath {
					provider = true
				}
			}
		}
	}
	if !datasource {
		c.errf(dir, "no %s data source (the dashboard needs one)", dashboardDatasource)
	}
	if !provider {
		c.errf(dir, "no file dashboard provider whose options.path holds %s (as mounted in service %s)", dashboardPath, svcGrafana)
	}
	c.checkDashboardDatasource()
}

// checkDashboardDatasource: the dashboard's data source variable asks for
// the type the compose stack provisions.
func (c *checker) checkDashboardDatasource() {
	data, err := c.t.read(dashboardPath)
	if err != nil {
		c.errf(dashboardPath, "%v", err)
		return
	}
	var d struct {
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		c.errf(dashboardPath, "%v", err)
		return
	}
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			if q := strings.Trim(string(v.Query), `"`); q != dashboardDatasource {
				c.errf(dashboardPath, "variable %s: data source type %q, want %q", v.Name, q, dashboardDatasource)
			}
			return
		}
	}
	c.errf(dashboardPath, "no data source variable")
}
