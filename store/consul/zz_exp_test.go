package consul_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/bigconfig"
	"github.com/keymux/keymux/testutil/consultest"
)

func TestZZExp(t *testing.T) {
	a := consultest.Start(t)
	f, _ := store.DecodeFile(bigconfig.Shared(10_000, 2))
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := a.Client().Txn().Txn(ops, nil); err != nil || !ok {
			t.Fatalf("seed: %v %+v", err, resp)
		}
		ops = ops[:0]
	}
	for _, d := range f.Docs() {
		path := prefix + string(d.Kind)
		if d.Kind != store.KindSettings {
			path += "/" + d.ID
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: path, Value: d.Raw}})
		if len(ops) == 64 {
			flush()
		}
	}
	flush()
	for range 3 {
		c0 := cpuTime()
		pairs, _, err := a.Client().KV().List(prefix, nil)
		t.Logf("List: %d pairs, cpu %v, err %v", len(pairs), cpuTime()-c0, err)
		for _, gz := range []bool{false, true} {
			req, _ := http.NewRequest("GET", "http://"+a.Addr()+"/v1/kv/"+prefix+"?recurse", nil)
			if gz {
				req.Header.Set("Accept-Encoding", "gzip")
			} else {
				req.Header.Set("Accept-Encoding", "identity")
			}
			c0 = cpuTime()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			c1 := cpuTime()
			t.Logf("gz=%v enc=%q read %d bytes cpu %v", gz, resp.Header.Get("Content-Encoding"), len(body), c1-c0)
			if resp.Header.Get("Content-Encoding") == "gzip" {
				zr, _ := gzip.NewReader(bytes.NewReader(body))
				body, _ = io.ReadAll(zr)
				t.Logf("gunzip -> %d bytes cpu %v", len(body), cpuTime()-c1)
			}
			c1 = cpuTime()
			ok := json.Valid(body)
			t.Logf("json.Valid %v cpu %v", ok, cpuTime()-c1)
			c1 = cpuTime()
			var raw json.RawMessage
			json.NewDecoder(bytes.NewReader(body)).Decode(&raw)
			t.Logf("Decoder RawMessage cpu %v", cpuTime()-c1)
		}
	}
	_ = time.Now
}
