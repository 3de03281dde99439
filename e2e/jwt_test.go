package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keymux/keymux/envoy"
)

const jwtClaimConfig = `
settings:
  auth: {mode: jwt_claim, claim: role, value: ROLE_API_USER}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
`

// hs256 signs claims with key (HS256), the one algorithm a test can sign
// without generating a key pair.
func hs256(t *testing.T, key []byte, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// jwtBootstrap is envoy.yaml with the jwt snippet's jwt_authn filter in
// front of ext_proc, its provider switched to a local JWKS holding key.
func jwtBootstrap(t *testing.T, key []byte) string {
	t.Helper()
	b, err := envoy.LoadBootstrap("../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := envoy.LoadSnippet("../envoy/ingress-jwt-snippet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.HTTPFilters[0].GetName() != "envoy.filters.http.jwt_authn" {
		t.Fatalf("snippet's first filter is %s", s.HTTPFilters[0].GetName())
	}
	ja := &jwtv3.JwtAuthentication{}
	if err := s.HTTPFilters[0].GetTypedConfig().UnmarshalTo(ja); err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kty": "oct", "alg": "HS256", "k": base64.RawURLEncoding.EncodeToString(key)}}})
	for _, p := range ja.GetProviders() {
		p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(jwks)}}}
	}
	jaAny, err := anypb.New(ja)
	if err != nil {
		t.Fatal(err)
	}
	filter := s.HTTPFilters[0]
	filter.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: jaAny}

	fc := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fc.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	hcm.HttpFilters = append([]*hcmv3.HttpFilter{filter}, hcm.HttpFilters...)
	hcmAny, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	fc.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny}
	return writeBootstrap(t, b)
}

// writeBootstrap writes b as JSON (which YAML loaders read) to a temporary
// file for keymux dev --envoy.
func writeBootstrap(t *testing.T, b *bootstrapv3.Bootstrap) string {
	t.Helper()
	out, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "envoy.json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestJWTClaim: with auth.mode jwt_claim, keymux trusts only the claims
// jwt_authn verified (its dynamic metadata), never a client's header.
func TestJWTClaim(t *testing.T) {
	forged := base64.RawURLEncoding.EncodeToString([]byte(`{"role":"ROLE_API_USER"}`))
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	hdr := func(kv ...string) map[string]string {
		m := map[string]string{"content-type": "application/json"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}

	t.Run("shipped envoy.yaml", func(t *testing.T) {
		g := startGateway(t, jwtClaimConfig)
		for _, tc := range []struct {
			name   string
			header map[string]string
		}{
			{"no JWT", hdr()},
			{"forged x-jwt-payload", hdr("x-jwt-payload", forged)},
			{"forged padded x-jwt-payload", hdr("X-JWT-Payload", forged+"==")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := g.do("POST", "/v1/chat/completions", tc.header, body)
				if resp.StatusCode != 401 || errCode(t, b) != "missing_api_key" {
					t.Fatalf("got %d %s, want 401 missing_api_key", resp.StatusCode, b)
				}
			})
		}
		if n := len(g.requests()); n != 0 {
			t.Fatalf("%d refused requests reached the upstream", n)
		}
	})

	t.Run("jwt snippet", func(t *testing.T) {
		key := []byte("e2e-test-hmac-key-0123456789abcdef")
		g := startGateway(t, jwtClaimConfig, "--envoy", jwtBootstrap(t, key))
		exp := time.Now().Add(10 * time.Minute).Unix()
		tok := func(role string) string {
			return "Bearer " + hs256(t, key, map[string]any{"iss": "https://idp.example.com/", "aud": "keymux", "exp": exp, "role": role})
		}
		for _, tc := range []struct {
			name   string
			header map[string]string
			status int
			code   string // keymux's error code; "" for a success or Envoy's own reply
		}{
			{"verified JWT with the claim", hdr("authorization", tok("ROLE_API_USER")), 200, ""},
			{"verified JWT with the claim, forged header ignored", hdr("authorization", tok("ROLE_API_USER"), "x-jwt-payload", base64.RawURLEncoding.EncodeToString([]byte(`{"role":"x"}`))), 200, ""},
			{"verified JWT without the claim", hdr("authorization", tok("ROLE_GUEST")), 403, "insufficient_permissions"},
			{"verified JWT without the claim, forged header", hdr("authorization", tok("ROLE_GUEST"), "x-jwt-payload", forged), 403, "insufficient_permissions"},
			{"no JWT: jwt_authn answers", hdr("x-jwt-payload", forged), 401, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := g.do("POST", "/v1/chat/completions", tc.header, body)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
				}
				if tc.code != "" && errCode(t, b) != tc.code {
					t.Fatalf("code %q, want %q: %s", errCode(t, b), tc.code, b)
				}
			})
		}
		for _, r := range g.requests() {
			if r.Header.Get("x-jwt-payload") != "" || r.AuthValue != "Bearer sk-test-k1" {
				t.Fatalf("upstream saw the caller's identity: %v", r.Header)
			}
		}
	})
}

// errCode is the code of an OpenAI-style error body.
func errCode(t *testing.T, b []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %s: %v", b, err)
	}
	return e.Error.Code
}
