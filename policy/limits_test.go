package policy

import "testing"

func TestWithinLimits(t *testing.T) {
	tests := []struct {
		l            Limits
		reqs, tokens uint64
		want         bool
	}{
		{Limits{}, 1 << 40, 1 << 40, true},
		{Limits{RPM: 3}, 2, 0, true},
		{Limits{RPM: 3}, 3, 0, false},
		{Limits{TPM: 100}, 0, 99, true},
		{Limits{TPM: 100}, 0, 100, false},
		{Limits{RPM: 3, TPM: 100}, 2, 100, false},
		{Limits{RPM: -1, TPM: -1}, 5, 5, true},
	}
	for _, tc := range tests {
		if got := WithinLimits(tc.l, tc.reqs, tc.tokens); got != tc.want {
			t.Errorf("WithinLimits(%+v, %d, %d) = %v, want %v", tc.l, tc.reqs, tc.tokens, got, tc.want)
		}
	}
}
