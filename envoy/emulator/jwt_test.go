package emulator

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

type testSigner struct {
	key *rsa.PrivateKey
	kid string
}

func newSigner(t *testing.T, kid string) *testSigner {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{k, kid}
}

func (s *testSigner) jwks() string {
	e := big.NewInt(int64(s.key.E)).Bytes()
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": s.kid, "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(s.key.N.Bytes()), "e": base64.RawURLEncoding.EncodeToString(e),
	}}})
	return string(b)
}

func (s *testSigner) sign(t *testing.T, claims map[string]any) (token, payload string) {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": s.kid, "typ": "JWT"})
	c, _ := json.Marshal(claims)
	payload = base64.RawURLEncoding.EncodeToString(c)
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + payload
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), payload
}

// TestJWTAuthn: jwt_authn verifies the token before ext_proc, forwards the
// verified payload and drops the token.
func TestJWTAuthn(t *testing.T) {
	local := newSigner(t, "k1")
	remote := newSigner(t, "r1")
	other := newSigner(t, "k1") // same kid, wrong key
	jwksSrv := startUpstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, remote.jwks()) })
	seen := make(chan map[string]string, 16)
	proc := startProc(t, onKind("request_headers", func(req *extprocsvc.ProcessingRequest) []*extprocsvc.ProcessingResponse {
		m := map[string]string{}
		for _, k := range []string{"x-jwt-payload", "authorization", "x-token"} {
			if v, ok := headerOf(req, k); ok {
				m[k] = v
			}
		}
		// Forwarded dynamic metadata: only the configured namespaces that are set.
		fm := req.GetMetadataContext().GetFilterMetadata()
		m["namespaces"] = strconv.Itoa(len(fm))
		m["metadata role"] = fm["envoy.filters.http.jwt_authn"].GetFields()["claims"].GetStructValue().GetFields()["role"].GetStringValue()
		seen <- m
		return []*extprocsvc.ProcessingResponse{continueReply(req)}
	}))
	b := fixtureWith(t, "jwt.yaml", "JWKS_LOCAL", local.jwks())
	up := startUpstream(t, nil)
	em, err := New(Config{Bootstrap: b, ListenAddr: "127.0.0.1:0", AccessLog: io.Discard,
		ClusterAddrs: map[string]string{"extproc": proc.addr, "upstream_a": up.addr(), "jwks": jwksSrv.addr()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = em.Close() })
	ev := &env{em: em}

	now := time.Now().Unix()
	good := map[string]any{"iss": "https://idp.test/", "aud": "keymux", "exp": now + 600, "role": "ROLE_API_USER"}
	goodTok, goodPayload := local.sign(t, good)
	expiredTok, _ := local.sign(t, map[string]any{"iss": "https://idp.test/", "aud": "keymux", "exp": now - 3600})
	audTok, _ := local.sign(t, map[string]any{"iss": "https://idp.test/", "aud": "other", "exp": now + 600})
	issTok, _ := local.sign(t, map[string]any{"iss": "https://evil.test/", "aud": "keymux", "exp": now + 600})
	forgedTok, _ := other.sign(t, good)
	forgedPayload := base64.RawURLEncoding.EncodeToString([]byte(`{"role":"ROLE_API_USER"}`))
	remoteTok, remotePayload := remote.sign(t, map[string]any{"iss": "https://remote.test/", "exp": now + 600})

	tests := []struct {
		name, path string
		hdr        map[string]string
		status     int
		body       string
		payload    string // x-jwt-payload seen by the processor ("" = none)
		role       string // role in the forwarded jwt_authn metadata ("" = none)
	}{
		{"missing token", "/v1/chat", nil, 401, "Jwt is missing", "", ""},
		{"valid token", "/v1/chat", map[string]string{"Authorization": "Bearer " + goodTok}, 200, "upstream says hi", goodPayload, "ROLE_API_USER"},
		{"valid token, forged payload header", "/v1/chat", map[string]string{"Authorization": "Bearer " + goodTok, "X-Jwt-Payload": forgedPayload}, 200, "upstream says hi", goodPayload, "ROLE_API_USER"},
		{"expired", "/v1/chat", map[string]string{"Authorization": "Bearer " + expiredTok}, 401, "Jwt is expired", "", ""},
		{"wrong audience", "/v1/chat", map[string]string{"Authorization": "Bearer " + audTok}, 403, "Audiences in Jwt are not allowed", "", ""},
		{"wrong issuer", "/v1/chat", map[string]string{"Authorization": "Bearer " + issTok}, 401, "Jwt issuer is not configured", "", ""},
		{"forged signature", "/v1/chat", map[string]string{"Authorization": "Bearer " + forgedTok}, 401, "Jwt verification fails", "", ""},
		{"garbage", "/v1/chat", map[string]string{"Authorization": "Bearer a.b.c"}, 401, "Jwt verification fails", "", ""},
		{"no rule: no check", "/health", nil, 200, "upstream says hi", "", ""},
		{"no rule: a client header passes", "/health", map[string]string{"X-Jwt-Payload": forgedPayload}, 200, "upstream says hi", forgedPayload, ""},
		{"remote jwks from a header", "/remote/x", map[string]string{"X-Token": remoteTok}, 200, "upstream says hi", remotePayload, ""},
		{"allow_missing without token", "/optional", nil, 200, "upstream says hi", "", ""},
		{"allow_missing strips a forged payload header", "/optional", map[string]string{"X-Jwt-Payload": forgedPayload}, 200, "upstream says hi", "", ""},
		{"allow_missing with a bad token", "/optional", map[string]string{"Authorization": "Bearer " + forgedTok}, 401, "Jwt verification fails", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, ev, "GET", tc.path, nil, tc.hdr)
			if res.status != tc.status || res.body != tc.body {
				t.Fatalf("got %d %q, want %d %q", res.status, res.body, tc.status, tc.body)
			}
			if tc.status != 200 {
				if !strings.HasPrefix(res.header.Get("Www-Authenticate"), "Bearer realm=") {
					t.Errorf("www-authenticate %q", res.header.Get("Www-Authenticate"))
				}
				return
			}
			m := <-seen
			if m["x-jwt-payload"] != tc.payload {
				t.Fatalf("processor saw x-jwt-payload %q, want %q", m["x-jwt-payload"], tc.payload)
			}
			wantNS := "0"
			if tc.role != "" {
				wantNS = "1"
			}
			if m["metadata role"] != tc.role || m["namespaces"] != wantNS {
				t.Fatalf("processor saw metadata role %q in %s namespaces, want %q in %s", m["metadata role"], m["namespaces"], tc.role, wantNS)
			}
			if tc.payload != "" && (m["authorization"] != "" || m["x-token"] != "") {
				t.Fatalf("token forwarded although forward is false: %v", m)
			}
		})
	}
}
