package mockupstream

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
)

// objectStore holds the files, batches and stored responses the mock
// created, each visible only to the account of the credential that created
// it (Options.Accounts), as the providers scope them.
type objectStore struct {
	mu   sync.Mutex
	objs map[string]*mockObject
	seq  []string // ids in creation order
}

type mockObject struct {
	account string
	kind    string         // "file", "batch", "response"
	fields  map[string]any // the object as the API returns it
	content []byte         // a file's bytes
	turn    int            // a response's position in its previous_response_id chain (1 = first)
}

// objectOp maps a path to the object endpoints the mock serves ("" = none).
func objectOp(path string) string {
	if strings.Contains(path, "/messages/") {
		return "" // Anthropic's (message batches)
	}
	for _, op := range []string{"files", "batches", "responses"} {
		if strings.HasSuffix(path, "/"+op) || strings.Contains(path, "/"+op+"/") {
			return op
		}
	}
	return ""
}

// accountOf is the account of a credential (Options.Accounts, else the
// credential itself).
func (s *Server) accountOf(cred string) string {
	if a, ok := s.opts.Accounts[cred]; ok {
		return a
	}
	return cred
}

func newObjectID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// get returns the object id of kind if the account may see it.
func (o *objectStore) get(account, kind, id string) *mockObject {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ob := o.objs[id]; ob != nil && ob.account == account && ob.kind == kind {
		return ob
	}
	return nil
}

func (o *objectStore) put(id string, ob *mockObject) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.objs == nil {
		o.objs = map[string]*mockObject{}
	}
	o.objs[id] = ob
	o.seq = append(o.seq, id)
}

func (o *objectStore) remove(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.objs, id)
}

// list returns the account's objects of kind, newest first.
func (o *objectStore) list(account, kind string) []map[string]any {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []map[string]any
	for _, id := range slices.Backward(o.seq) {
		if ob := o.objs[id]; ob != nil && ob.account == account && ob.kind == kind {
			out = append(out, ob.fields)
		}
	}
	return out
}

// invalidURL is the provider's 404 for a path it does not serve.
func invalidURL(method, path string) apiError {
	return apiError{status: http.StatusNotFound, typ: "invalid_request_error",
		message: fmt.Sprintf("Invalid URL (%s %s)", method, path)}
}

// invalidMethod is the provider's 405 for a method the path does not take
// (Anthropic types it not_found_error).
func invalidMethod(d dialect, method, path string) apiError {
	e := apiError{status: http.StatusMethodNotAllowed, typ: "invalid_request_error",
		message: fmt.Sprintf("Invalid method for URL (%s %s)", method, path)}
	if d == dialectAnthropic {
		e.typ = "not_found_error"
	}
	return e
}

// noSuch is OpenAI's 404 for an object the credential's account does not have.
func noSuch(name, id string) apiError {
	return apiError{status: http.StatusNotFound, typ: "invalid_request_error", param: "id",
		message: fmt.Sprintf("No such %s object: %s", name, id)}
}

// objects serves /files, /batches and /responses.
func (s *Server) objects(w *statusWriter, rq *request, cred string) {
	account := s.accountOf(cred)
	path := rq.r.URL.Path
	op := rq.rt.op
	_, rest, _ := strings.Cut(path, "/"+op)
	id, sub, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	m := rq.r.Method
	switch {
	case op == "files" && id == "" && m == http.MethodPost:
		s.createFile(w, rq, account)
	case op == "files" && id == "" && m == http.MethodGet:
		s.writeJSON(w, rq, map[string]any{"object": "list", "data": s.objs.list(account, "file"), "has_more": false})
	case op == "files" && id != "":
		f := s.objs.get(account, "file", id)
		switch {
		case f == nil:
			s.writeError(w, dialectOpenAI, noSuch("File", id))
		case sub == "content" && m == http.MethodGet:
			w.Header().Set("content-type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(f.content)
		case sub == "" && m == http.MethodDelete:
			s.objs.remove(id)
			s.writeJSON(w, rq, map[string]any{"id": id, "object": "file", "deleted": true})
		default:
			s.writeJSON(w, rq, f.fields)
		}
	case op == "batches" && id == "" && m == http.MethodPost:
		s.createOpenAIBatch(w, rq, account)
	case op == "batches" && id == "" && m == http.MethodGet:
		s.writeJSON(w, rq, map[string]any{"object": "list", "data": s.objs.list(account, "batch"), "has_more": false})
	case op == "batches":
		b := s.objs.get(account, "batch", id)
		switch {
		case b == nil:
			s.writeError(w, dialectOpenAI, noSuch("Batch", id))
		case sub == "cancel" && m == http.MethodPost:
			s.objs.mu.Lock()
			b.fields["status"] = "cancelling"
			s.objs.mu.Unlock()
			s.writeJSON(w, rq, b.fields)
		default:
			s.completeBatch(b, account)
			s.writeJSON(w, rq, b.fields)
		}
	case op == "responses" && id == "" && m == http.MethodPost:
		s.createResponse(w, rq, account)
	case op == "responses" && id != "":
		r := s.objs.get(account, "response", id)
		switch {
		case r == nil:
			s.writeError(w, dialectOpenAI, apiError{status: http.StatusNotFound, typ: "invalid_request_error",
				message: fmt.Sprintf("Response with id '%s' not found.", id)})
		case m == http.MethodDelete:
			s.objs.remove(id)
			s.writeJSON(w, rq, map[string]any{"id": id, "object": "response", "deleted": true})
		default:
			s.writeJSON(w, rq, r.fields)
		}
	default:
		s.writeError(w, dialectOpenAI, invalidURL(m, path))
	}
}

// createFile accepts a multipart upload (purpose, file) as POST /v1/files
// does; the form was read streamed (its file hashed, not kept).
func (s *Server) createFile(w *statusWriter, rq *request, account string) {
	var file *FormFile
	if rq.form != nil {
		file = rq.form.File("file")
	}
	if file == nil || rq.form.Fields["purpose"] == "" {
		s.writeError(w, dialectOpenAI, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			message: "Missing required parameter: 'purpose' and 'file' are required."})
		return
	}
	id := newObjectID("file-")
	f := map[string]any{"id": id, "object": "file", "bytes": file.Size, "created_at": s.now().Unix(),
		"filename": file.Filename, "purpose": rq.form.Fields["purpose"], "status": "processed", "expires_at": nil, "status_details": nil}
	s.objs.put(id, &mockObject{account: account, kind: "file", fields: f})
	s.writeJSON(w, rq, f)
}

func (s *Server) createOpenAIBatch(w *statusWriter, rq *request, account string) {
	in := gjson.GetBytes(rq.body, "input_file_id").Str
	if s.objs.get(account, "file", in) == nil {
		e := noSuch("File", in)
		e.param = "input_file_id"
		s.writeError(w, dialectOpenAI, e)
		return
	}
	id := newObjectID("batch_")
	now := s.now().Unix()
	b := map[string]any{"id": id, "object": "batch", "endpoint": gjson.GetBytes(rq.body, "endpoint").Str,
		"errors": nil, "input_file_id": in, "completion_window": gjson.GetBytes(rq.body, "completion_window").Str,
		"status": "validating", "output_file_id": nil, "error_file_id": nil, "created_at": now,
		"expires_at": now + 86400, "request_counts": map[string]int{"total": 0, "completed": 0, "failed": 0}, "metadata": nil}
	s.objs.put(id, &mockObject{account: account, kind: "batch", fields: b})
	s.writeJSON(w, rq, b)
}

// completeBatch completes a validating batch on its first retrieval: the
// provider makes its output file, in the batch's account.
func (s *Server) completeBatch(b *mockObject, account string) {
	s.objs.mu.Lock()
	done := b.fields["status"] != "validating"
	if !done {
		b.fields["status"] = "completed"
	}
	s.objs.mu.Unlock()
	if done {
		return
	}
	id := newObjectID("file-")
	content := []byte(`{"id":"batch_req_1","custom_id":"r1","response":{"status_code":200}}` + "\n")
	f := map[string]any{"id": id, "object": "file", "bytes": len(content), "created_at": s.now().Unix(),
		"filename": "batch_output.jsonl", "purpose": "batch_output", "status": "processed", "expires_at": nil, "status_details": nil}
	s.objs.put(id, &mockObject{account: account, kind: "file", fields: f, content: content})
	s.objs.mu.Lock()
	b.fields["output_file_id"] = id
	s.objs.mu.Unlock()
}

// createResponse answers POST /v1/responses (not streamed), continuing the
// chain of previous_response_id, which must be the account's.
func (s *Server) createResponse(w *statusWriter, rq *request, account string) {
	turn := 1
	prev := gjson.GetBytes(rq.body, "previous_response_id").Str
	if prev != "" {
		p := s.objs.get(account, "response", prev)
		if p == nil {
			s.writeError(w, dialectOpenAI, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
				param: "previous_response_id", code: "previous_response_not_found",
				message: fmt.Sprintf("Previous response with id '%s' not found.", prev)})
			return
		}
		turn = p.turn + 1
	}
	id := newObjectID("resp_")
	text := fmt.Sprintf("turn %d on account %s", turn, account)
	var prevField any
	if prev != "" {
		prevField = prev
	}
	r := map[string]any{"id": id, "object": "response", "created_at": s.now().Unix(), "status": "completed",
		"model": rq.model, "previous_response_id": prevField,
		"output": []any{map[string]any{"type": "message", "id": newObjectID("msg_"), "status": "completed", "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": text, "annotations": []any{}}}}},
		"usage": map[string]any{"input_tokens": PromptTokens(rq.body), "output_tokens": 4, "total_tokens": PromptTokens(rq.body) + 4}}
	s.objs.put(id, &mockObject{account: account, kind: "response", fields: r, turn: turn})
	out, _ := json.Marshal(r)
	if rq.stream {
		// response.created (in progress, no output), one text delta,
		// response.completed; every event names the response's id.
		created := map[string]any{"id": id, "object": "response", "created_at": r["created_at"], "status": "in_progress",
			"model": rq.model, "previous_response_id": prevField, "output": []any{}}
		sse := s.newSSE(w, rq)
		for i, ev := range []struct {
			name string
			data map[string]any
		}{
			{"response.created", map[string]any{"type": "response.created", "response": created}},
			{"response.output_text.delta", map[string]any{"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": text}},
			{"response.completed", map[string]any{"type": "response.completed", "response": r}},
		} {
			ev.data["sequence_number"] = i
			b, _ := json.Marshal(ev.data)
			if !sse.event(ev.name, b) {
				return
			}
		}
		return
	}
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}
