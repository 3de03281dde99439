package emulator

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/envoy"
)

// startUsage runs envoy/testdata/usage.good.yaml (ext_proc, json_to_metadata,
// sse_to_metadata, http_grpc) against a processor, an access-log service and
// an upstream answering contentType and body, written in pieces of chunk
// bytes (0: at once) with a flush after each.
func startUsage(t *testing.T, contentType, body string, chunk int) (*Emulator, *fakeALS, *fakeProc) {
	t.Helper()
	b, err := envoy.LoadBootstrap("../testdata/usage.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	als := startALS(t, 0)
	proc := startProc(t, continueAll)
	up := startUpstreamRaw(t, func(w http.ResponseWriter, _ *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		if chunk <= 0 {
			_, _ = io.WriteString(w, body)
			return
		}
		for s := body; s != ""; {
			n := min(chunk, len(s))
			_, _ = io.WriteString(w, s[:n])
			w.(http.Flusher).Flush()
			s = s[n:]
		}
	})
	em, err := New(Config{
		Bootstrap:  b,
		ListenAddr: "127.0.0.1:0",
		ClusterAddrs: map[string]string{
			"keymux_extproc": proc.addr, "keymux_als": als.addr, "up": up,
		},
		Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	return em, als, proc
}

const (
	openAISSE = "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n" +
		"data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n" +
		"data: [DONE]\n\n"
	anthropicSSE = "event: message_start\r\n" +
		"data: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n" +
		"event: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\n" +
		"event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\r\n\r\n" +
		"event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n" +
		"event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n"
)

// TestUsageMetadata: json_to_metadata and sse_to_metadata write what
// Envoy's would, the access-log entry carries it, the client gets the body
// unchanged, and the processor gets no response body message.
func TestUsageMetadata(t *testing.T) {
	num := structpb.NewNumberValue
	str := structpb.NewStringValue
	type md map[string]map[string]*structpb.Value
	for _, tc := range []struct {
		name        string
		contentType string
		body        string
		chunk       int
		want        md // namespaces checked exactly; others ignored
	}{
		// Envoy's json_to_metadata documentation example.
		{name: "json doc example present", contentType: "application/json", body: `{"version":"1.0.0","messages":[]}`,
			want: md{"envoy.lb": {"version": str("1.0.0")}, "keymux.usage": nil}},
		{name: "json doc example missing", contentType: "application/json", body: `{"messages":[]}`,
			want: md{"envoy.lb": {"version": str("unknown")}}},
		{name: "json doc example error", contentType: "application/json", body: `not json`,
			want: md{"envoy.lb": {"version": str("error")}, "keymux.usage": nil}},
		{name: "json content type not allowed", contentType: "application/json; charset=utf-8", body: `{"version":"1"}`,
			want: md{"envoy.lb": nil, "keymux.usage": nil}},
		{name: "openai json", contentType: "application/json",
			body: `{"id":"c1","usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}`,
			want: md{"keymux.usage": {"input_tokens": num(12), "output_tokens": num(34)}, "envoy.lb": {"version": str("unknown")}}},
		{name: "anthropic json", contentType: "application/json",
			body: `{"id":"m1","usage":{"input_tokens":5,"output_tokens":7}}`,
			want: md{"keymux.usage": {"input_tokens": num(5), "output_tokens": num(7)}}},
		// Envoy's sse_to_metadata documentation example (usage.total_tokens).
		{name: "openai sse", contentType: "text/event-stream", body: openAISSE,
			want: md{"keymux.usage": {"input_tokens": num(9), "output_tokens": num(3)}, "envoy.lb": {"tokens": num(12)}}},
		{name: "openai sse in 7-byte reads", contentType: "text/event-stream; charset=utf-8", body: openAISSE, chunk: 7,
			want: md{"keymux.usage": {"input_tokens": num(9), "output_tokens": num(3)}, "envoy.lb": {"tokens": num(12)}}},
		{name: "anthropic sse", contentType: "text/event-stream", body: anthropicSSE, chunk: 5,
			want: md{"keymux.usage": {"input_tokens": num(25), "output_tokens": num(15)}, "envoy.lb": {"tokens": num(-1)}}},
		{name: "sse without usage", contentType: "text/event-stream", body: "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
			want: md{"keymux.usage": nil, "envoy.lb": {"tokens": num(-1)}}},
		{name: "sse last event without blank line", contentType: "text/event-stream",
			body: "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
			want: md{"keymux.usage": {"input_tokens": num(1), "output_tokens": num(2)}, "envoy.lb": {"tokens": num(3)}}},
		// No data field: the event is skipped, no rule is "missing" either.
		{name: "sse event without data field", contentType: "text/event-stream", body: `{"usage":{"prompt_tokens":1}}`,
			want: md{"keymux.usage": nil, "envoy.lb": nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			em, als, proc := startUsage(t, tc.contentType, tc.body, tc.chunk)
			req, _ := http.NewRequestWithContext(t.Context(), "POST", em.URL()+"/v1/chat/completions", strings.NewReader(`{}`))
			res := roundTrip(t, req)
			if res.status != 200 || res.body != tc.body {
				t.Fatalf("client got %d %q, want 200 and the upstream body", res.status, res.body)
			}
			es := entries(als.next(t))
			if len(es) != 1 {
				t.Fatalf("%d entries", len(es))
			}
			got := es[0].GetCommonProperties().GetMetadata().GetFilterMetadata()
			for ns, fields := range tc.want {
				s := got[ns]
				if len(s.GetFields()) != len(fields) {
					t.Errorf("namespace %s = %v, want %v", ns, s, fields)
					continue
				}
				for k, v := range fields {
					if g := s.GetFields()[k]; g == nil || g.String() != v.String() {
						t.Errorf("%s.%s = %v, want %v", ns, k, g, v)
					}
				}
			}
			ps := proc.firstStream(t)
			ps.endCode(t)
			for _, m := range ps.messages() {
				if k := kindOf(m); k == "response_body" {
					t.Fatalf("processor got %s", k)
				}
			}
		})
	}
}

// TestSSEEventSplit: events end at a blank line with any line ending.
func TestSSEEventSplit(t *testing.T) {
	for _, tc := range []struct {
		in       string
		eos      bool
		ev, rest string
		ok       bool
	}{
		{"data: a\n\ndata: b\n\n", false, "data: a\n", "data: b\n\n", true},
		{"data: a\r\n\r\nx", false, "data: a\r\n", "x", true},
		{"data: a\r\rx", false, "data: a\r", "x", true},
		{"data: a\r", false, "", "data: a\r", false},
		{"data: a\n", false, "", "data: a\n", false},
		{"data: a", true, "data: a", "", true},
		{"\n\ndata: a", false, "", "\ndata: a", true},
	} {
		ev, rest, ok := nextSSEEvent([]byte(tc.in), tc.eos)
		if ok != tc.ok || (ok && (string(ev) != tc.ev || string(rest) != tc.rest)) {
			t.Errorf("nextSSEEvent(%q, %v) = %q, %q, %v; want %q, %q, %v", tc.in, tc.eos, ev, rest, ok, tc.ev, tc.rest, tc.ok)
		}
	}
	if d, ok := sseData([]byte("event: x\ndata: a\ndata:b\n: comment")); !ok || d != "a\nb" {
		t.Errorf("sseData = %q %v", d, ok)
	}
}

// TestUsageConfigRefused: fields outside the emulated subset make New fail
// with a message naming them.
func TestUsageConfigRefused(t *testing.T) {
	const jsonType = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata\n"
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"json_to_metadata request rules", jsonType,
			jsonType + "              request_rules: { rules: [{ selectors: [{ key: a }], on_present: { key: a } }] }\n",
			"json_to_metadata: request_rules are not emulated"},
		{"json_to_metadata content type regex", "response_rules:\n                rules:",
			"response_rules:\n                allow_content_types_regex: { google_re2: {}, regex: \"application/.*\" }\n                rules:",
			"json_to_metadata: allow_content_types_regex is not emulated"},
		{"json_to_metadata on_missing without value", "on_missing: { metadata_namespace: envoy.lb, key: version, value: unknown,",
			"on_missing: { metadata_namespace: envoy.lb, key: version,",
			"cannot specify on_missing rule without non-empty value"},
		{"http_grpc google_grpc", "grpc_service: { envoy_grpc: { cluster_name: keymux_als } }",
			"grpc_service: { google_grpc: { target_uri: \"127.0.0.1:1\", stat_prefix: als } }",
			"http_grpc: only grpc_service.envoy_grpc is emulated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := fixtureWith(t, "../../testdata/usage.good.yaml", tc.old, tc.new)
			_, err := New(Config{Bootstrap: b, ListenAddr: "127.0.0.1:0"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
