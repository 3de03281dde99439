package policy

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/testutil/deep"
)

func TestCheckJSON(t *testing.T) {
	tests := []struct {
		name  string
		json  string
		depth int
		want  error
	}{
		{"object", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, 3, nil},
		{"scalars", ` [1, -0.5e+3, 0, true, false, null, "a\"\\\/\b\f\n\r\t\u00e9"] `, 1, nil},
		{"empty containers", `{"a":{},"b":[],"c":[{}]}`, 3, nil},
		{"string at top", `"x"`, 1, nil},
		{"number at top", `12`, 0, nil},
		{"depth exactly the limit", `[[[]]]`, 3, nil},
		{"one level too deep", `[[[[]]]]`, 3, ErrJSONTooDeep},
		{"object too deep", `{"a":{"a":{"a":{}}}}`, 3, ErrJSONTooDeep},
		{"no limit", string(deep.Arrays(10000, "1")), 0, nil},
		{"empty", ``, 1, ErrJSONSyntax},
		{"spaces", " \n", 1, ErrJSONSyntax},
		{"unclosed", `{"a":1`, 2, ErrJSONSyntax},
		{"wrong close", `{"a":1]`, 2, ErrJSONSyntax},
		{"wrong close array", `[1}`, 2, ErrJSONSyntax},
		{"extra close", `[1]]`, 2, ErrJSONSyntax},
		{"trailing value", `{} {}`, 2, ErrJSONSyntax},
		{"trailing comma", `[1,]`, 2, ErrJSONSyntax},
		{"trailing comma object", `{"a":1,}`, 2, ErrJSONSyntax},
		{"leading comma", `[,1]`, 2, ErrJSONSyntax},
		{"missing colon", `{"a" 1}`, 2, ErrJSONSyntax},
		{"bare key", `{a:1}`, 2, ErrJSONSyntax},
		{"control character", "\"a\x01\"", 1, ErrJSONSyntax},
		{"bad escape", `"\x"`, 1, ErrJSONSyntax},
		{"short unicode escape", `"\u12"`, 1, ErrJSONSyntax},
		{"leading zero", `01`, 1, ErrJSONSyntax},
		{"bare minus", `-`, 1, ErrJSONSyntax},
		{"dot without digits", `1.`, 1, ErrJSONSyntax},
		{"exponent without digits", `1e+`, 1, ErrJSONSyntax},
		{"truncated literal", `tru`, 1, ErrJSONSyntax},
		{"too deep before the syntax error", `[[[[x`, 3, ErrJSONTooDeep},
		{"syntax error before too deep", `[x[[[`, 3, ErrJSONSyntax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckJSON([]byte(tc.json), tc.depth); err != tc.want {
				t.Fatalf("CheckJSON = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestCheckJSONDeepInputKeepsTheStack: 8 MiB of nesting (the default
// max_body_bytes) is refused at the limit, and even without a limit it is
// scanned without growing the goroutine stack (a recursive scanner needs
// hundreds of MiB for it).
func TestCheckJSONDeepInputKeepsTheStack(t *testing.T) {
	body := deep.Body(DefaultMaxBodyBytes)
	for _, tc := range []struct {
		depth int
		want  error
	}{{DefaultMaxJSONDepth, ErrJSONTooDeep}, {0, nil}} {
		var err error
		grew := deep.StackGrowth(func() { err = CheckJSON(body, tc.depth) })
		if err != tc.want {
			t.Errorf("max depth %d: CheckJSON = %v, want %v", tc.depth, err, tc.want)
		}
		if grew > 64<<10 {
			t.Errorf("max depth %d: the stack grew by %d bytes", tc.depth, grew)
		}
	}
}

// FuzzCheckJSON checks CheckJSON against gjson.Valid (its grammar, without a
// depth limit) and against the nesting depth counted independently.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{`{"model":"m","messages":[{"a":[1,2.5e3,true,null]}]}`, `[[[]]]`, `{"a":{"b":{}}}`, `"\u00e9\n"`, `-0`, `[1,]`, `{"a" 1}`, `{}}`, "\"\x7f\xff\""} {
		f.Add([]byte(s), uint8(2))
	}
	f.Add(deep.Body(4<<10), uint8(255)) // small: each run also asks gjson, which recurses
	f.Add(deep.Objects(300, `"x"`), uint8(0))
	f.Add([]byte(` {"a\"b":[{"c":1}],"d":{},"e":[],"f":"x\\","g":-1.5e3,"h":null} `), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, limit uint8) {
		err := CheckJSON(data, int(limit))
		// ScanJSON's members are gjson's, and they change nothing else.
		var got []string
		serr := ScanJSON(data, int(limit), func(name []byte, start, end int) {
			got = append(got, string(name), string(data[start:end]))
		})
		if serr != err {
			t.Fatalf("ScanJSON(%q) = %v, CheckJSON %v", data, serr, err)
		}
		if err == nil && len(data) <= 64<<10 { // gjson recurses
			var want []string
			if root := gjson.ParseBytes(data); root.IsObject() {
				root.ForEach(func(k, v gjson.Result) bool {
					want = append(want, k.Raw[1:len(k.Raw)-1], v.Raw)
					return true
				})
			}
			if !slices.Equal(got, want) {
				t.Fatalf("ScanJSON(%q) members %q, gjson %q", data, got, want)
			}
		}
		if unlimited := CheckJSON(data, 0); (unlimited == nil) != gjson.ValidBytes(data) || (unlimited != nil && !errors.Is(unlimited, ErrJSONSyntax)) {
			t.Fatalf("CheckJSON(%q, 0) = %v, gjson.Valid = %v", data, unlimited, gjson.ValidBytes(data))
		}
		if err == nil || err == ErrJSONSyntax {
			return
		}
		if err != ErrJSONTooDeep || limit == 0 {
			t.Fatalf("CheckJSON(%q, %d) = %v", data, limit, err)
		}
		if d := openBrackets(data); d <= int(limit) {
			t.Fatalf("CheckJSON(%q, %d): too deep, but at most %d brackets are open at once", data, limit, d)
		}
	})
}

// TestHasSpecialByte holds the eight-byte test to the byte table: every
// byte value at every position, among plain bytes of every kind.
func TestHasSpecialByte(t *testing.T) {
	for _, fill := range []byte{'a', ' ', '!', '#', '[', ']', 0x7f, 0x80, 0xa2, 0xdc, 0xff} {
		for pos := range 8 {
			for c := range 256 {
				var w [8]byte
				for i := range w {
					w[i] = fill
				}
				w[pos] = byte(c)
				want := !plainStringByte[c]
				if got := hasSpecialByte(binary.LittleEndian.Uint64(w[:])); got != want {
					t.Fatalf("hasSpecialByte(% x) = %t, want %t", w, got, want)
				}
			}
		}
	}
	// Words of bytes near the edges, several special at once (borrows).
	edges := []byte{0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xa0, 0xdc, 0xfe, 0xff}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		var w [8]byte
		want := false
		for i := range w {
			w[i] = edges[r.IntN(len(edges))]
			want = want || !plainStringByte[w[i]]
		}
		if got := hasSpecialByte(binary.LittleEndian.Uint64(w[:])); got != want {
			t.Fatalf("hasSpecialByte(% x) = %t, want %t", w, got, want)
		}
	}
}

// openBrackets is the most '[' and '{' open at once outside strings.
func openBrackets(data []byte) int {
	depth, most, inString := 0, 0, false
	s := string(data)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case strings.IndexByte("[{", c) >= 0:
			depth++
			most = max(most, depth)
		case strings.IndexByte("]}", c) >= 0:
			depth--
		}
	}
	return most
}

func BenchmarkCheckJSON(b *testing.B) {
	flat := []byte(`{"model":"gpt-4","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 699050) + `"}]}`)
	nested := deep.Body(DefaultMaxBodyBytes)
	for _, bc := range []struct {
		name string
		body []byte
		want error
	}{{"8MiB_flat", flat, nil}, {"8MiB_nested", nested, ErrJSONTooDeep}} {
		b.Run(bc.name+"/CheckJSON", func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := CheckJSON(bc.body, DefaultMaxJSONDepth); err != bc.want {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("8MiB_flat/gjson.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(flat)))
		for b.Loop() {
			if !gjson.ValidBytes(flat) {
				b.Fatal("invalid")
			}
		}
	})
}

// TestClassifyDeepBody: an upstream error body nested millions of levels
// deep is classified without growing the stack (gjson's Get skips what it
// does not look into iteratively).
func TestClassifyDeepBody(t *testing.T) {
	body := append(deep.Objects(DefaultMaxBodyBytes/6, "1"), `,"error":{"code":"insufficient_quota"}}`...)
	body = append([]byte(`{"x":`), body...)
	var o Outcome
	grew := deep.StackGrowth(func() { o = Classify(429, headers(), body, t0) })
	if o.Kind != OutcomeQuota {
		t.Errorf("kind %d, want quota (the error member after the nesting)", o.Kind)
	}
	if grew > 64<<10 {
		t.Errorf("the stack grew by %d bytes", grew)
	}
}
