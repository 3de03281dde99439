package policy

import (
	"strings"
	"testing"
)

// TestProviderTable checks every entry is complete: a consumer reading the
// table never meets a hole.
func TestProviderTable(t *testing.T) {
	want := []Provider{ProviderOpenAI, ProviderAzure, ProviderAnthropic, ProviderHuggingFace, ProviderOpenAICompatible}
	specs := Providers()
	if len(specs) != len(want) {
		t.Fatalf("%d providers, want %d", len(specs), len(want))
	}
	for i, s := range specs {
		if s.Provider != want[i] {
			t.Errorf("providers[%d] = %q, want %q", i, s.Provider, want[i])
		}
		if got, ok := LookupProvider(s.Provider); !ok || got.Provider != s.Provider {
			t.Errorf("LookupProvider(%q) = %q, %v", s.Provider, got.Provider, ok)
		}
		for _, api := range []*API{&s.OpenAI, s.Native} {
			if api == nil {
				continue
			}
			if h := api.Auth.Header; h == "" || h != strings.ToLower(h) {
				t.Errorf("%s: auth header %q, want a lower-case name", s.Provider, h)
			}
			if (api.VersionHeader == "") != (api.Version == "") {
				t.Errorf("%s: version header %q with default %q", s.Provider, api.VersionHeader, api.Version)
			}
		}
		if s.DefaultBaseURL != "" && !strings.HasPrefix(s.DefaultBaseURL, "https://") {
			t.Errorf("%s: default base URL %q", s.Provider, s.DefaultBaseURL)
		}
		if s.Probe.Method != "GET" || s.Probe.Request.Path != "/models" {
			t.Errorf("%s: probe %s %s, want GET /models", s.Provider, s.Probe.Method, s.Probe.Request.Path)
		}
	}
	if _, ok := LookupProvider("bogus"); ok {
		t.Error("LookupProvider(bogus) found")
	}
	if got := SpecFor("bogus").Provider; got != ProviderOpenAICompatible {
		t.Errorf("SpecFor(bogus) = %q, want the openai_compatible spec", got)
	}
	if got, want := strings.Join(CredentialHeaders(), ","), "authorization,api-key,x-api-key"; got != want {
		t.Errorf("CredentialHeaders = %s, want %s", got, want)
	}
}

func TestShape(t *testing.T) {
	azure := &Key{Provider: ProviderAzure, Secret: "sk-az", Azure: AzureConfig{APIVersion: "2024-10-21", Deployments: map[string]string{"gpt-4o": "prod-4o"}}}
	anthropic := &Key{Provider: ProviderAnthropic, Secret: "sk-an"}
	tests := []struct {
		name string
		k    *Key
		r    Request
		want Upstream
	}{
		{"openai chat", &Key{Provider: ProviderOpenAI, Secret: "sk-oa"}, Request{Path: "/chat/completions", Query: "?x=1", Model: "gpt-4o", PerModel: true},
			Upstream{Path: "/chat/completions?x=1", Auth: Header{"authorization", "Bearer sk-oa"}}},
		{"huggingface", &Key{Provider: ProviderHuggingFace, Secret: "sk-hf"}, Request{Path: "/embeddings", Model: "m", PerModel: true},
			Upstream{Path: "/embeddings", Auth: Header{"authorization", "Bearer sk-hf"}}},
		{"compatible native is openai-style", &Key{Provider: ProviderOpenAICompatible, Secret: "sk-c"}, Request{Path: "/messages", Native: true, Version: "v"},
			Upstream{Path: "/messages", Auth: Header{"authorization", "Bearer sk-c"}}},
		{"unknown provider", &Key{Provider: "bogus", Secret: "sk-b"}, Request{Path: "/models"},
			Upstream{Path: "/models", Auth: Header{"authorization", "Bearer sk-b"}}},
		{"azure deployment", azure, Request{Path: "/chat/completions", Query: "?api-version=old&x=1", Model: "gpt-4o", PerModel: true},
			Upstream{Path: "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21&x=1", Auth: Header{"api-key", "sk-az"}}},
		{"azure model as deployment", azure, Request{Path: "/embeddings", Model: "a b", PerModel: true},
			Upstream{Path: "/openai/deployments/a%20b/embeddings?api-version=2024-10-21", Auth: Header{"api-key", "sk-az"}}},
		{"azure model with a slash", azure, Request{Path: "/embeddings", Model: "../x", PerModel: true},
			Upstream{Path: "/openai/deployments/..%2Fx/embeddings?api-version=2024-10-21", Auth: Header{"api-key", "sk-az"}}},
		{"azure model dot-dot", azure, Request{Path: "/embeddings", Model: "..", PerModel: true},
			Upstream{Path: "/openai/deployments/%2E%2E/embeddings?api-version=2024-10-21", Auth: Header{"api-key", "sk-az"}}},
		{"azure model dot", azure, Request{Path: "/embeddings", Model: ".", PerModel: true},
			Upstream{Path: "/openai/deployments/%2E/embeddings?api-version=2024-10-21", Auth: Header{"api-key", "sk-az"}}},
		{"azure object endpoint", azure, Request{Path: "/files/f-1"},
			Upstream{Path: "/openai/files/f-1?api-version=2024-10-21", Auth: Header{"api-key", "sk-az"}}},
		{"anthropic native default version", anthropic, Request{Path: "/messages", Native: true},
			Upstream{Path: "/messages", Auth: Header{"x-api-key", "sk-an"}, Version: Header{"anthropic-version", AnthropicVersion}}},
		{"anthropic native client version", anthropic, Request{Path: "/messages", Native: true, Version: "2024-01-01"},
			Upstream{Path: "/messages", Auth: Header{"x-api-key", "sk-an"}, Version: Header{"anthropic-version", "2024-01-01"}}},
		{"anthropic openai-compatible", anthropic, Request{Path: "/chat/completions", Version: "2024-01-01"},
			Upstream{Path: "/chat/completions", Auth: Header{"authorization", "Bearer sk-an"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Shape(tt.k, tt.r); got != tt.want {
				t.Errorf("Shape = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAzureQuery(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "?api-version=2024-10-21"},
		{"?api-version=old&x=1", "?api-version=2024-10-21&x=1"},
		{"?x=1&api-version", "?api-version=2024-10-21&x=1"},
		{"?api%2Dversion=old&x=1", "?api-version=2024-10-21&x=1"},
		{"?api%2dversion=old", "?api-version=2024-10-21"},
		{"?API-Version=old&x=1", "?api-version=2024-10-21&x=1"},
		{"?%61pi-version=old", "?api-version=2024-10-21"},
		{"?api-version%20=old", "?api-version=2024-10-21"},
		{"?api-versio%6E", "?api-version=2024-10-21"},
		{"?api-version%zz=old&x=1", "?api-version=2024-10-21&x=1"},
		{"?api-versions=1&x=api-version", "?api-version=2024-10-21&api-versions=1&x=api-version"},
	}
	for _, tc := range tests {
		if got := azureQuery(tc.in, "2024-10-21"); got != tc.want {
			t.Errorf("azureQuery(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
