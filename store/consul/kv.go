package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
)

// MaxTxnOps is the most operations keymux puts in one Consul transaction
// (Consul's own limit is 128 in v1.14 and later).
const MaxTxnOps = 128

// DocPath is the KV path of a document under prefix (a NormalizePrefix
// result): <prefix>settings, or <prefix><kind>/<id>.
func DocPath(prefix string, kind store.Kind, id string) string {
	if kind == store.KindSettings {
		return prefix + string(store.KindSettings)
	}
	return prefix + string(kind) + "/" + id
}

// Doc is one configuration document as KV holds it.
type Doc struct {
	Kind store.Kind
	ID   string // "" for the settings
	Pair *api.KVPair
}

// Docs picks the configuration documents (settings, keys, rules, clients)
// out of a listing under prefix, in listing order. Health entries, folders
// and other paths are not configuration and are skipped.
func Docs(prefix string, pairs api.KVPairs) []Doc {
	var docs []Doc
	for _, p := range pairs {
		if kind, id, health, ok := classify(prefix, p.Key); ok && !health {
			docs = append(docs, Doc{Kind: kind, ID: id, Pair: p})
		}
	}
	return docs
}

// classify maps a KV path under prefix to a document, or to the health
// entry of a key (health true, id the key id).
func classify(prefix, path string) (kind store.Kind, id string, health, ok bool) {
	rel, found := strings.CutPrefix(path, prefix)
	if !found || rel == "" || strings.HasSuffix(rel, "/") {
		return "", "", false, false // folder entries
	}
	if rel == string(store.KindSettings) {
		return store.KindSettings, "", false, true
	}
	top, rest, found := strings.Cut(rel, "/")
	if !found {
		return "", "", false, false
	}
	switch store.Kind(top) {
	case store.KindKeys, store.KindRules, store.KindClients:
		return store.Kind(top), rest, false, true
	}
	if top == "health" {
		return "", rest, true, true
	}
	return "", "", false, false
}

// Write is one checked write: Value at Path if the entry is still at Index
// (0: only if the entry does not exist).
type Write struct {
	Path  string
	Value []byte
	Index uint64
}

// WriteAll writes in transactions of at most MaxTxnOps, each atomic, every
// write checked against its index. A transaction that fails reports each
// failing write by path and stops the rest; the transactions before it
// stay written. committed, when set, is told of every transaction written
// (numbered from 1).
func WriteAll(ctx context.Context, client *api.Client, writes []Write, committed func(txn, ops int)) error {
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	for start := 0; start < len(writes); start += MaxTxnOps {
		end := min(start+MaxTxnOps, len(writes))
		n := start/MaxTxnOps + 1
		ops := make(api.TxnOps, 0, end-start)
		for _, w := range writes[start:end] {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: w.Path, Value: w.Value, Index: w.Index}})
		}
		ok, resp, _, err := client.Txn().Txn(ops, q)
		if err != nil {
			return fmt.Errorf("transaction %d (operations %d–%d): %w", n, start+1, end, err)
		}
		if !ok {
			var msgs []string
			for _, e := range resp.Errors {
				p := "?"
				if i := start + e.OpIndex; e.OpIndex >= 0 && i < end {
					p = writes[i].Path
				}
				msgs = append(msgs, fmt.Sprintf("%s: %s", p, e.What))
			}
			done := ""
			if start > 0 {
				done = fmt.Sprintf(" (operations 1–%d were written)", start)
			}
			return fmt.Errorf("transaction %d rolled back%s:\n  %s", n, done, strings.Join(msgs, "\n  "))
		}
		if committed != nil {
			committed(n, end-start)
		}
	}
	return nil
}

// DecodeRecord decodes raw, a JSON record of at most max bytes written in
// KV by another instance (possibly another keymux version) or an operator,
// into v. The caller wraps the error with its own record kind.
func DecodeRecord(raw []byte, max int, v any) error {
	if len(raw) > max {
		return fmt.Errorf("%d bytes (max %d)", len(raw), max)
	}
	return json.Unmarshal(raw, v)
}
