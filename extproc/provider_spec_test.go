package extproc

import (
	"slices"
	"testing"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

func opNamed(t *testing.T, path string) *operation {
	t.Helper()
	for i := range operations {
		if operations[i].path == path {
			return &operations[i]
		}
	}
	t.Fatalf("no operation %s", path)
	return nil
}

// TestTargetEveryProvider pins the upstream request of a chat call and a
// native Messages call for every provider of policy's table; a provider
// added to the table without a row here fails.
func TestTargetEveryProvider(t *testing.T) {
	type hdr struct{ name, value string }
	tests := map[policy.Provider]struct {
		doc                string
		chatPath, msgsPath string
		chat, msgs         []hdr
		streamUsage        bool
	}{
		policy.ProviderOpenAI: {doc: `{"provider":"openai","secret":"sk-t1"}`,
			chatPath: "/v1/chat/completions?x=1", msgsPath: "/v1/messages",
			chat: []hdr{{"authorization", "Bearer sk-t1"}}, msgs: []hdr{{"authorization", "Bearer sk-t1"}}, streamUsage: true},
		policy.ProviderAzure: {doc: `{"provider":"azure","base_url":"https://az.test","secret":"sk-t2","azure":{"api_version":"2024-10-21","deployments":{"gpt-4o":"d4o"}}}`,
			chatPath: "/openai/deployments/d4o/chat/completions?api-version=2024-10-21&x=1", msgsPath: "/openai/deployments/d4o/messages?api-version=2024-10-21",
			chat: []hdr{{"api-key", "sk-t2"}}, msgs: []hdr{{"api-key", "sk-t2"}}, streamUsage: true},
		policy.ProviderAnthropic: {doc: `{"provider":"anthropic","secret":"sk-t3"}`,
			chatPath: "/v1/chat/completions?x=1", msgsPath: "/v1/messages",
			chat: []hdr{{"authorization", "Bearer sk-t3"}}, msgs: []hdr{{"x-api-key", "sk-t3"}, {"anthropic-version", "2023-06-01"}}},
		policy.ProviderHuggingFace: {doc: `{"provider":"huggingface","secret":"sk-t4"}`,
			chatPath: "/v1/chat/completions?x=1", msgsPath: "/v1/messages",
			chat: []hdr{{"authorization", "Bearer sk-t4"}}, msgs: []hdr{{"authorization", "Bearer sk-t4"}}, streamUsage: true},
		policy.ProviderOpenAICompatible: {doc: `{"provider":"openai_compatible","base_url":"http://local.test:8080/api/v1","secret":"sk-t5"}`,
			chatPath: "/api/v1/chat/completions?x=1", msgsPath: "/api/v1/messages",
			chat: []hdr{{"authorization", "Bearer sk-t5"}}, msgs: []hdr{{"authorization", "Bearer sk-t5"}}, streamUsage: true},
	}
	chat, msgs := opNamed(t, "/chat/completions"), opNamed(t, "/messages")
	for _, spec := range policy.Providers() {
		t.Run(string(spec.Provider), func(t *testing.T) {
			tt, ok := tests[spec.Provider]
			if !ok {
				t.Fatalf("provider %s has no target expectation", spec.Provider)
			}
			k, err := store.ParseKey("k1", []byte(tt.doc), nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				op   *operation
				path string
				want []hdr
			}{{chat, "/chat/completions", tt.chat}, {msgs, "/messages", tt.msgs}} {
				query := "?x=1"
				if c.op == msgs {
					query = ""
				}
				got := target(k, c.op, c.path, "gpt-4o", query, "")
				wantPath := tt.chatPath
				if c.op == msgs {
					wantPath = tt.msgsPath
				}
				if got.fullPath() != wantPath || got.scheme != k.Scheme || got.authority != k.Host {
					t.Errorf("%s: %s://%s%s, want %s://%s%s", c.path, got.scheme, got.authority, got.fullPath(), k.Scheme, k.Host, wantPath)
				}
				var gotHdr []hdr
				var m mutationMsg
				mut := m.start(nil)
				got.eachHeader(func(name, part1, part2 string) { m.set(name, part1, part2) })
				for _, h := range mut.GetSetHeaders() {
					gotHdr = append(gotHdr, hdr{h.GetHeader().GetKey(), string(h.GetHeader().GetRawValue())})
				}
				if !slices.Equal(gotHdr, c.want) {
					t.Errorf("%s: headers %v, want %v", c.path, gotHdr, c.want)
				}
				for _, h := range gotHdr {
					if h.name != hdrAnthropicVer && !slices.Contains(removedHeaders, h.name) {
						t.Errorf("credential header %s is not removed from client requests", h.name)
					}
				}
			}
			x := &exchange{callRecord: callRecord{settings: &policy.Settings{StreamUsage: true}, entry: &store.Entry{Key: k}}, route: routeResult{op: chat}}
			if got := x.wantsStreamUsage(bodyInfo{stream: true}); got != tt.streamUsage {
				t.Errorf("wantsStreamUsage = %v, want %v", got, tt.streamUsage)
			}
		})
	}
	if want := []string{"authorization", "x-api-key", "api-key", "x-keymux-affinity", "x-envoy-retry-on", "x-envoy-retriable-status-codes"}; !slices.Equal(removedHeaders, want) {
		t.Errorf("removedHeaders = %v, want %v", removedHeaders, want)
	}
}
