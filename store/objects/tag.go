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
	acc, err1 := hex.DecodeString(parts[0])
	own, err2 := hex.DecodeString(parts[1])
	sum, err3 := hex.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || len(acc) == 0 || len(sum) != macBytes {
		return "", "", "", false
	}
	id, account, owner = tagged[:i], string(acc), string(own)
	if !hmac.Equal(sum, mac(secret, id, account, owner)) {
		return "", "", "", false
	}
	return id, account, owner, true
}

// IsTagged reports whether s has the shape of a tag (verified or not).
func IsTagged(s string) bool { return strings.Contains(s, tagMarker) }
