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
// whether a missing model is an error.
func parseBody(body []byte, need modelNeed, maxDepth int) (bodyInfo, *apiError) {
	var bi bodyInfo
	if len(body) == 0 {
		return bi, badRequest("invalid_json", "", "The request body is empty; a JSON object is required.")
	}
	// An iterative pre-pass: gjson's own validation recurses once per level,
	// and a body millions of levels deep would grow the stack without bound.
	if maxDepth <= 0 {
		maxDepth = policy.DefaultMaxJSONDepth
	}
	switch policy.CheckJSON(body, maxDepth) {
	case nil:
	case policy.ErrJSONTooDeep:
		return bi, badRequest("invalid_json", "", "The JSON body of your request nests arrays and objects more than "+
			strconv.Itoa(maxDepth)+" levels deep (the limit, max_json_depth).")
	default:
		return bi, badRequest("invalid_json", "", "We could not parse the JSON body of your request: it is not valid JSON.")
	}
	// Parse a string view of body: gjson.ParseBytes would copy it.
	root := gjson.Parse(unsafe.String(&body[0], len(body)))
	if !root.IsObject() {
		return bi, badRequest("invalid_json", "", "The request body must be a JSON object.")
	}
	var (
		models  int
		modelV  gjson.Result
		seen    uint8 // stream, stream_options: each at most once
		dup     string
		typeErr *apiError
	)
	root.ForEach(func(k, v gjson.Result) bool {
		// keymux reads the first stream member and the upstream maybe the
		// last: two of them would make them disagree.
		if bit := onceMembers(k.Str); bit != 0 {
			if seen&bit != 0 {
				dup = k.Str
				return false
			}
			seen |= bit
		}
		switch k.Str {
		case "model":
			models++
			modelV = v
		case "stream":
			switch v.Type {
			case gjson.True:
				bi.stream = true
			case gjson.False, gjson.Null:
			default:
				typeErr = badRequest("invalid_type", "stream", "Invalid type for 'stream': expected a boolean, got "+jsonTypeName(v)+".")
				return false
			}
		case "stream_options":
			switch {
			case v.IsObject():
				bi.streamOptions, bi.streamUsage = "object", v.Get("include_usage").Type == gjson.True
			case v.Type == gjson.Null:
				bi.streamOptions = "null"
			default:
				typeErr = badRequest("invalid_type", "stream_options", "Invalid type for 'stream_options': expected an object, got "+jsonTypeName(v)+".")
				return false
			}
		case "prompt_cache_key", "user":
			if v.Type != gjson.String {
				break
			}
			if !utf8.ValidString(v.Str) {
				typeErr = notUTF8(k.Str)
				return false
			}
			if k.Str == "prompt_cache_key" || bi.affinity == "" {
				bi.affinity = strings.Clone(v.Str)
			}
		case "max_tokens", "max_completion_tokens", "max_output_tokens":
			if v.Type == gjson.Number && v.Num > 0 {
				bi.maxTokens = max(bi.maxTokens, int64(min(v.Num, 1<<40)))
			}
		case "messages":
			if !v.IsArray() {
				typeErr = badRequest("invalid_type", "messages", "Invalid type for 'messages': expected an array, got "+jsonTypeName(v)+".")
				return false
			}
		}
		return true
	})
	if dup != "" {
		return bi, badRequest("duplicate_field", dup, "The request body names '"+dup+"' more than once.")
	}
	if typeErr != nil {
		return bi, typeErr
	}
	switch {
	case models > 1:
		return bi, badRequest("duplicate_field", "model", "The request body names 'model' more than once.")
	case models == 0 && need == modelRequired:
		return bi, badRequest("missing_required_parameter", "model", "You must provide a model parameter.")
	case models == 0:
		return bi, nil
	case modelV.Type != gjson.String:
		return bi, badRequest("invalid_type", "model", "Invalid type for 'model': expected a string, got "+jsonTypeName(modelV)+".")
	}
	if aerr := checkModel(modelV.Str); aerr != nil {
		return bi, aerr
	}
	bi.model = strings.Clone(modelV.Str) // outlives the request body
	// gjson sets Index to the raw value's offset for results of a parsed
	// document; verify rather than trust it.
	if i := modelV.Index; i > 0 && i+len(modelV.Raw) <= len(body) && string(body[i:i+len(modelV.Raw)]) == modelV.Raw {
		bi.modelStart, bi.modelEnd = i, i+len(modelV.Raw)
	} else {
		r := gjson.GetBytes(body, "model")
		bi.modelStart, bi.modelEnd = r.Index, r.Index+len(r.Raw)
	}
	return bi, nil
}

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

func jsonTypeName(v gjson.Result) string {
	switch v.Type {
	case gjson.String:
		return "a string"
	case gjson.Number:
		return "a number"
	case gjson.True, gjson.False:
		return "a boolean"
	case gjson.Null:
		return "null"
	}
	if v.IsArray() {
		return "an array"
	}
	return "an object"
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
