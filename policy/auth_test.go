package policy

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
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
		{"provider default refused for a limited client", limited, "", `model not allowed: client "c1" may not use model ""`},
		{"provider default for an unlimited client", anyModel, "", ""},
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

func TestAuthorizeEndpoint(t *testing.T) {
	limited := &Client{ID: "c1", Models: []string{"gpt-4o-mini"}}
	anyModel := &Client{ID: "c2"}
	listed := &Client{ID: "c3", Models: []string{"gpt-4o-mini"}, Endpoints: []string{EndpointChat, EndpointFiles}}
	none := &Client{ID: "c4", Endpoints: []string{}}
	tests := []struct {
		name         string
		c            *Client
		op           string
		modelBearing bool
		wantErr      string
	}{
		{"limited: chat", limited, EndpointChat, true, ""},
		{"limited: files", limited, EndpointFiles, false, `endpoint not allowed: client "c1" may not call files`},
		{"limited: batches", limited, EndpointBatches, false, `endpoint not allowed: client "c1" may not call batches`},
		{"limited: stored responses", limited, EndpointResponses, false, `endpoint not allowed: client "c1" may not call responses`},
		{"limited: create response", limited, EndpointResponses, true, ""},
		{"unlimited: files", anyModel, EndpointFiles, false, ""},
		{"no client", nil, EndpointBatches, false, ""},
		{"listed: files", listed, EndpointFiles, false, ""},
		{"listed: chat", listed, EndpointChat, true, ""},
		{"listed: embeddings not listed", listed, EndpointEmbeddings, true, `endpoint not allowed: client "c3" may not call embeddings`},
		{"empty list: nothing", none, EndpointChat, true, `endpoint not allowed: client "c4" may not call chat`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := AuthorizeEndpoint(tt.c, tt.op, tt.modelBearing)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("AuthorizeEndpoint: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrEndpointDenied) || err.Error() != tt.wantErr {
				t.Errorf("AuthorizeEndpoint = %v, want %q wrapping ErrEndpointDenied", err, tt.wantErr)
			}
		})
	}
}

// claimsOf parses a JWT payload into the Struct jwt_authn stores in its
// metadata (payload_in_metadata).
func claimsOf(t testing.TB, payload string) *structpb.Struct {
	t.Helper()
	s := &structpb.Struct{}
	if err := protojson.Unmarshal([]byte(payload), s); err != nil {
		t.Fatalf("claims %s: %v", payload, err)
	}
	return s
}

func TestCheckJWTClaims(t *testing.T) {
	const payload = `{"sub":"u-1","role":"ROLE_API_USER","roles":["reader","ROLE_API_USER",7,true],"scope":"openid llm:call profile",` +
		`"realm_access":{"roles":["offline","llm-user"]},"https://example.com/roles":["gw"],"admin":true,"tier":2,"ratio":0.5,` +
		`"a.b":"literal","a":{"b":"nested"},"bad.path":{"x":1},"ünï":"ok","s":"ROLE_API_USER_X","nil":null}`
	claims := claimsOf(t, payload)
	tests := []struct {
		name    string
		claims  *structpb.Struct
		claim   string
		value   string
		wantErr error
		wantMsg string
	}{
		{"string equal", claims, "role", "ROLE_API_USER", nil, ""},
		{"string unequal", claims, "role", "ROLE_ADMIN", ErrForbidden, `forbidden: claim "role" does not grant access`},
		{"string prefix is not equal", claims, "s", "ROLE_API_USER", ErrForbidden, `forbidden: claim "s" does not grant access`},
		{"array contains", claims, "roles", "ROLE_API_USER", nil, ""},
		{"array lacks", claims, "roles", "writer", ErrForbidden, `forbidden: claim "roles" does not grant access`},
		{"array number is not a string", claims, "roles", "7", ErrForbidden, `forbidden: claim "roles" does not grant access`},
		{"array bool is not a string", claims, "roles", "true", ErrForbidden, `forbidden: claim "roles" does not grant access`},
		{"scope word", claims, "scope", "llm:call", nil, ""},
		{"scope partial word", claims, "scope", "llm", ErrForbidden, `forbidden: claim "scope" does not grant access`},
		{"scope whole string", claims, "scope", "openid llm:call profile", nil, ""},
		{"dotted path", claims, "realm_access.roles", "llm-user", nil, ""},
		{"dotted path lacks", claims, "realm_access.roles", "admin", ErrForbidden, `forbidden: claim "realm_access.roles" does not grant access`},
		{"dotted path missing", claims, "realm_access.groups", "x", ErrForbidden, `forbidden: claim "realm_access.groups" is missing`},
		{"dotted path through a non-object", claims, "role.x", "x", ErrForbidden, `forbidden: claim "role.x" is missing`},
		{"dotted empty segment", claims, "realm_access..roles", "llm-user", ErrForbidden, `forbidden: claim "realm_access..roles" is missing`},
		{"literal name with dots first", claims, "a.b", "literal", nil, ""},
		{"literal name wins over path", claims, "a.b", "nested", ErrForbidden, `forbidden: claim "a.b" does not grant access`},
		{"url claim name", claims, "https://example.com/roles", "gw", nil, ""},
		{"path syntax is literal", claims, "roles.#", "2", ErrForbidden, `forbidden: claim "roles.#" is missing`},
		{"wildcard is literal", claims, "rol*", "ROLE_API_USER", ErrForbidden, `forbidden: claim "rol*" is missing`},
		{"unicode name", claims, "ünï", "ok", nil, ""},
		{"bool", claims, "admin", "true", nil, ""},
		{"bool unequal", claims, "admin", "false", ErrForbidden, `forbidden: claim "admin" does not grant access`},
		{"number", claims, "tier", "2", nil, ""},
		{"number as float text", claims, "tier", "2.0", ErrForbidden, `forbidden: claim "tier" does not grant access`},
		{"fraction", claims, "ratio", "0.5", nil, ""},
		{"null claim", claims, "nil", "null", ErrForbidden, `forbidden: claim "nil" does not grant access`},
		{"object claim", claims, "realm_access", "llm-user", ErrForbidden, `forbidden: claim "realm_access" does not grant access`},
		{"missing", claims, "groups", "x", ErrForbidden, `forbidden: claim "groups" is missing`},
		{"no verified JWT", nil, "role", "ROLE_API_USER", ErrNoCredentials, "no credentials: no verified JWT"},
		{"empty claims", &structpb.Struct{}, "role", "ROLE_API_USER", ErrForbidden, `forbidden: claim "role" is missing`},
		{"no claim configured", claims, "", "x", ErrForbidden, "forbidden: no claim configured"},
		{"no value configured", claimsOf(t, `{"role":""}`), "role", "", ErrForbidden, "forbidden: no claim configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckJWTClaims(tt.claims, tt.claim, tt.value)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckJWTClaims: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.wantMsg {
				t.Errorf("CheckJWTClaims = %v, want %q wrapping %v", err, tt.wantMsg, tt.wantErr)
			}
		})
	}
}

// FuzzCheckJWTClaims: no panic, every error wraps one of the two sentinels
// and never repeats a claim value it was given.
func FuzzCheckJWTClaims(f *testing.F) {
	f.Add(`{"role":"ROLE_API_USER"}`, "role", "ROLE_API_USER")
	f.Add(`{"realm_access":{"roles":["a","b"]}}`, "realm_access.roles", "b")
	f.Add(`{"scope":"a b c"}`, "scope", "b")
	f.Add(`{"a.b":{"c":[1,"x"]}}`, "a.b.c", "x")
	f.Add(`{"x":{"y":null}}`, "x.y.z", "y")
	f.Add(`{}`, "..", ".")
	f.Fuzz(func(t *testing.T, payload, claim, value string) {
		claims := &structpb.Struct{}
		if protojson.Unmarshal([]byte(payload), claims) != nil {
			return
		}
		err := CheckJWTClaims(claims, claim, value)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrNoCredentials) && !errors.Is(err, ErrForbidden) {
			t.Fatalf("error %q wraps no sentinel", err)
		}
		for name, v := range claims.GetFields() {
			if s := v.GetStringValue(); len(s) >= 8 && !strings.Contains(claim, s) && !strings.Contains(name, s) && strings.Contains(err.Error(), s) {
				t.Fatalf("error %q echoes a claim value", err)
			}
		}
	})
}

func BenchmarkCheckJWTClaims(b *testing.B) {
	claims := claimsOf(b, `{"iss":"https://idp.example.com","sub":"u-1","aud":"keymux","exp":1900000000,"role":"ROLE_API_USER",`+
		`"realm_access":{"roles":["offline_access","uma_authorization","llm-user"]},"scope":"openid profile email"}`)
	for _, c := range []struct{ name, claim, value string }{
		{"string", "role", "ROLE_API_USER"},
		{"dotted_array", "realm_access.roles", "llm-user"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := CheckJWTClaims(claims, c.claim, c.value); err != nil {
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
