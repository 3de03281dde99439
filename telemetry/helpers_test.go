package telemetry

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keymux/keymux/testutil/syncbuf"
)

// t0 is the injected "now" of most tests.
var t0 = time.Date(2026, 1, 2, 3, 10, 30, 0, time.UTC)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer = syncbuf.Buffer

func newTel(t *testing.T, cfg Config) *Telemetry {
	t.Helper()
	tel, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(t.Context()) })
	return tel
}

// scrapeText returns the /metrics body.
func scrapeText(t *testing.T, tel *Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: status %d", rec.Code)
	}
	return rec.Body.String()
}

// scrape parses /metrics with the Prometheus text parser into
// `name{k="v",…}` → value; labels sorted, empty values left out; histograms
// and summaries give name_count and name_sum.
func scrape(t *testing.T, tel *Telemetry) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(scrapeText(t, tel)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			ls := labelString(m.GetLabel())
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[name+ls] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name+ls] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"+ls] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"+ls] = m.GetHistogram().GetSampleSum()
			case dto.MetricType_UNTYPED:
				out[name+ls] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

func labelString(lp []*dto.LabelPair) string {
	var parts []string
	for _, l := range lp {
		if l.GetValue() == "" {
			continue
		}
		parts = append(parts, l.GetName()+"="+`"`+l.GetValue()+`"`)
	}
	if len(parts) == 0 {
		return ""
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// series returns the keys of m that belong to family name (exactly name
// followed by "{" or end).
func series(m map[string]float64, name string) []string {
	var out []string
	for k := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func getStats(t *testing.T, tel *Telemetry, query string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.StatsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats"+query, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("/stats%s: content-type %q", query, ct)
	}
	return rec.Code, rec.Body.String()
}

// jsonEqual compares two JSON documents structurally.
func jsonEqual(t *testing.T, what, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("%s: bad JSON %v: %s", what, err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad expected JSON %v", what, err)
	}
	gb, _ := json.MarshalIndent(g, "", "  ")
	wb, _ := json.MarshalIndent(w, "", "  ")
	if !bytes.Equal(gb, wb) {
		t.Errorf("%s:\n got %s\nwant %s", what, gb, wb)
	}
}

func jsonLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}
