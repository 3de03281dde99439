package app

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
)

// importDoc is one KV entry of an import file.
type importDoc struct {
	kind  store.Kind
	id    string
	path  string
	value []byte // compact JSON
}

// parseImportFile reads a configuration file with the sidecar's decoder
// (store.DecodeFile) into its KV entries under prefix, validating every
// document alone with the sidecar's parsers. The error lists every refusal.
// A null settings document is not an entry: there is nothing to write.
func parseImportFile(data []byte, prefix string) ([]importDoc, error) {
	f, err := store.DecodeFile(data)
	if err != nil {
		return nil, err
	}
	var docs []importDoc
	var problems []string
	for _, d := range f.Docs() {
		if d.Kind == store.KindSettings && string(d.Raw) == "null" {
			continue
		}
		path := consul.DocPath(prefix, d.Kind, d.ID)
		v, err := compact(d.Raw)
		if err == nil {
			err = checkDoc(d.Kind, d.ID, v)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		docs = append(docs, importDoc{kind: d.Kind, id: d.ID, path: path, value: v})
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%d invalid document(s), nothing written:\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	return docs, nil
}

// importCmd is `kv import [--dry-run] FILE`.
func (c *kvCmd) importCmd(args []string) error {
	fs := c.flags("import")
	dry := fs.Bool("dry-run", false, "validate and print the plan; write nothing")
	pos, err := c.parse(fs, args, "FILE", 1, 1)
	if err != nil {
		return err
	}
	data, err := c.readFile(pos[0])
	if err != nil {
		return fmt.Errorf("kv import: %w", err)
	}
	docs, err := parseImportFile(data, c.prefix)
	if err != nil {
		return fmt.Errorf("kv import %s: %w", pos[0], err)
	}
	current, err := c.all()
	if err != nil {
		return err
	}
	if err := c.crossCheck(current, docs); err != nil {
		return fmt.Errorf("kv import %s: %w", pos[0], err)
	}
	writes, counts := c.plan(current, docs)
	if *dry {
		fmt.Fprintf(c.Stdout, "dry run: %s; nothing written\n", counts.plan())
		return nil
	}
	err = consul.WriteAll(c.ctx, c.client, writes, func(txn, ops int) {
		fmt.Fprintf(c.Stdout, "transaction %d: %d operations written\n", txn, ops)
	})
	if err != nil {
		return fmt.Errorf("kv import: %w", err)
	}
	fmt.Fprintf(c.Stdout, "imported: %s\n", counts)
	return nil
}

// importCounts count what an import does.
type importCounts struct{ created, updated, unchanged int }

func (n importCounts) String() string {
	return fmt.Sprintf("%d created, %d updated, %d unchanged", n.created, n.updated, n.unchanged)
}

func (n importCounts) plan() string {
	return fmt.Sprintf("%d to create, %d to update, %d unchanged", n.created, n.updated, n.unchanged)
}

// plan prints and returns the writes that bring KV to the documents: each
// checked against the index read (0: create only if still absent).
func (c *kvCmd) plan(current api.KVPairs, docs []importDoc) ([]consul.Write, importCounts) {
	byPath := map[string]*api.KVPair{}
	for _, p := range current {
		byPath[p.Key] = p
	}
	var writes []consul.Write
	var n importCounts
	for _, d := range docs {
		cur := byPath[d.path]
		switch {
		case cur != nil && bytes.Equal(cur.Value, d.value):
			n.unchanged++
			fmt.Fprintf(c.Stdout, "unchanged %s\n", d.path)
			continue
		case cur != nil:
			n.updated++
			fmt.Fprintf(c.Stdout, "update    %s\n", d.path)
			writes = append(writes, consul.Write{Path: d.path, Value: d.value, Index: cur.ModifyIndex})
		default:
			n.created++
			fmt.Fprintf(c.Stdout, "create    %s\n", d.path)
			writes = append(writes, consul.Write{Path: d.path, Value: d.value})
		}
	}
	return writes, n
}

// crossCheck validates the documents together with what KV holds (a rule
// may name a key that is already in KV): the refusals of the imported
// documents are errors; entries already refused in KV are not the file's.
func (c *kvCmd) crossCheck(current api.KVPairs, docs []importDoc) error {
	b := store.NewBuilder(validateOnly)
	inFile := map[string]bool{}
	for _, d := range docs {
		inFile[d.path] = true
	}
	for _, d := range consul.Docs(c.prefix, current) {
		if !inFile[d.Pair.Key] && d.Kind != store.KindSettings {
			_ = b.Put(d.Kind, d.ID, d.Pair.Value, d.Pair.Key)
		}
	}
	for _, d := range docs {
		_ = b.Put(d.kind, d.id, d.value, d.path)
	}
	_, refused := b.Build()
	var problems []string
	for _, r := range refused {
		if inFile[r.Path] {
			problems = append(problems, fmt.Sprintf("%s: %s", r.Path, r.Reason))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d document(s) refused together with the KV contents, nothing written:\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	return nil
}
