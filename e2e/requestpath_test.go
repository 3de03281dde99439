package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
)

func chat(t *testing.T, c openai.Client, model string) *openai.ChatCompletion {
	t.Helper()
	resp, err := c.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
	})
	if err != nil {
		t.Fatalf("chat %s: %v", model, err)
	}
	return resp
}

func TestRoundRobinRotatesStrictly(t *testing.T) {
	g := startGateway(t, threeKeys)
	c := g.client("client-token-unused")
	for range 30 {
		chat(t, c, "gpt-4o")
	}
	got := g.credentials()
	if len(got) != 30 {
		t.Fatalf("mock saw %d requests, want 30", len(got))
	}
	for i, cred := range got {
		want := fmt.Sprintf("sk-test-k%d", i%3+1)
		if i > 0 {
			// The rotation may start anywhere; it must then go k1→k2→k3→k1.
			prev, _ := strconv.Atoi(strings.TrimPrefix(got[i-1], "sk-test-k"))
			want = fmt.Sprintf("sk-test-k%d", prev%3+1)
		}
		if cred != want {
			t.Fatalf("request %d reached %q, want %q (sequence %v)", i, cred, want, got)
		}
	}
}

func TestRuleRewritesModelOnlyForItsKey(t *testing.T) {
	g := startGateway(t, threeKeys+`
rules:
  k2-mini: {key: k2, from: gpt-4, to: gpt-4o-mini}
`)
	// A body with fields keymux does not know, odd spacing and unicode: all
	// of it must reach the upstream byte for byte, but the model.
	const body = `{"messages":[{"role":"user","content":"h\u00e9llo \"x\""}],  "model" :  "gpt-4", "temperature":0.25,"x_unknown":{"a":[1,2,{"b":null}]}}`
	for range 6 {
		resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	}
	reqs := g.requests()
	if len(reqs) != 6 {
		t.Fatalf("mock saw %d requests, want 6", len(reqs))
	}
	for _, r := range reqs {
		want := body
		if r.Credential == "sk-test-k2" {
			want = strings.Replace(body, `"gpt-4"`, `"gpt-4o-mini"`, 1)
		}
		if string(r.Body) != want {
			t.Errorf("%s: upstream body\n got %s\nwant %s", r.Credential, r.Body, want)
		}
		if cl := r.Header.Get("Content-Length"); cl != strconv.Itoa(len(want)) {
			t.Errorf("%s: content-length %q, want %d", r.Credential, cl, len(want))
		}
		wantModel := map[bool]string{true: "gpt-4o-mini", false: "gpt-4"}[r.Credential == "sk-test-k2"]
		if r.Model != wantModel {
			t.Errorf("%s: model %q, want %q", r.Credential, r.Model, wantModel)
		}
	}
}

func TestAzureKeyGetsDeploymentPathAndAPIKey(t *testing.T) {
	g := startGateway(t, `
settings:
  auth: {mode: client_keys}
keys:
  az:
    provider: azure
    base_url: "{{MOCK}}"
    secret: sk-test-azure
    azure: {api_version: "2024-10-21", deployments: {gpt-4o: prod-gpt4o}}
clients:
  team-a: {name: Team A, token_sha256: "`+sha256hex("km-client-secret-a")+`"}
`)
	c := g.client("km-client-secret-a")
	resp := chat(t, c, "gpt-4o")
	if resp.Model != "prod-gpt4o" {
		t.Errorf("response model %q, want the deployment prod-gpt4o", resp.Model)
	}
	reqs := g.requests()
	if len(reqs) != 1 {
		t.Fatalf("mock saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Path != "/openai/deployments/prod-gpt4o/chat/completions" || r.RawQuery != "api-version=2024-10-21" {
		t.Errorf("upstream %s?%s, want /openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21", r.Path, r.RawQuery)
	}
	if r.AuthHeader != "api-key" || r.Credential != "sk-test-azure" {
		t.Errorf("upstream credential from %q = %q, want api-key sk-test-azure", r.AuthHeader, r.Credential)
	}
	if r.Header.Get("Authorization") != "" {
		t.Errorf("the client's Authorization reached the upstream")
	}
	assertNoClientSecret(t, g, "km-client-secret-a")
}

// assertNoClientSecret checks that no upstream request carried the client's
// token anywhere in its headers or body.
func assertNoClientSecret(t *testing.T, g *gateway, token string) {
	t.Helper()
	for _, r := range g.requests() {
		for name, vs := range r.Header {
			for _, v := range vs {
				if strings.Contains(v, token) {
					t.Errorf("upstream header %s carried the client token", name)
				}
			}
		}
		if bytes.Contains(r.Body, []byte(token)) {
			t.Errorf("upstream body carried the client token")
		}
	}
}

// A 429 cools its key down for the upstream's Retry-After and a 401
// disables its key: traffic moves to the key left, and when none is left
// the client gets a 503 naming why, with a Retry-After. When a key comes
// back is tested on a fake clock in extproc
// (TestKeyComesBackWhenItsWindowEnds), without waiting here.
func TestRateLimitCooldownAndAuthDisable(t *testing.T) {
	g := startGateway(t, `
settings:
  strategy: round_robin
  retry: {max_attempts: 1}     # each key's failure reaches the client (retries: retry_test.go)
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3}
`)
	c := g.client("x")
	g.mock.SetDefault("sk-test-k1", mockBehaviour429("30"))
	g.mock.SetDefault("sk-test-k2", mockBehaviourStatus(401))
	// The first three requests cover the three keys.
	statuses := map[int]int{}
	for range 3 {
		_, err := c.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
			Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		var apiErr *openai.Error
		switch {
		case errors.As(err, &apiErr):
			statuses[apiErr.StatusCode]++
		case err != nil:
			t.Fatal(err)
		default:
			statuses[200]++
		}
	}
	if statuses[200] != 1 || statuses[401] != 1 || statuses[429] != 1 {
		t.Fatalf("statuses %v of %v, want one each of 200, 401, 429", statuses, g.credentials())
	}
	// k1 cools down for 30s, k2 stays out until a probe passes (the first
	// recovery probe is 30s away): every request goes to k3, even though
	// the upstream would take k1 and k2 again.
	g.mock.SetDefault("sk-test-k1", mockBehaviourOK())
	g.mock.SetDefault("sk-test-k2", mockBehaviourOK())
	n := len(g.requests())
	for range 6 {
		chat(t, c, "gpt-4o")
	}
	for _, cred := range g.credentials()[n:] {
		if cred != "sk-test-k3" {
			t.Fatalf("a cooling or disabled key was used: %v", g.credentials()[n:])
		}
	}

	// k3 now cools down too: nothing is left, the client gets a 503 naming why.
	g.mock.SetDefault("sk-test-k3", mockBehaviour429("20"))
	c.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"content-type": "application/json"}, `{"model":"gpt-4o","messages":[]}`)
	if resp.StatusCode != 503 {
		t.Fatalf("status %d, want 503: %s", resp.StatusCode, b)
	}
	var e struct {
		Error struct{ Message, Type, Code string }
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("503 body is not OpenAI error JSON: %s", b)
	}
	if e.Error.Code != "no_eligible_key" || !strings.Contains(e.Error.Message, "2 cooling down") || !strings.Contains(e.Error.Message, "1 disabled (auth failed)") {
		t.Errorf("503 error = %+v, want code no_eligible_key naming 2 cooling down and 1 disabled", e.Error)
	}
	// The earliest key back is k3, 20s after its 429.
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 18 || ra > 20 {
		t.Errorf("503 Retry-After %q, want k3's 20s less the time since", resp.Header.Get("Retry-After"))
	}
}

func TestBodylessRequestGetsAKey(t *testing.T) {
	g := startGateway(t, `
settings:
  auth: {mode: client_keys}
  objects: {default_account: az}  # file-abc was not created through keymux
keys:
  az: {provider: azure, base_url: "{{MOCK}}", secret: sk-test-azure, azure: {api_version: "2024-10-21"}}
clients:
  a: {name: a, token_sha256: "`+sha256hex("km-test-bodyless")+`"}
`)
	for _, tc := range []struct{ method, path, wantPath string }{
		{"GET", "/v1/files/file-abc?limit=2", "/openai/files/file-abc"},
		{"DELETE", "/api/openai/v1/files/file-abc", "/openai/files/file-abc"},
	} {
		before := len(g.requests())
		g.do(tc.method, tc.path, map[string]string{"authorization": "Bearer km-test-bodyless"}, "")
		reqs := g.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("%s %s: mock saw %d requests, want 1", tc.method, tc.path, len(reqs))
		}
		r := reqs[0]
		if r.Method != tc.method || r.Path != tc.wantPath || !strings.Contains(r.RawQuery, "api-version=2024-10-21") || r.Credential != "sk-test-azure" {
			t.Errorf("%s %s reached the upstream as %s %s?%s with %q", tc.method, tc.path, r.Method, r.Path, r.RawQuery, r.AuthHeader)
		}
	}
	assertNoClientSecret(t, g, "km-test-bodyless")
}

func TestEveryKeyCoolingDownGives503(t *testing.T) {
	g := startGateway(t, `
settings:
  retry: {max_attempts: 1}     # each key's 429 reaches the client (retries: retry_test.go)
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
`)
	g.mock.SetDefault("", mockBehaviour429("30"))
	body := `{"model":"gpt-4o","messages":[]}`
	for range 2 {
		if resp, _ := g.do("POST", "/v1/chat/completions", nil, body); resp.StatusCode != 429 {
			t.Fatalf("status %d, want the upstream's 429 passed through", resp.StatusCode)
		}
	}
	resp, b := g.do("POST", "/v1/chat/completions", nil, body)
	var e struct {
		Error struct{ Message, Code string }
	}
	json.Unmarshal(b, &e)
	if resp.StatusCode != 503 || e.Error.Code != "keys_cooling_down" || !strings.Contains(e.Error.Message, "all 2 keys for model gpt-4o are cooling down until") {
		t.Fatalf("got %d %s, want 503 keys_cooling_down naming the time", resp.StatusCode, b)
	}
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 28 || ra > 30 {
		t.Errorf("Retry-After %q, want about 30", resp.Header.Get("Retry-After"))
	}
	metrics := string(g.getAdmin("/metrics"))
	for _, k := range []string{"k1", "k2"} {
		if !regexp.MustCompile(`(?m)^keymux_key_cooldowns_total\{key="` + k + `"[^}]*\} 1$`).MatchString(metrics) {
			t.Errorf("/metrics has no cooldown counted for %s", k)
		}
	}
}
