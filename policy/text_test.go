package policy

import (
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"abc", 0, ""},
		{"aé", 2, "a"},          // é is 2 bytes: cut inside it, it is left out
		{"aé", 3, "aé"},         // fits exactly
		{"a€b", 2, "a"},         // € is 3 bytes
		{"a€b", 3, "a"},         // still inside €
		{"a€b", 4, "a€"},        // € whole
		{"😀x", 3, ""},           // a 4-byte rune at the start, cut inside
		{"ab😀", 5, "ab"},        // inside the last rune
		{"ab😀", 6, "ab😀"},       // the whole string
		{"\xffabc", 2, "\xffa"}, // invalid bytes are not continuation bytes: cut as bytes
	}
	for _, tc := range tests {
		got := Truncate(tc.s, tc.n)
		if got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if utf8.ValidString(tc.s) && !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q: not valid UTF-8", tc.s, tc.n, got)
		}
	}
}

func TestHasControl(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"", false}, {"gpt-4o", false}, {"café ü", false}, {"a\x00b", true}, {"a\nb", true},
		{"\t", true}, {"a\x1b[31m", true}, {"a\x7f", true}, {"\u0085", false},
	} {
		if got := HasControl(tc.s); got != tc.want {
			t.Errorf("HasControl(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestHasDotSegment(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"gpt-4o", false}, {"org/model-1.5", false}, {"a..b", false}, {".x", false}, {"...", false},
		{".", true}, {"..", true}, {"../x", true}, {"a/../b", true}, {"a/.", true}, {"./a", true},
	} {
		if got := HasDotSegment(tc.s); got != tc.want {
			t.Errorf("HasDotSegment(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
