package policy

import (
	"encoding/binary"
	"errors"
)

// Errors of CheckJSON.
var (
	ErrJSONSyntax  = errors.New("not valid JSON")
	ErrJSONTooDeep = errors.New("JSON nests too deep")
)

// States of CheckJSON's scanner: what the next non-space byte may be.
const (
	jsValue        = iota // a value
	jsValueOrClose        // after '[': a value or ']'
	jsKeyOrClose          // after '{': a member name or '}'
	jsKey                 // after ',' in an object: a member name
	jsAfterValue          // ',', the closing bracket, or the end of the input at depth 0
)

// CheckJSON reports whether data is exactly one JSON value (RFC 8259
// grammar, surrounded by optional whitespace; string contents are not
// checked for UTF-8, as gjson.Valid does not) whose arrays and objects nest
// at most maxDepth levels (the outermost object is level 1; maxDepth <= 0:
// no limit). It returns nil, ErrJSONSyntax or ErrJSONTooDeep, whichever the
// first offending byte shows.
//
// It makes one pass over the bytes without recursion: however deep the
// input, the goroutine stack does not grow, and the only memory it keeps is
// one bit per open level (which closing bracket is due), on the stack up to
// 256 levels.
func CheckJSON(data []byte, maxDepth int) error { return ScanJSON(data, maxDepth, nil) }

// ScanJSON is CheckJSON that also hands visit, in document order, each
// member of a top-level object as its pass goes by: the member's name as
// written between its quotes (escapes unresolved, a slice of data) and
// where its value's raw bytes are, data[start:end]. The members of any other top-level value, and
// members nested deeper, are not visited. visit sees the members before
// the end of data is checked: a caller acts on them only when ScanJSON
// returns nil.
func ScanJSON(data []byte, maxDepth int, visit func(name []byte, start, end int)) error {
	var small [4]uint64
	kinds := small[:] // bit d set: level d+1 is an object
	if maxDepth > 64*len(small) {
		kinds = make([]uint64, (maxDepth+63)/64)
	}
	depth, st, i, n := 0, jsValue, 0, len(data)
	// The top-level object's current member: its name and where its value
	// starts (visited when depth is back to 1 after the value).
	members := false
	nameStart, nameEnd, valueStart := 0, 0, 0
	for {
		for i < n && isJSONSpace(data[i]) {
			i++
		}
		if i == n {
			if st == jsAfterValue && depth == 0 {
				return nil
			}
			return ErrJSONSyntax
		}
		c := data[i]
		switch st {
		case jsAfterValue:
			if depth == 0 {
				return ErrJSONSyntax // bytes after the value
			}
			object := kinds[(depth-1)/64]&(1<<((depth-1)%64)) != 0
			switch {
			case c == ',' && object:
				st = jsKey
			case c == ',':
				st = jsValue
			case c == '}' && object, c == ']' && !object:
				depth--
				if depth == 1 && members {
					visit(data[nameStart:nameEnd], valueStart, i+1)
				}
			default:
				return ErrJSONSyntax
			}
			i++
			continue
		case jsKeyOrClose, jsKey:
			if c == '}' && st == jsKeyOrClose {
				depth--
				i++
				st = jsAfterValue
				if depth == 1 && members {
					visit(data[nameStart:nameEnd], valueStart, i)
				}
				continue
			}
			if c != '"' {
				return ErrJSONSyntax
			}
			var ok bool
			start := i + 1
			if i, ok = scanJSONString(data, start); !ok {
				return ErrJSONSyntax
			}
			if depth == 1 {
				nameStart, nameEnd = start, i-1
			}
			for i < n && isJSONSpace(data[i]) {
				i++
			}
			if i == n || data[i] != ':' {
				return ErrJSONSyntax
			}
			i++
			st = jsValue
			continue
		case jsValueOrClose:
			if c == ']' {
				depth--
				i++
				st = jsAfterValue
				if depth == 1 && members {
					visit(data[nameStart:nameEnd], valueStart, i)
				}
				continue
			}
		}
		// A value.
		ok := true
		if depth == 1 {
			valueStart = i
		}
		switch c {
		case '{', '[':
			if maxDepth > 0 && depth >= maxDepth {
				return ErrJSONTooDeep
			}
			w, bit := depth/64, uint64(1)<<(depth%64)
			if w == len(kinds) {
				kinds = append(kinds, 0) // no limit: one more word per 64 levels
			}
			if c == '{' {
				kinds[w] |= bit
				st = jsKeyOrClose
				members = members || depth == 0 && visit != nil
			} else {
				kinds[w] &^= bit
				st = jsValueOrClose
			}
			depth++
			i++
			continue
		case '"':
			i, ok = scanJSONString(data, i+1)
		case 't':
			i, ok = scanJSONWord(data, i, "true")
		case 'f':
			i, ok = scanJSONWord(data, i, "false")
		case 'n':
			i, ok = scanJSONWord(data, i, "null")
		default:
			i, ok = scanJSONNumber(data, i)
		}
		if !ok {
			return ErrJSONSyntax
		}
		st = jsAfterValue
		if depth == 1 && members {
			visit(data[nameStart:nameEnd], valueStart, i)
		}
	}
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// plainStringByte marks the bytes a JSON string holds as they are: not a
// control character, a quote or a backslash.
var plainStringByte = func() (t [256]bool) {
	for c := ' '; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanJSONString scans a string body from i (just after the opening quote)
// and returns the offset after the closing quote.
func scanJSONString(data []byte, i int) (int, bool) {
	for {
		// Eight bytes at a time while none is special.
		for i+8 <= len(data) && !hasSpecialByte(binary.LittleEndian.Uint64(data[i:])) {
			i += 8
		}
		for i < len(data) && plainStringByte[data[i]] {
			i++
		}
		if i == len(data) {
			return i, false
		}
		switch data[i] {
		case '"':
			return i + 1, true
		case '\\':
			i++
			if i == len(data) {
				return i, false
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return i, false
				}
				for _, h := range data[i+1 : i+5] {
					if !isHex(h) {
						return i, false
					}
				}
				i += 4
			default:
				return i, false
			}
			i++
		default: // a control character
			return i, false
		}
	}
}

// Bytes repeated over a word, for hasSpecialByte.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// hasSpecialByte reports whether one of the eight bytes of w is not a
// plainStringByte: below 0x20, '"' or '\\'. (x - ones) &^ x & highs is
// nonzero exactly when a byte of x is 0, (x - 0x20*ones) &^ x & highs
// exactly when one is below 0x20: no byte borrows from the next unless it
// is itself such a byte.
func hasSpecialByte(w uint64) bool {
	q, b := w^('"'*ones), w^('\\'*ones)
	return ((w-0x20*ones)&^w|(q-ones)&^q|(b-ones)&^b)&highs != 0
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func scanJSONWord(data []byte, i int, word string) (int, bool) {
	if len(data)-i < len(word) || string(data[i:i+len(word)]) != word {
		return i, false
	}
	return i + len(word), true
}

// scanJSONNumber scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? from i.
func scanJSONNumber(data []byte, i int) (int, bool) {
	digits := func() bool {
		start := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case !digits():
		return i, false
	}
	if i < len(data) && data[i] == '.' {
		i++
		if !digits() {
			return i, false
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if !digits() {
			return i, false
		}
	}
	return i, true
}
