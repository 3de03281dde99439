package policy

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestQueryParam(t *testing.T) {
	for _, tc := range []struct {
		query, value string
		ok           bool
		err          string
	}{
		{"", "", false, ""},
		{"?", "", false, ""},
		{"?model=gpt-4o-realtime", "gpt-4o-realtime", true, ""},
		{"model=a%2Fb", "a/b", true, ""},
		{"?x=1&MODEL=m&&y", "m", true, ""},
		{"?mo%64el=m", "m", true, ""},
		{"?model=", "", true, ""},
		{"?model=a&model=b", "", false, "malformed query: query parameter model appears more than once"},
		{"?model=a&Model=b", "", false, "malformed query: query parameter model appears more than once"},
		{"?model=%zz", "", false, "malformed query: query parameter model does not decode"},
		{"?%zz=1&model=a", "", false, "malformed query: a query parameter name does not decode"},
		{"?models=a", "", false, ""},
	} {
		v, ok, err := QueryParam(tc.query, "model")
		if tc.err != "" {
			if err == nil || err.Error() != tc.err || !errors.Is(err, ErrQuery) {
				t.Errorf("QueryParam(%q) error = %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil || v != tc.value || ok != tc.ok {
			t.Errorf("QueryParam(%q) = %q, %v, %v; want %q, %v", tc.query, v, ok, err, tc.value, tc.ok)
		}
	}
}

func TestWithQueryParam(t *testing.T) {
	for _, tc := range []struct{ query, value, want string }{
		{"", "m", "?model=m"},
		{"?model=gpt-4", "gpt-4o-mini", "?model=gpt-4o-mini"},
		{"?a=1&model=x&b=%20", "y z", "?a=1&model=y+z&b=%20"},
		{"?MODEL=x&a=1&model=y", "z", "?model=z&a=1"},
		{"?a=1", "m/1", "?a=1&model=m%2F1"},
		{"?%zz=1&a=2", "m", "?a=2&model=m"},
		{"?model=x&a=1", "", "?a=1"},
		{"?model=x", "", ""},
		{"?&&a=1&", "m", "?a=1&model=m"},
	} {
		if got := WithQueryParam(tc.query, "model", tc.value); got != tc.want {
			t.Errorf("WithQueryParam(%q, %q) = %q, want %q", tc.query, tc.value, got, tc.want)
		}
	}
}

func TestShapeRealtime(t *testing.T) {
	openai := &Key{Provider: ProviderOpenAI, Secret: "sk-1"}
	azure := &Key{Provider: ProviderAzure, Secret: "az-1", Azure: AzureConfig{APIVersion: "2024-10-01-preview",
		Deployments: map[string]string{"gpt-4o-realtime-preview": "rt-dep"}}}
	r := Request{Path: "/realtime", Query: "?model=gpt-4o-realtime&Model=x&foo=1", Model: "gpt-4o-realtime-preview", QueryModel: true, PerModel: true}
	if got, want := Shape(openai, r).Path, "/realtime?model=gpt-4o-realtime-preview&foo=1"; got != want {
		t.Errorf("openai path = %q, want %q", got, want)
	}
	r.Query = "?model=gpt-4o-realtime&deployment=evil&api-version=1&foo=1"
	if got, want := Shape(azure, r).Path, "/openai/realtime?api-version=2024-10-01-preview&deployment=rt-dep&foo=1"; got != want {
		t.Errorf("azure path = %q, want %q", got, want)
	}
}

// FuzzWithQueryParam: whatever the query, the result names the parameter
// exactly once (or not at all for ""), with the value that decodes back,
// and QueryParam reads it.
func FuzzWithQueryParam(f *testing.F) {
	for _, s := range []string{"", "?model=a", "?MODEL=a&model=b", "?%zz=1&x=%20", "?mo%64el=1&&", "?a=b=c"} {
		f.Add(s, "gpt-4o")
	}
	f.Fuzz(func(t *testing.T, query, value string) {
		_, _, _ = QueryParam(query, "model") // never panics
		out := WithQueryParam(query, "model", value)
		if out != "" && !strings.HasPrefix(out, "?") {
			t.Fatalf("WithQueryParam(%q) = %q: no leading ?", query, out)
		}
		got, ok, err := QueryParam(out, "model")
		if value == "" {
			if ok {
				t.Fatalf("WithQueryParam(%q, \"\") = %q still names model", query, out)
			}
			return
		}
		if err != nil && !strings.Contains(err.Error(), "does not decode") {
			t.Fatalf("QueryParam(%q): %v", out, err)
		}
		if err == nil && (!ok || got != value) {
			t.Fatalf("QueryParam(%q) = %q, %v; want %q", out, got, ok, value)
		}
		if _, perr := url.ParseQuery(strings.TrimPrefix(out, "?")); perr == nil {
			if vs := mustParse(out)["model"]; len(vs) != 1 || vs[0] != value {
				t.Fatalf("url.ParseQuery(%q)[model] = %q, want [%q]", out, vs, value)
			}
		}
	})
}

func mustParse(q string) url.Values {
	v, _ := url.ParseQuery(strings.TrimPrefix(q, "?"))
	return v
}
