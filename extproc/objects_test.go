package extproc

import (
	"context"
	"strconv"
	"strings"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/objects"
)

const objectsCfg = `
keys:
  a1: {provider: openai, secret: sk-test-a1, account: acct-a}
  a2: {provider: openai, secret: sk-test-a2, account: acct-a}
  b1: {provider: openai, secret: sk-test-b1, account: acct-b, enabled: false}
  c1: {provider: openai, secret: sk-test-c1, account: acct-c}
`

// objectsRig is a rig whose server records objects in memory.
func objectsRig(t *testing.T) (*rig, *objects.Registry) {
	t.Helper()
	r := newRig(t, objectsCfg)
	table := objects.NewTable()
	lb, err := objects.NewLocal(table, "", nil, r.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	reg := &objects.Registry{Table: table, Backend: lb}
	reg.SetSecret([]byte("test secret, 32 bytes long......"))
	r.srv.objects = reg
	for _, rec := range []*objects.Record{
		{ID: "file-a", Kind: "file", Account: "acct-a"},
		{ID: "file-b", Kind: "file", Account: "acct-b"},
		{ID: "file-c", Kind: "file", Account: "acct-c"},
	} {
		if err := reg.Record(context.Background(), rec, 10); err != nil {
			t.Fatal(err)
		}
	}
	return r, reg
}

func TestObjectFollowUps(t *testing.T) {
	tests := []struct {
		name          string
		method, path  string
		body          string
		keys          []string // keys the request may go to (empty: refused)
		status        int
		message       string
		retryAfterSet bool
	}{
		{name: "path id on account a spreads over its keys", method: "GET", path: "/v1/files/file-a", keys: []string{"a1", "a2"}},
		{name: "content of a file on account c", method: "GET", path: "/v1/files/file-c/content", keys: []string{"c1"}},
		{name: "body id", method: "POST", path: "/v1/batches", body: `{"input_file_id":"file-c","endpoint":"/v1/chat/completions","completion_window":"24h"}`, keys: []string{"c1"}},
		{name: "account without an eligible key", method: "GET", path: "/v1/files/file-b", status: 503, retryAfterSet: true,
			message: "No key of account acct-b (where the objects this request names live) serves this request."},
		{name: "unknown id", method: "GET", path: "/v1/files/file-x", status: 404,
			message: "No such File object: file-x (keymux has no record of it: it was not created through keymux, or it expired)"},
		{name: "two accounts in one body", method: "POST", path: "/v1/vector_stores", body: `{"file_ids":["file-a","file-c"]}`, status: 400,
			message: "The objects this request names live in different provider accounts (acct-a, acct-c): one request can use objects of one account only."},
		{name: "forged response tag", method: "GET", path: "/v1/responses/resp_1.km1.616363742d61.." + strings.Repeat("00", 16), status: 404,
			message: "No such Response object: resp_1.km1.616363742d61.." + strings.Repeat("00", 16)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := objectsRig(t)
			seen := map[string]bool{}
			for range 4 {
				res := r.run(request(tt.method, tt.path, tt.body, "content-type", "application/json")...)
				if tt.status != 0 {
					l := immediate(t, res.replies[len(res.replies)-1])
					if l.status != tt.status || l.err.Message != tt.message || (l.headers["retry-after"] != "") != tt.retryAfterSet {
						t.Fatalf("reply %d %q (retry-after %q), want %d %q", l.status, l.err.Message, l.headers["retry-after"], tt.status, tt.message)
					}
					return
				}
				seen[res.call.KeyID] = true
			}
			for _, k := range tt.keys {
				if !seen[k] {
					t.Fatalf("keys used %v, want each of %v", seen, tt.keys)
				}
			}
			if len(seen) != len(tt.keys) {
				t.Fatalf("keys used %v, want only %v", seen, tt.keys)
			}
		})
	}
}

// TestObjectCreation: a creation's JSON answer is read whole (mode
// override BUFFERED on its headers): a file is recorded on the answering
// key's account, a stored response's id is tagged in the body with its new
// content-length, and a deletion forgets the record.
func TestObjectCreation(t *testing.T) {
	r, reg := objectsRig(t)
	created := func(method, path, body, answer string) (keyID string, bodyReply *extprocv3.ProcessingResponse) {
		t.Helper()
		st := newStream(t, request(method, path, body, "content-type", "application/json")...)
		st.upstream = answerAs(func(key string) []*extprocv3.ProcessingRequest {
			keyID = key
			return nil
		})
		st.in = append(st.in, respHeaders(false, ":status", "200", "content-type", "application/json", "content-length", strconv.Itoa(len(answer))))
		st.in = append(st.in, respBody(answer, true))
		res := r.runStream(st)
		if res.replies[len(res.replies)-2].GetResponseHeaders() == nil {
			t.Fatalf("not a response headers reply: %v", res.replies[len(res.replies)-2])
		}
		if m := res.replies[len(res.replies)-2].GetModeOverride(); m.GetResponseBodyMode() != filterv3.ProcessingMode_BUFFERED {
			t.Fatalf("mode override %v, want the response body BUFFERED", m)
		}
		return keyID, res.replies[len(res.replies)-1]
	}

	key, _ := created("POST", "/v1/files", "", `{"id":"file-new","object":"file","purpose":"batch"}`)
	rec := reg.Table.Get("file-new")
	if rec == nil || rec.Kind != "file" || rec.Account != r.entry(key).Key.Account || string(rec.Object) != `{"id":"file-new","object":"file","purpose":"batch"}` {
		t.Fatalf("record after the upload through %s: %+v", key, rec)
	}

	answer := `{"id":"resp_1","object":"response","output":[]}`
	key, reply := created("POST", "/v1/responses", `{"model":"gpt-4o","input":"hi"}`, answer)
	cr := reply.GetResponseBody().GetResponse()
	body := cr.GetBodyMutation().GetBody()
	tag := objects.Tag(reg.Secret(), "resp_1", r.entry(key).Key.Account, "")
	if want := `{"id":"` + tag + `","object":"response","output":[]}`; string(body) != want {
		t.Fatalf("tagged body %s, want %s", body, want)
	}
	if cl := cr.GetHeaderMutation().GetSetHeaders(); len(cl) != 1 || cl[0].GetHeader().GetKey() != "content-length" || string(cl[0].GetHeader().GetRawValue()) != strconv.Itoa(len(body)) {
		t.Fatalf("header mutation %v, want content-length %d", cl, len(body))
	}
	if reg.Table.Get("resp_1") != nil {
		t.Fatal("a stored response was recorded")
	}

	res := r.run(then(request("DELETE", "/v1/files/file-new", ""), []*extprocv3.ProcessingRequest{respHeaders(false, ":status", "200", "content-type", "application/json")})...)
	if r.entry(res.call.KeyID).Key.Account != rec.Account {
		t.Fatalf("the deletion went to %s, not account %s", res.call.KeyID, rec.Account)
	}
	if reg.Table.Get("file-new") != nil {
		t.Fatal("the deleted file is still recorded")
	}
}

// TestTagStreamSplitAnywhere: a streamed response's id is tagged wherever
// the chunks are cut, also inside the first data line or inside an id.
func TestTagStreamSplitAnywhere(t *testing.T) {
	secret := []byte("test secret, 32 bytes long......")
	stream := "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"object\":\"response\",\"id\":\"resp_9\"}}\n\n" +
		"event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n" +
		"event: response.completed\ndata: {\"response\":{\"id\":\"resp_9\",\"previous_response_id\":\"resp_8\"}}\n\n"
	tag := objects.Tag(secret, "resp_9", "acct-a", "ca")
	want := strings.ReplaceAll(stream, `"resp_9"`, `"`+tag+`"`)
	for cut1 := 1; cut1 < len(stream); cut1 += 3 {
		for _, cut2 := range []int{cut1, min(cut1+5, len(stream)), min(cut1+40, len(stream))} {
			reg := &objects.Registry{}
			reg.SetSecret(secret)
			x := &exchange{callRecord: callRecord{s: &Server{objects: reg},
				entry: &store.Entry{Key: &policy.Key{Account: "acct-a"}}, client: &policy.Client{ID: "ca"}},
				obj: objectState{sse: &sseTag{}}}
			var got []byte
			chunks := []string{stream[:cut1], stream[cut1:cut2], stream[cut2:]}
			for i, c := range chunks {
				out := x.tagStream([]byte(c), i == len(chunks)-1)
				if out == nil {
					out = []byte(c)
				}
				got = append(got, out...)
			}
			if string(got) != want {
				t.Fatalf("cut at %d and %d:\n%s\nwant\n%s", cut1, cut2, got, want)
			}
		}
	}
}
