package policy

import "strings"

// Truncate cuts s to at most n bytes without splitting a UTF-8 sequence:
// a multi-byte character that does not fit whole is left out.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// HasControl reports whether s holds an ASCII control character (C0 or
// DEL): NUL, newline, tab, escape, …
func HasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// HasDotSegment reports whether s, split at "/", has a "." or ".." segment:
// such a name placed in a URL path (an Azure deployment) could climb out of
// its prefix.
func HasDotSegment(s string) bool {
	for seg := range strings.SplitSeq(s, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}
