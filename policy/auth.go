package policy

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// Client authorization errors. Callers branch with errors.Is; the wrapped
// messages name what was wrong but never the token or the JWT payload.
var (
	ErrNoCredentials   = errors.New("no credentials")       // 401: nothing to check
	ErrBadCredentials  = errors.New("bad credentials")      // 401: unknown, malformed or disabled
	ErrForbidden       = errors.New("forbidden")            // 403: authenticated but not allowed
	ErrModelNotAllowed = errors.New("model not allowed")    // 403: the client may not use this model
	ErrEndpointDenied  = errors.New("endpoint not allowed") // 403: the client may not call this operation
)

// The operations a client's endpoints list may name: the proxied
// OpenAI-compatible endpoints, by the operation name keymux reports.
// ModelEndpoints carry a model in their body; the others (files, batches,
// stored responses under "responses") act on the shared provider account.
const (
	EndpointChat            = "chat"
	EndpointTextCompletion  = "text_completion"
	EndpointEmbeddings      = "embeddings"
	EndpointResponses       = "responses"
	EndpointModerations     = "moderations"
	EndpointImageGeneration = "image_generation"
	EndpointSpeech          = "speech"
	EndpointFiles           = "files"
	EndpointBatches         = "batches"
	EndpointVectorStores    = "vector_stores"
	EndpointAssistants      = "assistants" // assistants and threads
	EndpointFineTuning      = "fine_tuning"
	EndpointCountTokens     = "count_tokens" // Anthropic's /v1/messages/count_tokens
	EndpointRealtime        = "realtime"     // the Realtime API over WebSocket
	// EndpointOther is every path keymux does not know, forwarded under
	// settings.unknown_paths: forward (never model-bearing for
	// AuthorizeEndpoint, whatever its body carries).
	EndpointOther = "other"
	// Multipart forms with a model.
	EndpointTranscription  = "transcription"
	EndpointTranslation    = "translation"
	EndpointImageEdit      = "image_edit"
	EndpointImageVariation = "image_variation"
)

// Endpoints lists every Endpoint* name.
var Endpoints = []string{EndpointChat, EndpointTextCompletion, EndpointEmbeddings, EndpointResponses,
	EndpointModerations, EndpointImageGeneration, EndpointSpeech, EndpointFiles, EndpointBatches,
	EndpointVectorStores, EndpointAssistants, EndpointFineTuning,
	EndpointCountTokens, EndpointRealtime, EndpointOther,
	EndpointTranscription, EndpointTranslation, EndpointImageEdit, EndpointImageVariation}

// AuthorizeEndpoint returns nil when client c may call operation op
// (modelBearing: this request's operation carries a model in its body),
// else an error wrapping ErrEndpointDenied. A client with an endpoints list
// may call exactly those; without one, a client limited to some models may
// call only model-bearing operations (not the account-wide files, batches
// or stored responses); any other client, and a nil c, may call all.
func AuthorizeEndpoint(c *Client, op string, modelBearing bool) error {
	switch {
	case c == nil:
		return nil
	case c.Endpoints != nil:
		if slices.Contains(c.Endpoints, op) {
			return nil
		}
	case len(c.Models) == 0 || modelBearing:
		return nil
	}
	return fmt.Errorf("%w: client %q may not call %s", ErrEndpointDenied, c.ID, op)
}

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
// request any model. model "" stands for the provider's default model (a
// body without one), which a client limited to some models may not use.
func AuthorizeModel(c *Client, model string) error {
	if c == nil || c.AllowsModel(model) {
		return nil
	}
	return fmt.Errorf("%w: client %q may not use model %q", ErrModelNotAllowed, c.ID, model)
}

// CheckJWTClaims checks the claims of a JWT that Envoy's jwt_authn filter
// verified and stored in its dynamic metadata (payload_in_metadata), which a
// client cannot set: claims is that Struct, nil when no JWT was verified.
// The claim must grant value:
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
// Errors wrap ErrNoCredentials (no verified JWT) or ErrForbidden (claim
// missing or not granting value); they name the claim, never the claims.
func CheckJWTClaims(claims *structpb.Struct, claim, value string) error {
	if claims == nil {
		return fmt.Errorf("%w: no verified JWT", ErrNoCredentials)
	}
	if claim == "" || value == "" {
		return fmt.Errorf("%w: no claim configured", ErrForbidden)
	}
	v := lookupClaim(claims, claim)
	if v == nil {
		return fmt.Errorf("%w: claim %q is missing", ErrForbidden, claim)
	}
	if !claimGrants(v, value) {
		return fmt.Errorf("%w: claim %q does not grant access", ErrForbidden, claim)
	}
	return nil
}

// lookupClaim finds claim as a literal top-level name first, then as a dotted
// path; nil when neither exists.
func lookupClaim(root *structpb.Struct, claim string) *structpb.Value {
	if v, ok := root.GetFields()[claim]; ok || !strings.Contains(claim, ".") {
		return v
	}
	cur := root
	var v *structpb.Value
	for seg := range strings.SplitSeq(claim, ".") {
		if cur == nil || seg == "" {
			return nil
		}
		var ok bool
		if v, ok = cur.GetFields()[seg]; !ok {
			return nil
		}
		cur = v.GetStructValue()
	}
	return v
}

func claimGrants(v *structpb.Value, value string) bool {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		if k.StringValue == value {
			return true
		}
		for w := range strings.FieldsSeq(k.StringValue) {
			if w == value {
				return true
			}
		}
	case *structpb.Value_NumberValue:
		return strconv.FormatFloat(k.NumberValue, 'f', -1, 64) == value
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue) == value
	case *structpb.Value_ListValue:
		for _, e := range k.ListValue.GetValues() {
			if s, ok := e.GetKind().(*structpb.Value_StringValue); ok && s.StringValue == value {
				return true
			}
		}
	}
	return false
}
