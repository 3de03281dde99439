package policy

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keymux/keymux/testutil/deep"
)

func TestTokenFromHeaders(t *testing.T) {
	tests := []struct {
		name          string
		authorization string
		xAPIKey       string
		want          string
		ok            bool
	}{
		{"bearer", "Bearer sk-test-c1", "", "sk-test-c1", true},
		{"bearer lower case", "bearer sk-test-c1", "", "sk-test-c1", true},
		{"bearer mixed case and spaces", "  BeArEr   sk-test-c1  ", "", "sk-test-c1", true},
		{"bearer wins over x-api-key", "Bearer sk-test-c1", "sk-test-c2", "sk-test-c1", true},
		{"x-api-key", "", "sk-test-c2", "sk-test-c2", true},
		{"x-api-key trimmed", "", " sk-test-c2 ", "sk-test-c2", true},
		{"basic scheme falls to x-api-key", "Basic dXNlcjpwYXNz", "sk-test-c2", "sk-test-c2", true},
		{"basic scheme alone", "Basic dXNlcjpwYXNz", "", "", false},
		{"bearer without token", "Bearer", "", "", false},
		{"bearer with spaces only", "Bearer    ", "", "", false},
		{"bearer empty falls to x-api-key", "Bearer ", "sk-test-c2", "sk-test-c2", true},
		{"token without scheme", "sk-test-c1", "", "", false},
		{"bearer no space", "Bearersk-test-c1", "", "", false},
		{"inner space refused", "Bearer sk test", "", "", false},
		{"control char refused", "Bearer sk-test\x00", "", "", false},
		{"x-api-key with tab refused", "", "sk\tx", "", false},
		{"nothing", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := TokenFromHeaders(tt.authorization, tt.xAPIKey)
			if got != tt.want || ok != tt.ok {
				t.Errorf("TokenFromHeaders = %q, %v; want %q, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestHashToken(t *testing.T) {
	// FIPS 180-2 test vector.
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	sum := HashToken("abc")
	if got := hex.EncodeToString(sum[:]); got != abc {
		t.Errorf("HashToken(abc) = %s, want %s", got, abc)
	}
}

func TestTokenMatchesAndAuthenticate(t *testing.T) {
	good := HashToken("sk-test-c1")
	other := HashToken("sk-test-c2")
	c := &Client{ID: "c1", TokenSHA256: good, Enabled: true}
	off := &Client{ID: "c2", TokenSHA256: other}
	tests := []struct {
		name    string
		c       *Client
		sum     [32]byte
		matches bool
		wantErr string
	}{
		{"match", c, good, true, ""},
		{"other token", c, other, false, "bad credentials: unknown client key"},
		{"nil client", nil, good, false, "bad credentials: unknown client key"},
		{"disabled client", off, other, true, "bad credentials: client key is disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TokenMatches(tt.c, tt.sum); got != tt.matches {
				t.Errorf("TokenMatches = %v, want %v", got, tt.matches)
			}
			err := AuthenticateClient(tt.c, tt.sum)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("AuthenticateClient: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrBadCredentials) || err.Error() != tt.wantErr {
				t.Errorf("AuthenticateClient = %v, want %q wrapping ErrBadCredentials", err, tt.wantErr)
			}
		})
	}
}

func TestAuthorizeModel(t *testing.T) {
	limited := &Client{ID: "c1", Models: []string{"gpt-4o-mini", "gpt-4"}, Enabled: true}
	anyModel := &Client{ID: "c2", Enabled: true}
	tests := []struct {
		name    string
		c       *Client
		model   string
		wantErr string
	}{
		{"allowed", limited, "gpt-4", ""},
		{"not allowed", limited, "gpt-4o", `model not allowed: client "c1" may not use model "gpt-4o"`},
		{"exact only", limited, "gpt-4-turbo", `model not allowed: client "c1" may not use model "gpt-4-turbo"`},
		{"no list allows any", anyModel, "anything", ""},
		{"no client allows any", nil, "anything", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := AuthorizeModel(tt.c, tt.model)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("AuthorizeModel: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrModelNotAllowed) || err.Error() != tt.wantErr {
				t.Errorf("AuthorizeModel = %v, want %q wrapping ErrModelNotAllowed", err, tt.wantErr)
			}
		})
	}
}

func b64url(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestCheckJWTClaim(t *testing.T) {
	const payload = `{"sub":"u-1","role":"ROLE_API_USER","roles":["reader","ROLE_API_USER"],"scope":"openid llm:call profile",` +
		`"realm_access":{"roles":["offline","llm-user"]},"https://example.com/roles":["gw"],"admin":true,"tier":2,` +
		`"a.b":"literal","a":{"b":"nested"},"bad.path":{"x":1},"ünï":"ok","s":"ROLE_API_USER_X"}`
	// A payload whose base64url needs '-' and '_' (bytes 0xfb 0xff).
	const urlPayload = `{"role":"ROLE_API_USER","n":"\u00fb\u00ff?>"}`
	tests := []struct {
		name    string
		header  string
		claim   string
		value   string
		wantErr error
		wantMsg string
	}{
		{"string equal", b64url(payload), "role", "ROLE_API_USER", nil, ""},
		{"string unequal", b64url(payload), "role", "ROLE_ADMIN", ErrForbidden, `forbidden: claim "role" does not grant access`},
		{"string prefix is not equal", b64url(payload), "s", "ROLE_API_USER", ErrForbidden, `forbidden: claim "s" does not grant access`},
		{"array contains", b64url(payload), "roles", "ROLE_API_USER", nil, ""},
		{"array lacks", b64url(payload), "roles", "writer", ErrForbidden, `forbidden: claim "roles" does not grant access`},
		{"scope word", b64url(payload), "scope", "llm:call", nil, ""},
		{"scope partial word", b64url(payload), "scope", "llm", ErrForbidden, `forbidden: claim "scope" does not grant access`},
		{"scope whole string", b64url(payload), "scope", "openid llm:call profile", nil, ""},
		{"dotted path", b64url(payload), "realm_access.roles", "llm-user", nil, ""},
		{"dotted path lacks", b64url(payload), "realm_access.roles", "admin", ErrForbidden, `forbidden: claim "realm_access.roles" does not grant access`},
		{"dotted path missing", b64url(payload), "realm_access.groups", "x", ErrForbidden, `forbidden: claim "realm_access.groups" is missing`},
		{"dotted path through a non-object", b64url(payload), "role.x", "x", ErrForbidden, `forbidden: claim "role.x" is missing`},
		{"dotted empty segment", b64url(payload), "realm_access..roles", "llm-user", ErrForbidden, `forbidden: claim "realm_access..roles" is missing`},
		{"literal name with dots first", b64url(payload), "a.b", "literal", nil, ""},
		{"literal name wins over path", b64url(payload), "a.b", "nested", ErrForbidden, `forbidden: claim "a.b" does not grant access`},
		{"url claim name", b64url(payload), "https://example.com/roles", "gw", nil, ""},
		{"gjson syntax is literal", b64url(payload), "roles.#", "2", ErrForbidden, `forbidden: claim "roles.#" is missing`},
		{"gjson modifier is literal", b64url(payload), "@this", "x", ErrForbidden, `forbidden: claim "@this" is missing`},
		{"wildcard is literal", b64url(payload), "rol*", "ROLE_API_USER", ErrForbidden, `forbidden: claim "rol*" is missing`},
		{"unicode name", b64url(payload), "ünï", "ok", nil, ""},
		{"bool", b64url(payload), "admin", "true", nil, ""},
		{"number", b64url(payload), "tier", "2", nil, ""},
		{"object claim", b64url(payload), "realm_access", "llm-user", ErrForbidden, `forbidden: claim "realm_access" does not grant access`},
		{"missing", b64url(payload), "groups", "x", ErrForbidden, `forbidden: claim "groups" is missing`},
		{"padded", base64.URLEncoding.EncodeToString([]byte(payload)), "role", "ROLE_API_USER", nil, ""},
		{"url alphabet", b64url(urlPayload), "role", "ROLE_API_USER", nil, ""},
		{"standard alphabet", base64.StdEncoding.EncodeToString([]byte(urlPayload)), "role", "ROLE_API_USER", nil, ""},
		{"surrounding spaces", " " + b64url(payload) + " ", "role", "ROLE_API_USER", nil, ""},
		{"empty header", "", "role", "ROLE_API_USER", ErrNoCredentials, "no credentials: no verified JWT payload"},
		{"blank header", "   ", "role", "ROLE_API_USER", ErrNoCredentials, "no credentials: no verified JWT payload"},
		{"not base64", "eyJ!!!", "role", "x", ErrBadCredentials, "bad credentials: JWT payload is not base64url"},
		{"whole JWT is not a payload", b64url(`{"alg":"RS256"}`) + "." + b64url(payload) + ".c2ln", "role", "ROLE_API_USER", ErrBadCredentials, "bad credentials: JWT payload is not base64url"},
		{"not JSON", b64url("role=ROLE_API_USER"), "role", "ROLE_API_USER", ErrBadCredentials, "bad credentials: JWT payload is not JSON"},
		{"truncated JSON", b64url(`{"role":"ROLE_API_USER"`), "role", "ROLE_API_USER", ErrBadCredentials, "bad credentials: JWT payload is not JSON"},
		{"nested to the limit", b64url(`{"role":"ROLE_API_USER","x":` + string(deep.Arrays(DefaultMaxJSONDepth-1, "1")) + `}`), "role", "ROLE_API_USER", nil, ""},
		{"nested too deep", b64url(`{"role":"ROLE_API_USER","x":` + string(deep.Arrays(20000, "1")) + `}`), "role", "ROLE_API_USER", ErrBadCredentials, "bad credentials: JWT payload nests deeper than 256 levels"},
		{"array payload", b64url(`["ROLE_API_USER"]`), "role", "ROLE_API_USER", ErrBadCredentials, "bad credentials: JWT payload is not a JSON object"},
		{"too large", strings.Repeat("A", maxJWTPayload+1), "role", "x", ErrBadCredentials, "bad credentials: JWT payload too large"},
		{"no claim configured", b64url(payload), "", "x", ErrForbidden, "forbidden: no claim configured"},
		{"no value configured", b64url(`{"role":""}`), "role", "", ErrForbidden, "forbidden: no claim configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckJWTClaim(tt.header, tt.claim, tt.value)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckJWTClaim: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.wantMsg {
				t.Errorf("CheckJWTClaim = %v, want %q wrapping %v", err, tt.wantMsg, tt.wantErr)
			}
		})
	}
}

// FuzzCheckJWTClaim: no panic, every error wraps one of the three
// sentinels, and no error repeats the payload it was given.
func FuzzCheckJWTClaim(f *testing.F) {
	f.Add(b64url(`{"role":"ROLE_API_USER"}`), "role", "ROLE_API_USER")
	f.Add(b64url(`{"realm_access":{"roles":["a","b"]}}`), "realm_access.roles", "b")
	f.Add(b64url(`{"scope":"a b c"}`)+"==", "scope", "b")
	f.Add(b64url(`{"a.b":{"c":[1,"x"]}}`), "a.b.c", "x")
	f.Add(b64url(`{"x":`), "x", "y")
	f.Add(b64url(`[1,2]`), "0", "1")
	f.Add("e30", "..", ".")
	f.Add("", "role", "x")
	f.Add("%%%", "@reverse", "#")
	f.Add(b64url(string(deep.Objects(maxJWTPayload/8, `"x"`))), "a.a.a", "x")
	f.Add(b64url(string(deep.Arrays(maxJWTPayload*3/8, "1"))), "role", "x")
	f.Fuzz(func(t *testing.T, header, claim, value string) {
		err := CheckJWTClaim(header, claim, value)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrNoCredentials) && !errors.Is(err, ErrBadCredentials) && !errors.Is(err, ErrForbidden) {
			t.Fatalf("error %q wraps no sentinel", err)
		}
		p := strings.TrimSpace(header)
		if len(p) >= 8 && !strings.Contains(claim, p) && strings.Contains(err.Error(), p) {
			t.Fatalf("error %q echoes the payload", err)
		}
	})
}

func BenchmarkCheckJWTClaim(b *testing.B) {
	header := b64url(`{"iss":"https://idp.example.com","sub":"u-1","aud":"keymux","exp":1900000000,"role":"ROLE_API_USER",` +
		`"realm_access":{"roles":["offline_access","uma_authorization","llm-user"]},"scope":"openid profile email"}`)
	for _, c := range []struct{ name, claim, value string }{
		{"string", "role", "ROLE_API_USER"},
		{"dotted_array", "realm_access.roles", "llm-user"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := CheckJWTClaim(header, c.claim, c.value); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkClientAuth(b *testing.B) {
	c := &Client{ID: "c1", TokenSHA256: HashToken("sk-test-c1"), Enabled: true}
	b.ReportAllocs()
	for b.Loop() {
		tok, ok := TokenFromHeaders("Bearer sk-test-c1", "")
		if !ok || AuthenticateClient(c, HashToken(tok)) != nil {
			b.Fatal("refused")
		}
	}
}
