package store

import (
	"sync"
	"unicode/utf8"
)

// decodePlain decodes a rule document of the plain form, which is most of
// them: one JSON object whose members are key, from and to (strings
// without escapes) and enabled (true or false), each at most once, and
// nothing after it. It reads the bytes once and needs no validity pass,
// since anything outside that form makes it return false, d untouched;
// the caller then decodes with decodeStrict, whose errors operators see.
func (d *ruleDoc) decodePlain(raw []byte) bool {
	var r ruleDoc
	var seen [4]bool
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false
	}
	i = skipSpace(raw, i+1)
	for {
		name, end, ok := plainStringAt(raw, i)
		if !ok {
			return false
		}
		field := -1
		switch string(name) {
		case "key":
			field = 0
		case "from":
			field = 1
		case "to":
			field = 2
		case "enabled":
			field = 3
		}
		if field < 0 || seen[field] {
			return false
		}
		seen[field] = true
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return false
		}
		i = skipSpace(raw, i+1)
		if field == 3 {
			switch {
			case hasPrefixAt(raw, i, "true"):
				r.Enabled, i = &plainTrue, i+4
			case hasPrefixAt(raw, i, "false"):
				r.Enabled, i = &plainFalse, i+5
			default:
				return false
			}
		} else {
			val, end, ok := plainStringAt(raw, i)
			if !ok {
				return false
			}
			switch field {
			case 0:
				r.Key = internName(val)
			case 1:
				r.From = internName(val)
			case 2:
				r.To = internName(val)
			}
			i = end
		}
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return false
		}
		if raw[i] == '}' {
			break
		}
		if raw[i] != ',' {
			return false
		}
		i = skipSpace(raw, i+1)
	}
	if skipSpace(raw, i+1) != len(raw) {
		return false
	}
	*d = r
	return true
}

// The values a plain document's enabled points to (never written).
var plainTrue, plainFalse = true, false

// plainStringAt reads the JSON string at raw[i] when it has no escape and
// no control character and is valid UTF-8 (its Go value is then its bytes):
// the inside and the index after it.
func plainStringAt(raw []byte, i int) (s []byte, end int, ok bool) {
	if i >= len(raw) || raw[i] != '"' {
		return nil, 0, false
	}
	ascii := true
	for j := i + 1; j < len(raw); j++ {
		switch c := raw[j]; {
		case c == '"':
			s = raw[i+1 : j]
			return s, j + 1, ascii || utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, 0, false
}

func hasPrefixAt(raw []byte, i int, lit string) bool {
	return len(raw)-i >= len(lit) && string(raw[i:i+len(lit)]) == lit
}

// ruleNames are recent key and model names of rule documents: 100k rules
// name a few thousand keys and models, and the rules that share a name
// share its string (less memory, and the apply's maps compare such
// strings by pointer). Bounded: it starts over when full.
var ruleNames struct {
	sync.Mutex
	m map[string]string
}

// maxRuleNames bounds ruleNames.
const maxRuleNames = 8192

// internName is the string of b, shared with the rules that named it
// recently.
func internName(b []byte) string {
	ruleNames.Lock()
	defer ruleNames.Unlock()
	if s, ok := ruleNames.m[string(b)]; ok {
		return s
	}
	if ruleNames.m == nil || len(ruleNames.m) >= maxRuleNames {
		ruleNames.m = make(map[string]string, maxRuleNames)
	}
	s := string(b)
	ruleNames.m[s] = s
	return s
}
