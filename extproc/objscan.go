package extproc

import (
	"bytes"
	"encoding/json"
	"slices"
)

// objectRef is an object id named in a request body: the member that
// names it, its value and the byte span of the JSON string (quotes
// included), so that a tagged id can be replaced by the provider's.
type objectRef struct {
	field      string
	id         string
	start, end int
}

// refMember is a body member that names objects of kind: by its string
// value, or (array) by its array of strings.
type refMember struct {
	kind  string
	array bool
}

// refMembers are the members that name objects; refParents the members
// whose object value names one in its "id" (conversation: {"id": …}).
var (
	refMembers = map[string]refMember{
		"input_file_id": {kind: "file"}, "file_id": {kind: "file"}, "file_ids": {kind: "file", array: true},
		"training_file": {kind: "file"}, "validation_file": {kind: "file"},
		"previous_response_id": {kind: "response"}, "conversation": {kind: "conversation"},
		"assistant_id": {kind: "assistant"}, "thread_id": {kind: "thread"},
		"vector_store_id": {kind: "vector_store"}, "vector_store_ids": {kind: "vector_store", array: true},
	}
	refParents = []string{"conversation"}
)

// isRef reports whether name is a member naming objects by a string
// (array false) or by an array of strings (array true).
func isRef(name []byte, array bool) bool {
	m, ok := refMembers[string(name)]
	return ok && m.array == array
}

// maxObjectRefs bounds the ids one body may name.
const maxObjectRefs = 1000

// scanObjectRefs lists the object ids a JSON body names, at any depth, in
// one pass over its bytes (no decode). body must have passed
// policy.CheckJSON: it is valid and nested at most max_json_depth levels,
// which bounds the container stack. ok is false beyond maxObjectRefs ids.
func scanObjectRefs(body []byte) (refs []objectRef, ok bool) {
	type container struct {
		key   []byte // the member whose value the container is (nil at the top or in an array)
		array bool
	}
	var (
		stackBuf [8]container // the usual depth, without an allocation
		stack    = stackBuf[:0]
		pending  []byte // the key just read, waiting for its value (unescaped)
		hasKey   bool
	)
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '{', '[':
			var k []byte
			if hasKey {
				k = pending
			}
			stack = append(stack, container{key: k, array: c == '['})
			hasKey = false
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			hasKey = false
		case '"':
			start := i
			end, raw := readJSONString(body, i)
			i = end - 1
			j := end
			for j < len(body) && (body[j] == ' ' || body[j] == '\t' || body[j] == '\n' || body[j] == '\r') {
				j++
			}
			top := container{}
			if len(stack) > 0 {
				top = stack[len(stack)-1]
			}
			if j < len(body) && body[j] == ':' && !top.array {
				pending, hasKey = jsonKey(raw), true
				continue
			}
			var field []byte
			switch {
			case hasKey && isRef(pending, false):
				field = pending
			case hasKey && string(pending) == "id" && !top.array && slices.Contains(refParents, string(top.key)):
				field = top.key
			case !hasKey && top.array && isRef(top.key, true):
				field = top.key
			}
			hasKey = false
			if len(field) > 0 {
				if len(refs) == maxObjectRefs {
					return refs, false
				}
				refs = append(refs, objectRef{field: string(field), id: jsonStringValue(raw), start: start, end: end})
			}
		case ',':
			hasKey = false
		case ':', ' ', '\t', '\n', '\r':
		default:
			// a number, true, false or null: a value
			if hasKey {
				for i+1 < len(body) && !isJSONDelim(body[i+1]) {
					i++
				}
				hasKey = false
			}
		}
	}
	return refs, true
}

func isJSONDelim(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// readJSONString reads the JSON string starting at body[i] (a quote): the
// offset just after its closing quote, and the string as it is written,
// quotes included.
func readJSONString(body []byte, i int) (end int, raw []byte) {
	j := i + 1
	for {
		k := bytes.IndexByte(body[j:], '"')
		if k < 0 {
			return len(body), body[i:]
		}
		j += k
		// The quote closes the string unless an odd run of backslashes
		// escapes it.
		n := 0
		for b := j - 1; b > i && body[b] == '\\'; b-- {
			n++
		}
		if n%2 == 0 {
			return j + 1, body[i : j+1]
		}
		j++
	}
}

// jsonStringValue is a JSON string's value (raw with its quotes), escapes
// decoded: without a backslash a plain copy, else a decode of that string
// alone.
// jsonKey is a member name's raw JSON string unquoted: a slice of raw
// unless it holds an escape.
func jsonKey(raw []byte) []byte {
	if len(raw) >= 2 && !bytes.ContainsRune(raw, '\\') {
		return raw[1 : len(raw)-1]
	}
	return []byte(jsonStringValue(raw))
}

func jsonStringValue(raw []byte) string {
	if len(raw) < 2 {
		return ""
	}
	if !bytes.ContainsRune(raw, '\\') {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return ""
	}
	return s
}
