package store

import (
	"encoding/json"
	"unicode/utf8"
)

// members walks the members of the JSON object raw, which must be valid
// JSON (json.Valid): fn gets each member's name (unquoted as
// encoding/json unquotes it) and its value's bytes (a slice of raw, no
// surrounding space), in order, and may stop the walk with an error. It
// returns false, calling fn never, when raw is not an object. One pass,
// no decoding of the values: the fast path under the strict decoders,
// which fall back to encoding/json for input that is not valid JSON.
func members(raw []byte, fn func(name string, val []byte) error) (bool, error) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false, nil
	}
	i = skipSpace(raw, i+1)
	if raw[i] == '}' {
		return true, nil
	}
	for {
		end := stringEnd(raw, i)
		name := memberName(raw[i:end])
		i = skipSpace(raw, end)
		i = skipSpace(raw, i+1) // ':'
		vend := valueEnd(raw, i)
		if err := fn(name, raw[i:vend]); err != nil {
			return true, err
		}
		i = skipSpace(raw, vend)
		if raw[i] == '}' {
			return true, nil
		}
		i = skipSpace(raw, i+1) // ','
	}
}

func skipSpace(raw []byte, i int) int {
	for i < len(raw) {
		switch raw[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd is the index after the string that starts at raw[i] ('"').
func stringEnd(raw []byte, i int) int {
	for i++; i < len(raw); i++ {
		switch raw[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(raw)
}

// valueEnd is the index after the value that starts at raw[i].
func valueEnd(raw []byte, i int) int {
	switch raw[i] {
	case '"':
		return stringEnd(raw, i)
	case '{', '[':
		depth := 0
		for ; i < len(raw); i++ {
			switch raw[i] {
			case '"':
				i = stringEnd(raw, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(raw)
	}
	for ; i < len(raw); i++ {
		switch raw[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// memberName unquotes the JSON string q: directly when it has no escape
// and is valid UTF-8, else as encoding/json does (invalid UTF-8 becomes
// U+FFFD).
func memberName(q []byte) string {
	s := q[1 : len(q)-1]
	if plainString(s) {
		return string(s)
	}
	var name string
	_ = json.Unmarshal(q, &name)
	return name
}

// plainString reports whether the inside of a JSON string needs no
// unquoting.
func plainString(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			return utf8.Valid(s) && !containsBackslash(s)
		}
	}
	return true
}

func containsBackslash(s []byte) bool {
	for _, c := range s {
		if c == '\\' {
			return true
		}
	}
	return false
}

// stringValue is the Go string of the JSON string value val (as
// encoding/json decodes it), or false when val is not a string.
func stringValue(val []byte) (string, bool) {
	if len(val) == 0 || val[0] != '"' {
		return "", false
	}
	return memberName(val), true
}

// boolValue is the JSON literal val as a bool, or false when it is none.
func boolValue(val []byte) (v, ok bool) {
	switch string(val) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}
