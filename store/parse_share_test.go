package store

import (
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
)

func TestParseShareSettings(t *testing.T) {
	tests := []struct {
		raw     string
		want    time.Duration
		wantErr string
	}{
		{`{}`, policy.DefaultShareCooldownOver, ""},
		{`{"share":{}}`, policy.DefaultShareCooldownOver, ""},
		{`{"share":{"cooldown_over":"30s"}}`, 30 * time.Second, ""},
		{`{"share":{"cooldown_over":"1h"}}`, time.Hour, ""},
		{`{"share":{"cooldown_over":"1h1s"}}`, 0, `settings: field "share.cooldown_over": must be at most 1h0m0s`},
		{`{"share":{"cooldown_over":"0s"}}`, 0, `settings: field "share.cooldown_over": must be > 0`},
		{`{"share":{"cooldown_over":"soon"}}`, 0, `settings: field "share.cooldown_over": want a duration like "10m", got "soon"`},
		{`{"share":{"over":"1s"}}`, 0, `settings: unknown field "share.over"`},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			s, err := ParseSettings([]byte(tt.raw))
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || s.Share.CooldownOver != tt.want {
				t.Fatalf("cooldown_over = %s (%v), want %s", s.Share.CooldownOver, err, tt.want)
			}
		})
	}
}
