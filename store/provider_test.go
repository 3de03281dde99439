package store

import (
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
)

// TestParseKeyEveryProvider walks the provider table: every provider it
// lists is accepted, gets its default base URL (or requires one), and has
// the azure section exactly when the table says so.
func TestParseKeyEveryProvider(t *testing.T) {
	var names []string
	for _, spec := range policy.Providers() {
		p := string(spec.Provider)
		names = append(names, p)
		t.Run(p, func(t *testing.T) {
			azure := ""
			if spec.Azure {
				azure = `,"azure":{"api_version":"2024-10-21"}`
			}
			k, err := ParseKey("k1", []byte(`{"provider":"`+p+`","secret":"sk-test-1"`+azure+`}`), nil)
			switch {
			case spec.DefaultBaseURL == "":
				want := `keys/k1: field "base_url": required for provider ` + p
				if err == nil || err.Error() != want {
					t.Fatalf("without base_url: err %v, want %s", err, want)
				}
			case err != nil:
				t.Fatal(err)
			case k.Provider != spec.Provider || k.BaseURL != spec.DefaultBaseURL:
				t.Fatalf("key %s at %s, want %s at %s", k.Provider, k.BaseURL, p, spec.DefaultBaseURL)
			}
			k, err = ParseKey("k1", []byte(`{"provider":"`+p+`","base_url":"https://up.test/v1","secret":"sk-test-1"`+azure+`}`), nil)
			if err != nil || k.Provider != spec.Provider || k.BaseURL != "https://up.test/v1" {
				t.Fatalf("with base_url: %+v, %v", k, err)
			}
			if spec.Azure {
				_, err = ParseKey("k1", []byte(`{"provider":"`+p+`","base_url":"https://up.test","secret":"sk-test-1"}`), nil)
				if want := `keys/k1: field "azure.api_version": required for provider ` + p; err == nil || err.Error() != want {
					t.Fatalf("azure without api_version: err %v, want %s", err, want)
				}
				return
			}
			_, err = ParseKey("k1", []byte(`{"provider":"`+p+`","base_url":"https://up.test","secret":"sk-test-1","azure":{"api_version":"v1"}}`), nil)
			if want := `keys/k1: field "azure": only for provider azure`; err == nil || err.Error() != want {
				t.Fatalf("azure section: err %v, want %s", err, want)
			}
		})
	}
	_, err := ParseKey("k1", []byte(`{"provider":"bogus","secret":"sk-test-1"}`), nil)
	if want := `keys/k1: field "provider": unknown provider "bogus" (want ` + strings.Join(names, ", ") + ")"; err == nil || err.Error() != want {
		t.Fatalf("unknown provider: err %v, want %s", err, want)
	}
}
