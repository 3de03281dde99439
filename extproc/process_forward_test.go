package extproc

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// A forwarded request reaches the chosen key's provider in its own shape:
// upstream cluster, :authority, :path (Azure deployment and api-version),
// credential header, anthropic-version, and the body patched only where
// the rule or stream usage needs it, with content-length to match.
func TestForwardTargets(t *testing.T) {
	const chatBody = `{"model":"gpt-4o","messages":[]}`
	tests := []struct {
		name     string
		settings string
		msgs     []*extprocv3.ProcessingRequest
		key      string
		set      map[string]string // the header mutation, exact
		body     string            // the body mutation, "" = none
		modelIn  string
		modelOut string
		rule     string
		op       string
	}{
		{name: "openai", msgs: request("POST", "/v1/chat/completions", chatBody), key: "oai",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.openai.com", ":path": "/v1/chat/completions",
				"authorization": "Bearer sk-test-oai", "content-length": strconv.Itoa(len(chatBody))},
			modelIn: "gpt-4o", modelOut: "gpt-4o", op: "chat"},
		{name: "openai below the seed's prefix, query kept", msgs: request("POST", "/api/openai/v1/embeddings?trace=1", `{"model":"gpt-4o-mini","input":"x"}`), key: "oai",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.openai.com", ":path": "/v1/embeddings?trace=1",
				"authorization": "Bearer sk-test-oai", "content-length": "35"},
			modelIn: "gpt-4o-mini", modelOut: "gpt-4o-mini", op: "embeddings"},
		{name: "rule rewrites the model in the body", msgs: request("POST", "/v1/chat/completions", `{"model":"gpt-4","messages":[]}`), key: "oai",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.openai.com", ":path": "/v1/chat/completions",
				"authorization": "Bearer sk-test-oai", "content-length": strconv.Itoa(len(chatBody))},
			body: chatBody, modelIn: "gpt-4", modelOut: "gpt-4o", rule: "up", op: "chat"},
		{name: "azure deployment and api-version", msgs: request("POST", "/v1/chat/completions?api-version=2023-01-01&x=1", `{"model":"az-4o"}`), key: "az",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "az.example.com",
				":path": "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21&x=1", "api-key": "sk-test-az", "content-length": "17"},
			modelIn: "az-4o", modelOut: "az-4o", op: "chat"},
		{name: "azure model without a deployment entry", msgs: request("POST", "/v1/embeddings", `{"model":"az-plain"}`), key: "az",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "az.example.com",
				":path": "/openai/deployments/az-plain/embeddings?api-version=2024-10-21", "api-key": "sk-test-az", "content-length": "20"},
			modelIn: "az-plain", modelOut: "az-plain", op: "embeddings"},
		{name: "anthropic messages, default version", msgs: request("POST", "/v1/messages", `{"model":"claude-sonnet","max_tokens":5}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/messages",
				"x-api-key": "sk-test-ant", "anthropic-version": "2023-06-01", "content-length": "40"},
			modelIn: "claude-sonnet", modelOut: "claude-sonnet", op: "chat"},
		{name: "anthropic messages, the client's version", msgs: request("POST", "/v1/messages", `{"model":"claude-sonnet"}`, "anthropic-version", "2024-10-22"), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/messages",
				"x-api-key": "sk-test-ant", "anthropic-version": "2024-10-22", "content-length": "25"},
			modelIn: "claude-sonnet", modelOut: "claude-sonnet", op: "chat"},
		{name: "anthropic's OpenAI-compatible endpoint takes a bearer", msgs: request("POST", "/v1/chat/completions", `{"model":"claude-sonnet"}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/chat/completions",
				"authorization": "Bearer sk-test-ant", "content-length": "25"},
			modelIn: "claude-sonnet", modelOut: "claude-sonnet", op: "chat"},
		{name: "huggingface", msgs: request("POST", "/v1/chat/completions", `{"model":"llama-3"}`), key: "hf",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "router.huggingface.co", ":path": "/v1/chat/completions",
				"authorization": "Bearer hf-test-hf", "content-length": "19"},
			modelIn: "llama-3", modelOut: "llama-3", op: "chat"},
		{name: "openai_compatible over http", msgs: request("POST", "/v1/completions", `{"model":"qwen","prompt":"x"}`), key: "compat",
			set: map[string]string{"x-keymux-upstream": "http", ":authority": "vllm.local:8000", ":path": "/v1/completions",
				"authorization": "Bearer sk-test-compat", "content-length": "29"},
			modelIn: "qwen", modelOut: "qwen", op: "text_completion"},
		{name: "chunked body: no content-length added",
			msgs: []*extprocv3.ProcessingRequest{reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions", "x-request-id", "req-1"), reqBody(`{"model":"qwen"}`, true)}, key: "compat",
			set: map[string]string{"x-keymux-upstream": "http", ":authority": "vllm.local:8000", ":path": "/v1/chat/completions",
				"authorization": "Bearer sk-test-compat"},
			modelIn: "qwen", modelOut: "qwen", op: "chat"},
		{name: "body-less request is routed on its headers", settings: "settings: {strategy: round_robin}\n",
			msgs: request("GET", "/v1/files/file-1?limit=2", ""), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/files/file-1?limit=2",
				"authorization": "Bearer sk-test-ant"},
			op: "files"},
		{name: "optional model absent: any key", msgs: request("POST", "/v1/moderations", `{"input":"x"}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/moderations",
				"authorization": "Bearer sk-test-ant", "content-length": "13"},
			op: "moderations"},
		{name: "a body on an object endpoint is passed on", msgs: request("DELETE", "/v1/files/file-1", `{"x":1}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/files/file-1",
				"authorization": "Bearer sk-test-ant"},
			op: "files"},
		{name: "anthropic count_tokens", msgs: request("POST", "/v1/messages/count_tokens", `{"model":"claude-sonnet","messages":[]}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/messages/count_tokens",
				"x-api-key": "sk-test-ant", "anthropic-version": "2023-06-01", "content-length": "39"},
			modelIn: "claude-sonnet", modelOut: "claude-sonnet", op: "count_tokens"},
		{name: "anthropic message batch: an Anthropic key, body as is", settings: "settings: {strategy: round_robin}\n",
			msgs: request("POST", "/v1/messages/batches", `{"requests":[{"custom_id":"a","params":{"model":"gpt-4o"}}]}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/messages/batches",
				"x-api-key": "sk-test-ant", "anthropic-version": "2023-06-01"},
			op: "batches"},
		{name: "anthropic batch results", msgs: request("GET", "/v1/messages/batches/msgbatch_1/results", "", "anthropic-version", "2023-06-01"), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/messages/batches/msgbatch_1/results",
				"x-api-key": "sk-test-ant", "anthropic-version": "2023-06-01"},
			op: "batches"},
		{name: "unknown path forwarded by the JSON body's model, rule applied", settings: "settings: {unknown_paths: forward}\n",
			msgs: request("POST", "/v1/some/new/endpoint?v=2", `{"model":"gpt-4","x":1}`), key: "oai",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.openai.com", ":path": "/v1/some/new/endpoint?v=2",
				"authorization": "Bearer sk-test-oai", "content-length": "24"},
			body: `{"model":"gpt-4o","x":1}`, modelIn: "gpt-4", modelOut: "gpt-4o", rule: "up", op: "other"},
		{name: "unknown path on azure: the deployment of the body's model", settings: "settings: {unknown_paths: forward}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":"az-4o"}`), key: "az",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "az.example.com",
				":path": "/openai/deployments/prod-4o/new/thing?api-version=2024-10-21", "api-key": "sk-test-az", "content-length": "17"},
			modelIn: "az-4o", modelOut: "az-4o", op: "other"},
		{name: "unknown path without a body: any key", settings: "settings: {unknown_paths: forward}\n",
			msgs: request("PATCH", "/v1/new/thing", ""), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/new/thing",
				"authorization": "Bearer sk-test-ant"},
			op: "other"},
		{name: "unknown path with a body that is not JSON: any key, body as is", settings: "settings: {unknown_paths: forward}\n",
			msgs: []*extprocv3.ProcessingRequest{reqHeaders(false, ":method", "POST", ":path", "/v1/new/upload", "content-type", "text/plain",
				"content-length", "18", "x-request-id", "req-1"), reqBody(`{"model":"gpt-4o"}`, true)}, key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/new/upload",
				"authorization": "Bearer sk-test-ant"},
			op: "other"},
		{name: "unknown path with JSON keymux cannot read: any key, body as is", settings: "settings: {unknown_paths: forward}\n",
			msgs: request("POST", "/v1/new/thing", `{"model":{"id":"x"}}`), key: "ant",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.anthropic.com", ":path": "/v1/new/thing",
				"authorization": "Bearer sk-test-ant"},
			op: "other"},
		{name: "realtime: the query's model, rule applied, key subprotocol dropped",
			msgs: []*extprocv3.ProcessingRequest{realtime("/v1/realtime?model=gpt-4&x=1", "sec-websocket-protocol", "realtime, openai-insecure-api-key.sk-client, openai-beta.realtime-v1")}, key: "oai",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "api.openai.com", ":path": "/v1/realtime?model=gpt-4o&x=1",
				"authorization": "Bearer sk-test-oai", "sec-websocket-protocol": "realtime, openai-beta.realtime-v1"},
			modelIn: "gpt-4", modelOut: "gpt-4o", rule: "up", op: "realtime"},
		{name: "realtime on azure: /openai/realtime with api-version and deployment",
			msgs: []*extprocv3.ProcessingRequest{realtime("/v1/realtime?x=1&model=az-4o&deployment=other&api-version=1")}, key: "az",
			set: map[string]string{"x-keymux-upstream": "https", ":authority": "az.example.com",
				":path": "/openai/realtime?api-version=2024-10-21&x=1&deployment=prod-4o", "api-key": "sk-test-az"},
			modelIn: "az-4o", modelOut: "az-4o", op: "realtime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(tc.settings))
			// The client's own credentials and affinity hint never go upstream.
			tc.msgs[0].GetRequestHeaders().Headers.Headers = append(tc.msgs[0].GetRequestHeaders().Headers.Headers,
				hv("x-api-key", "client-secret"), hv("api-key", "client-secret"), hv("x-keymux-affinity", "a"))
			res := r.run(tc.msgs...)
			if len(res.replies) != len(tc.msgs) {
				t.Fatalf("%d replies to %d messages", len(res.replies), len(tc.msgs))
			}
			if len(tc.msgs) == 2 {
				if h := res.replies[0].GetRequestHeaders(); h == nil || h.GetResponse().GetHeaderMutation() != nil || h.GetResponse().GetClearRouteCache() {
					t.Fatalf("headers reply %v, want an empty continue while the body is awaited", res.replies[0])
				}
			}
			f := forwardOf(t, res.replies[len(res.replies)-1])
			if !maps.Equal(f.set, tc.set) {
				t.Errorf("set headers\n %v\nwant\n %v", f.set, tc.set)
			}
			if want := []string{"authorization", "x-api-key", "api-key", "x-keymux-affinity", "x-envoy-retry-on", "x-envoy-retriable-status-codes"}; !slices.Equal(f.removed, want) {
				t.Errorf("removed headers %v, want %v", f.removed, want)
			}
			if string(f.body) != tc.body {
				t.Errorf("body mutation %q, want %q", f.body, tc.body)
			}
			if !f.clearRoute {
				t.Errorf("clear_route_cache not set: Envoy would keep the route chosen for the client's :authority")
			}
			wantMeta := map[string]string{"key_id": tc.key, "model_original": tc.modelIn, "model_final": tc.modelOut}
			if !strings.HasPrefix(f.metadata["call_id"], r.srv.callPrefix) {
				t.Errorf("call_id %q, want a new id of this server", f.metadata["call_id"])
			}
			delete(f.metadata, "call_id")
			if !maps.Equal(f.metadata, wantMeta) {
				t.Errorf("dynamic metadata %v, want %v", f.metadata, wantMeta)
			}
			c := res.call
			if c.KeyID != tc.key || c.ModelOriginal != tc.modelIn || c.ModelFinal != tc.modelOut || c.RuleID != tc.rule ||
				c.Operation != tc.op || c.Local || c.Strategy != "round_robin" || c.RequestID != "req-1" {
				t.Errorf("call %+v, want key %s model %s→%s rule %q op %s", c, tc.key, tc.modelIn, tc.modelOut, tc.rule, tc.op)
			}
			if len(r.obs.begins) != 1 || r.obs.begins[0].KeyID != tc.key {
				t.Errorf("Observer.Begin got %v, want once for key %s", r.obs.begins, tc.key)
			}
			if n := r.entry(tc.key).RT.Requests(); n != 1 {
				t.Errorf("key %s counted %d requests, want 1", tc.key, n)
			}
		})
	}
}

// The client's identity and the trace context travel with the request: the
// client id in the metadata and the call, the Observer's traceparent
// upstream, the client's trace headers and path in the call.
func TestForwardClientAndTrace(t *testing.T) {
	r := newRig(t, testKeys(settingsClientKeys))
	r.obs.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	body := `{"model":"gpt-4o"}`
	res := r.run(request("POST", "/v1/chat/completions?x=1", body, "authorization", "bearer  "+tokenLimited+" ",
		"traceparent", "00-11111111111111111111111111111111-2222222222222222-01", "tracestate", "k=v")...)
	f := forwardOf(t, res.replies[1])
	if got := f.set["traceparent"]; got != r.obs.traceparent {
		t.Errorf("traceparent upstream %q, want the Observer's %q", got, r.obs.traceparent)
	}
	if got := f.metadata["client_id"]; got != "limited" {
		t.Errorf("metadata client_id %q, want limited", got)
	}
	c := res.call
	if c.ClientID != "limited" || c.TraceParent != "00-11111111111111111111111111111111-2222222222222222-01" ||
		c.TraceState != "k=v" || c.Method != "POST" || c.Path != "/v1/chat/completions" || !c.Start.Equal(t0) || !c.End.Equal(t0) {
		t.Errorf("call %+v", c)
	}
	// x-api-key is the other way a client presents its token.
	res = r.run(request("POST", "/v1/chat/completions", body, "x-api-key", tokenAll)...)
	if forwardOf(t, res.replies[1]).metadata["client_id"] != "all" || res.call.ClientID != "all" {
		t.Errorf("x-api-key client: call %+v", res.call)
	}
	// A JWT client is let through without a client id.
	j := newRig(t, testKeys(settingsJWT))
	res = j.run(verified(`{"role":["x","ROLE_API_USER"]}`, chat("gpt-4o"))...)
	if f := forwardOf(t, res.replies[1]); f.metadata["key_id"] != "oai" || f.metadata["client_id"] != "" || res.call.ClientID != "" {
		t.Errorf("jwt client: metadata %v call %+v", f.metadata, res.call)
	}
}

// settings.stream_usage asks OpenAI-style upstreams for the final usage
// chunk of chat and text completion streams when the client did not.
func TestStreamUsageRequested(t *testing.T) {
	tests := []struct {
		name     string
		settings string
		path     string
		body     string
		want     string // the body sent upstream; "" = unchanged
	}{
		{name: "absent: inserted first", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":true}`,
			want: `{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true}`},
		{name: "null: replaced", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":true,"stream_options":null}`,
			want: `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "object: member added", path: "/v1/completions", body: `{"model":"qwen","stream":true,"stream_options":{"x":1}}`,
			want: `{"model":"qwen","stream":true,"stream_options":{"x":1,"include_usage":true}}`},
		{name: "include_usage false: set", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false}}`,
			want: `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "with a rule: both patches", path: "/v1/chat/completions", body: `{"model":"gpt-4","stream":true}`,
			want: `{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true}`},
		{name: "client asked already", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "not streaming", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":false}`},
		{name: "setting off", settings: "settings: {stream_usage: false}\n", path: "/v1/chat/completions", body: `{"model":"gpt-4o","stream":true}`},
		{name: "anthropic messages", path: "/v1/messages", body: `{"model":"claude-sonnet","stream":true}`},
		{name: "anthropic key behind chat completions", path: "/v1/chat/completions", body: `{"model":"claude-sonnet","stream":true}`},
		{name: "other operation", path: "/v1/responses", body: `{"model":"gpt-4o","stream":true}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(tc.settings))
			res := r.run(request("POST", tc.path, tc.body)...)
			f := forwardOf(t, res.replies[1])
			want, n := tc.want, len(tc.want)
			if want == "" {
				n = len(tc.body)
			}
			if string(f.body) != want || f.set["content-length"] != strconv.Itoa(n) {
				t.Errorf("body %q content-length %s, want %q %d", f.body, f.set["content-length"], want, n)
			}
			if !res.call.Stream != (tc.name == "not streaming") {
				t.Errorf("call.Stream = %v", res.call.Stream)
			}
		})
	}
}

// A body that arrives in more than one message (STREAMED request mode) is
// read from its first message; later ones pass through untouched. A body
// message before any headers is passed through as well.
func TestRequestBodyPassThrough(t *testing.T) {
	r := newRig(t, testKeys(""))
	res := r.run(reqHeaders(false, ":method", "POST", ":path", "/v1/chat/completions"),
		reqBody(`{"model":"qwen"}`, false), reqBody(`   `, false), reqBody(``, true))
	if f := forwardOf(t, res.replies[1]); f.metadata["key_id"] != "compat" {
		t.Fatalf("first body chunk: %v", f.metadata)
	}
	for i, resp := range res.replies[2:] {
		if f := forwardOf(t, resp); len(f.set) != 0 || f.body != nil || f.clearRoute {
			t.Errorf("chunk %d: %+v, want an empty continue", i+2, f)
		}
	}
	if n := r.entry("compat").RT.Requests(); n != 1 {
		t.Errorf("compat counted %d requests, want 1", n)
	}

	// A body before the headers (Envoy never does this) changes nothing.
	st := newStream(t, reqBody(`{"model":"qwen"}`, true))
	if err := r.srv.Process(st); err != nil || len(st.out) != 1 {
		t.Fatalf("Process: %v, %d replies", err, len(st.out))
	}
	if f := forwardOf(t, st.out[0]); len(f.set) != 0 || f.body != nil {
		t.Errorf("body before headers: %+v, want an empty continue", f)
	}
}

// /v1/models and /v1/models/{id} are answered by keymux from the pool: the
// models enabled keys serve by name and the rules' source models, only
// those the client may use.
func TestModelsAnsweredLocally(t *testing.T) {
	const all = `{"object":"list","data":[` +
		`{"id":"az-4o","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"az-plain","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"claude-sonnet","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"gpt-4","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"gpt-4o","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"llama-3","object":"model","created":0,"owned_by":"keymux"},` +
		`{"id":"qwen","object":"model","created":0,"owned_by":"keymux"}]}`
	tests := []struct {
		name, path, token, want, op string
	}{
		{"list", "/v1/models", tokenAll, all, "list_models"},
		{"list, seed prefix", "/api/openai/models", tokenAll, all, "list_models"},
		{"list for a restricted client", "/v1/models", tokenLimited, `{"object":"list","data":[` +
			`{"id":"gpt-4o","object":"model","created":0,"owned_by":"keymux"},` +
			`{"id":"qwen","object":"model","created":0,"owned_by":"keymux"}]}`, "list_models"},
		{"one", "/v1/models/gpt-4", tokenAll, `{"id":"gpt-4","object":"model","created":0,"owned_by":"keymux"}`, "retrieve_model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(settingsClientKeys))
			res := r.run(request("GET", tc.path, "", bearer(tc.token)...)...)
			l := immediate(t, res.replies[0])
			if l.status != 200 || string(l.body) != tc.want || l.headers["content-type"] != "application/json" {
				t.Fatalf("got %d %v\n%s\nwant 200\n%s", l.status, l.headers, l.body, tc.want)
			}
			if c := res.call; !c.Local || c.Status != 200 || c.ErrorCode != "" || c.Operation != tc.op || c.KeyID != "" {
				t.Errorf("call %+v, want a local 200 %s", c, tc.op)
			}
		})
	}
	t.Run("empty pool", func(t *testing.T) {
		r := newRig(t, "keys: {}\n")
		l := immediate(t, r.run(request("GET", "/v1/models", "")...).replies[0])
		if l.status != 200 || string(l.body) != `{"object":"list","data":[]}` {
			t.Fatalf("got %d %s", l.status, l.body)
		}
	})
}

// Older Envoys send header values in value rather than raw_value; a
// content-length that is not a number is ignored (the body's own length
// is checked).
func TestRequestHeadersInValueField(t *testing.T) {
	r := newRig(t, testKeys(settingsClientKeys))
	body := `{"model":"gpt-4o"}`
	msgs := request("POST", "/v1/chat/completions", body, bearer(tokenAll)...)
	for _, h := range msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
		h.Value, h.RawValue = string(h.RawValue), nil
		if h.Key == "content-length" {
			h.Value = "18x"
		}
	}
	res := r.run(msgs...)
	f := forwardOf(t, res.replies[1])
	if f.metadata["key_id"] != "oai" || f.metadata["client_id"] != "all" || f.set["content-length"] != "" || res.call.RequestID != "req-1" {
		t.Errorf("forwarded %v %v, call %+v", f.metadata, f.set, res.call)
	}
}

// The affinity strategy keeps requests that share an affinity key on one
// upstream key: x-keymux-affinity, else the body's prompt_cache_key, else
// its user. Requests without one are spread.
func TestAffinityKeepsAKey(t *testing.T) {
	r := newRig(t, `
settings: {strategy: affinity}
keys:
  k1: {provider: openai, secret: sk-test-k1}
  k2: {provider: openai, secret: sk-test-k2}
  k3: {provider: openai, secret: sk-test-k3}
  k4: {provider: openai, secret: sk-test-k4}
`)
	keyOf := func(body string, kv ...string) string {
		t.Helper()
		return forwardOf(t, r.run(request("POST", "/v1/chat/completions", body, kv...)...).replies[1]).metadata["key_id"]
	}
	used := map[string]bool{}
	for _, u := range []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"} {
		want := keyOf(`{"model":"gpt-4o","user":"` + u + `"}`)
		used[want] = true
		for _, tc := range []struct {
			body string
			kv   []string
		}{
			{`{"model":"gpt-4o","user":"` + u + `"}`, nil},
			{`{"user":"someone-else","model":"gpt-4o","prompt_cache_key":"` + u + `"}`, nil},
			{`{"model":"gpt-4o","user":"someone-else"}`, []string{"x-keymux-affinity", u}},
		} {
			if got := keyOf(tc.body, tc.kv...); got != want {
				t.Errorf("affinity %s: %s %v went to %s, want %s", u, tc.body, tc.kv, got, want)
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("8 affinity keys all on %v", used)
	}
	spread := map[string]bool{}
	for range 8 {
		spread[keyOf(`{"model":"gpt-4o"}`)] = true
	}
	if len(spread) < 2 {
		t.Errorf("requests without an affinity key all went to %v", spread)
	}
}

// Azure object endpoints live below /openai, without a deployment; the
// key's api-version replaces the client's.
func TestAzureObjectEndpoint(t *testing.T) {
	r := newRig(t, `
keys:
  az: {provider: azure, base_url: "https://az.example.com/", secret: sk-test-az, azure: {api_version: "2024-10-21"}}
`)
	res := r.run(request("GET", "/v1/files/file-1?limit=2&api-version=2020-01-01", "")...)
	f := forwardOf(t, res.replies[0])
	want := map[string]string{"x-keymux-upstream": "https", ":authority": "az.example.com",
		":path": "/openai/files/file-1?api-version=2024-10-21&limit=2", "api-key": "sk-test-az"}
	if !maps.Equal(f.set, want) || f.body != nil {
		t.Errorf("set headers %v body %q, want %v and no body", f.set, f.body, want)
	}
	if f.metadata["key_id"] != "az" || f.metadata["model_original"] != "" || res.call.Operation != "files" {
		t.Errorf("metadata %v call %+v", f.metadata, res.call)
	}
}

// realtime is the request headers of a WebSocket upgrade to path: Envoy
// sends them with end_of_stream false (the upgraded stream is the body).
func realtime(path string, kv ...string) *extprocv3.ProcessingRequest {
	return reqHeaders(false, append([]string{":method", "GET", ":path", path, ":authority", "gw.local", ":scheme", "http",
		"x-request-id", "req-1", "connection", "Upgrade", "upgrade", "websocket", "sec-websocket-version", "13",
		"sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="}, kv...)...)
}
