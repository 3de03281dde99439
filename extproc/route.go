package extproc

import (
	"slices"
	"strconv"
	"strings"

	"github.com/keymux/keymux/policy"
)

// operation is one OpenAI-compatible endpoint keymux proxies.
type operation struct {
	name      string // gen_ai.operation.name-style label: "chat", "embeddings", …
	path      string // upstream path below the provider's base URL, e.g. "/chat/completions"
	methods   string // allowed methods, ", "-separated, for the Allow header
	prefix    bool   // path is a prefix: "/files/" matches "/files/{id}"
	model     modelNeed
	local     bool // answered by keymux itself (GET /v1/models…)
	anthropic bool // Anthropic's native Messages API
	// form: the body is a multipart/form-data form whose "model" field
	// keymux reads and rewrites (multipart.go), up to maxFormBytes.
	form bool
	// upload > 0: a POST body streams through unbuffered, up to this many
	// bytes (the provider's limit); keymux decides from the headers alone.
	upload int64
}

type modelNeed int

const (
	modelNone     modelNeed = iota // body-less or no model: any enabled key
	modelRequired                  // JSON body with a string "model"
	modelOptional                  // JSON body; "model" may be absent
	modelQuery                     // the query's "model" parameter (Realtime, a WebSocket upgrade)
	modelJSON                      // a JSON body's "model" when there is one; any other body passes as is
)

// modelBearing reports whether the operation carries its model (client
// permissions: see policy.AuthorizeEndpoint). A forwarded unknown path
// (modelJSON) is not: its model, if any, is a guess.
func (op *operation) modelBearing() bool {
	return op.model == modelRequired || op.model == modelOptional || op.model == modelQuery
}

// operations keymux recognises below /v1 (and the seed's /api/openai).
// Anything else is a 404 (settings.unknown_paths: refuse, the default) or
// forwarded as opOther (unknown_paths: forward).
var operations = []operation{
	{name: "chat", path: "/chat/completions", methods: "POST", model: modelRequired},
	{name: "text_completion", path: "/completions", methods: "POST", model: modelRequired},
	{name: "embeddings", path: "/embeddings", methods: "POST", model: modelRequired},
	{name: "responses", path: "/responses", methods: "POST", model: modelRequired},
	{name: "moderations", path: "/moderations", methods: "POST", model: modelOptional},
	{name: "image_generation", path: "/images/generations", methods: "POST", model: modelOptional},
	{name: "speech", path: "/audio/speech", methods: "POST", model: modelRequired},
	{name: "chat", path: "/messages", methods: "POST", model: modelRequired, anthropic: true},
	{name: "list_models", path: "/models", methods: "GET", local: true},
	// Body-less object endpoints: any enabled key serves them. (Objects live
	// in one provider account; pin such keys with priorities or a pool of one.)
	{name: "files", path: "/files", methods: "GET, POST", upload: maxFileBytes},
	{name: "files", path: "/files/", methods: "GET, DELETE", prefix: true},
	{name: "batches", path: "/batches", methods: "GET, POST"},
	{name: "batches", path: "/batches/", methods: "GET, POST", prefix: true},
	{name: "responses", path: "/responses/", methods: "GET, POST, DELETE", prefix: true},
	// Anthropic: token counting (model in the body) and message batches
	// (account objects: any enabled Anthropic key serves them).
	{name: "count_tokens", path: "/messages/count_tokens", methods: "POST", model: modelRequired, anthropic: true},
	{name: "batches", path: "/messages/batches", methods: "GET, POST", anthropic: true},
	{name: "batches", path: "/messages/batches/", methods: "GET, POST, DELETE", prefix: true, anthropic: true},
	// The Realtime API: a WebSocket upgrade whose model is in the query.
	{name: "realtime", path: "/realtime", methods: "GET", model: modelQuery},
	// Multipart forms with a model.
	{name: "transcription", path: "/audio/transcriptions", methods: "POST", model: modelRequired, form: true},
	{name: "translation", path: "/audio/translations", methods: "POST", model: modelRequired, form: true},
	{name: "image_edit", path: "/images/edits", methods: "POST", model: modelOptional, form: true},
	{name: "image_variation", path: "/images/variations", methods: "POST", model: modelOptional, form: true},
	// The Uploads API (create, then /uploads/{id}/parts, /complete, /cancel)
	// makes a file: its operation is "files".
	{name: "files", path: "/uploads", methods: "POST"},
	{name: "files", path: "/uploads/", methods: "POST", prefix: true, upload: maxUploadPartBytes},
	// More account-scoped objects (extproc/objects.go routes them to the
	// account that created them).
	{name: "vector_stores", path: "/vector_stores", methods: "GET, POST"},
	{name: "vector_stores", path: "/vector_stores/", methods: "GET, POST, DELETE", prefix: true},
	{name: "assistants", path: "/assistants", methods: "GET, POST"},
	{name: "assistants", path: "/assistants/", methods: "GET, POST, DELETE", prefix: true},
	{name: "assistants", path: "/threads", methods: "POST"},
	{name: "assistants", path: "/threads/", methods: "GET, POST, DELETE", prefix: true},
	{name: "fine_tuning", path: "/fine_tuning/jobs", methods: "GET, POST"},
	{name: "fine_tuning", path: "/fine_tuning/jobs/", methods: "GET, POST", prefix: true},
	{name: "responses", path: "/conversations", methods: "POST"},
	{name: "responses", path: "/conversations/", methods: "GET, POST, DELETE", prefix: true},
}

// opOther is a path below the API prefix that no operation knows, forwarded
// under settings.unknown_paths: forward.
var opOther = operation{name: policy.EndpointOther, methods: "GET, POST, PUT, PATCH, DELETE", model: modelJSON}

// Body limits of the multipart endpoints. Forms are buffered (by Envoy,
// then read by keymux): maxFormBytes is the shipped Envoy buffer limit,
// room for OpenAI's 25 MB audio files. Uploads stream: OpenAI takes files
// up to 512 MB and upload parts up to 64 MB.
const (
	maxFormBytes       = 32 << 20
	maxFileBytes       = 512 << 20
	maxUploadPartBytes = 64 << 20
)

// opModel is GET /v1/models/{id}, answered locally as well.
var opModel = operation{name: "retrieve_model", path: "/models/", methods: "GET", local: true}

// acceptedMethods are the methods at least one operation accepts, sorted;
// any other method is refused before the path is looked at.
var acceptedMethods = methodsOf(append(operations[:len(operations):len(operations)], opModel))

func methodsOf(ops []operation) []string {
	var ms []string
	for _, op := range ops {
		for m := range strings.SplitSeq(op.methods, ", ") {
			if !slices.Contains(ms, m) {
				ms = append(ms, m)
			}
		}
	}
	slices.Sort(ms)
	return ms
}

// refuseMethod returns the 405 for a method no operation accepts, or nil.
func refuseMethod(method string) *apiError {
	if slices.Contains(acceptedMethods, method) {
		return nil
	}
	list := strings.Join(acceptedMethods[:len(acceptedMethods)-1], ", ") + " and " + acceptedMethods[len(acceptedMethods)-1]
	return &apiError{Status: 405, Type: typeInvalidRequest, Code: "method_not_allowed",
		Message: "method " + strconv.Quote(method) + " is not allowed; keymux accepts " + list}
}

// routeResult is the outcome of matching a request line.
type routeResult struct {
	op      *operation
	modelID string // GET /v1/models/{id}
	path    string // the path below the API prefix, e.g. "/files/file-abc"
	query   string // "?…" or ""
}

// matchRoute maps a client path to an operation. It accepts /v1/<op>,
// /api/openai/v1/<op> and /api/openai/<op> (the seed's prefix, same
// upstream paths). It returns an error for unknown paths and methods.
func matchRoute(method, rawPath string) (routeResult, *apiError) {
	var r routeResult
	path := rawPath
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, r.query = path[:i], path[i:]
	}
	rest, ok := stripAPIPrefix(path)
	if !ok || !cleanPath(rest) {
		return r, notFoundPath(rawPath)
	}
	r.op, r.modelID = lookupOp(rest)
	if r.op == nil {
		return r, notFoundPath(rawPath)
	}
	r.path = rest
	if !allowed(r.op.methods, method) {
		return r, &apiError{
			Status: 405, Type: typeInvalidRequest, Code: "method_not_allowed",
			Message: "method " + method + " is not allowed on " + path + " (allowed: " + r.op.methods + ")",
			Header:  map[string]string{"allow": r.op.methods},
		}
	}
	return r, nil
}

// lookupOp finds the operation of a path below the API prefix (nil: none)
// and, for GET /v1/models/{id}, the model id.
func lookupOp(rest string) (*operation, string) {
	for i := range operations {
		op := &operations[i]
		if op.path == rest || (op.prefix && strings.HasPrefix(rest, op.path) && len(rest) > len(op.path)) {
			return op, ""
		}
	}
	if strings.HasPrefix(rest, opModel.path) && len(rest) > len(opModel.path) {
		return &opModel, rest[len(opModel.path):]
	}
	return nil, ""
}

// matchOther routes a path no operation knows to opOther (settings.
// unknown_paths: forward): a clean path below the API prefix, with a method
// opOther accepts. ok is false for anything else, which stays refused.
func matchOther(method, rawPath string) (routeResult, bool) {
	var r routeResult
	path := rawPath
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, r.query = path[:i], path[i:]
	}
	rest, ok := unknownAPIPath(path)
	if !ok || !allowed(opOther.methods, method) {
		return r, false
	}
	r.op, r.path = &opOther, rest
	return r, true
}

// unknownAPIPath reports whether path (without its query) is a clean path
// below the API prefix that no operation knows — a known path keeps its own
// methods — and returns it below the prefix.
func unknownAPIPath(path string) (string, bool) {
	rest, ok := stripAPIPrefix(path)
	if !ok || !cleanPath(rest) {
		return "", false
	}
	op, _ := lookupOp(rest)
	return rest, op == nil
}

func allowed(methods, method string) bool {
	for m := range strings.SplitSeq(methods, ", ") {
		if m == method {
			return true
		}
	}
	return false
}

func stripAPIPrefix(path string) (string, bool) {
	switch {
	case strings.HasPrefix(path, "/v1/"):
		return path[len("/v1"):], true
	case strings.HasPrefix(path, "/api/openai/v1/"):
		return path[len("/api/openai/v1"):], true
	case strings.HasPrefix(path, "/api/openai/"):
		return path[len("/api/openai"):], true
	}
	return "", false
}

// cleanPath refuses empty, dot and percent-encoded segments, so that no
// upstream path can be smuggled past the operation table.
func cleanPath(p string) bool {
	if len(p) < 2 || strings.Contains(p, "//") || strings.ContainsAny(p, "%\\") {
		return false
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// codeUnknownURL is the error code of a path keymux does not serve.
const codeUnknownURL = "unknown_url"

func notFoundPath(path string) *apiError {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if len(path) > 200 {
		path = path[:200] + "…"
	}
	return &apiError{Status: 404, Type: typeInvalidRequest, Code: codeUnknownURL,
		Message: "Unknown request URL: " + path + ". keymux serves the OpenAI-compatible API below /v1 and /api/openai."}
}
