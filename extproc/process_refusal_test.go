package extproc

import (
	"encoding/base64"
	"maps"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/policy"
)

// verified attaches claims as Envoy's jwt_authn verified them (its dynamic
// metadata, forwarded on the first ext_proc message) to msgs.
func verified(claims string, msgs []*extprocv3.ProcessingRequest) []*extprocv3.ProcessingRequest {
	var st structpb.Struct
	if err := protojson.Unmarshal([]byte(claims), &st); err != nil {
		panic(err)
	}
	msgs[0].MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		JWTMetadataNamespace: {Fields: map[string]*structpb.Value{JWTPayloadKey: structpb.NewStructValue(&st)}},
	}}
	return msgs
}

// forgedJWT is a payload header a client sends itself: keymux never reads it.
var forgedJWT = base64.RawURLEncoding.EncodeToString([]byte(`{"role":"ROLE_API_USER"}`))

const (
	settingsClientKeys = "settings:\n  auth: {mode: client_keys}\n  max_body_bytes: 100\n"
	settingsJWT        = "settings:\n  auth: {mode: jwt_claim}\n"
)

// Every local refusal of the request path: the reply to the last message
// is an ImmediateResponse with keymux's OpenAI-style error, and the call
// the Observer gets is marked local with that status and code.
func TestRequestRefusals(t *testing.T) {
	long := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 80) + `"}]}`
	tests := []struct {
		name     string
		settings string
		msgs     []*extprocv3.ProcessingRequest
		status   int
		typ      string
		code     string
		param    string
		message  string            // exact, when set
		headers  map[string]string // extra response headers, exact
		op       string            // call.Operation
		atBody   bool              // refused on the body message, not the headers
	}{
		{name: "method not allowed anywhere", msgs: request("TRACE", "/v1/chat/completions", ""),
			status: 405, typ: typeInvalidRequest, code: "method_not_allowed"},
		{name: "method not allowed on the operation", msgs: request("DELETE", "/v1/chat/completions", `{"model":"gpt-4o"}`),
			status: 405, typ: typeInvalidRequest, code: "method_not_allowed",
			message: "method DELETE is not allowed on /v1/chat/completions (allowed: POST)", headers: map[string]string{"allow": "POST"}},
		{name: "delete on models", msgs: request("DELETE", "/v1/models", ""),
			status: 405, typ: typeInvalidRequest, code: "method_not_allowed", headers: map[string]string{"allow": "GET"}},
		{name: "unknown path", msgs: request("GET", "/v1/unknown?x=1", ""),
			status: 404, typ: typeInvalidRequest, code: "unknown_url", op: "other",
			message: "Unknown request URL: /v1/unknown. keymux serves the OpenAI-compatible API below /v1 and /api/openai."},
		{name: "dot segment", msgs: request("GET", "/v1/files/../models", ""),
			status: 404, typ: typeInvalidRequest, code: "unknown_url"},
		{name: "outside the API prefix", msgs: request("POST", "/v2/chat/completions", `{"model":"gpt-4o"}`),
			status: 404, typ: typeInvalidRequest, code: "unknown_url"},

		{name: "no credential", settings: settingsClientKeys, msgs: chat("gpt-4o"),
			status: 401, typ: typeInvalidRequest, code: "missing_api_key", op: "chat",
			message: "You didn't provide an API key. Provide it in the Authorization header (Bearer <key>)."},
		{name: "empty bearer", settings: settingsClientKeys, msgs: chat("gpt-4o", "authorization", "Bearer "),
			status: 401, typ: typeInvalidRequest, code: "missing_api_key", op: "chat"},
		{name: "other scheme", settings: settingsClientKeys, msgs: chat("gpt-4o", "authorization", "Basic "+tokenAll),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat",
			message: "Incorrect API key provided: use the Authorization header with the Bearer scheme."},
		{name: "unknown token", settings: settingsClientKeys, msgs: chat("gpt-4o", bearer("km-test-nobody")...),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat", message: "Incorrect API key provided."},
		{name: "disabled client", settings: settingsClientKeys, msgs: chat("gpt-4o", bearer(tokenOff)...),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat", message: "Incorrect API key provided."},
		{name: "two authorization headers", settings: settingsClientKeys, msgs: chat("gpt-4o", append(bearer("km-test-nobody"), bearer(tokenAll)...)...),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat",
			message: "Ambiguous credentials: the request has more than one Authorization or x-api-key header."},
		{name: "two x-api-key headers", settings: settingsClientKeys, msgs: chat("gpt-4o", "x-api-key", tokenAll, "x-api-key", tokenAll),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat",
			message: "Ambiguous credentials: the request has more than one Authorization or x-api-key header."},
		{name: "an empty authorization before a good one", settings: settingsClientKeys, msgs: chat("gpt-4o", append([]string{"authorization", ""}, bearer(tokenAll)...)...),
			status: 401, typ: typeInvalidRequest, code: "invalid_api_key", op: "chat",
			message: "Ambiguous credentials: the request has more than one Authorization or x-api-key header."},
		{name: "models list needs a credential", settings: settingsClientKeys, msgs: request("GET", "/v1/models", ""),
			status: 401, typ: typeInvalidRequest, code: "missing_api_key", op: "list_models"},

		{name: "jwt missing", settings: settingsJWT, msgs: chat("gpt-4o"),
			status: 401, typ: typeInvalidRequest, code: "missing_api_key", op: "chat", message: "A verified JWT is required."},
		{name: "jwt claim missing", settings: settingsJWT, msgs: verified(`{"sub":"u1"}`, chat("gpt-4o")),
			status: 403, typ: typePermission, code: "insufficient_permissions", op: "chat",
			message: "The token does not carry the claim role=ROLE_API_USER."},
		{name: "jwt claim forbids", settings: settingsJWT, msgs: verified(`{"role":"ROLE_GUEST"}`, chat("gpt-4o")),
			status: 403, typ: typePermission, code: "insufficient_permissions", op: "chat"},
		{name: "jwt header forged, none verified", settings: settingsJWT, msgs: chat("gpt-4o", "x-jwt-payload", forgedJWT),
			status: 401, typ: typeInvalidRequest, code: "missing_api_key", op: "chat", message: "A verified JWT is required."},

		{name: "declared body too large", settings: settingsClientKeys,
			msgs:   []*extprocv3.ProcessingRequest{reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "content-length", "101", "authorization", "Bearer "+tokenAll)},
			status: 413, typ: typeInvalidRequest, code: "request_too_large", op: "chat", message: "The request body is larger than 100 bytes."},
		{name: "actual body too large", settings: settingsClientKeys,
			msgs:   []*extprocv3.ProcessingRequest{reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "authorization", "Bearer "+tokenAll), reqBody(long, true)},
			status: 413, typ: typeInvalidRequest, code: "request_too_large", op: "chat", message: "The request body is larger than 100 bytes.", atBody: true},

		{name: "no body", msgs: request("POST", "/v1/chat/completions", ""),
			status: 400, typ: typeInvalidRequest, code: "invalid_json", op: "chat",
			message: "The request body is empty; a JSON object with a model is required."},
		{name: "empty body message", msgs: []*extprocv3.ProcessingRequest{reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions"), reqBody("", true)},
			status: 400, typ: typeInvalidRequest, code: "invalid_json", op: "chat", atBody: true},
		{name: "invalid json", msgs: request("POST", "/v1/chat/completions", `{"model":`),
			status: 400, typ: typeInvalidRequest, code: "invalid_json", op: "chat", atBody: true},
		{name: "not an object", msgs: request("POST", "/v1/embeddings", `["gpt-4o"]`),
			status: 400, typ: typeInvalidRequest, code: "invalid_json", op: "embeddings", message: "The request body must be a JSON object.", atBody: true},
		{name: "missing model", msgs: request("POST", "/v1/chat/completions", `{"messages":[]}`),
			status: 400, typ: typeInvalidRequest, code: "missing_required_parameter", param: "model", op: "chat",
			message: "You must provide a model parameter.", atBody: true},
		{name: "model not a string", msgs: request("POST", "/v1/chat/completions", `{"model":4}`),
			status: 400, typ: typeInvalidRequest, code: "invalid_type", param: "model", op: "chat",
			message: "Invalid type for 'model': expected a string, got a number.", atBody: true},
		{name: "stream not a boolean", msgs: request("POST", "/v1/chat/completions", `{"model":"gpt-4o","stream":"yes"}`),
			status: 400, typ: typeInvalidRequest, code: "invalid_type", param: "stream", op: "chat", atBody: true},
		{name: "stream_options not an object", msgs: request("POST", "/v1/chat/completions", `{"model":"gpt-4o","stream_options":[]}`),
			status: 400, typ: typeInvalidRequest, code: "invalid_type", param: "stream_options", op: "chat",
			message: "Invalid type for 'stream_options': expected an object, got an array.", atBody: true},
		{name: "messages not an array", msgs: request("POST", "/v1/chat/completions", `{"model":"gpt-4o","messages":"hi"}`),
			status: 400, typ: typeInvalidRequest, code: "invalid_type", param: "messages", op: "chat", atBody: true},
		{name: "duplicate model", msgs: request("POST", "/v1/chat/completions", `{"model":"gpt-4o","model":"qwen"}`),
			status: 400, typ: typeInvalidRequest, code: "duplicate_field", param: "model", op: "chat", atBody: true},
		{name: "empty model", msgs: request("POST", "/v1/responses", `{"model":""}`),
			status: 400, typ: typeInvalidRequest, code: "invalid_value", param: "model", op: "responses", atBody: true},

		{name: "model not allowed for the client", settings: settingsClientKeys, msgs: chat("gpt-4o-mini", bearer(tokenLimited)...),
			status: 403, typ: typePermission, code: "model_not_allowed", param: "model", op: "chat",
			message: "The model `gpt-4o-mini` is not allowed for this client.", atBody: true},
		{name: "model nobody serves", settings: settingsClientKeys, msgs: chat("gpt-5", bearer(tokenAll)...),
			status: 404, typ: typeInvalidRequest, code: "model_not_found", param: "model", op: "chat",
			message: "The model `gpt-5` does not exist or no key serves it.", atBody: true},
		{name: "retrieve a model nobody serves", msgs: request("GET", "/v1/models/gpt-5", ""),
			status: 404, typ: typeInvalidRequest, code: "model_not_found", param: "model", op: "retrieve_model"},
		{name: "retrieve a long model id", msgs: request("GET", "/v1/models/"+strings.Repeat("m", 255)+"é"+strings.Repeat("x", 5000), ""),
			status: 404, typ: typeInvalidRequest, code: "model_not_found", param: "model", op: "retrieve_model",
			message: "The model `" + strings.Repeat("m", 255) + "…` does not exist or no key serves it."},
		{name: "retrieve a model id that is not UTF-8", msgs: request("GET", "/v1/models/gpt-4o\xff", ""),
			status: 404, typ: typeInvalidRequest, code: "model_not_found", param: "model", op: "retrieve_model",
			message: "The model `gpt-4o\ufffd` does not exist or no key serves it."},
		{name: "retrieve a model the client may not use", settings: settingsClientKeys, msgs: request("GET", "/v1/models/gpt-4o-mini", "", bearer(tokenLimited)...),
			status: 404, typ: typeInvalidRequest, code: "model_not_found", param: "model", op: "retrieve_model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(tc.settings))
			res := r.run(tc.msgs...)
			if want := map[bool]int{false: 1, true: 2}[tc.atBody]; len(res.replies) != want {
				t.Fatalf("%d replies, want the refusal as reply %d", len(res.replies), want)
			}
			l := immediate(t, res.replies[len(res.replies)-1])
			if l.status != tc.status || l.err.Type != tc.typ || l.code() != tc.code || l.param() != tc.param {
				t.Fatalf("got %d %s %s param %q (%s), want %d %s %s param %q",
					l.status, l.err.Type, l.code(), l.param(), l.err.Message, tc.status, tc.typ, tc.code, tc.param)
			}
			if !utf8.Valid(l.body) {
				t.Errorf("error body is not valid UTF-8: %q", l.body)
			}
			if tc.message != "" && l.err.Message != tc.message {
				t.Errorf("message %q, want %q", l.err.Message, tc.message)
			}
			want := map[string]string{"content-type": "application/json"}
			for k, v := range tc.headers {
				want[k] = v
			}
			if !maps.Equal(l.headers, want) {
				t.Errorf("headers %v, want %v", l.headers, want)
			}
			c := res.call
			if !c.Local || c.Status != tc.status || c.ErrorCode != tc.code || c.Operation != tc.op || c.KeyID != "" || c.Truncated {
				t.Errorf("call local=%v status=%d code=%q op=%q key=%q truncated=%v, want local %d %q op %q no key",
					c.Local, c.Status, c.ErrorCode, c.Operation, c.KeyID, c.Truncated, tc.status, tc.code, tc.op)
			}
			if len(r.obs.begins) != 0 {
				t.Errorf("Observer.Begin called for a refused request")
			}
			for _, id := range []string{"oai", "az", "ant", "hf", "compat"} {
				if n := r.entry(id).RT.Requests(); n != 0 {
					t.Errorf("key %s counted %d requests for a refused one", id, n)
				}
			}
		})
	}
}

// A 503 names why no key could serve, with a Retry-After when some key
// comes back by itself.
func TestNoEligibleKey(t *testing.T) {
	tests := []struct {
		name       string
		cfg        string
		state      func(r *rig) // puts the keys out
		msgs       []*extprocv3.ProcessingRequest
		code       string
		message    string
		retryAfter string // "" = no header
	}{
		{name: "no key at all", cfg: "keys: {}\n", msgs: request("GET", "/v1/files", ""),
			code: "no_keys", message: "No upstream key is configured."},
		{name: "cooling down", cfg: testKeys(""),
			state: func(r *rig) { setState(r, "oai", policy.KeyState{CooldownUntil: t0.Add(30 * time.Second)}) },
			msgs:  chat("gpt-4o"), code: policy.CodeKeysCoolingDown,
			message: "the key for model gpt-4o is cooling down until 2026-03-04T05:06:50Z", retryAfter: "30"},
		{name: "cooldown rounds to the second", cfg: testKeys(""),
			state: func(r *rig) { setState(r, "oai", policy.KeyState{CooldownUntil: t0.Add(1400 * time.Millisecond)}) },
			msgs:  chat("gpt-4o"), code: policy.CodeKeysCoolingDown,
			message: "the key for model gpt-4o is cooling down until 2026-03-04T05:06:22Z", retryAfter: "1"},
		{name: "ejected", cfg: testKeys(""),
			state: func(r *rig) { setState(r, "compat", policy.KeyState{EjectedUntil: t0.Add(90 * time.Second)}) },
			msgs:  chat("qwen"), code: policy.CodeKeysEjected,
			message: "the key for model qwen is ejected after upstream errors until 2026-03-04T05:07:50Z", retryAfter: "90"},
		{name: "disabled after auth", cfg: testKeys(""),
			state: func(r *rig) {
				setState(r, "ant", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledAuth})
			},
			msgs: chat("claude-sonnet"), code: policy.CodeKeysDisabled,
			message: "the key for model claude-sonnet is disabled (auth failed)"},
		{name: "a mix, earliest retry", cfg: `
keys:
  a: {provider: openai, secret: sk-test-a}
  b: {provider: openai, secret: sk-test-b}
  c: {provider: openai, secret: sk-test-c}
`,
			state: func(r *rig) {
				setState(r, "a", policy.KeyState{CooldownUntil: t0.Add(20 * time.Second)})
				setState(r, "b", policy.KeyState{EjectedUntil: t0.Add(10 * time.Second)})
				setState(r, "c", policy.KeyState{Disabled: true, DisabledReason: policy.DisabledQuota})
			},
			msgs: chat("gpt-4o"), code: policy.CodeNoEligibleKey,
			message: "no eligible key for model gpt-4o: 1 cooling down (until 2026-03-04T05:06:40Z), " +
				"1 ejected after upstream errors (until 2026-03-04T05:06:30Z), 1 disabled (quota exhausted)",
			retryAfter: "10"},
		{name: "key over its rpm: back when the minute turns", cfg: "keys:\n  a: {provider: openai, secret: sk-test-a, limits: {rpm: 1}}\n",
			state: func(r *rig) { r.run(chat("gpt-4o")...) },
			msgs:  chat("gpt-4o"), code: policy.CodeKeysCoolingDown,
			message: "the key for model gpt-4o is cooling down until 2026-03-04T05:07:00Z", retryAfter: "40"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.cfg)
			if tc.state != nil {
				tc.state(r)
			}
			res := r.run(tc.msgs...)
			l := immediate(t, res.replies[len(res.replies)-1])
			if l.status != 503 || l.err.Type != typeServer || l.code() != tc.code || l.err.Message != tc.message {
				t.Fatalf("got %d %s %s %q, want 503 server_error %s %q", l.status, l.err.Type, l.code(), l.err.Message, tc.code, tc.message)
			}
			if got := l.headers["retry-after"]; got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			if res.call.ErrorCode != tc.code || res.call.Status != 503 || !res.call.Local {
				t.Errorf("call %+v, want a local 503 %s", res.call, tc.code)
			}
		})
	}
}

// setState sets key id's passive health.
func setState(r *rig, id string, s policy.KeyState) {
	r.entry(id).RT.Update(func(policy.KeyState) policy.KeyState { return s })
}
