package consul

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/testutil/consultest"
)

// decodeLikeClient decodes a listing as the Consul client does (one JSON
// value, what follows ignored), without its null elements.
func decodeLikeClient(body []byte) (api.KVPairs, error) {
	var pairs api.KVPairs
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&pairs); err != nil {
		return nil, err
	}
	out := api.KVPairs{}
	for _, p := range pairs {
		if p != nil {
			out = append(out, p)
		}
	}
	return out, nil
}

func scanAll(body []byte) (api.KVPairs, error) {
	out := api.KVPairs{}
	err := scanListing(body, func(r *rawPair) error {
		p, err := r.decode()
		if err == nil {
			out = append(out, p)
		}
		return err
	})
	return out, err
}

var listingSeeds = []string{
	`[{"LockIndex":0,"Key":"keymux/keys/k1","Flags":0,"Value":"eyJhIjoxfQ==","CreateIndex":12,"ModifyIndex":13}]`,
	`[{"LockIndex":1,"Key":"keymux/members/a","Flags":3,"Value":null,"Session":"0b8a-11","CreateIndex":1,"ModifyIndex":2,"Namespace":"default","Partition":"default"}]`,
	` [ {"Key":"keymux/rules/\u00e9\u003c","Value":"","ModifyIndex":7,"Extra":{"a":[1,2,{"b":null}],"c":"x"}} , null ] trailing`,
	`[{"key":"lower","modifyindex":4,"VALUE":"YQ=="}]`,
	`null`,
	`[]`,
	`[{"Key":"k","ModifyIndex":18446744073709551615}]`,
	`[{"Key":"k","ModifyIndex":-1}]`,
	`[{"Key":"k","Value":"!!"}]`,
	`[{"Key":"k","ModifyIndex":1.5}]`,
	`[{"Key":"k\xff","Value":"YQ\u003d\u003d"}]`,
	`[{"Key":"a","Key":null,"Value":"YQ==","Value":null}]`,
	`[{"Key":5}]`,
	`{"Key":"k"}`,
}

// TestScanListingDecodesAsTheClient: the scanner yields the entries the
// Consul client decodes, and fails where it fails.
func TestScanListingDecodesAsTheClient(t *testing.T) {
	for _, body := range listingSeeds {
		checkScan(t, []byte(body))
	}
}

func FuzzScanListing(f *testing.F) {
	for _, s := range listingSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkScan)
}

func checkScan(t *testing.T, body []byte) {
	want, werr := decodeLikeClient(body)
	got, gerr := scanAll(body)
	if werr != nil {
		return // the scanner may accept more than the client (it is never handed such a body), but must not crash
	}
	if gerr != nil {
		t.Fatalf("%q: scanner: %v, client decodes %v", body, gerr, want)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: scanner %+v, client %+v", body, got, want)
	}
}

// TestListingChanges: an answer is turned into the entries added or
// changed (ModifyIndex or session moved) and removed; a reset reports
// every entry again.
func TestListingChanges(t *testing.T) {
	l := newListing("keymux/")
	keys := func(ps []*api.KVPair) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key)
		}
		return out
	}
	steps := []struct {
		name             string
		body             string
		changed, removed []string
		full             bool
		docs             int
	}{
		{"first", `[{"Key":"keymux/keys/a","ModifyIndex":1,"Value":"e30="},{"Key":"keymux/members/m","ModifyIndex":2,"Session":"s"}]`,
			[]string{"keymux/keys/a", "keymux/members/m"}, nil, true, 1},
		{"same", `[{"Key":"keymux/keys/a","ModifyIndex":1,"Value":"e30="},{"Key":"keymux/members/m","ModifyIndex":2,"Session":"s"}]`,
			nil, nil, false, 1},
		{"edit, session gone, add", `[{"Key":"keymux/keys/a","ModifyIndex":5,"Value":"e30="},{"Key":"keymux/members/m","ModifyIndex":2},{"Key":"keymux/rules/r","ModifyIndex":6,"Value":"e30="}]`,
			[]string{"keymux/keys/a", "keymux/members/m", "keymux/rules/r"}, nil, false, 2},
		{"delete", `[{"Key":"keymux/rules/r","ModifyIndex":6,"Value":"e30="}]`,
			nil, []string{"keymux/keys/a", "keymux/members/m"}, false, 1},
	}
	for _, s := range steps {
		if err := l.scan([]byte(s.body)); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		changed, removed, full := l.take()
		if !reflect.DeepEqual(keys(changed), s.changed) || !reflect.DeepEqual(keys(removed), s.removed) || full != s.full || l.docs != s.docs {
			t.Fatalf("%s: changed %v removed %v full %v docs %d, want %v %v %v %d", s.name, keys(changed), keys(removed), full, l.docs, s.changed, s.removed, s.full, s.docs)
		}
	}
	l.reset()
	if err := l.scan([]byte(`[{"Key":"keymux/rules/r","ModifyIndex":6,"Value":"e30="}]`)); err != nil {
		t.Fatal(err)
	}
	if changed, _, full := l.take(); !reflect.DeepEqual(keys(changed), []string{"keymux/rules/r"}) || !full {
		t.Fatalf("after reset: changed %v full %v, want [keymux/rules/r] true", keys(changed), full)
	}
}

// TestNewClientDivertsTheListing: with a client made by NewClient the
// source scans the listing's body itself (uncompressed), and the client's
// other requests are untouched; with any other client the Consul client
// decodes it.
func TestNewClientDivertsTheListing(t *testing.T) {
	a := consultest.Start(t)
	a.Put("keymux/keys/k1", []byte(`{"provider":"openai","secret":"sk-test-1"}`))
	fast, err := NewClient(a.Config())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		client *api.Client
		taken  bool
	}{{"NewClient", fast, true}, {"api.NewClient", a.NewClient(), false}} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := store.New(store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			src, err := New(Options{Store: st, Client: tc.client, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			q := (&api.QueryOptions{}).WithContext(context.WithValue(t.Context(), captureKey{}, &src.capture))
			meta, err := src.list(q)
			if err != nil {
				t.Fatal(err)
			}
			changed, _, _ := src.listing.take()
			if src.capture.taken != tc.taken || meta.LastIndex == 0 || len(changed) != 1 ||
				changed[0].Key != "keymux/keys/k1" || string(changed[0].Value) != `{"provider":"openai","secret":"sk-test-1"}` {
				t.Fatalf("taken %v, index %d, changed %+v", src.capture.taken, meta.LastIndex, changed)
			}
			p, _, err := tc.client.KV().Get("keymux/keys/k1", nil)
			if err != nil || p == nil || string(p.Value) != `{"provider":"openai","secret":"sk-test-1"}` {
				t.Fatalf("Get = %+v, %v", p, err)
			}
		})
	}
}

// TestListingAfterABrokenAnswer: an entry first seen in an answer that
// failed midway is still noticed when it goes.
func TestListingAfterABrokenAnswer(t *testing.T) {
	l := newListing("keymux/")
	if err := l.scan([]byte(`[{"Key":"keymux/keys/a","ModifyIndex":1,"Value":"e30="}]`)); err != nil {
		t.Fatal(err)
	}
	if err := l.scan([]byte(`[{"Key":"keymux/keys/a","ModifyIndex":1,"Value":"e30="},{"Key":"keymux/keys/b","ModifyIndex":2,"Value":"e30="},{"Key":`)); err == nil {
		t.Fatal("a truncated answer was accepted")
	}
	if err := l.scan([]byte(`[{"Key":"keymux/keys/a","ModifyIndex":1,"Value":"e30="}]`)); err != nil {
		t.Fatal(err)
	}
	changed, removed, _ := l.take()
	if len(changed) != 1 || changed[0].Key != "keymux/keys/a" || len(removed) != 1 || removed[0].Key != "keymux/keys/b" {
		t.Fatalf("changed %+v removed %+v, want a changed (first answer) and b removed", changed, removed)
	}
}
