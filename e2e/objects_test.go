package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keymux/keymux/examples/mockupstream"
)

// threeAccounts is a pool of three keys on three provider accounts (the mock
// scopes objects per account) and two clients.
const threeAccounts = `
settings:
  strategy: round_robin
  auth: {mode: client_keys}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, account: acct-a}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2, account: acct-b}
  k3: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k3, account: acct-c}
clients:
  ca: {name: client a, token_sha256: "{{A}}"}
  cb: {name: client b, token_sha256: "{{B}}"}
`

var accountOfCredential = map[string]string{"sk-test-k1": "acct-a", "sk-test-k2": "acct-b", "sk-test-k3": "acct-c"}

func startAccountsGateway(t *testing.T) *gateway {
	t.Helper()
	mock := startMock(t, mockupstream.Options{Accounts: accountOfCredential})
	cfg := strings.NewReplacer("{{A}}", sha256hex("token-a"), "{{B}}", sha256hex("token-b")).Replace(threeAccounts)
	return startGatewayWith(t, mock, cfg)
}

// accountsOf maps the mock's requests whose path contains part to the
// accounts of their credentials.
func accountsOf(g *gateway, method, part string) []string {
	var out []string
	for _, r := range g.requests() {
		if r.Method == method && strings.Contains(r.Path, part) {
			out = append(out, accountOfCredential[r.Credential])
		}
	}
	return out
}

func uploadFile(t *testing.T, c openai.Client, name string) *openai.FileObject {
	t.Helper()
	line := `{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}}` + "\n"
	f, err := c.Files.New(t.Context(), openai.FileNewParams{
		File:    openai.File(strings.NewReader(line), name, "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
	return f
}

func want404(t *testing.T, what string, err error) {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Fatalf("%s: got %v, want a 404", what, err)
	}
}

// TestObjectsFollowTheirAccount: files, batches and stored responses created
// with the official SDK through three keys on three accounts are followed
// on their account, and are invisible to another client.
func TestObjectsFollowTheirAccount(t *testing.T) {
	g := startAccountsGateway(t)
	a, b := g.client("token-a"), g.client("token-b")
	ctx := t.Context()

	// Three uploads rotate over the three accounts.
	f1 := uploadFile(t, a, "one.jsonl")
	f2 := uploadFile(t, a, "two.jsonl")
	fb := uploadFile(t, b, "b.jsonl")
	up := accountsOf(g, "POST", "/files")
	if len(up) != 3 || up[0] == up[1] || up[1] == up[2] || up[0] == up[2] {
		t.Fatalf("uploads went to accounts %v, want three different ones", up)
	}
	fileAccount := up[0]

	for i := range 10 {
		got, err := a.Files.Get(ctx, f1.ID)
		if err != nil || got.ID != f1.ID || got.Filename != "one.jsonl" {
			t.Fatalf("retrieve %d of the file: %v %+v", i+1, err, got)
		}
	}
	if gets := accountsOf(g, "GET", "/files/"+f1.ID); len(gets) != 10 || slices.ContainsFunc(gets, func(s string) bool { return s != fileAccount }) {
		t.Fatalf("retrievals went to accounts %v, want 10 × %s", gets, fileAccount)
	}

	batch, err := a.Batches.New(ctx, openai.BatchNewParams{InputFileID: f1.ID,
		Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	if got := accountsOf(g, "POST", "/batches"); !slices.Equal(got, []string{fileAccount}) {
		t.Fatalf("batch created on accounts %v, want %s (the file's)", got, fileAccount)
	}
	var output string
	for i := range 6 {
		got, err := a.Batches.Get(ctx, batch.ID)
		if err != nil || got.ID != batch.ID || got.InputFileID != f1.ID {
			t.Fatalf("retrieve %d of the batch: %v %+v", i+1, err, got)
		}
		output = got.OutputFileID
	}
	if got := accountsOf(g, "GET", "/batches/"+batch.ID); len(got) != 6 || slices.ContainsFunc(got, func(s string) bool { return s != fileAccount }) {
		t.Fatalf("batch retrievals went to %v, want 6 × %s", got, fileAccount)
	}
	// The output file the provider made is the batch owner's, on its account.
	for i := range 3 {
		resp, err := a.Files.Content(ctx, output)
		if err != nil {
			t.Fatalf("output file content %d: %v", i+1, err)
		}
		resp.Body.Close()
	}
	_, err = b.Files.Content(ctx, output)
	want404(t, "b reads a's batch output", err)

	page, err := a.Files.List(ctx, openai.FileListParams{})
	if err != nil {
		t.Fatalf("list files: %v", err)
	}
	var listed []string
	for _, f := range page.Data {
		listed = append(listed, f.ID)
	}
	if want := []string{f1.ID, f2.ID, output}; !sameSet(listed, want) {
		t.Fatalf("client a lists %v, want its own %v (not b's %s)", listed, want, fb.ID)
	}

	// A 6-turn previous_response_id chain stays on one account.
	prev := ""
	var turnAccount string
	for turn := 1; turn <= 6; turn++ {
		p := responses.ResponseNewParams{Model: "gpt-4o", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String(fmt.Sprintf("turn %d", turn))}}
		if prev != "" {
			p.PreviousResponseID = openai.String(prev)
		}
		r, err := a.Responses.New(ctx, p)
		if err != nil {
			t.Fatalf("turn %d: %v", turn, err)
		}
		text := r.OutputText()
		acc, ok := strings.CutPrefix(text, fmt.Sprintf("turn %d on account ", turn))
		if !ok || (turnAccount != "" && acc != turnAccount) {
			t.Fatalf("turn %d answered %q (chain on %q)", turn, text, turnAccount)
		}
		turnAccount, prev = acc, r.ID
	}
	got, err := a.Responses.Get(ctx, prev, responses.ResponseGetParams{})
	if err != nil || got.OutputText() != "turn 6 on account "+turnAccount {
		t.Fatalf("GET the last response: %v %+v", err, got)
	}
	// The chain goes on streamed: the streamed response's id is tagged too.
	for turn := 7; turn <= 8; turn++ {
		st := a.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-4o", PreviousResponseID: openai.String(prev),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("more")}})
		var created, completed, delta string
		for st.Next() {
			switch ev := st.Current(); ev.Type {
			case "response.created":
				created = ev.Response.ID
			case "response.output_text.delta":
				delta = ev.Delta
			case "response.completed":
				completed = ev.Response.ID
			}
		}
		if err := st.Err(); err != nil || delta != fmt.Sprintf("turn %d on account %s", turn, turnAccount) || created == "" || created != completed || !strings.Contains(created, ".km1.") {
			t.Fatalf("streamed turn %d: %v, delta %q, ids %q / %q", turn, err, delta, created, completed)
		}
		prev = created
	}
	if got, err := a.Responses.Get(ctx, prev, responses.ResponseGetParams{}); err != nil || got.OutputText() != "turn 8 on account "+turnAccount {
		t.Fatalf("GET the streamed response: %v %+v", err, got)
	}

	// Client b: 404 for a's file, batch and response, answered by keymux.
	before := len(g.requests())
	_, err = b.Files.Get(ctx, f1.ID)
	want404(t, "b retrieves a's file", err)
	_, err = b.Batches.Get(ctx, batch.ID)
	want404(t, "b retrieves a's batch", err)
	_, err = b.Responses.Get(ctx, prev, responses.ResponseGetParams{})
	want404(t, "b retrieves a's response", err)
	_, err = b.Batches.New(ctx, openai.BatchNewParams{InputFileID: f1.ID,
		Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	want404(t, "b makes a batch of a's file", err)
	if n := len(g.requests()); n != before {
		t.Fatalf("the upstream got %d requests for b's refused ones", n-before)
	}
	resp, body := g.do("GET", "/v1/files/"+f1.ID, map[string]string{"authorization": "Bearer token-b"}, "")
	if want := `{"error":{"message":"No such File object: ` + f1.ID + `","type":"invalid_request_error","param":"id","code":null}}`; resp.StatusCode != 404 || string(body) != want {
		t.Fatalf("b's raw GET: %d %s\nwant 404 %s", resp.StatusCode, body, want)
	}
	// A forged tag (another owner's id re-tagged without the secret) is not found.
	forged := strings.Replace(prev, ".km1.", ".km1.00", 1)
	_, err = a.Responses.Get(ctx, forged, responses.ResponseGetParams{})
	want404(t, "a forged response tag", err)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
