package extproc

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestJWTClaims: the claims come from jwt_authn's namespace and key only.
func TestJWTClaims(t *testing.T) {
	claims, _ := structpb.NewStruct(map[string]any{"role": "ROLE_API_USER"})
	md := func(ns, key string, v *structpb.Value) *corev3.Metadata {
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ns: {Fields: map[string]*structpb.Value{key: v}}}}
	}
	tests := []struct {
		name string
		md   *corev3.Metadata
		want bool
	}{
		{"forwarded", md(JWTMetadataNamespace, JWTPayloadKey, structpb.NewStructValue(claims)), true},
		{"no metadata", nil, false},
		{"empty metadata", &corev3.Metadata{}, false},
		{"other namespace", md("keymux", JWTPayloadKey, structpb.NewStructValue(claims)), false},
		{"other key", md(JWTMetadataNamespace, "payload", structpb.NewStructValue(claims)), false},
		{"not a struct", md(JWTMetadataNamespace, JWTPayloadKey, structpb.NewStringValue("eyJyb2xlIjoieCJ9")), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := jwtClaims(tt.md)
			if (got != nil) != tt.want {
				t.Fatalf("jwtClaims = %v, want claims %v", got, tt.want)
			}
			if tt.want && got.GetFields()["role"].GetStringValue() != "ROLE_API_USER" {
				t.Fatalf("jwtClaims = %v", got)
			}
		})
	}
}

// TestJWTSubject: in jwt_claim mode the owner of objects is the verified
// token's sub claim.
func TestJWTSubject(t *testing.T) {
	md := func(claims map[string]any) *corev3.Metadata {
		s, _ := structpb.NewStruct(claims)
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{JWTMetadataNamespace: {Fields: map[string]*structpb.Value{
			JWTPayloadKey: structpb.NewStructValue(s)}}}}
	}
	tests := []struct {
		name string
		md   *corev3.Metadata
		want string
	}{
		{"sub", md(map[string]any{"sub": "alice", "role": "x"}), "jwt:alice"},
		{"no sub", md(map[string]any{"role": "x"}), ""},
		{"sub not a string", md(map[string]any{"sub": 42.0}), ""},
		{"control character", md(map[string]any{"sub": "a\nb"}), ""},
		{"no metadata", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jwtSubject(tt.md); got != tt.want {
				t.Fatalf("jwtSubject = %q, want %q", got, tt.want)
			}
		})
	}
}
