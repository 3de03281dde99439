package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/testutil/consultest"
)

// TestConsulObjectsAcrossSidecars: three sidecars on one Consul. A file and
// a batch created through one are followed on their account through the
// others at once (no wait in the test: the first follow-up may beat the
// watch), a previous_response_id chain hops over the three, and all of it
// still works after the three restart. Each recorded object costs one KV
// write; stored responses and completions cost none.
func TestConsulObjectsAcrossSidecars(t *testing.T) {
	a := consultest.Start(t)
	useConsul(t, a)
	mock := startMock(t, mockupstream.Options{Accounts: accountOfCredential})
	const p = "fleet/"
	a.Put(p+"settings", []byte(`{"strategy":"round_robin","auth":{"mode":"client_keys"}}`))
	for i, acc := range []string{"acct-a", "acct-b", "acct-c"} {
		id := fmt.Sprintf("k%d", i+1)
		a.Put(p+"keys/"+id, []byte(fmt.Sprintf(`{"provider":"openai_compatible","base_url":%q,"secret":"sk-test-%s","account":%q}`, mock.URL()+"/v1", id, acc)))
	}
	a.Put(p+"clients/ca", []byte(`{"name":"a","token_sha256":"`+sha256hex("token-a")+`"}`))
	a.Put(p+"clients/cb", []byte(`{"name":"b","token_sha256":"`+sha256hex("token-b")+`"}`))

	start := func() []*consulGateway {
		var gs []*consulGateway
		for range 3 {
			gs = append(gs, startConsulGateway(t, mock, p, "", true))
		}
		return gs
	}
	gs := start()
	ctx := t.Context()
	kv := a.NewClient().KV()
	const objPrefix = "fleet-objects/"
	entries := func() api.KVPairs {
		t.Helper()
		pairs, _, err := kv.List(objPrefix, nil)
		if err != nil {
			t.Fatal(err)
		}
		return pairs
	}

	f := uploadFile(t, gs[0].client("token-a"), "fleet.jsonl")
	fileAccount := accountsOf(gs[0].gateway, "POST", "/files")[0]
	c1 := gs[1].client("token-a")
	batch, err := c1.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID,
		Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatalf("batch through the second sidecar: %v", err)
	}
	if got := accountsOf(gs[0].gateway, "POST", "/batches"); len(got) != 1 || got[0] != fileAccount {
		t.Fatalf("batch created on %v, want the file's account %s", got, fileAccount)
	}
	prev := ""
	for turn := 1; turn <= 6; turn++ {
		c := gs[turn%3].client("token-a")
		p := responses.ResponseNewParams{Model: "gpt-4o", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
		if prev != "" {
			p.PreviousResponseID = openai.String(prev)
		}
		r, err := c.Responses.New(ctx, p)
		if err != nil || !strings.HasPrefix(r.OutputText(), fmt.Sprintf("turn %d on account ", turn)) {
			t.Fatalf("turn %d through sidecar %d: %v %q", turn, turn%3+1, err, r.OutputText())
		}
		prev = r.ID
	}
	before := entries()
	if len(before) != 2 {
		t.Fatalf("%d object records in Consul, want 2 (the file and the batch; stored responses are not recorded)", len(before))
	}
	for _, e := range before {
		if e.CreateIndex != e.ModifyIndex {
			t.Fatalf("%s was written more than once (create %d, modify %d)", e.Key, e.CreateIndex, e.ModifyIndex)
		}
	}
	_, meta, _ := kv.List(objPrefix, nil)
	c2 := gs[2].client("token-a")
	if _, err := c2.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}); err != nil {
		t.Fatal(err)
	}
	if _, after, _ := kv.List(objPrefix, nil); after.LastIndex != meta.LastIndex {
		t.Fatalf("a chat completion wrote to the object records (index %d → %d)", meta.LastIndex, after.LastIndex)
	}

	follow := func(round string, gs []*consulGateway) {
		t.Helper()
		for i, g := range gs {
			ca, cb := g.client("token-a"), g.client("token-b")
			if got, err := ca.Files.Get(ctx, f.ID); err != nil || got.ID != f.ID {
				t.Fatalf("%s: file through sidecar %d: %v", round, i+1, err)
			}
			if got, err := ca.Batches.Get(ctx, batch.ID); err != nil || got.ID != batch.ID {
				t.Fatalf("%s: batch through sidecar %d: %v", round, i+1, err)
			}
			if got, err := ca.Responses.Get(ctx, prev, responses.ResponseGetParams{}); err != nil || !strings.HasPrefix(got.OutputText(), "turn 6 on account ") {
				t.Fatalf("%s: response through sidecar %d: %v", round, i+1, err)
			}
			_, err := cb.Files.Get(ctx, f.ID)
			want404(t, round+": b's file retrieval", err)
			_, err = cb.Responses.Get(ctx, prev, responses.ResponseGetParams{})
			want404(t, round+": b's response retrieval", err)
		}
		for _, acc := range accountsOf(gs[0].gateway, "GET", "/files/"+f.ID) {
			if acc != fileAccount {
				t.Fatalf("%s: a file retrieval went to %s, not %s", round, acc, fileAccount)
			}
		}
	}
	follow("before restart", gs)
	for _, g := range gs {
		g.stop()
	}
	follow("after restart", start())
}
