package policy

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
