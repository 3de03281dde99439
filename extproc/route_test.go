package extproc

import "testing"

func TestMatchRoute(t *testing.T) {
	tests := []struct {
		method, path string
		op           string // operation path, "" = refused
		modelID      string
		query        string
		status       int
	}{
		{"POST", "/v1/chat/completions", "/chat/completions", "", "", 0},
		{"POST", "/v1/chat/completions?x=1", "/chat/completions", "", "?x=1", 0},
		{"POST", "/api/openai/v1/embeddings", "/embeddings", "", "", 0},
		{"POST", "/api/openai/embeddings", "/embeddings", "", "", 0},
		{"POST", "/v1/messages", "/messages", "", "", 0},
		{"GET", "/v1/models", "/models", "", "", 0},
		{"GET", "/v1/models/gpt-4o", "/models/", "gpt-4o", "", 0},
		{"GET", "/v1/models/", "", "", "", 404},
		{"GET", "/v1/chat/completions", "", "", "", 405},
		{"POST", "/v1/models", "", "", "", 405},
		{"POST", "/v2/chat/completions", "", "", "", 404},
		{"POST", "/v1/chat/completions/", "", "", "", 404},
		{"POST", "/v1/./chat/completions", "", "", "", 404},
		{"POST", "/v1/chat/../completions", "", "", "", 404},
		{"POST", "/v1/chat%2Fcompletions", "", "", "", 404},
		{"POST", "/v1", "", "", "", 404},
		{"POST", "", "", "", "", 404},
		{"GET", "/v1/files", "/files", "", "", 0},
		{"GET", "/v1/files/file-1", "/files/", "", "", 0},
		{"DELETE", "/v1/files/file-1", "/files/", "", "", 0},
		{"POST", "/v1/files/file-1", "", "", "", 405},
		{"GET", "/v1/responses/resp_1", "/responses/", "", "", 0},
		{"GET", "/v1/batches/b1", "/batches/", "", "", 0},
	}
	for _, tc := range tests {
		r, err := matchRoute(tc.method, tc.path)
		if tc.status != 0 {
			if err == nil || err.Status != tc.status {
				t.Errorf("%s %s: got %+v, want status %d", tc.method, tc.path, err, tc.status)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %+v", tc.method, tc.path, err)
			continue
		}
		if r.op.path != tc.op || r.modelID != tc.modelID || r.query != tc.query {
			t.Errorf("%s %s: got op %q id %q query %q", tc.method, tc.path, r.op.path, r.modelID, r.query)
		}
	}
}

func TestRefuseMethod(t *testing.T) {
	tests := []struct {
		method  string
		message string // "" = accepted
	}{
		{"GET", ""},
		{"POST", ""},
		{"DELETE", ""},
		{"PUT", `method "PUT" is not allowed; keymux accepts DELETE, GET and POST`},
		{"PATCH", `method "PATCH" is not allowed; keymux accepts DELETE, GET and POST`},
		{"get", `method "get" is not allowed; keymux accepts DELETE, GET and POST`},
	}
	for _, tc := range tests {
		err := refuseMethod(tc.method)
		switch {
		case tc.message == "" && err != nil:
			t.Errorf("%s: refused with %+v, want accepted", tc.method, err)
		case tc.message != "" && (err == nil || err.Status != 405 || err.Code != "method_not_allowed" || err.Message != tc.message):
			t.Errorf("%s: got %+v, want 405 method_not_allowed %q", tc.method, err, tc.message)
		}
	}
}

func TestErrorBody(t *testing.T) {
	e := &apiError{Status: 400, Type: typeInvalidRequest, Code: "invalid_type", Param: "model", Message: "bad \"x\"\n"}
	want := `{"error":{"message":"bad \"x\"\n","type":"invalid_request_error","param":"model","code":"invalid_type"}}`
	if got := string(e.body()); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	e = &apiError{Status: 503, Type: typeServer, Message: "m"}
	want = `{"error":{"message":"m","type":"server_error","param":null,"code":null}}`
	if got := string(e.body()); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}
