package extproc

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/keymux/keymux/policy"
)

func TestMatchRoute(t *testing.T) {
	tests := []struct {
		method, path string
		op           string // operation path, "" = refused
		modelID      string
		query        string
		status       int
	}{
		{"POST", "/v1/chat/completions", "/chat/completions", "", "", 0},
		{"POST", "/v1/chat/completions?x=1", "/chat/completions", "", "?x=1", 0},
		{"POST", "/api/openai/v1/embeddings", "/embeddings", "", "", 0},
		{"POST", "/api/openai/embeddings", "/embeddings", "", "", 0},
		{"POST", "/v1/messages", "/messages", "", "", 0},
		{"GET", "/v1/models", "/models", "", "", 0},
		{"GET", "/v1/models/gpt-4o", "/models/", "gpt-4o", "", 0},
		{"GET", "/v1/models/", "", "", "", 404},
		{"GET", "/v1/chat/completions", "", "", "", 405},
		{"POST", "/v1/models", "", "", "", 405},
		{"POST", "/v2/chat/completions", "", "", "", 404},
		{"POST", "/v1/chat/completions/", "", "", "", 404},
		{"POST", "/v1/./chat/completions", "", "", "", 404},
		{"POST", "/v1/chat/../completions", "", "", "", 404},
		{"POST", "/v1/chat%2Fcompletions", "", "", "", 404},
		{"POST", "/v1", "", "", "", 404},
		{"POST", "", "", "", "", 404},
		{"GET", "/v1/files", "/files", "", "", 0},
		{"GET", "/v1/files/file-1", "/files/", "", "", 0},
		{"DELETE", "/v1/files/file-1", "/files/", "", "", 0},
		{"POST", "/v1/files/file-1", "", "", "", 405},
		{"GET", "/v1/responses/resp_1", "/responses/", "", "", 0},
		{"GET", "/v1/batches/b1", "/batches/", "", "", 0},
	}
	for _, tc := range tests {
		r, err := matchRoute(tc.method, tc.path)
		if tc.status != 0 {
			if err == nil || err.Status != tc.status {
				t.Errorf("%s %s: got %+v, want status %d", tc.method, tc.path, err, tc.status)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %+v", tc.method, tc.path, err)
			continue
		}
		if r.op.path != tc.op || r.modelID != tc.modelID || r.query != tc.query {
			t.Errorf("%s %s: got op %q id %q query %q", tc.method, tc.path, r.op.path, r.modelID, r.query)
		}
	}
}

func TestRefuseMethod(t *testing.T) {
	tests := []struct {
		method  string
		message string // "" = accepted
	}{
		{"GET", ""},
		{"POST", ""},
		{"DELETE", ""},
		{"PUT", `method "PUT" is not allowed; keymux accepts DELETE, GET and POST`},
		{"PATCH", `method "PATCH" is not allowed; keymux accepts DELETE, GET and POST`},
		{"get", `method "get" is not allowed; keymux accepts DELETE, GET and POST`},
	}
	for _, tc := range tests {
		err := refuseMethod(tc.method)
		switch {
		case tc.message == "" && err != nil:
			t.Errorf("%s: refused with %+v, want accepted", tc.method, err)
		case tc.message != "" && (err == nil || err.Status != 405 || err.Code != "method_not_allowed" || err.Message != tc.message):
			t.Errorf("%s: got %+v, want 405 method_not_allowed %q", tc.method, err, tc.message)
		}
	}
}

func TestErrorBody(t *testing.T) {
	e := &apiError{Status: 400, Type: typeInvalidRequest, Code: "invalid_type", Param: "model", Message: "bad \"x\"\n"}
	want := `{"error":{"message":"bad \"x\"\n","type":"invalid_request_error","param":"model","code":"invalid_type"}}`
	if got := string(e.body()); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	e = &apiError{Status: 503, Type: typeServer, Message: "m"}
	want = `{"error":{"message":"m","type":"server_error","param":null,"code":null}}`
	if got := string(e.body()); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

// TestOperationsAreEndpoints: the names a client's endpoints list accepts
// (policy.Endpoints) are exactly the proxied operations' names.
func TestOperationsAreEndpoints(t *testing.T) {
	names := []string{opOther.name}
	for _, op := range operations {
		if !op.local && !slices.Contains(names, op.name) {
			names = append(names, op.name)
		}
	}
	slices.Sort(names)
	want := slices.Sorted(slices.Values(policy.Endpoints))
	if !slices.Equal(names, want) {
		t.Fatalf("operations %v, policy.Endpoints %v", names, want)
	}
}

// FuzzRequestHeaders feeds the request-header reading keymux does before any
// decision (method, path, content-length, the affinity header; a client's
// x-jwt-payload is never read) with
// arbitrary values: no panic, a content length of -1 or the digits sent, a
// refusal with 404 or 405 or a route whose path stays below the API prefix;
// an unknown path forwarded only when clean and unknown.
func FuzzRequestHeaders(f *testing.F) {
	f.Add("POST", "/v1/chat/completions?x=1", "12", "session-1", "e30")
	f.Add("GET", "/v1/models/gpt-4o\xff", "", "", "")
	f.Add("DELETE", "/api/openai/v1/files/../models", "99999999999999999999", "\x00", "%%%")
	f.Add("POST", "/v1//chat/completions", "-1", strings.Repeat("a", 70000), strings.Repeat("[", 4096))
	f.Fuzz(func(t *testing.T, method, path, contentLength, affinity, jwt string) {
		h := readRequestHeaders(&corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":method", method), hv(":path", path), hv("content-length", contentLength),
			hv(hdrAffinity, affinity), hv("x-jwt-payload", jwt),
		}})
		if h.method != method || h.path != path || h.affinity != affinity {
			t.Fatalf("headers read as %+v", h)
		}
		if n, err := strconv.ParseInt(contentLength, 10, 64); h.contentLength != -1 && (err != nil || n != h.contentLength || contentLength[0] == '+' || contentLength[0] == '-') {
			t.Fatalf("content-length %q read as %d", contentLength, h.contentLength)
		}
		if o, ok := matchOther(h.method, h.path); ok {
			// unknown_paths: forward takes only clean paths no operation knows.
			if op, _ := lookupOp(o.path); op != nil || !cleanPath(o.path) || o.op != &opOther {
				t.Fatalf("unknown-path route %+v for %q", o, path)
			}
		}
		r, aerr := matchRoute(h.method, h.path)
		if aerr != nil {
			if aerr.Status != 404 && aerr.Status != 405 {
				t.Fatalf("refusal %+v", aerr)
			}
			return
		}
		if r.op == nil || strings.Contains(r.path, "/../") || strings.HasSuffix(r.path, "/..") {
			t.Fatalf("route %+v for %q", r, path)
		}
	})
}
