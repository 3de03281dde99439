package extproc

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/keymux/keymux/policy"
)

// bodyInfo is what keymux needs from a request body. It is read by scanning
// the top-level members once; the body is never decoded into Go values.
type bodyInfo struct {
	model      string
	modelStart int // byte offset of the model value (the opening quote) in the body
	modelEnd   int // offset just after it
	// form: the body is a multipart form (parseForm) and the model value
	// is the raw content of its part, not a JSON string.
	form   bool
	stream bool
	// streamOptions is the raw stream_options value ("" when absent);
	// streamUsage reports stream_options.include_usage = true.
	streamOptions string
	streamUsage   bool
	// affinity is the body's prompt_cache_key, else its user: what the
	// affinity strategy keeps on one key.
	affinity string
	// maxTokens is the completion the request allows: the largest of
	// max_tokens, max_completion_tokens and max_output_tokens (0: none).
	maxTokens int64
}

// parseBody validates a JSON request body, nested at most maxDepth levels
// (settings.max_json_depth), and extracts model and stream. need says
// whether a missing model is an error. It makes one pass over the bytes
// (policy.ScanJSON, iterative: a body millions of levels deep does not grow
// the stack) and looks at the top-level members it needs as they go by.
func parseBody(body []byte, need modelNeed, maxDepth int) (bodyInfo, *apiError) {
	var bi bodyInfo
	if len(body) == 0 {
		return bi, badRequest("invalid_json", "", "The request body is empty; a JSON object is required.")
	}
	if maxDepth <= 0 {
		maxDepth = policy.DefaultMaxJSONDepth
	}
	var (
		models  int
		model   []byte // the raw model value
		seen    uint8  // stream, stream_options: each at most once
		dup     string
		typeErr *apiError
	)
	err := policy.ScanJSON(body, maxDepth, func(rawName []byte, start, end int) {
		if dup != "" || typeErr != nil {
			return // the first offending member is the one reported
		}
		name, v := memberName(rawName), body[start:end]
		// keymux reads the first stream member and the upstream maybe the
		// last: two of them would make them disagree.
		if bit := onceMembers(name); bit != 0 {
			if seen&bit != 0 {
				dup = strings.Clone(name)
				return
			}
			seen |= bit
		}
		switch name {
		case "model":
			models++
			bi.modelStart, bi.modelEnd, model = start, end, v
		case "stream":
			switch v[0] {
			case 't':
				bi.stream = true
			case 'f', 'n':
			default:
				typeErr = badRequest("invalid_type", "stream", "Invalid type for 'stream': expected a boolean, got "+jsonTypeName(v)+".")
			}
		case "stream_options":
			switch v[0] {
			case '{':
				bi.streamOptions, bi.streamUsage = "object", gjson.GetBytes(v, "include_usage").Type == gjson.True
			case 'n':
				bi.streamOptions = "null"
			default:
				typeErr = badRequest("invalid_type", "stream_options", "Invalid type for 'stream_options': expected an object, got "+jsonTypeName(v)+".")
			}
		case "prompt_cache_key", "user":
			if v[0] != '"' {
				break
			}
			str := jsonString(v)
			if !utf8.ValidString(str) {
				typeErr = notUTF8(name)
				return
			}
			if name == "prompt_cache_key" || bi.affinity == "" {
				bi.affinity = strings.Clone(str)
			}
		case "max_tokens", "max_completion_tokens", "max_output_tokens":
			if v[0] == '-' || v[0] >= '0' && v[0] <= '9' {
				// ParseFloat gives ±Inf for a number out of range.
				if n, _ := strconv.ParseFloat(unsafe.String(&v[0], len(v)), 64); n > 0 {
					bi.maxTokens = max(bi.maxTokens, int64(min(n, 1<<40)))
				}
			}
		case "messages":
			if v[0] != '[' {
				typeErr = badRequest("invalid_type", "messages", "Invalid type for 'messages': expected an array, got "+jsonTypeName(v)+".")
			}
		}
	})
	switch err {
	case nil:
	case policy.ErrJSONTooDeep:
		return bodyInfo{}, badRequest("invalid_json", "", "The JSON body of your request nests arrays and objects more than "+
			strconv.Itoa(maxDepth)+" levels deep (the limit, max_json_depth).")
	default:
		return bodyInfo{}, badRequest("invalid_json", "", "We could not parse the JSON body of your request: it is not valid JSON.")
	}
	if bytes.TrimLeft(body, " \t\n\r")[0] != '{' {
		return bodyInfo{}, badRequest("invalid_json", "", "The request body must be a JSON object.")
	}
	if dup != "" {
		return bodyInfo{}, badRequest("duplicate_field", dup, "The request body names '"+dup+"' more than once.")
	}
	if typeErr != nil {
		return bodyInfo{}, typeErr
	}
	switch {
	case models > 1:
		return bodyInfo{}, badRequest("duplicate_field", "model", "The request body names 'model' more than once.")
	case models == 0 && need == modelRequired:
		return bodyInfo{}, badRequest("missing_required_parameter", "model", "You must provide a model parameter.")
	case models == 0:
		return bi, nil
	case model[0] != '"':
		return bodyInfo{}, badRequest("invalid_type", "model", "Invalid type for 'model': expected a string, got "+jsonTypeName(model)+".")
	}
	m := jsonString(model)
	if aerr := checkModel(m); aerr != nil {
		return bodyInfo{}, aerr
	}
	bi.model = strings.Clone(m) // outlives the request body
	return bi, nil
}

// memberName is a member name as ScanJSON hands it (between the quotes)
// with its escapes resolved, as every JSON decoder upstream reads it: a
// view of raw when it has none, else a new string.
func memberName(raw []byte) string {
	if len(raw) == 0 {
		return ""
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return unsafe.String(&raw[0], len(raw))
	}
	return gjson.Parse(`"` + string(raw) + `"`).Str
}

// jsonString is the value of the valid JSON string v (quotes included),
// as memberName reads what is between them.
func jsonString(v []byte) string { return memberName(v[1 : len(v)-1]) }

// checkModel refuses a model name keymux will not carry: empty, too long,
// not UTF-8, with control characters or a dot path segment.
func checkModel(m string) *apiError {
	switch {
	case m == "":
		return badRequest("invalid_value", "model", "'model' must not be empty.")
	case len(m) > maxModelLen:
		return badRequest("invalid_value", "model", "'model' is longer than "+strconv.Itoa(maxModelLen)+" bytes.")
	case !utf8.ValidString(m):
		return notUTF8("model")
	case policy.HasControl(m):
		return badRequest("invalid_value", "model", "'model' must not contain control characters.")
	case policy.HasDotSegment(m):
		// It may become a path segment upstream (an Azure deployment).
		return badRequest("invalid_value", "model", "'model' must not have a '.' or '..' path segment.")
	}
	return nil
}

// onceMembers returns the bit of a top-level member that may appear only
// once besides model (which is counted apart), 0 for the others.
func onceMembers(name string) uint8 {
	switch name {
	case "stream":
		return 1
	case "stream_options":
		return 2
	}
	return 0
}

// maxModelLen is the longest model name keymux accepts (and echoes).
const maxModelLen = 256

// notUTF8 refuses a string member whose value is not valid UTF-8: such a
// value cannot go into metadata, spans or metric labels.
func notUTF8(field string) *apiError {
	return badRequest("invalid_value", field, "'"+field+"' is not valid UTF-8.")
}

// jsonTypeName names the type of the valid JSON value v (raw bytes) as
// OpenAI's errors do.
func jsonTypeName(v []byte) string {
	switch v[0] {
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	case '[':
		return "an array"
	case '{':
		return "an object"
	}
	return "a number"
}

// patchModel returns body with the model value replaced by model, a JSON
// string or a form part's raw content as the body is; every other byte is
// kept as it was. (A model never holds a control character, so it cannot
// end a form part early.)
func patchModel(body []byte, bi bodyInfo, model string) []byte {
	out := make([]byte, 0, len(body)+len(model)+8)
	out = append(out, body[:bi.modelStart]...)
	if bi.form {
		out = append(out, model...)
	} else {
		out = appendJSONString(out, model)
	}
	return append(out, body[bi.modelEnd:]...)
}

// readBody reads what keymux needs from a request body of operation op: a
// multipart form (boundary from the request's Content-Type) or JSON.
func readBody(body []byte, op *operation, boundary string, maxDepth int) (bodyInfo, *apiError) {
	if op.form {
		return parseForm(body, boundary, op.model)
	}
	return parseBody(body, op.model, maxDepth)
}

// withStreamUsage returns body with stream_options.include_usage set to true,
// changing nothing else: an absent stream_options is inserted first in the
// object, a null one replaced, an existing object given the member.
func withStreamUsage(body []byte, bi bodyInfo) ([]byte, error) {
	switch bi.streamOptions {
	case "object":
		return sjson.SetBytes(body, "stream_options.include_usage", true)
	case "null":
		return sjson.SetRawBytes(body, "stream_options", []byte(`{"include_usage":true}`))
	}
	i := bytes.IndexByte(body, '{')
	out := make([]byte, 0, len(body)+40)
	out = append(out, body[:i+1]...)
	out = append(out, `"stream_options":{"include_usage":true},`...)
	return append(out, body[i+1:]...), nil
}
