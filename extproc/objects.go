package extproc

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/objects"
)

// objectKind is one kind of account-scoped object: it lives in the
// provider account whose key created it.
type objectKind struct {
	kind       string // the record's kind
	name       string // the provider's name in "No such File object: …"
	collection string // its path below the API prefix
	tagged     bool   // created at request rate: the id carries account and owner (no record)
	list       bool   // GET on the collection lists them
}

// objectKinds is the object table: OpenAI's account-scoped objects and
// Anthropic's message batches (Anthropic files share /files).
var objectKinds = []objectKind{
	{kind: "file", name: "File", collection: "/files", list: true},
	{kind: "upload", name: "Upload", collection: "/uploads"},
	{kind: "batch", name: "Batch", collection: "/batches", list: true},
	{kind: "vector_store", name: "VectorStore", collection: "/vector_stores", list: true},
	{kind: "assistant", name: "Assistant", collection: "/assistants", list: true},
	{kind: "thread", name: "Thread", collection: "/threads"},
	{kind: "fine_tuning_job", name: "FineTuningJob", collection: "/fine_tuning/jobs", list: true},
	{kind: "conversation", name: "Conversation", collection: "/conversations"},
	{kind: "message_batch", name: "MessageBatch", collection: "/messages/batches", list: true},
	{kind: "response", name: "Response", collection: "/responses", tagged: true},
}

func kindByName(kind string) *objectKind {
	for i := range objectKinds {
		if objectKinds[i].kind == kind {
			return &objectKinds[i]
		}
	}
	return nil
}

// objectState is what an exchange knows of the objects it touches.
type objectState struct {
	kind    *objectKind
	create  bool    // POST on the collection: the answer names a new object
	list    bool    // GET on the collection
	remove  bool    // DELETE of the object named in the path
	pathID  string  // the provider's id named in the path ("" = none)
	account string  // the account every named object lives in ("" = any)
	owner   string  // the owner of the object named in the path
	capture bool    // the response body is read (BUFFERED) to learn the new object
	sse     *sseTag // a streamed response's id is being tagged (STREAMED)
}

// classifyObject finds the object kind of a route path (below the API
// prefix) and the id it names.
func classifyObject(method, path string) (st objectState, idSeg int) {
	for i := range objectKinds {
		k := &objectKinds[i]
		rest, ok := strings.CutPrefix(path, k.collection)
		if !ok || (rest != "" && rest[0] != '/') {
			continue
		}
		st.kind = k
		if rest == "" {
			st.create, st.list = method == "POST", method == "GET" && k.list
			return st, -1
		}
		id, sub, _ := strings.Cut(rest[1:], "/")
		if k.kind == "thread" && id == "runs" {
			return objectState{kind: k, create: method == "POST"}, -1 // POST /threads/runs creates a thread
		}
		st.pathID, st.remove = id, method == "DELETE" && sub == ""
		return st, len(k.collection) + 1
	}
	return st, -1
}

// ownerOf is the caller's identity for object ownership: the client id
// (client_keys), "jwt:" + the verified sub claim (jwt_claim), "" otherwise.
func (x *exchange) ownerOf() string {
	if x.client != nil {
		return x.client.ID
	}
	return x.jwtSubject
}

// objectsOnHeaders applies the object table to the request line: the
// object named in the path fixes the account (its tag is replaced by the
// provider's id) or the request is refused as if it did not exist; a list
// is answered from keymux's records; a creation is refused when the table
// is full.
func (x *exchange) objectsOnHeaders() (*extprocv3.ProcessingResponse, *apiError) {
	reg := x.s.objects
	st, seg := classifyObject(x.hdr.method, x.route.path)
	x.obj = st
	if st.kind == nil || reg == nil {
		return nil, nil
	}
	switch {
	case st.list:
		return x.answerList(), nil
	case st.create && !st.kind.tagged && reg.Full(x.settings.Objects.Max):
		return nil, &apiError{Status: 503, Type: typeServer, Code: "object_table_full", RetryAfter: 60,
			Message: "keymux records at most " + strconv.Itoa(x.settings.Objects.Max) + " objects (settings objects.max) and holds as many: delete objects or raise the limit."}
	case st.pathID != "":
		id, aerr := x.resolveObject(st.kind, st.pathID, "id")
		if aerr != nil {
			return nil, aerr
		}
		if id != st.pathID {
			end := seg + len(st.pathID)
			x.route.path = x.route.path[:seg] + id + x.route.path[end:]
			x.obj.pathID = id
		}
	}
	return nil, nil
}

// resolveObject checks the caller may use the object id (as the client
// sent it) of kind k and that it lives in the account of the request's
// other objects; it returns the provider's id.
func (x *exchange) resolveObject(k *objectKind, id, param string) (string, *apiError) {
	reg := x.s.objects
	account, owner, raw := "", "", id
	switch {
	case objects.IsTagged(id):
		var ok bool
		raw, account, owner, ok = objects.Untag(reg.Secret(), id)
		if !ok {
			return "", notFoundObject(k, id, param, "")
		}
	default:
		// Tagged kinds are never recorded: an untagged id of one has no
		// record to wait for.
		wait := !x.waited && !k.tagged
		rec := reg.Lookup(x.ctx(), id, x.s.now, wait)
		if wait {
			x.clockMoved() // the wait may have lasted up to objects' wait
		}
		if rec != nil {
			account, owner = rec.Account, rec.Owner
		} else {
			x.waited = true // one wait per request
			account = x.settings.Objects.DefaultAccount
			if account == "" {
				return "", notFoundObject(k, id, param, "keymux has no record of it: it was not created through keymux, or it expired")
			}
		}
	}
	if owner != "" && owner != x.ownerOf() {
		return "", notFoundObject(k, id, param, "")
	}
	if x.obj.account != "" && x.obj.account != account {
		return "", badRequest("objects_in_different_accounts", param,
			"The objects this request names live in different provider accounts ("+x.obj.account+", "+account+"): one request can use objects of one account only.")
	}
	x.obj.account = account
	if x.obj.owner == "" {
		x.obj.owner = owner
	}
	return raw, nil
}

// notFoundObject is the provider's own 404 for an object that does not
// exist, so that another client's objects look exactly like missing ones;
// why (may be "") is added for ids keymux never saw.
func notFoundObject(k *objectKind, id, param, why string) *apiError {
	msg := "No such " + k.name + " object: " + truncateID(id)
	if k.kind == "response" && param == "previous_response_id" {
		msg = "Previous response with id '" + truncateID(id) + "' not found."
	}
	if why != "" {
		msg += " (" + why + ")"
	}
	return &apiError{Status: 404, Type: typeInvalidRequest, Param: param, Message: msg}
}

func truncateID(id string) string {
	if len(id) > 200 {
		return id[:200] + "…"
	}
	return id
}

// objectsInBody resolves the objects a JSON request body names and
// returns the body with tagged ids replaced by the provider's (nil when
// nothing changed).
func (x *exchange) objectsInBody(body []byte) ([]byte, *apiError) {
	if x.s.objects == nil {
		return nil, nil
	}
	refs, ok := scanObjectRefs(body)
	if !ok {
		return nil, badRequest("invalid_value", "", "The request names more than "+strconv.Itoa(maxObjectRefs)+" object ids.")
	}
	var out []byte
	last := 0
	for _, r := range refs {
		raw, aerr := x.resolveObject(kindByName(refMembers[r.field].kind), r.id, r.field)
		if aerr != nil {
			return nil, aerr
		}
		if raw == r.id {
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(body))
		}
		out = append(out, body[last:r.start]...)
		out = appendJSONString(out, raw)
		last = r.end
	}
	if out == nil {
		return nil, nil
	}
	return append(out, body[last:]...), nil
}

// inAccount reports whether key e may serve the request: any key, or one
// of the account its objects live in.
func (x *exchange) inAccount(e *store.Entry) bool {
	return x.obj.account == "" || e.Key.Account == x.obj.account
}

// accountSkip is choose's filter for the request's account (nil: none).
func (x *exchange) accountSkip() func(*store.Entry) bool {
	if x.obj.account == "" {
		return nil
	}
	return func(e *store.Entry) bool { return !x.inAccount(e) }
}

// noKeyInAccount is the 503 when no key of the objects' account serves
// the request at all.
func (x *exchange) noKeyInAccount(model string) *apiError {
	what := "this request"
	if model != "" {
		what = "model " + model
	}
	return &apiError{Status: 503, Type: typeServer, Code: "no_eligible_key", RetryAfter: 60,
		Message: "No key of account " + x.obj.account + " (where the objects this request names live) serves " + what + "."}
}

// ctx is the Process stream's context: it bounds the waits and writes of
// object bookkeeping.
func (x *exchange) ctx() context.Context {
	if x.sctx == nil {
		return context.Background()
	}
	return x.sctx
}

// objectWriteTimeout bounds one record's write (Consul).
const objectWriteTimeout = 5 * time.Second

// wantsObjectBody reports whether the response body must be read to learn
// a new object (a JSON 2xx answer to a creation), and forgets a deleted one.
func (x *exchange) wantsObjectBody(status int, contentType string) bool {
	st := &x.obj
	if st.kind == nil || x.s.objects == nil || status < 200 || status > 299 || x.entry == nil {
		return false
	}
	if st.remove && !st.kind.tagged {
		ctx, cancel := context.WithTimeout(x.ctx(), objectWriteTimeout)
		defer cancel()
		if err := x.s.objects.Forget(ctx, st.pathID); err != nil {
			x.s.log.Error("cannot forget a deleted object", "id", st.pathID, "error", err)
		}
		return false
	}
	isUploadComplete := st.kind.kind == "upload" && strings.HasSuffix(x.route.path, "/complete")
	// A retrieved batch may name the output and error files the provider
	// made for it: they are the batch owner's, in the batch's account.
	isBatchGet := st.kind.kind == "batch" && x.hdr.method == "GET" && st.pathID != "" && x.route.path == "/batches/"+st.pathID
	st.capture = (st.create || isUploadComplete || isBatchGet) && strings.HasPrefix(contentType, "application/json")
	if st.create && st.kind.tagged && strings.HasPrefix(contentType, "text/event-stream") {
		st.sse = &sseTag{}
		return true
	}
	return st.capture
}

// learnObject reads the new object's id from the whole response body:
// a stored response's id is tagged (the returned body, with its new
// content-length), any other object is recorded.
func (x *exchange) learnObject(body []byte) ([]byte, *extprocv3.HeaderMutation) {
	st := &x.obj
	reg := x.s.objects
	idField := "id"
	kind := st.kind
	if kind.kind == "thread" && strings.HasPrefix(x.route.path, "/threads/runs") {
		idField = "thread_id"
	}
	if kind.kind == "upload" && st.pathID != "" {
		idField, kind = "file.id", kindByName("file") // the upload's file
	}
	account, owner := x.entry.Key.Account, x.ownerOf()
	if kind.kind == "batch" && !st.create {
		x.learnBatchFiles(body, account)
		return nil, nil
	}
	v := gjson.GetBytes(body, idField)
	if v.Type != gjson.String || v.Str == "" {
		return nil, nil
	}
	if kind.tagged {
		if v.Index <= 0 || !bytes.Equal(body[v.Index:v.Index+len(v.Raw)], []byte(v.Raw)) {
			return nil, nil
		}
		out := make([]byte, 0, len(body)+128)
		out = append(out, body[:v.Index]...)
		out = appendJSONString(out, objects.Tag(reg.Secret(), v.Str, account, owner))
		out = append(out, body[v.Index+len(v.Raw):]...)
		return out, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(hdrContentLength, strconv.Itoa(len(out)))}}
	}
	now := x.s.now()
	rec := &objects.Record{ID: v.Str, Kind: kind.kind, Account: account, Owner: owner, Created: now,
		Expires: now.Add(x.settings.Objects.Retention)}
	if exp := gjson.GetBytes(body, "expires_at"); (kind.kind == "file" || kind.kind == "upload") && exp.Type == gjson.Number && exp.Int() > now.Unix() {
		rec.Expires = time.Unix(exp.Int(), 0)
	}
	obj := body
	if kind.kind == "file" && idField == "file.id" {
		obj = []byte(gjson.GetBytes(body, "file").Raw)
	}
	if len(obj) <= objects.MaxObjectBytes && gjson.ValidBytes(obj) {
		rec.Object = bytes.Clone(bytes.TrimSpace(obj))
	}
	ctx, cancel := context.WithTimeout(x.ctx(), objectWriteTimeout)
	defer cancel()
	if err := reg.Record(ctx, rec, x.settings.Objects.Max); err != nil {
		x.s.log.Error("cannot record a new object: follow-ups naming it will be refused", "id", rec.ID, "kind", rec.Kind, "account", account, "error", err)
	}
	return nil, nil
}

// learnBatchFiles records the output and error files a retrieved batch
// names, once, as its owner's files in its account.
func (x *exchange) learnBatchFiles(body []byte, account string) {
	reg := x.s.objects
	for _, f := range gjson.GetManyBytes(body, "output_file_id", "error_file_id") {
		if f.Type != gjson.String || f.Str == "" || reg.Table.Get(f.Str) != nil {
			continue
		}
		now := x.s.now()
		rec := &objects.Record{ID: f.Str, Kind: "file", Account: account, Owner: x.obj.owner, Created: now,
			Expires: now.Add(x.settings.Objects.Retention)}
		ctx, cancel := context.WithTimeout(x.ctx(), objectWriteTimeout)
		if err := reg.Record(ctx, rec, x.settings.Objects.Max); err != nil {
			x.s.log.Error("cannot record a batch's file", "id", rec.ID, "account", account, "error", err)
		}
		cancel()
	}
}

// answerList answers GET on a collection from keymux's records: the
// caller's own objects, across every account, as the provider's list
// ({"object":"list","data",…}; limit, after, order and, for files,
// purpose).
func (x *exchange) answerList() *extprocv3.ProcessingResponse {
	q := parseQuery(x.route.query)
	recs := x.s.objects.Table.Owned(x.ownerOf(), x.obj.kind.kind, x.s.now())
	if q["order"] == "asc" {
		for i, j := 0, len(recs)-1; i < j; i, j = i+1, j-1 {
			recs[i], recs[j] = recs[j], recs[i]
		}
	}
	limit := 20
	if x.obj.kind.kind == "file" {
		limit = 10000
	}
	if n, err := strconv.Atoi(q["limit"]); err == nil && n > 0 {
		limit = min(n, 10000)
	}
	if after := q["after"]; after != "" {
		for i, r := range recs {
			if r.ID == after {
				recs = recs[i+1:]
				break
			}
		}
	}
	purpose := q["purpose"]
	b := []byte(`{"object":"list","data":[`)
	n, first, last, more := 0, "", "", false
	for _, r := range recs {
		if purpose != "" && gjson.GetBytes(r.Object, "purpose").Str != purpose {
			continue
		}
		if n == limit {
			more = true
			break
		}
		if n > 0 {
			b = append(b, ',')
		}
		if len(r.Object) > 0 {
			b = append(b, r.Object...)
		} else {
			b = append(b, `{"id":`...)
			b = appendJSONString(b, r.ID)
			b = append(b, '}')
		}
		if n == 0 {
			first = r.ID
		}
		last = r.ID
		n++
	}
	b = append(b, `],"first_id":`...)
	b = appendNullable(b, first)
	b = append(b, `,"last_id":`...)
	b = appendNullable(b, last)
	b = append(b, `,"has_more":`...)
	b = strconv.AppendBool(b, more)
	b = append(b, '}')
	x.phase = phaseLocal
	x.call.Local, x.call.Status = true, 200
	return immediateJSON(200, b)
}

func appendNullable(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, s)
}

// parseQuery reads the query parameters keymux's lists take (first value
// of each; undecodable ones are ignored).
func parseQuery(q string) map[string]string {
	out := map[string]string{}
	for kv := range strings.SplitSeq(strings.TrimPrefix(q, "?"), "&") {
		k, v, _ := strings.Cut(kv, "=")
		if _, seen := out[k]; k != "" && !seen && !strings.ContainsAny(v, "%+") {
			out[k] = v
		}
	}
	return out
}

// jwtSubject is the owner identity of a verified JWT: "jwt:" + its sub
// claim ("" when absent).
func jwtSubject(md *corev3.Metadata) string {
	if s := jwtClaims(md).GetFields()["sub"].GetStringValue(); s != "" && !policy.HasControl(s) {
		return "jwt:" + s
	}
	return ""
}

// sseTag tags a streamed response's id: the id is learnt from the first
// event that carries the response (its data's response.id), then every
// "<id>" in the stream becomes "<tagged id>". Bytes that may be the start
// of an id split across chunks are held back to the next chunk.
type sseTag struct {
	held    []byte
	pattern []byte // "<raw id>", quotes included (nil until learnt)
	tagged  []byte // "<tagged id>"
}

// maxSSEHeld bounds what is held back while the id is not learnt yet.
const maxSSEHeld = 64 << 10

// tagStream returns the chunk to pass on (nil: unchanged).
func (x *exchange) tagStream(chunk []byte, eos bool) []byte {
	t := x.obj.sse
	data := append(t.held, chunk...)
	t.held = nil
	if t.pattern == nil {
		raw, complete := sseResponseID(data)
		if raw == "" {
			if complete || eos || len(data) > maxSSEHeld {
				return data // no id in the stream: pass it on as it came
			}
			t.held = data
			return []byte{}
		}
		t.pattern = []byte(`"` + raw + `"`)
		t.tagged = []byte(`"` + objects.Tag(x.s.objects.Secret(), raw, x.entry.Key.Account, x.ownerOf()) + `"`)
	}
	out := bytes.ReplaceAll(data, t.pattern, t.tagged)
	if !eos {
		// Hold back a tail that may begin a split id.
		for n := min(len(out), len(t.pattern)-1); n > 0; n-- {
			if bytes.HasPrefix(t.pattern, out[len(out)-n:]) {
				t.held = bytes.Clone(out[len(out)-n:])
				out = out[:len(out)-n]
				break
			}
		}
	}
	return out
}

// sseResponseID reads response.id from the first data line of an SSE
// stream's start; complete reports a complete first data line without one.
func sseResponseID(data []byte) (id string, complete bool) {
	i := bytes.Index(data, []byte("data:"))
	if i < 0 {
		return "", false
	}
	line := data[i+len("data:"):]
	nl := bytes.IndexByte(line, '\n')
	if nl < 0 {
		return "", false
	}
	if v := gjson.GetBytes(line[:nl], "response.id"); v.Type == gjson.String && v.Str != "" {
		return v.Str, true
	}
	return "", true
}
