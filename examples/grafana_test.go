package examples_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"testing"
)

// grafanaPanel is the part of a classic Grafana dashboard panel checked.
type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
}

// panelTypes are the core panel plugins the dashboard may use (no plugin to
// install).
var panelTypes = []string{"row", "timeseries", "stat", "state-timeline", "bargauge", "table"}

var grafanaVarRE = regexp.MustCompile(`\$\{(\w+)\}|\$(\w+)`)

// TestGrafanaDashboard checks grafana/keymux.json as a classic dashboard
// model a current Grafana imports and provisions: identity, layout on the
// 24-column grid without overlaps, unique ids and refIds, every query on the
// data source variable, and every variable a query uses defined. (That each
// query returns data is e2e/dashboard_test.go's job, on a real Prometheus.)
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/keymux.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string         `json:"uid"`
		Title         string         `json:"title"`
		SchemaVersion int            `json:"schemaVersion"`
		ID            *int           `json:"id"`
		Inputs        []any          `json:"__inputs"`
		Panels        []grafanaPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("keymux.json: %v", err)
	}
	if d.UID != "keymux-fleet" || d.Title != "keymux" || d.SchemaVersion < 36 || d.ID != nil || d.Inputs != nil {
		t.Errorf("uid %q title %q schemaVersion %d id %v __inputs %v: want uid keymux-fleet, title keymux, "+
			"schemaVersion >= 36 (data source references by uid), no id and no __inputs (provisioning does not resolve them)",
			d.UID, d.Title, d.SchemaVersion, d.ID, d.Inputs)
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	dsVar := ""
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		t.Fatal("no datasource variable of type prometheus")
	}

	ids := map[int]string{}
	var cells [][24]string // cells[y][x] = the panel there
	queries := 0
	for _, p := range d.Panels {
		if !slices.Contains(panelTypes, p.Type) {
			t.Errorf("panel %q: type %q, want one of %v", p.Title, p.Type, panelTypes)
		}
		if p.Title == "" || p.ID <= 0 || ids[p.ID] != "" {
			t.Errorf("panel %q: id %d (already %q) or no title", p.Title, p.ID, ids[p.ID])
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
			continue
		}
		for len(cells) < g.Y+g.H {
			cells = append(cells, [24]string{})
		}
		overlaps := map[string]bool{}
		for y := g.Y; y < g.Y+g.H; y++ {
			for x := g.X; x < g.X+g.W; x++ {
				if other := cells[y][x]; other != "" && !overlaps[other] {
					overlaps[other] = true
					t.Errorf("panel %q overlaps %q at (%d,%d)", p.Title, other, x, y)
				}
				cells[y][x] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != dsVar {
			t.Errorf("panel %q: datasource %+v, want prometheus %s", p.Title, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			queries++
			if tg.RefID == "" || refs[tg.RefID] || tg.Expr == "" {
				t.Errorf("panel %q: target %q: empty or repeated refId, or no expr", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource == nil || tg.Datasource.UID != dsVar {
				t.Errorf("panel %q %s: datasource %+v, want %s", p.Title, tg.RefID, tg.Datasource, dsVar)
			}
			for _, m := range grafanaVarRE.FindAllStringSubmatch(tg.Expr, -1) {
				if name := m[1] + m[2]; !vars[name] {
					t.Errorf("panel %q %s: variable $%s is not defined", p.Title, tg.RefID, name)
				}
			}
		}
	}
	if queries < 20 {
		t.Errorf("%d queries, want the whole dashboard (20 or more)", queries)
	}
}
