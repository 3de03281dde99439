package mockupstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// countTokens answers POST /v1/messages/count_tokens: {"input_tokens": n}.
func (s *Server) countTokens(w *statusWriter, rq *request) {
	d := rq.rt.dialect
	if !s.anthropicRequest(w, rq) {
		return
	}
	if m := gjson.GetBytes(rq.body, "model"); m.Type != gjson.String {
		s.writeError(w, d, anthropicInvalid("model: Field required"))
		return
	}
	if !gjson.GetBytes(rq.body, "messages").IsArray() {
		s.writeError(w, d, anthropicInvalid("messages: Field required"))
		return
	}
	s.writeJSON(w, rq, map[string]int{"input_tokens": PromptTokens(rq.body)})
}

// messageBatch is Anthropic's Message Batch object.
type messageBatch struct {
	ID                string              `json:"id"`
	Type              string              `json:"type"`
	ProcessingStatus  string              `json:"processing_status"`
	RequestCounts     batchRequestCounts  `json:"request_counts"`
	EndedAt           *string             `json:"ended_at"`
	CreatedAt         string              `json:"created_at"`
	ExpiresAt         string              `json:"expires_at"`
	ArchivedAt        *string             `json:"archived_at"`
	CancelInitiatedAt *string             `json:"cancel_initiated_at"`
	ResultsURL        *string             `json:"results_url"`
	owner             string              // the credential (account) that created it
	requests          []batchRequestEntry // custom_id and model of each request
}

type batchRequestCounts struct {
	Processing int `json:"processing"`
	Succeeded  int `json:"succeeded"`
	Errored    int `json:"errored"`
	Canceled   int `json:"canceled"`
	Expired    int `json:"expired"`
}

type batchRequestEntry struct{ customID, model string }

// batches answers Anthropic's Message Batches API. A batch ends at once
// (every request succeeded) and belongs to the credential that created it:
// another credential gets 404, as another account would.
func (s *Server) batches(w *statusWriter, rq *request, cred string) {
	d := rq.rt.dialect
	rest := rq.r.URL.Path[strings.Index(rq.r.URL.Path, "/messages/batches")+len("/messages/batches"):]
	id, action, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	m := rq.r.Method
	switch {
	case id == "" && m == http.MethodPost:
		s.createBatch(w, rq, cred)
	case id == "" && m == http.MethodGet:
		s.mu.Lock()
		var list []*messageBatch
		for _, b := range s.batchList {
			if b.owner == cred && s.batchByID[b.ID] == b {
				list = append(list, b)
			}
		}
		s.mu.Unlock()
		page := map[string]any{"data": list, "has_more": false, "first_id": nil, "last_id": nil}
		if len(list) > 0 {
			page["first_id"], page["last_id"] = list[0].ID, list[len(list)-1].ID
		} else {
			page["data"] = []*messageBatch{}
		}
		s.writeJSON(w, rq, page)
	default:
		b := s.batch(id, cred)
		if b == nil {
			s.writeError(w, d, apiError{status: http.StatusNotFound, typ: "not_found_error", message: "Not found: " + id})
			return
		}
		switch {
		case action == "" && m == http.MethodGet:
			s.writeJSON(w, rq, b)
		case action == "" && m == http.MethodDelete:
			s.mu.Lock()
			delete(s.batchByID, id)
			s.mu.Unlock()
			s.writeJSON(w, rq, map[string]string{"id": id, "type": "message_batch_deleted"})
		case action == "cancel" && m == http.MethodPost:
			s.writeJSON(w, rq, b) // it has ended already: canceling changes nothing
		case action == "results" && m == http.MethodGet:
			var out bytes.Buffer
			for _, e := range b.requests {
				line, err := json.Marshal(map[string]any{"custom_id": e.customID, "result": map[string]any{"type": "succeeded",
					"message": anthropicMessage{ID: "msg_mock_" + e.customID, Type: "message", Role: "assistant", Model: e.model,
						Content: []anthropicContent{{Type: "text", Text: "Hello from the mock upstream."}}}}})
				if err != nil {
					panic(err)
				}
				out.Write(line)
				out.WriteByte('\n')
			}
			w.Header().Set("content-type", "application/x-jsonl")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(out.Bytes())
		default:
			s.writeError(w, d, invalidMethod(d, m, rq.r.URL.Path))
		}
	}
}

func (s *Server) createBatch(w *statusWriter, rq *request, cred string) {
	reqs := gjson.GetBytes(rq.body, "requests")
	if !reqs.IsArray() || len(reqs.Array()) == 0 {
		s.writeError(w, rq.rt.dialect, anthropicInvalid("requests: Field required"))
		return
	}
	now := s.now().UTC()
	ended := now.Format(time.RFC3339)
	b := &messageBatch{
		ID: fmt.Sprintf("msgbatch_mock%06d", rq.seq), Type: "message_batch", ProcessingStatus: "ended",
		EndedAt: &ended, CreatedAt: ended, ExpiresAt: now.Add(24 * time.Hour).Format(time.RFC3339), owner: cred,
	}
	for _, r := range reqs.Array() {
		b.requests = append(b.requests, batchRequestEntry{customID: r.Get("custom_id").String(), model: r.Get("params.model").String()})
	}
	b.RequestCounts.Succeeded = len(b.requests)
	url := "https://api.anthropic.com/v1/messages/batches/" + b.ID + "/results"
	b.ResultsURL = &url
	s.mu.Lock()
	if s.batchByID == nil {
		s.batchByID = map[string]*messageBatch{}
	}
	s.batchByID[b.ID] = b
	s.batchList = append(s.batchList, b)
	s.mu.Unlock()
	s.writeJSON(w, rq, b)
}

// batch returns credential cred's batch id, nil when it has none.
func (s *Server) batch(id, cred string) *messageBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.batchByID[id]; b != nil && b.owner == cred {
		return b
	}
	return nil
}
