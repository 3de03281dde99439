package policy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
)

// Client authorization errors. Callers branch with errors.Is; the wrapped
// messages name what was wrong but never the token or the JWT payload.
var (
	ErrNoCredentials   = errors.New("no credentials")    // 401: nothing to check
	ErrBadCredentials  = errors.New("bad credentials")   // 401: unknown, malformed or disabled
	ErrForbidden       = errors.New("forbidden")         // 403: authenticated but not allowed
	ErrModelNotAllowed = errors.New("model not allowed") // 403: the client may not use this model
)

// maxJWTPayload bounds the forwarded payload header CheckJWTClaim decodes.
const maxJWTPayload = 64 << 10

// TokenFromHeaders extracts the client token from the request's
// authorization header ("Bearer <token>", scheme case-insensitive) or, when
// that gives none, from x-api-key (pass api-key there for Azure-style
// clients). Surrounding spaces are trimmed; a token with inner whitespace or
// control characters is refused.
func TokenFromHeaders(authorization, xAPIKey string) (token string, ok bool) {
	if a := strings.TrimSpace(authorization); len(a) > len("bearer ") && strings.EqualFold(a[:len("bearer ")], "bearer ") {
		if t := strings.TrimSpace(a[len("bearer "):]); validToken(t) {
			return t, true
		}
	}
	if t := strings.TrimSpace(xAPIKey); validToken(t) {
		return t, true
	}
	return "", false
}

func validToken(t string) bool {
	if t == "" {
		return false
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// HashToken returns the SHA-256 of a client token, the form Client.TokenSHA256
// stores and the store indexes.
func HashToken(token string) [32]byte {
	return sha256.Sum256([]byte(token))
}

// TokenMatches reports, in constant time, whether sum is c's token hash. A nil
// c never matches.
func TokenMatches(c *Client, sum [32]byte) bool {
	if c == nil {
		return false
	}
	return subtle.ConstantTimeCompare(c.TokenSHA256[:], sum[:]) == 1
}

// AuthenticateClient checks the client found for a token hash (nil when none
// was found): it must exist, match sum and be enabled. Errors wrap
// ErrBadCredentials.
func AuthenticateClient(c *Client, sum [32]byte) error {
	switch {
	case !TokenMatches(c, sum):
		return fmt.Errorf("%w: unknown client key", ErrBadCredentials)
	case !c.Enabled:
		return fmt.Errorf("%w: client key is disabled", ErrBadCredentials)
	}
	return nil
}

// AuthorizeModel returns nil when client c may request model, else an error
// wrapping ErrModelNotAllowed. A nil c (auth mode none or jwt_claim) may
// request any model.
func AuthorizeModel(c *Client, model string) error {
	if c == nil || c.AllowsModel(model) {
		return nil
	}
	return fmt.Errorf("%w: client %q may not use model %q", ErrModelNotAllowed, c.ID, model)
}

// CheckJWTClaim checks the JWT payload that Envoy's jwt_authn filter verified
// and forwarded (forward_payload_header): payloadHeader is base64url JSON,
// with or without padding. The claim must grant value:
//
//   - a string claim equal to value, or holding value as one of its
//     space-separated words (an OAuth "scope");
//   - an array claim with a string element equal to value;
//   - a number or boolean claim whose JSON text equals value.
//
// claim is a top-level name ("role", "https://example.com/roles") or, when no
// top-level claim has that exact name, a dotted path into nested objects
// ("realm_access.roles").
//
// Errors wrap ErrNoCredentials (empty header), ErrBadCredentials (not
// base64url JSON object, too large) or ErrForbidden (claim missing or not
// granting value); they name the claim, never the payload.
func CheckJWTClaim(payloadHeader string, claim, value string) error {
	p := strings.TrimSpace(payloadHeader)
	if p == "" {
		return fmt.Errorf("%w: no verified JWT payload", ErrNoCredentials)
	}
	if len(p) > maxJWTPayload {
		return fmt.Errorf("%w: JWT payload too large", ErrBadCredentials)
	}
	payload, err := decodeBase64URL(p)
	if err != nil {
		return fmt.Errorf("%w: JWT payload is not base64url", ErrBadCredentials)
	}
	switch CheckJSON(payload, DefaultMaxJSONDepth) {
	case nil:
	case ErrJSONTooDeep:
		return fmt.Errorf("%w: JWT payload nests deeper than %d levels", ErrBadCredentials, DefaultMaxJSONDepth)
	default:
		return fmt.Errorf("%w: JWT payload is not JSON", ErrBadCredentials)
	}
	root := gjson.ParseBytes(payload)
	if !root.IsObject() {
		return fmt.Errorf("%w: JWT payload is not a JSON object", ErrBadCredentials)
	}
	if claim == "" || value == "" {
		return fmt.Errorf("%w: no claim configured", ErrForbidden)
	}
	v := lookupClaim(root, claim)
	if !v.Exists() {
		return fmt.Errorf("%w: claim %q is missing", ErrForbidden, claim)
	}
	if !claimGrants(v, value) {
		return fmt.Errorf("%w: claim %q does not grant access", ErrForbidden, claim)
	}
	return nil
}

// decodeBase64URL decodes base64url with or without padding. Standard
// base64 ('+', '/') is accepted too, since some issuers' payloads pass
// through tools that produce it.
func decodeBase64URL(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	enc := base64.RawURLEncoding
	if strings.ContainsAny(s, "+/") {
		enc = base64.RawStdEncoding
	}
	return enc.DecodeString(s)
}

// lookupClaim finds claim as a literal top-level name first, then as a dotted
// path.
func lookupClaim(root gjson.Result, claim string) gjson.Result {
	if v := root.Get(gjson.Escape(claim)); v.Exists() || !strings.Contains(claim, ".") {
		return v
	}
	v := root
	for seg := range strings.SplitSeq(claim, ".") {
		if seg == "" || !v.IsObject() {
			return gjson.Result{}
		}
		v = v.Get(gjson.Escape(seg))
		if !v.Exists() {
			return v
		}
	}
	return v
}

func claimGrants(v gjson.Result, value string) bool {
	switch v.Type {
	case gjson.String:
		if v.Str == value {
			return true
		}
		for w := range strings.FieldsSeq(v.Str) {
			if w == value {
				return true
			}
		}
	case gjson.Number, gjson.True, gjson.False:
		return v.Raw == value
	case gjson.JSON:
		if !v.IsArray() {
			return false
		}
		granted := false
		v.ForEach(func(_, e gjson.Result) bool {
			granted = e.Type == gjson.String && e.Str == value
			return !granted
		})
		return granted
	}
	return false
}
