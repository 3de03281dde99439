package extproc

import (
	"slices"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// A Realtime upgrade is forwarded on its headers, with the body modes
// overridden to NONE (Envoy would wait for a body the client sends only
// after the 101), and its 101 answer is the call's success.
func TestRealtimeUpgrade(t *testing.T) {
	r := newRig(t, testKeys(""))
	st := newStream(t, realtime("/v1/realtime?model=gpt-4o", "authorization", "Bearer client-secret"))
	st.upstream = answerAs(func(string) []*extprocv3.ProcessingRequest {
		return []*extprocv3.ProcessingRequest{respHeaders(false, ":status", "101", "upgrade", "websocket", "connection", "Upgrade")}
	})
	res := r.runStream(st)
	if len(res.replies) != 2 {
		t.Fatalf("%d replies, want the headers reply and the response headers reply", len(res.replies))
	}
	want := &filterv3.ProcessingMode{RequestBodyMode: filterv3.ProcessingMode_NONE, ResponseBodyMode: filterv3.ProcessingMode_NONE}
	if got := res.replies[0].GetModeOverride(); got == nil || !proto.Equal(got, want) {
		t.Errorf("mode override %v, want request and response bodies NONE", got)
	}
	f := forwardOf(t, res.replies[0])
	if f.set["authorization"] != "Bearer sk-test-oai" || !f.clearRoute {
		t.Errorf("forwarded with %v (clear route %v), want the key's bearer and a new route", f.set, f.clearRoute)
	}
	if res.replies[1].GetResponseHeaders() == nil || res.replies[1].GetModeOverride() != nil {
		t.Errorf("response headers reply %v, want a plain continue", res.replies[1])
	}
	c := res.call
	if c.Operation != "realtime" || c.KeyID != "oai" || c.Status != 101 || c.ErrorCode != "" || c.ModelFinal != "gpt-4o" {
		t.Errorf("call %+v, want realtime on oai, 101, no error", c)
	}
	if s := r.entry("oai").RT.State(); s.ConsecutiveFailures != 0 || s.Disabled {
		t.Errorf("key state after a 101: %+v", s)
	}
}

// Realtime requests keymux cannot serve get a precise refusal.
func TestRealtimeRefusals(t *testing.T) {
	tests := []struct {
		name        string
		msg         *extprocv3.ProcessingRequest
		status      int
		code, param string
		message     string
		upgradeHint bool
	}{
		{name: "no upgrade", msg: reqHeaders(true, ":method", "GET", ":path", "/v1/realtime?model=gpt-4o"),
			status: 426, code: "upgrade_required", upgradeHint: true,
			message: "/v1/realtime is a WebSocket endpoint: open it with Upgrade: websocket."},
		{name: "no model", msg: realtime("/v1/realtime?x=1"), status: 400, code: "missing_required_parameter", param: "model",
			message: "You must provide a model query parameter."},
		{name: "model twice", msg: realtime("/v1/realtime?model=gpt-4o&MODEL=gpt-4"), status: 400, code: "invalid_value", param: "model",
			message: "The query string is malformed: malformed query: query parameter model appears more than once."},
		{name: "empty model", msg: realtime("/v1/realtime?model="), status: 400, code: "invalid_value", param: "model",
			message: "'model' must not be empty."},
		{name: "dot segment model", msg: realtime("/v1/realtime?model=.."), status: 400, code: "invalid_value", param: "model"},
		{name: "model nobody serves", msg: realtime("/v1/realtime?model=gpt-5"), status: 404, code: "model_not_found", param: "model"},
		{name: "POST", msg: reqHeaders(true, ":method", "POST", ":path", "/v1/realtime?model=gpt-4o"), status: 405, code: "method_not_allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			res := r.run(tc.msg)
			l := immediate(t, res.replies[0])
			if l.status != tc.status || l.code() != tc.code || l.param() != tc.param || (tc.message != "" && l.err.Message != tc.message) {
				t.Errorf("got %d %s param %q %q, want %d %s param %q %q", l.status, l.code(), l.param(), l.err.Message,
					tc.status, tc.code, tc.param, tc.message)
			}
			if got := l.headers["upgrade"]; (got == "websocket") != tc.upgradeHint {
				t.Errorf("upgrade header %q", got)
			}
			if n := r.entry("oai").RT.Requests(); n != 0 {
				t.Errorf("key counted %d requests for a refusal", n)
			}
		})
	}
}

// The upstream filter turns the body modes of an upgrade to NONE on every
// attempt (with or without a call to join), and of nothing else.
func TestUpstreamFilterUpgrade(t *testing.T) {
	r := newRig(t, retryKeys)
	for _, tc := range []struct {
		name string
		msg  *extprocv3.ProcessingRequest
		want bool
	}{
		{"upgrade", realtime("/v1/realtime?model=gpt-4"), true},
		{"plain request", reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions"), false},
	} {
		out := r.runAttempt(tc.msg)
		if got := out[0].GetModeOverride(); (got != nil) != tc.want || (got != nil && got.GetRequestBodyMode() != filterv3.ProcessingMode_NONE) {
			t.Errorf("%s: mode override %v, want body NONE: %v", tc.name, got, tc.want)
		}
	}
}

// GET /v1/models answers in Anthropic's shape to a client that speaks it.
func TestModelsAnthropicShape(t *testing.T) {
	r := newRig(t, testKeys(settingsClientKeys))
	res := r.run(request("GET", "/v1/models", "", "anthropic-version", "2023-06-01", "x-api-key", tokenLimited)...)
	l := immediate(t, res.replies[0])
	want := `{"data":[{"type":"model","id":"gpt-4o","display_name":"gpt-4o","created_at":"1970-01-01T00:00:00Z"},` +
		`{"type":"model","id":"qwen","display_name":"qwen","created_at":"1970-01-01T00:00:00Z"}],` +
		`"has_more":false,"first_id":"gpt-4o","last_id":"qwen"}`
	if l.status != 200 || string(l.body) != want {
		t.Errorf("got %d %s\nwant %s", l.status, l.body, want)
	}
	res = r.run(request("GET", "/v1/models/claude-sonnet", "", "anthropic-version", "2023-06-01", "x-api-key", tokenAll)...)
	l = immediate(t, res.replies[0])
	if want := `{"type":"model","id":"claude-sonnet","display_name":"claude-sonnet","created_at":"1970-01-01T00:00:00Z"}`; l.status != 200 || string(l.body) != want {
		t.Errorf("got %d %s\nwant %s", l.status, l.body, want)
	}
	r = newRig(t, testKeys(settingsClientKeys)+"  none: {token_sha256: \""+tokenSHA("km-test-none")+"\", models: [nothing]}\n")
	res = r.run(request("GET", "/v1/models", "", "anthropic-version", "2023-06-01", "x-api-key", "km-test-none")...)
	if l = immediate(t, res.replies[0]); string(l.body) != `{"data":[],"has_more":false,"first_id":null,"last_id":null}` {
		t.Errorf("empty list %s", l.body)
	}
}

// Message batches go to Anthropic keys only: without one, a 503 says so.
func TestBatchesNeedAnAnthropicKey(t *testing.T) {
	r := newRig(t, "keys:\n  oai: {provider: openai, secret: sk-test-oai}\n")
	res := r.run(request("GET", "/v1/messages/batches", "")...)
	l := immediate(t, res.replies[0])
	if l.status != 503 || l.code() != "no_keys" || l.err.Message != "No enabled Anthropic key is configured for batches." {
		t.Errorf("got %d %s %q", l.status, l.code(), l.err.Message)
	}
}

// settings.unknown_paths: forward sends unknown clean paths below the API
// prefix upstream; client permissions apply to them as operation "other";
// everything else is refused as before.
func TestUnknownPathsForward(t *testing.T) {
	cfgWith := func(clients string) string {
		return "settings: {unknown_paths: forward, auth: {mode: client_keys}}\nkeys:\n  oai: {provider: openai, secret: sk-test-oai}\nclients:\n" + clients
	}
	tests := []struct {
		name    string
		clients string
		msgs    []*extprocv3.ProcessingRequest
		status  int // 0: forwarded
		code    string
		op      string
	}{
		{name: "a client without limits", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("PUT", "/v1/new/thing", "", bearer(tokenAll)...), op: "other"},
		{name: "endpoints names other", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\", endpoints: [chat, other]}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":"gpt-4o"}`, bearer(tokenAll)...), op: "other"},
		{name: "endpoints without other", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\", endpoints: [chat]}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":"gpt-4o"}`, bearer(tokenAll)...), status: 403, code: "insufficient_permissions", op: "other"},
		{name: "a client limited to models, without endpoints", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\", models: [gpt-4o]}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":"gpt-4o"}`, bearer(tokenAll)...), status: 403, code: "insufficient_permissions", op: "other"},
		{name: "the body's model must be allowed", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\", models: [gpt-4o], endpoints: [other]}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":"gpt-4o-mini"}`, bearer(tokenAll)...), status: 403, code: "model_not_allowed", op: "other"},
		{name: "a known path keeps its methods", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("PUT", "/v1/chat/completions", "", bearer(tokenAll)...), status: 405, code: "method_not_allowed"},
		{name: "a known path keeps its methods (allowed elsewhere)", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("DELETE", "/v1/chat/completions", "", bearer(tokenAll)...), status: 405, code: "method_not_allowed"},
		{name: "a dot segment stays refused", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("GET", "/v1/x/../../admin", "", bearer(tokenAll)...), status: 404, code: "unknown_url"},
		{name: "outside the API prefix stays refused", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("GET", "/admin", "", bearer(tokenAll)...), status: 404, code: "unknown_url"},
		{name: "an unusual method stays refused", clients: "  c: {token_sha256: \"" + tokenSHA(tokenAll) + "\"}\n",
			msgs: request("TRACE", "/v1/new/thing", "", bearer(tokenAll)...), status: 405, code: "method_not_allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, cfgWith(tc.clients))
			res := r.run(tc.msgs...)
			last := res.replies[len(res.replies)-1]
			if tc.status == 0 {
				if f := forwardOf(t, last); f.set["authorization"] != "Bearer sk-test-oai" || f.set[":path"] != "/v1/new/thing" {
					t.Errorf("forwarded %v, want the key's credentials on the same path", f.set)
				}
			} else if l := immediate(t, last); l.status != tc.status || l.code() != tc.code {
				t.Errorf("got %d %s (%s), want %d %s", l.status, l.code(), l.err.Message, tc.status, tc.code)
			}
			if res.call.Operation != tc.op {
				t.Errorf("call operation %q, want %q", res.call.Operation, tc.op)
			}
		})
	}
}

// An upgrade anywhere but the Realtime endpoint is refused (Envoy would wait
// for a body the client sends only after a 101), except on a forwarded
// unknown path, which goes upstream like Realtime, on any key.
func TestUpgradeElsewhere(t *testing.T) {
	up := []string{"connection", "keep-alive, Upgrade", "upgrade", "websocket", "sec-websocket-protocol", "openai-insecure-api-key.sk-client"}
	r := newRig(t, testKeys(""))
	res := r.run(reqHeaders(false, append([]string{":method", "POST", ":path", "/v1/chat/completions", "content-length", "10"}, up...)...))
	if l := immediate(t, res.replies[0]); l.status != 400 || l.code() != "upgrade_not_supported" ||
		l.err.Message != "The chat endpoints do not accept a protocol upgrade." {
		t.Errorf("got %d %s %q", l.status, l.code(), l.err.Message)
	}
	r = newRig(t, testKeys("settings: {unknown_paths: forward}\n"))
	res = r.run(reqHeaders(false, append([]string{":method", "GET", ":path", "/v1/new/socket", "x-request-id", "req-1"}, up...)...))
	f := forwardOf(t, res.replies[0])
	if f.set[":path"] != "/v1/new/socket" || res.replies[0].GetModeOverride().GetRequestBodyMode() != filterv3.ProcessingMode_NONE ||
		res.replies[0].GetModeOverride() == nil || !slices.Contains(f.removed, "sec-websocket-protocol") {
		t.Errorf("forwarded %v removing %v with mode override %v", f.set, f.removed, res.replies[0].GetModeOverride())
	}
	// An upgrade header without connection naming it is no upgrade.
	r = newRig(t, testKeys(""))
	res = r.run(request("POST", "/v1/chat/completions", `{"model":"gpt-4o"}`, "upgrade", "websocket")...)
	if f := forwardOf(t, res.replies[1]); f.set["authorization"] != "Bearer sk-test-oai" {
		t.Errorf("forwarded %v", f.set)
	}
}
