package emulator

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/envoy"
)

func hdrs(kv ...string) *headerMap {
	h := &headerMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.add(kv[i], kv[i+1])
	}
	return h
}

func TestRouteMatching(t *testing.T) {
	var rc routev3.RouteConfiguration
	err := envoy.Unmarshal([]byte(`
virtual_hosts:
- name: api
  domains: ["api.example.com", "api.example.com:8080"]
  routes:
  - name: exact
    match: { path: /v1/models }
    route: { cluster: c }
  - name: regex
    match: { safe_regex: { regex: "/v1/items/[0-9]+" } }
    route: { cluster: c }
  - name: sep
    match: { path_separated_prefix: /v2 }
    route: { cluster: c }
  - name: header-inverted
    match:
      prefix: /h
      headers: [{ name: x-a, string_match: { exact: "1" }, invert_match: true }]
    route: { cluster: c }
  - name: header-absent
    match:
      prefix: /h
      headers: [{ name: x-b, present_match: false }]
    route: { cluster: c }
  - name: ci
    match: { prefix: /CI, case_sensitive: false }
    route: { cluster: c }
- name: wild-suffix
  domains: ["*.example.com"]
  routes: [{ name: suffix, match: { prefix: / }, route: { cluster: c } }]
- name: wild-prefix
  domains: ["foo.*"]
  routes: [{ name: prefixdom, match: { prefix: / }, route: { cluster: c } }]
- name: any
  domains: ["*"]
  routes: [{ name: any, match: { prefix: /only }, route: { cluster: c } }]
`), &rc)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := newRouteTable(&rc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		authority, path string
		extra           []string
		want            string // route name, "" = none
	}{
		{"api.example.com", "/v1/models", nil, "exact"},
		{"api.example.com", "/v1/models?x=1", nil, "exact"},
		{"api.example.com", "/v1/models/x", nil, ""},
		{"api.example.com:8080", "/v1/models", nil, "exact"},
		{"API.EXAMPLE.COM", "/v1/models", nil, "exact"},
		{"api.example.com", "/v1/items/42", nil, "regex"},
		{"api.example.com", "/v1/items/42x", nil, ""},
		{"api.example.com", "/v2", nil, "sep"},
		{"api.example.com", "/v2/x", nil, "sep"},
		{"api.example.com", "/v2x", nil, ""},
		{"api.example.com", "/h", []string{"x-a", "2", "x-b", "1"}, "header-inverted"},
		{"api.example.com", "/h", []string{"x-a", "1"}, "header-absent"},
		{"api.example.com", "/h", []string{"x-a", "1", "x-b", "1"}, ""},
		{"api.example.com", "/ci/x", nil, "ci"},
		{"www.example.com", "/anything", nil, "suffix"},
		{"foo.bar", "/anything", nil, "prefixdom"},
		{"other", "/only/x", nil, "any"},
		{"other", "/nope", nil, ""},
	}
	for _, tc := range tests {
		h := hdrs(append([]string{":authority", tc.authority, ":path", tc.path, ":method", "GET"}, tc.extra...)...)
		r := rt.match(h)
		got := ""
		if r != nil {
			got = r.name()
		}
		if got != tc.want {
			t.Errorf("%s%s %v: route %q, want %q", tc.authority, tc.path, tc.extra, got, tc.want)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/v1/chat", "/v1/chat"},
		{"/v1/../admin", "/admin"},
		{"/v1/./chat", "/v1/chat"},
		{"//v1///chat", "/v1/chat"},
		{"/../../x", "/x"},
		{"/a/b/..?q=/../", "/a/?q=/../"},
		{"/a/", "/a/"},
	}
	for _, tc := range tests {
		if got := normalizePath(tc.in, true, true); got != tc.want {
			t.Errorf("normalizePath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAccessLogFormat(t *testing.T) {
	li := &logInfo{
		start:        time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC),
		end:          time.Date(2026, 1, 2, 3, 4, 6, 6_000_000, time.UTC),
		reqHeaders:   hdrs(":method", "POST", ":path", "/v1/x", "user-agent", "ua"),
		respHeaders:  hdrs(":status", "200", "x-r", "rv"),
		status:       200,
		bytesSent:    12,
		upstreamHost: "127.0.0.1:9",
	}
	s, _ := structpb.NewStruct(map[string]any{"key_id": "k1", "n": 3.0, "nested": map[string]any{"a": "b"}})
	li.setMetadata("keymux", s)
	tests := []struct{ format, want string }{
		{"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%", "POST /v1/x 200"},
		{"%REQ(USER-AGENT):1%|%REQ(X-NONE)%|%RESP(X-R)%", "u|-|rv"},
		{"%DYNAMIC_METADATA(keymux:key_id)% %DYNAMIC_METADATA(keymux:n)% %DYNAMIC_METADATA(keymux:nested:a)% %DYNAMIC_METADATA(keymux:missing)% %DYNAMIC_METADATA(other:x)%", "k1 3 b - -"},
		{"[%START_TIME%] %DURATION% %BYTES_SENT% %UPSTREAM_HOST% 100%%", "[2026-01-02T03:04:05.006Z] 1000 12 127.0.0.1:9 100%"},
		{"%START_TIME(%Y/%m/%d %H:%M:%S.%3f)%", "2026/01/02 03:04:05.006"},
	}
	for _, tc := range tests {
		f, err := parseFormat(tc.format)
		if err != nil {
			t.Fatalf("%q: %v", tc.format, err)
		}
		if got := f.format(li); got != tc.want {
			t.Errorf("%q = %q, want %q", tc.format, got, tc.want)
		}
	}
	for _, bad := range []string{"%NOT_A_COMMAND%", "%REQ(X", "%RESPONSE_CODE:x%", "%unterminated"} {
		if _, err := parseFormat(bad); err == nil {
			t.Errorf("parseFormat(%q) accepted", bad)
		}
	}
	jf, err := newJSONFormatter(&structpb.Struct{Fields: map[string]*structpb.Value{
		"status": structpb.NewStringValue("%RESPONSE_CODE%"),
		"key":    structpb.NewStringValue("%DYNAMIC_METADATA(keymux:key_id)%"),
		"none":   structpb.NewStringValue("%DYNAMIC_METADATA(other:x)%"),
		"text":   structpb.NewStringValue("code=%RESPONSE_CODE%"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := jf.format(li), `{"key":"k1","none":null,"status":200,"text":"code=200"}`+"\n"; got != want {
		t.Errorf("json = %q, want %q", got, want)
	}
}

func TestHeaderMapSet(t *testing.T) {
	h := hdrs(":path", "/", "a", "1", "b", "2", "a", "3")
	h.set("a", "x")
	if got := h.values("a"); len(got) != 1 || got[0] != "x" || h.fields[1].key != "a" {
		t.Fatalf("set: %v", h.fields)
	}
	h.add(":authority", "h")
	if h.fields[1].key != ":authority" {
		t.Fatalf("pseudo-header not kept in front: %v", h.fields)
	}
}

// FuzzApplyHeaderMutation: any mutation leaves a map of valid names and
// values, or is refused.
func FuzzApplyHeaderMutation(f *testing.F) {
	f.Add("x-a", "v", "", false, "x-b")
	f.Add(":authority", "h", "v", true, ":path")
	f.Add("bad name", "a\nb", "", false, "host")
	f.Fuzz(func(t *testing.T, key, raw, value string, appendFlag bool, remove string) {
		h := hdrs(":authority", "a", ":path", "/", "x-b", "1")
		m := &extprocsvc.HeaderMutation{
			RemoveHeaders: []string{remove},
			SetHeaders:    []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: key, Value: value, RawValue: []byte(raw)}}},
		}
		if appendFlag {
			m.SetHeaders[0].Append = nil
		}
		for _, c := range []*checker{{}, {allowAllRouting: true, allowEnvoy: true}} {
			hh := h.clone()
			if _, err := applyHeaderMutation(m, hh, false, c, false); err != nil {
				continue
			}
			for _, fl := range hh.fields {
				if !validHeaderName(fl.key) || !validHeaderValue(fl.value) {
					t.Fatalf("invalid entry %q: %q", fl.key, fl.value)
				}
			}
			if !hh.has(":authority") || !hh.has(":path") {
				t.Fatal("a pseudo-header was removed")
			}
		}
	})
}

// FuzzNormalizePath: the result is absolute, has no dot segments, and is a
// fixed point.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/v1/../x", "//a//b", "/a/./b/", "/?q=..", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got := normalizePath(p, true, true)
		path, _, _ := strings.Cut(got, "?")
		if !strings.HasPrefix(path, "/") || strings.Contains(path, "//") {
			t.Fatalf("%q → %q", p, got)
		}
		for _, seg := range strings.Split(path, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q → %q keeps a dot segment", p, got)
			}
		}
		if again := normalizePath(got, true, true); again != got {
			t.Fatalf("not idempotent: %q → %q → %q", p, got, again)
		}
	})
}

// FuzzParseFormat: no panic; a parsed format always renders.
func FuzzParseFormat(f *testing.F) {
	f.Add(defaultLogFormat)
	f.Add("%DYNAMIC_METADATA(keymux:key_id):5% %REQ(a?b)% %%")
	f.Add("%START_TIME(%E3S%s%f)%")
	f.Fuzz(func(t *testing.T, s string) {
		fm, err := parseFormat(s)
		if err != nil {
			return
		}
		_ = fm.format(&logInfo{reqHeaders: hdrs(":path", "/")})
	})
}

// TestBehavioursNotNewerThanEnvoyVersion: the emulator follows EnvoyVersion,
// so no listed behaviour can come from a later release.
func TestBehavioursNotNewerThanEnvoyVersion(t *testing.T) {
	for _, b := range Behaviours {
		if versionLess(EnvoyVersion, b.Since) {
			t.Errorf("behaviour since %s is newer than EnvoyVersion %s: %s", b.Since, EnvoyVersion, b.What)
		}
	}
	if !versionLess("1.33.1", "1.37") || versionLess("1.39", "1.33.1") || versionLess("1.37", "1.37") {
		t.Fatal("versionLess is wrong")
	}
}

// versionLess compares dotted release numbers.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}
