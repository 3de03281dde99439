package extproc

import (
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/policy"
)

// parseBodyGJSON is parseBody as it was written on gjson (a pre-pass with
// CheckJSON, then gjson's ForEach over the top-level members): the oracle
// FuzzParseBody holds the one-pass parseBody to.
func parseBodyGJSON(body []byte, need modelNeed, maxDepth int) (bodyInfo, *apiError) {
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
				typeErr = badRequest("invalid_type", "stream", "Invalid type for 'stream': expected a boolean, got "+gjsonTypeName(v)+".")
				return false
			}
		case "stream_options":
			switch {
			case v.IsObject():
				bi.streamOptions, bi.streamUsage = "object", v.Get("include_usage").Type == gjson.True
			case v.Type == gjson.Null:
				bi.streamOptions = "null"
			default:
				typeErr = badRequest("invalid_type", "stream_options", "Invalid type for 'stream_options': expected an object, got "+gjsonTypeName(v)+".")
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
				typeErr = badRequest("invalid_type", "messages", "Invalid type for 'messages': expected an array, got "+gjsonTypeName(v)+".")
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
		return bi, badRequest("invalid_type", "model", "Invalid type for 'model': expected a string, got "+gjsonTypeName(modelV)+".")
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

func gjsonTypeName(v gjson.Result) string {
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
