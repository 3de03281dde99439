package store

import (
	"testing"

	"github.com/keymux/keymux/policy"
)

func TestParseSettingsRetry(t *testing.T) {
	tests := []struct {
		raw  string
		want int
		err  string
	}{
		{`{}`, policy.DefaultRetryMaxAttempts, ""},
		{`{"retry":{}}`, policy.DefaultRetryMaxAttempts, ""},
		{`{"retry":{"max_attempts":1}}`, 1, ""},
		{`{"retry":{"max_attempts":10}}`, 10, ""},
		{`{"retry":{"max_attempts":0}}`, 0, `settings: field "retry.max_attempts": must be between 1 and 10`},
		{`{"retry":{"max_attempts":11}}`, 0, `settings: field "retry.max_attempts": must be between 1 and 10`},
		{`{"retry":{"max_attempts":"2"}}`, 0, `settings: field "retry.max_attempts": want integer, got string`},
		{`{"retry":{"attempts":2}}`, 0, `settings: unknown field "retry.attempts"`},
	}
	for _, tc := range tests {
		s, err := ParseSettings([]byte(tc.raw))
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("%s: error %v, want %q", tc.raw, err, tc.err)
		case tc.err == "" && (err != nil || s.Retry.MaxAttempts != tc.want):
			t.Errorf("%s: max_attempts %d (%v), want %d", tc.raw, s.Retry.MaxAttempts, err, tc.want)
		}
	}
}
