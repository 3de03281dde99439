package objects

import (
	"strings"
	"testing"
)

func TestTagUntag(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	tag := Tag(secret, "resp_abc", "acct-a", "ca")
	tests := []struct {
		name, in           string
		id, account, owner string
		ok                 bool
	}{
		{"round trip", tag, "resp_abc", "acct-a", "ca", true},
		{"no owner", Tag(secret, "resp_x", "acct-b", ""), "resp_x", "acct-b", "", true},
		{"plain id", "resp_abc", "", "", "", false},
		{"other owner swapped in", strings.Replace(tag, ".6361.", ".6362.", 1), "", "", "", false},
		{"other account", Tag(secret, "resp_abc", "acct-b", "ca")[:len(tag)-2] + tag[len(tag)-2:], "", "", "", false},
		{"other secret", Tag([]byte("another secret, 32 bytes long!!!"), "resp_abc", "acct-a", "ca"), "", "", "", false},
		{"truncated mac", tag[:len(tag)-2], "", "", "", false},
		{"empty account", "resp_abc.km1..6361." + strings.Repeat("00", 16), "", "", "", false},
		{"not hex", "resp_abc.km1.zz.6361." + strings.Repeat("00", 16), "", "", "", false},
		{"upper-case mac", tag[:len(tag)-32] + strings.ToUpper(tag[len(tag)-32:]), "", "", "", false},
		{"upper-case account", strings.Replace(tag, ".616363742d61.", ".616363742D61.", 1), "", "", "", false},
		{"too long", strings.Repeat("a", MaxTaggedLen) + tag, "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, acc, owner, ok := Untag(secret, tt.in)
			if id != tt.id || acc != tt.account || owner != tt.owner || ok != tt.ok {
				t.Fatalf("Untag(%q) = %q %q %q %t, want %q %q %q %t", tt.in, id, acc, owner, ok, tt.id, tt.account, tt.owner, tt.ok)
			}
		})
	}
}

func FuzzUntag(f *testing.F) {
	secret := []byte("fuzz secret")
	f.Add(Tag(secret, "resp_1", "a", "b"))
	f.Add("resp_1.km1.61.62.00")
	f.Add(".km1.")
	f.Fuzz(func(t *testing.T, s string) {
		id, acc, owner, ok := Untag(secret, s)
		if ok && Tag(secret, id, acc, owner) != s {
			t.Fatalf("Untag(%q) accepted a tag Tag does not make", s)
		}
	})
}

func BenchmarkUntag(b *testing.B) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	tag := Tag(secret, "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", "acct-a", "client-a")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, ok := Untag(secret, tag); !ok {
			b.Fatal("no")
		}
	}
}
