package objects

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// tagMarker separates a provider id from keymux's tag:
// <id>.km1.<hex account>.<hex owner>.<hex mac>. Hex keeps the tag free of
// dots and of characters a URL path would escape.
const tagMarker = ".km1."

// macBytes is the length of the truncated HMAC-SHA256 (128 bits).
const macBytes = 16

// MaxTaggedLen bounds the ids Untag looks at.
const MaxTaggedLen = 1024

func mac(secret []byte, id, account, owner string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("keymux object tag v1\x00"))
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(account))
	h.Write([]byte{0})
	h.Write([]byte(owner))
	return h.Sum(nil)[:macBytes]
}

// Tag returns id carrying account and owner, authenticated under secret.
func Tag(secret []byte, id, account, owner string) string {
	return id + tagMarker + hex.EncodeToString([]byte(account)) + "." + hex.EncodeToString([]byte(owner)) +
		"." + hex.EncodeToString(mac(secret, id, account, owner))
}

// Untag checks a Tag result: the provider's id, the account and the owner,
// ok false when tagged is not a tag or its HMAC does not verify (a forged
// or altered tag, or another fleet's secret).
func Untag(secret []byte, tagged string) (id, account, owner string, ok bool) {
	if len(tagged) > MaxTaggedLen {
		return "", "", "", false
	}
	i := strings.LastIndex(tagged, tagMarker)
	if i <= 0 {
		return "", "", "", false
	}
	parts := strings.Split(tagged[i+len(tagMarker):], ".")
	if len(parts) != 3 {
		return "", "", "", false
	}
	acc, ok1 := decodeLowerHex(parts[0])
	own, ok2 := decodeLowerHex(parts[1])
	sum, ok3 := decodeLowerHex(parts[2])
	if !ok1 || !ok2 || !ok3 || len(acc) == 0 || len(sum) != macBytes {
		return "", "", "", false
	}
	id, account, owner = tagged[:i], string(acc), string(own)
	if !hmac.Equal(sum, mac(secret, id, account, owner)) {
		return "", "", "", false
	}
	return id, account, owner, true
}

// decodeLowerHex decodes the lower-case hex Tag writes and nothing else:
// hex.DecodeString also takes upper case, which would let one tag be
// spelled several ways (a client could vary the case of the HMAC and still
// pass), so every tag has exactly one accepted spelling.
func decodeLowerHex(s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return nil, false
		}
	}
	b, err := hex.DecodeString(s)
	return b, err == nil
}

// IsTagged reports whether s has the shape of a tag (verified or not).
func IsTagged(s string) bool { return strings.Contains(s, tagMarker) }
