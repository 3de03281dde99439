package emulator

import (
	"net/http"
	"testing"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestRequestHeaderMutation: a processor's request_headers reply, and what
// reaches the upstream (or the client) in Envoy.
func TestRequestHeaderMutation(t *testing.T) {
	allowAll := func(ep *extprocv3.ExternalProcessor) {
		ep.MutationRules = &mutationrulesv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true)}
	}
	tests := []struct {
		name     string
		rules    func(*extprocv3.ExternalProcessor)
		mutation *extprocsvc.HeaderMutation
		status   int
		check    func(t *testing.T, r recorded)
	}{
		{
			name:     "raw_value sets the header",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-a", "1")}),
			status:   200,
			check:    wantHeader("X-A", "1"),
		},
		{
			name:     "value only gives an empty header",
			mutation: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "ignored"}}}),
			status:   200,
			check:    wantHeader("X-A", ""),
		},
		{
			name:     "value and raw_value is an error",
			mutation: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "v", RawValue: []byte("r")}}}),
			status:   500,
		},
		{
			name:     "x-envoy header set is dropped",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-envoy-foo", "1"), setRaw("x-b", "2")}),
			status:   200,
			check:    all(wantNoHeader("X-Envoy-Foo"), wantHeader("X-B", "2")),
		},
		{
			name: "x-envoy header set with allow_envoy",
			rules: func(ep *extprocv3.ExternalProcessor) {
				ep.MutationRules = &mutationrulesv3.HeaderMutationRules{AllowEnvoy: wrapperspb.Bool(true)}
			},
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-envoy-foo", "1")}),
			status:   200,
			check:    wantHeader("X-Envoy-Foo", "1"),
		},
		{
			name: "x-envoy header with disallow_is_error is a 500",
			rules: func(ep *extprocv3.ExternalProcessor) {
				ep.MutationRules = &mutationrulesv3.HeaderMutationRules{DisallowIsError: wrapperspb.Bool(true)}
			},
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-envoy-foo", "1")}),
			status:   500,
		},
		{
			name:     ":authority change dropped without allow_all_routing",
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":authority", "other.example")}),
			status:   200,
			check:    wantHost("emulated.test"),
		},
		{
			name:     ":authority change applied with allow_all_routing",
			rules:    allowAll,
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":authority", "other.example")}),
			status:   200,
			check:    wantHost("other.example"),
		},
		{
			name:     "host change dropped without allow_all_routing",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("host", "other.example")}),
			status:   200,
			check:    wantHost("emulated.test"),
		},
		{
			name:     ":method change dropped without allow_all_routing",
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":method", "DELETE")}),
			status:   200,
			check:    wantMethod("GET"),
		},
		{
			name:     ":method change applied with allow_all_routing",
			rules:    allowAll,
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":method", "DELETE")}),
			status:   200,
			check:    wantMethod("DELETE"),
		},
		{
			name:     ":path change applied by default",
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":path", "/v2/other?x=1")}),
			status:   200,
			check:    wantPath("/v2/other?x=1"),
		},
		{
			name: ":path change dropped with disallow_system",
			rules: func(ep *extprocv3.ExternalProcessor) {
				ep.MutationRules = &mutationrulesv3.HeaderMutationRules{DisallowSystem: wrapperspb.Bool(true)}
			},
			mutation: mut([]*corev3.HeaderValueOption{setRaw(":path", "/v2/other")}),
			status:   200,
			check:    wantPath("/v1/thing"),
		},
		{
			name:     "removing :authority or host is ignored even with allow_all_routing",
			rules:    allowAll,
			mutation: mut(nil, ":authority", "host"),
			status:   200,
			check:    wantHost("emulated.test"),
		},
		{
			name:     "remove then set",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-client", "new")}, "x-client"),
			status:   200,
			check:    wantHeader("X-Client", "new"),
		},
		{
			name:     "remove a client header",
			mutation: mut(nil, "X-Client"),
			status:   200,
			check:    wantNoHeader("X-Client"),
		},
		{
			name:     "append true adds a value",
			mutation: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-client", RawValue: []byte("two")}, Append: wrapperspb.Bool(true)}}),
			status:   200,
			check:    wantHeader("X-Client", "orig", "two"),
		},
		{
			name:     "append unset overwrites; append_action is ignored",
			mutation: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-client", RawValue: []byte("two")}, AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}}),
			status:   200,
			check:    wantHeader("X-Client", "two"),
		},
		{
			name:     "invalid header name is a 500",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("bad name", "1")}),
			status:   500,
		},
		{
			name:     "invalid header value is a 500",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("x-a", "a\nb")}),
			status:   500,
		},
		{
			name:     "keys are lower-cased",
			mutation: mut([]*corev3.HeaderValueOption{setRaw("X-Mixed-Case", "1")}),
			status:   200,
			check:    wantHeader("X-Mixed-Case", "1"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
				return []*extprocsvc.ProcessingResponse{replyWith(req, &extprocsvc.CommonResponse{HeaderMutation: tc.mutation})}
			}))
			ev := start(t, proc.addr, options{extProc: tc.rules})
			res := doHost(t, ev, "GET", "/v1/thing", "emulated.test", map[string]string{"X-Client": "orig"})
			if res.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", res.status, tc.status, res.body)
			}
			if tc.status != 200 {
				if n := len(ev.a.requests()); n != 0 {
					t.Fatalf("upstream got %d requests after a %d", n, tc.status)
				}
				return
			}
			tc.check(t, ev.a.only(t))
		})
	}
}

func doHost(t *testing.T, ev *env, method, path, host string, hdr map[string]string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ev.em.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return roundTrip(t, req)
}

func wantHeader(k string, vals ...string) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		got, ok := r.Header[k]
		if !ok {
			t.Fatalf("upstream header %s missing; headers %v", k, r.Header)
		}
		if len(got) != len(vals) {
			t.Fatalf("upstream header %s = %q, want %q", k, got, vals)
		}
		for i := range vals {
			if got[i] != vals[i] {
				t.Fatalf("upstream header %s = %q, want %q", k, got, vals)
			}
		}
	}
}

func wantNoHeader(k string) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		if v, ok := r.Header[k]; ok {
			t.Fatalf("upstream header %s = %q, want absent", k, v)
		}
	}
}

func wantHost(h string) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		if r.Host != h {
			t.Fatalf("upstream Host %q, want %q", r.Host, h)
		}
	}
}

func wantMethod(m string) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		if r.Method != m {
			t.Fatalf("upstream method %q, want %q", r.Method, m)
		}
	}
}

func wantPath(p string) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		if r.Path != p {
			t.Fatalf("upstream path %q, want %q", r.Path, p)
		}
	}
}

func all(fs ...func(*testing.T, recorded)) func(*testing.T, recorded) {
	return func(t *testing.T, r recorded) {
		t.Helper()
		for _, f := range fs {
			f(t, r)
		}
	}
}
