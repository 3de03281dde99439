package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

const badInputConfig = `
settings:
  auth: {mode: client_keys}
  max_body_bytes: 4096
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, models: [gpt-4o, gpt-4o-mini, text-embedding-3-small]}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2, models: [gpt-4o]}
clients:
  a: {name: unrestricted, token_sha256: "` + "{{A}}" + `"}
  b: {name: disabled, token_sha256: "` + "{{B}}" + `", enabled: false}
  c: {name: mini only, token_sha256: "` + "{{C}}" + `", models: [gpt-4o-mini]}
  d: {name: mini and files, token_sha256: "` + "{{D}}" + `", models: [gpt-4o-mini], endpoints: [chat, files]}
`

func TestBadInputTable(t *testing.T) {
	cfg := strings.NewReplacer("{{A}}", sha256hex("km-test-a"), "{{B}}", sha256hex("km-test-b"), "{{C}}", sha256hex("km-test-c"), "{{D}}", sha256hex("km-test-d")).Replace(badInputConfig)
	g := startGateway(t, cfg)
	authA := map[string]string{"authorization": "Bearer km-test-a", "content-type": "application/json"}
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{}
		for a, b := range h {
			out[a] = b
		}
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	const ok = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name         string
		method, path string
		header       map[string]string
		body         string
		status       int
		code         string // "" = a success
	}{
		// Authentication.
		{"no credentials", "POST", "/v1/chat/completions", with(authA, "authorization", ""), ok, 401, "missing_api_key"},
		{"unknown token", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-wrong"), ok, 401, "invalid_api_key"},
		{"basic scheme", "POST", "/v1/chat/completions", with(authA, "authorization", "Basic a206dGVzdA=="), ok, 401, "invalid_api_key"},
		{"empty bearer", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer "), ok, 401, "missing_api_key"},
		{"disabled client", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-test-b"), ok, 401, "invalid_api_key"},
		{"token with spaces", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km test a"), ok, 401, "invalid_api_key"},
		{"x-api-key accepted", "POST", "/v1/chat/completions", with(with(authA, "authorization", ""), "x-api-key", "km-test-a"), ok, 200, ""},
		{"bearer lower-case scheme", "POST", "/v1/chat/completions", with(authA, "authorization", "bearer km-test-a"), ok, 200, ""},
		// Bodies.
		{"truncated json", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o"`, 400, "invalid_json"},
		{"empty body", "POST", "/v1/chat/completions", authA, ``, 400, "invalid_json"},
		{"array body", "POST", "/v1/chat/completions", authA, `[]`, 400, "invalid_json"},
		{"null body", "POST", "/v1/chat/completions", authA, `null`, 400, "invalid_json"},
		{"string body", "POST", "/v1/chat/completions", authA, `"gpt-4o"`, 400, "invalid_json"},
		{"trailing garbage", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o"} x`, 400, "invalid_json"},
		{"not json at all", "POST", "/v1/chat/completions", authA, `model=gpt-4o`, 400, "invalid_json"},
		{"missing model", "POST", "/v1/chat/completions", authA, `{"messages":[]}`, 400, "missing_required_parameter"},
		{"null model", "POST", "/v1/chat/completions", authA, `{"model":null}`, 400, "invalid_type"},
		{"number model", "POST", "/v1/chat/completions", authA, `{"model":4}`, 400, "invalid_type"},
		{"array model", "POST", "/v1/chat/completions", authA, `{"model":["gpt-4o"]}`, 400, "invalid_type"},
		{"object model", "POST", "/v1/chat/completions", authA, `{"model":{"id":"gpt-4o"}}`, 400, "invalid_type"},
		{"bool model", "POST", "/v1/chat/completions", authA, `{"model":true}`, 400, "invalid_type"},
		{"empty model", "POST", "/v1/chat/completions", authA, `{"model":""}`, 400, "invalid_value"},
		{"huge model", "POST", "/v1/chat/completions", authA, `{"model":"` + strings.Repeat("m", 300) + `"}`, 400, "invalid_value"},
		{"duplicate model", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o-mini","model":"gpt-4o"}`, 400, "duplicate_field"},
		{"escaped duplicate model", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}`, 400, "duplicate_field"},
		{"duplicate stream", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","stream":false,"stream":true}`, 400, "duplicate_field"},
		{"model with NUL", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o\u0000"}`, 400, "invalid_value"},
		{"model with newline", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o\nX-Injected: 1"}`, 400, "invalid_value"},
		{"model with a dot-dot segment", "POST", "/v1/chat/completions", authA, `{"model":"../x"}`, 400, "invalid_value"},
		{"string stream", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","stream":"yes"}`, 400, "invalid_type"},
		{"number stream", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","stream":1}`, 400, "invalid_type"},
		{"string messages", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","messages":"hi"}`, 400, "invalid_type"},
		{"object messages", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","messages":{}}`, 400, "invalid_type"},
		{"embeddings without model", "POST", "/v1/embeddings", authA, `{"input":"x"}`, 400, "missing_required_parameter"},
		{"body over the limit", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","pad":"` + strings.Repeat("x", 5000) + `"}`, 413, "request_too_large"},
		// Models.
		{"model not allowed for client", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-test-c"), ok, 403, "model_not_allowed"},
		// Endpoint rights: a client limited to models stays off the shared account's objects.
		{"limited client: its model", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-test-c"), `{"model":"gpt-4o-mini","messages":[]}`, 200, ""},
		{"limited client: list files", "GET", "/v1/files", with(authA, "authorization", "Bearer km-test-c"), ``, 403, "insufficient_permissions"},
		{"limited client: read a file", "GET", "/v1/files/file-abc", with(authA, "authorization", "Bearer km-test-c"), ``, 403, "insufficient_permissions"},
		{"limited client: delete a file", "DELETE", "/v1/files/file-abc", with(authA, "authorization", "Bearer km-test-c"), ``, 403, "insufficient_permissions"},
		{"limited client: batches", "GET", "/v1/batches", with(authA, "authorization", "Bearer km-test-c"), ``, 403, "insufficient_permissions"},
		{"limited client: stored response", "GET", "/v1/responses/resp_abc", with(authA, "authorization", "Bearer km-test-c"), ``, 403, "insufficient_permissions"},
		{"limited client: provider's default model", "POST", "/v1/moderations", with(authA, "authorization", "Bearer km-test-c"), `{"input":"hi"}`, 403, "model_not_allowed"},
		// The mock has no moderations: its own 404 shows the request was
		// forwarded. keymux answers file lists itself (the caller's files).
		{"listed endpoints: files", "GET", "/v1/files", with(authA, "authorization", "Bearer km-test-d"), ``, 200, ""},
		{"listed endpoints: batches not listed", "GET", "/v1/batches", with(authA, "authorization", "Bearer km-test-d"), ``, 403, "insufficient_permissions"},
		{"listed endpoints: embeddings not listed", "POST", "/v1/embeddings", with(authA, "authorization", "Bearer km-test-d"), `{"model":"gpt-4o-mini","input":"x"}`, 403, "insufficient_permissions"},
		{"unrestricted client: files", "GET", "/v1/files", authA, ``, 200, ""},
		{"unrestricted client: default model", "POST", "/v1/moderations", authA, `{"input":"hi"}`, 404, ""},
		{"model no key serves", "POST", "/v1/chat/completions", authA, `{"model":"o1","messages":[]}`, 404, "model_not_found"},
		{"unknown model id", "GET", "/v1/models/o1", authA, ``, 404, "model_not_found"},
		{"model list", "GET", "/v1/models", authA, ``, 200, ""},
		// Methods.
		{"GET on chat", "GET", "/v1/chat/completions", authA, ``, 405, "method_not_allowed"},
		{"PATCH", "PATCH", "/v1/chat/completions", authA, ok, 405, "method_not_allowed"},
		{"OPTIONS", "OPTIONS", "/v1/chat/completions", authA, ``, 405, "method_not_allowed"},
		{"DELETE on models", "DELETE", "/v1/models", authA, ``, 405, "method_not_allowed"},
		{"PUT on embeddings", "PUT", "/v1/embeddings", authA, `{"model":"gpt-4o"}`, 405, "method_not_allowed"},
		// Paths.
		{"other version", "GET", "/v2/models", authA, ``, 404, "unknown_url"},
		{"bare v1", "GET", "/v1/", authA, ``, 404, "unknown_url"},
		{"dot-dot", "POST", "/v1/../admin/chat/completions", authA, ok, 404, "unknown_url"},
		{"encoded dot-dot", "POST", "/v1/%2e%2e/chat/completions", authA, ok, 404, "unknown_url"},
		{"double slash merged by Envoy", "POST", "/v1//chat/completions", authA, ok, 200, ""},
		{"unknown endpoint", "POST", "/v1/evals", authA, ok, 404, "unknown_url"},
		{"suffix", "POST", "/v1/chat/completions/extra", authA, ok, 404, "unknown_url"},
		{"root", "GET", "/", authA, ``, 404, "unknown_url"},
		{"seed prefix", "POST", "/api/openai/v1/chat/completions", authA, ok, 200, ""},
		{"seed prefix without v1", "POST", "/api/openai/chat/completions", authA, ok, 200, ""},
		// Hostile bodies.
		{"BOM before the object", "POST", "/v1/chat/completions", authA, "\xef\xbb\xbf" + ok, 400, "invalid_json"},
		{"raw NUL in a string", "POST", "/v1/chat/completions", authA, "{\"model\":\"gpt-4o\x00\"}", 400, "invalid_json"},
		{"raw NUL after the object", "POST", "/v1/chat/completions", authA, ok + "\x00", 400, "invalid_json"},
		{"raw control character", "POST", "/v1/chat/completions", authA, "{\"model\":\"gpt-4o\",\"x\":\"a\x01b\"}", 400, "invalid_json"},
		{"array of objects", "POST", "/v1/chat/completions", authA, "[" + ok + "]", 400, "invalid_json"},
		{"whitespace only", "POST", "/v1/chat/completions", authA, " \n\t ", 400, "invalid_json"},
		{"empty object", "POST", "/v1/chat/completions", authA, `{}`, 400, "missing_required_parameter"},
		{"trailing comma", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o",}`, 400, "invalid_json"},
		{"single quotes", "POST", "/v1/chat/completions", authA, `{'model':'gpt-4o'}`, 400, "invalid_json"},
		{"NaN", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","temperature":NaN}`, 400, "invalid_json"},
		{"two documents", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o"}{"model":"o1"}`, 400, "invalid_json"},
		{"overflowing number model", "POST", "/v1/chat/completions", authA, `{"model":1e400}`, 400, "invalid_type"},
		{"negative zero model", "POST", "/v1/chat/completions", authA, `{"model":-0}`, 400, "invalid_type"},
		{"model in another case", "POST", "/v1/chat/completions", authA, `{"Model":"gpt-4o"}`, 400, "missing_required_parameter"},
		{"form body", "POST", "/v1/chat/completions", with(authA, "content-type", "application/x-www-form-urlencoded"), `model=gpt-4o`, 400, "invalid_json"},
		{"escaped member name", "POST", "/v1/chat/completions", authA, `{"\u006d\u006f\u0064\u0065\u006c":"gpt-4o","messages":[]}`, 200, ""},
		{"escaped model value", "POST", "/v1/chat/completions", authA, `{"model":"gpt\u002d4o","messages":[]}`, 200, ""},
		{"long string under the limit", "POST", "/v1/chat/completions", authA, `{"model":"gpt-4o","messages":[],"pad":"` + strings.Repeat("x", 3000) + `"}`, 200, ""},
		// Hostile headers (below Envoy's 60 KiB header limit).
		{"50 KB token", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer "+strings.Repeat("a", 50000)), ok, 401, "invalid_api_key"},
		{"Token scheme", "POST", "/v1/chat/completions", with(authA, "authorization", "Token km-test-a"), ok, 401, "invalid_api_key"},
		{"tab after Bearer", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer\tkm-test-a"), ok, 401, "invalid_api_key"},
		{"Bearer without a token", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer"), ok, 401, "missing_api_key"},
		{"upper-case scheme", "POST", "/v1/chat/completions", with(authA, "authorization", "BEARER km-test-a"), ok, 200, ""},
		{"non-ASCII token", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-tést-a"), ok, 401, "invalid_api_key"},
		{"two credentials in one header", "POST", "/v1/chat/completions", with(authA, "authorization", "Bearer km-wrong, Bearer km-test-a"), ok, 401, "invalid_api_key"},
		{"Azure-style api-key header", "POST", "/v1/chat/completions", with(with(authA, "authorization", ""), "api-key", "km-test-a"), ok, 401, "missing_api_key"},
		{"authorization wins over x-api-key", "POST", "/v1/chat/completions", with(with(authA, "authorization", "Bearer km-wrong"), "x-api-key", "km-test-a"), ok, 401, "invalid_api_key"},
		// Hostile paths.
		{"dot segment", "POST", "/v1/./chat/completions", authA, ok, 200, ""},
		{"trailing dot-dot", "POST", "/v1/chat/completions/..", authA, ok, 404, "unknown_url"},
		{"encoded slash", "POST", "/v1/chat%2Fcompletions", authA, ok, 404, "unknown_url"},
		{"backslashes", "POST", "/v1\\chat\\completions", authA, ok, 404, "unknown_url"},
		{"encoded NUL", "POST", "/v1/chat/completions%00", authA, ok, 404, "unknown_url"},
		{"upper-case version", "POST", "/V1/chat/completions", authA, ok, 404, "unknown_url"},
		{"100 KB path", "POST", "/v1/" + strings.Repeat("a", 100000), authA, ok, 404, "unknown_url"},
		{"model id with encoded dot-dot", "GET", "/v1/models/..%2f..%2fadmin", authA, ``, 404, "unknown_url"},
		{"model id with encoded slash", "GET", "/v1/models/gpt-4o%2F..", authA, ``, 404, "unknown_url"},
	}
	if len(cases) < 85 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(g.requests())
			resp, b := g.do(tc.method, tc.path, tc.header, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			reached := len(g.requests()) - before
			if tc.code == "" {
				if tc.status == 404 && reached != 1 {
					t.Errorf("a forwarded request did not reach the upstream")
				}
				return
			}
			if reached != 0 {
				t.Errorf("a refused request reached the upstream")
			}
			if ct := resp.Header.Get("content-type"); ct != "application/json" {
				t.Errorf("content-type %q, want application/json", ct)
			}
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    string  `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("error body is not JSON: %q", b)
			}
			if e.Error.Code != tc.code || e.Error.Type == "" || e.Error.Message == "" {
				t.Errorf("error = %+v, want code %q with a type and a message", e.Error, tc.code)
			}
			// A refusal never echoes an unbounded input, nor a credential.
			if len(b) > 1024 {
				t.Errorf("error body of %d bytes", len(b))
			}
			if strings.Contains(string(b), "km-test") || strings.Contains(string(b), "sk-test") {
				t.Errorf("error body carries a credential: %s", b)
			}
		})
	}
	// Still serving, and the refused requests left no trace upstream.
	resp, b := g.do("POST", "/v1/chat/completions", authA, ok)
	if resp.StatusCode != 200 {
		t.Fatalf("after the table: status %d: %s", resp.StatusCode, b)
	}
	assertNoClientSecret(t, g, "km-test-a")
}

// Hostile requests that are forwarded: what reaches the upstream is what
// keymux decided (its key, path and query), not what the client smuggled.
func TestBadInputForwardedAsIntended(t *testing.T) {
	g := startGateway(t, `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, models: [gpt-4o]}
  az: {provider: azure, base_url: "{{MOCK}}", secret: sk-test-az, models: [az-model], azure: {api_version: "2024-10-21"}}
`)
	const openaiBody = `{"model":"gpt-4o","messages":[]}`
	const azureBody = `{"model":"az-model","messages":[]}`
	jsonCT := map[string]string{"content-type": "application/json"}
	cases := []struct {
		name   string
		path   string
		header map[string]string
		body   string
		// What the mock received.
		upPath, upQuery, credential string
	}{
		{"client-set x-keymux-upstream", "/v1/chat/completions", map[string]string{"content-type": "application/json", "x-keymux-upstream": "evil.example:443"}, openaiBody,
			"/v1/chat/completions", "", "sk-test-k1"},
		{"client-set host", "/v1/chat/completions", map[string]string{"content-type": "application/json", "host": "evil.example"}, openaiBody,
			"/v1/chat/completions", "", "sk-test-k1"},
		{"dot segments", "/v1/./embeddings/../chat/completions", jsonCT, openaiBody,
			"/v1/chat/completions", "", "sk-test-k1"},
		{"api-version smuggled to Azure", "/v1/chat/completions?api-version=2099-01-01", jsonCT, azureBody,
			"/openai/deployments/az-model/chat/completions", "api-version=2024-10-21", "sk-test-az"},
		{"api-version smuggled percent-encoded", "/v1/chat/completions?api%2Dversion=2099-01-01&x=1&API-Version=2098-01-01", jsonCT, azureBody,
			"/openai/deployments/az-model/chat/completions", "api-version=2024-10-21&x=1", "sk-test-az"},
		{"api-version smuggled among other parameters", "/v1/chat/completions?x=1&api-version=2099-01-01&api-version=2098-01-01", jsonCT, azureBody,
			"/openai/deployments/az-model/chat/completions", "api-version=2024-10-21&x=1", "sk-test-az"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(g.requests())
			resp, b := g.do("POST", tc.path, tc.header, tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			reqs := g.requests()
			if len(reqs) != before+1 {
				t.Fatalf("%d upstream requests, want 1", len(reqs)-before)
			}
			r := reqs[before]
			if r.Path != tc.upPath || r.RawQuery != tc.upQuery || r.Credential != tc.credential {
				t.Errorf("upstream got %s ?%s with %s, want %s ?%s with %s", r.Path, r.RawQuery, r.Credential, tc.upPath, tc.upQuery, tc.credential)
			}
			if v := r.Header.Get("x-keymux-upstream"); v != "" {
				t.Errorf("upstream got x-keymux-upstream %q", v)
			}
		})
	}
}

// Two credential headers are ambiguous (which one counts?): 401, whatever
// their values, and nothing reaches the upstream.
func TestBadInputRepeatedCredentials(t *testing.T) {
	cfg := strings.NewReplacer("{{A}}", sha256hex("km-test-a"), "{{B}}", sha256hex("km-test-b"), "{{C}}", sha256hex("km-test-c"), "{{D}}", sha256hex("km-test-d")).Replace(badInputConfig)
	g := startGateway(t, cfg)
	for _, tc := range []struct {
		name   string
		header string
		values []string
	}{
		{"two authorization, the last good", "Authorization", []string{"Bearer km-wrong", "Bearer km-test-a"}},
		{"two authorization, both good", "Authorization", []string{"Bearer km-test-a", "Bearer km-test-a"}},
		{"two x-api-key, the last good", "X-Api-Key", []string{"km-wrong", "km-test-a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(g.requests())
			req, err := http.NewRequest("POST", g.url+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","messages":[]}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("content-type", "application/json")
			req.Header[tc.header] = tc.values
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || !strings.Contains(string(b), `"code":"invalid_api_key"`) || !strings.Contains(string(b), "Ambiguous credentials") {
				t.Errorf("status %d %s, want 401 invalid_api_key (ambiguous credentials)", resp.StatusCode, b)
			}
			if n := len(g.requests()) - before; n != 0 {
				t.Errorf("%d requests reached the upstream", n)
			}
		})
	}
}

// Header bytes that Envoy's HTTP/1 codec refuses (CR, NUL, a space before
// the colon, conflicting lengths) never reach keymux or the upstream: the
// listener answers 400 itself.
func TestBadInputRawHeaders(t *testing.T) {
	g := startGateway(t, threeKeys)
	addr := strings.TrimPrefix(g.url, "http://")
	const body = `{"model":"gpt-4o","messages":[]}`
	cases := []struct{ name, headers string }{
		{"bare CR in a value", "Authorization: Bearer x\rX-Injected: 1\r\n"},
		{"NUL in a value", "X-Api-Key: x\x00y\r\n"},
		{"space before the colon", "Authorization : Bearer x\r\n"},
		{"conflicting content-length", "Content-Length: 3\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(g.requests())
			req := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + tc.headers +
				"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != 400 {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
			if n := len(g.requests()) - before; n != 0 {
				t.Errorf("%d requests reached the upstream", n)
			}
		})
	}
}
