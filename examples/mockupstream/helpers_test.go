package mockupstream_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/keymux/keymux/examples/mockupstream"
)

// startMock starts a mock on 127.0.0.1:0, closed at the end of the test.
func startMock(t *testing.T, opts mockupstream.Options) *mockupstream.Server {
	t.Helper()
	srv := mockupstream.New(opts)
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv
}

// sdk is an official client pointed at the mock's /v1 with key, without
// retries so every behaviour reaches the test as is.
func sdk(srv *mockupstream.Server, key string, opts ...option.RequestOption) openai.Client {
	base := []option.RequestOption{
		option.WithBaseURL(srv.URL() + "/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
	}
	return openai.NewClient(append(base, opts...)...)
}

// do sends a raw request and returns the status, headers and body.
func do(t *testing.T, method, url string, header map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, resp.Header, out
}

// last is the mock's latest record.
func last(t *testing.T, srv *mockupstream.Server) mockupstream.Recorded {
	t.Helper()
	reqs := srv.Requests()
	if len(reqs) == 0 {
		t.Fatal("the mock recorded no request")
	}
	return reqs[len(reqs)-1]
}

// errorBody is OpenAI's error shape, with presence of param/code kept.
type errorBody struct {
	Error struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Param   json.RawMessage `json:"param"`
		Code    json.RawMessage `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, body []byte) errorBody {
	t.Helper()
	var e errorBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e
}
