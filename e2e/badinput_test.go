package e2e

import (
	"encoding/json"
	"strings"
	"testing"
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
		// The mock has no files or moderations: its own 404 shows the request was forwarded.
		{"listed endpoints: files", "GET", "/v1/files", with(authA, "authorization", "Bearer km-test-d"), ``, 404, ""},
		{"listed endpoints: batches not listed", "GET", "/v1/batches", with(authA, "authorization", "Bearer km-test-d"), ``, 403, "insufficient_permissions"},
		{"listed endpoints: embeddings not listed", "POST", "/v1/embeddings", with(authA, "authorization", "Bearer km-test-d"), `{"model":"gpt-4o-mini","input":"x"}`, 403, "insufficient_permissions"},
		{"unrestricted client: files", "GET", "/v1/files", authA, ``, 404, ""},
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
		{"unknown endpoint", "POST", "/v1/fine_tuning/jobs", authA, ok, 404, "unknown_url"},
		{"suffix", "POST", "/v1/chat/completions/extra", authA, ok, 404, "unknown_url"},
		{"root", "GET", "/", authA, ``, 404, "unknown_url"},
		{"seed prefix", "POST", "/api/openai/v1/chat/completions", authA, ok, 200, ""},
		{"seed prefix without v1", "POST", "/api/openai/chat/completions", authA, ok, 200, ""},
	}
	if len(cases) < 40 {
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
		})
	}
	// Still serving, and the refused requests left no trace upstream.
	resp, b := g.do("POST", "/v1/chat/completions", authA, ok)
	if resp.StatusCode != 200 {
		t.Fatalf("after the table: status %d: %s", resp.StatusCode, b)
	}
	assertNoClientSecret(t, g, "km-test-a")
}
