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
