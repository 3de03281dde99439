package consul

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"
	"github.com/tidwall/sjson"
	"sigs.k8s.io/yaml"

	"github.com/keymux/keymux/store"
)

// MaxTxnOps is the most operations keymux puts in one Consul transaction
// (Consul's own limit is 128 in v1.14 and later).
const MaxTxnOps = 128

// MaskedSecret replaces a key's secret in `keymux kv export` output. import
// refuses it, so that a masked export cannot overwrite real secrets.
const MaskedSecret = "***masked***"

// EnvPrefix is the environment variable read as the --consul-prefix default.
const EnvPrefix = "KEYMUX_CONSUL_PREFIX"

const kvUsage = `usage: keymux kv [--consul-prefix P] COMMAND ...

Consul address, token and TLS come from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_CACERT, ... ; the prefix defaults to $KEYMUX_CONSUL_PREFIX or keymux/.

  import [--dry-run] FILE        write a file-source document (JSON or YAML) to KV
                                 (adds and updates entries; never deletes any)
  export [--show-secrets]        print the KV documents in the file-source format
  keys list
  keys add ID [DOC|--file F|--provider P --base-url U --secret-ref R --models a,b ...] [--replace]
  keys enable ID | keys disable ID | keys rm ID [--force]
  rules list
  rules add ID [DOC|--file F|--key K --from M --to M2] [--replace]
  rules rm ID
  clients list
  clients add ID [--name N] [--models a,b] [--disabled]   prints the new token once
  clients rm ID
  settings get
  settings set DOC|--file F

DOC is the JSON document itself; --file - reads it from stdin.
`

// RunKV runs `keymux kv ARGS`: Consul KV administration with the same
// validators as the sidecar. Output goes to stdout, diagnostics to stderr.
func RunKV(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return RunKVWith(ctx, nil, args, stdout, stderr)
}

// RunKVWith is RunKV with an explicit Consul client (nil: from the
// CONSUL_HTTP_* environment).
func RunKVWith(ctx context.Context, client *api.Client, args []string, stdout, stderr io.Writer) error {
	prefix := os.Getenv(EnvPrefix)
	if prefix == "" {
		prefix = DefaultPrefix
	}
	fs := newFlagSet("kv", &prefix, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, kvUsage)
		return errors.New("kv: missing command")
	}
	if client == nil {
		var err error
		if client, err = api.NewClient(api.DefaultConfig()); err != nil {
			return fmt.Errorf("kv: consul client: %w", err)
		}
	}
	c := &kvCmd{ctx: ctx, client: client, kv: client.KV(), prefix: &prefix, stdout: stdout, stderr: stderr}
	cmd, sub := rest[0], rest[1:]
	switch cmd {
	case "import":
		return c.importCmd(sub)
	case "export":
		return c.exportCmd(sub)
	case "keys":
		return c.group("keys", sub, map[string]func([]string) error{
			"list": c.keysList, "add": c.keysAdd, "enable": c.keysEnable(true), "disable": c.keysEnable(false), "rm": c.keysRm,
		})
	case "rules":
		return c.group("rules", sub, map[string]func([]string) error{
			"list": c.rulesList, "add": c.rulesAdd, "rm": c.simpleRm(store.KindRules),
		})
	case "clients":
		return c.group("clients", sub, map[string]func([]string) error{
			"list": c.clientsList, "add": c.clientsAdd, "rm": c.simpleRm(store.KindClients),
		})
	case "settings":
		return c.group("settings", sub, map[string]func([]string) error{
			"get": c.settingsGet, "set": c.settingsSet,
		})
	case "help", "-h", "--help":
		fmt.Fprint(stdout, kvUsage)
		return nil
	}
	fmt.Fprint(stderr, kvUsage)
	return fmt.Errorf("kv: unknown command %q", cmd)
}

type kvCmd struct {
	ctx    context.Context
	client *api.Client
	kv     *api.KV
	prefix *string
	stdout io.Writer
	stderr io.Writer
}

func newFlagSet(name string, prefix *string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(prefix, "consul-prefix", *prefix, "Consul KV prefix")
	return fs
}

// parse parses flags anywhere among the arguments and returns the
// positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (c *kvCmd) group(name string, args []string, cmds map[string]func([]string) error) error {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, kvUsage)
		return fmt.Errorf("kv %s: missing subcommand", name)
	}
	f, ok := cmds[args[0]]
	if !ok {
		fmt.Fprint(c.stderr, kvUsage)
		return fmt.Errorf("kv %s: unknown subcommand %q", name, args[0])
	}
	return f(args[1:])
}

func (c *kvCmd) pfx() string {
	p := *c.prefix
	if p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p
}

func (c *kvCmd) path(kind store.Kind, id string) string {
	if kind == store.KindSettings {
		return c.pfx() + string(store.KindSettings)
	}
	return c.pfx() + string(kind) + "/" + id
}

func (c *kvCmd) q() *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(c.ctx)
}

func (c *kvCmd) w() *api.WriteOptions { return (&api.WriteOptions{}).WithContext(c.ctx) }

// get reads one entry; nil when absent.
func (c *kvCmd) get(path string) (*api.KVPair, error) {
	p, _, err := c.kv.Get(path, c.q())
	if err != nil {
		return nil, fmt.Errorf("%s: read: %w", path, err)
	}
	return p, nil
}

// list returns the documents of one kind, by id.
func (c *kvCmd) list(kind store.Kind) (map[string]*api.KVPair, []string, error) {
	base := c.pfx() + string(kind) + "/"
	pairs, _, err := c.kv.List(base, c.q())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: list: %w", base, err)
	}
	out := map[string]*api.KVPair{}
	var ids []string
	for _, p := range pairs {
		id := strings.TrimPrefix(p.Key, base)
		if id == "" || strings.HasSuffix(id, "/") {
			continue
		}
		out[id] = p
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return out, ids, nil
}

// cas writes value at path if the entry is still at index (0: absent).
func (c *kvCmd) cas(path string, value []byte, index uint64) error {
	ok, _, err := c.kv.CAS(&api.KVPair{Key: path, Value: value, ModifyIndex: index}, c.w())
	if err != nil {
		return fmt.Errorf("%s: write: %w", path, err)
	}
	if !ok {
		if index == 0 {
			return fmt.Errorf("%s: already exists (use --replace to overwrite)", path)
		}
		return fmt.Errorf("%s: changed by someone else while being edited; retry", path)
	}
	return nil
}

// validateOnly resolves nothing: the admin host need not have the sidecar's
// environment or files. The syntax of the ref is still checked by ParseKey.
func validateOnly(string) (string, error) { return "unresolved-at-admin-time", nil }

func checkDoc(kind store.Kind, id string, raw []byte) error {
	var err error
	switch kind {
	case store.KindSettings:
		_, err = store.ParseSettings(raw)
	case store.KindKeys:
		if masked(raw) {
			return fmt.Errorf("keys/%s: field \"secret\": is the export mask %q (export with --show-secrets, or use secret_ref)", id, MaskedSecret)
		}
		_, err = store.ParseKey(id, raw, validateOnly)
	case store.KindRules:
		_, err = store.ParseRule(id, raw)
	case store.KindClients:
		_, err = store.ParseClient(id, raw)
	default:
		err = fmt.Errorf("unknown kind %q", kind)
	}
	return err
}

func masked(raw []byte) bool {
	var d struct {
		Secret *string `json:"secret"`
	}
	return json.Unmarshal(raw, &d) == nil && d.Secret != nil && *d.Secret == MaskedSecret
}

// compact returns raw as compact JSON (what keymux writes to KV).
func compact(raw []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// docArg reads a document from the positional argument or --file.
func docArg(pos []string, file string) ([]byte, bool, error) {
	switch {
	case file != "" && len(pos) > 0:
		return nil, false, errors.New("give the document either as an argument or with --file, not both")
	case file == "-":
		b, err := io.ReadAll(os.Stdin)
		return b, true, err
	case file != "":
		b, err := os.ReadFile(file)
		return b, true, err
	case len(pos) > 0:
		return []byte(pos[0]), true, nil
	}
	return nil, false, nil
}

// ---------------------------------------------------------------- import

// importFile is the file-source format.
type importFile struct {
	Settings json.RawMessage            `json:"settings"`
	Keys     map[string]json.RawMessage `json:"keys"`
	Rules    map[string]json.RawMessage `json:"rules"`
	Clients  map[string]json.RawMessage `json:"clients"`
}

// ImportDoc is one KV entry of an import file.
type ImportDoc struct {
	Kind  store.Kind
	ID    string
	Path  string
	Value []byte // compact JSON
}

// ParseImportFile reads a file-source document (JSON or YAML) into its KV
// entries under prefix, validating every document alone with the sidecar's
// parsers. The error lists every refusal.
func ParseImportFile(data []byte, prefix string) ([]ImportDoc, error) {
	js := data
	if !json.Valid(data) {
		var err error
		if js, err = yaml.YAMLToJSON(data); err != nil {
			// YAML errors may quote document values (secrets): keep the line only.
			msg := "syntax error"
			if _, rest, ok := strings.Cut(err.Error(), "line "); ok {
				if n, _, ok := strings.Cut(rest, ":"); ok {
					msg = "line " + n + ": syntax error"
				}
			}
			return nil, fmt.Errorf("neither JSON nor YAML: %s", msg)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var f importFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("want {\"settings\":{}, \"keys\":{}, \"rules\":{}, \"clients\":{}}: %w", err)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	var docs []ImportDoc
	add := func(kind store.Kind, id string, raw json.RawMessage) {
		path := prefix + string(kind)
		if kind != store.KindSettings {
			path += "/" + id
		}
		docs = append(docs, ImportDoc{Kind: kind, ID: id, Path: path, Value: raw})
	}
	if len(f.Settings) > 0 && string(f.Settings) != "null" {
		add(store.KindSettings, "", f.Settings)
	}
	for _, k := range []struct {
		kind store.Kind
		m    map[string]json.RawMessage
	}{{store.KindKeys, f.Keys}, {store.KindRules, f.Rules}, {store.KindClients, f.Clients}} {
		ids := make([]string, 0, len(k.m))
		for id := range k.m {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			add(k.kind, id, k.m[id])
		}
	}
	var problems []string
	for i, d := range docs {
		v, err := compact(d.Value)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", d.Path, err))
			continue
		}
		docs[i].Value = v
		if err := checkDoc(d.Kind, d.ID, v); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", d.Path, err))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%d invalid document(s), nothing written:\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	return docs, nil
}

func (c *kvCmd) importCmd(args []string) error {
	fs := newFlagSet("import", c.prefix, c.stderr)
	dry := fs.Bool("dry-run", false, "validate and print the plan; write nothing")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("kv import: want exactly one FILE")
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("kv import: %w", err)
	}
	docs, err := ParseImportFile(data, c.pfx())
	if err != nil {
		return fmt.Errorf("kv import %s: %w", pos[0], err)
	}
	current, _, err := c.kv.List(c.pfx(), c.q())
	if err != nil {
		return fmt.Errorf("%s: list: %w", c.pfx(), err)
	}
	byPath := map[string]*api.KVPair{}
	for _, p := range current {
		byPath[p.Key] = p
	}
	if err := c.crossCheck(current, docs); err != nil {
		return fmt.Errorf("kv import %s: %w", pos[0], err)
	}
	var ops api.TxnOps
	var opPaths []string
	var created, updated, unchanged int
	for _, d := range docs {
		cur := byPath[d.Path]
		switch {
		case cur != nil && bytes.Equal(cur.Value, d.Value):
			unchanged++
			fmt.Fprintf(c.stdout, "unchanged %s\n", d.Path)
			continue
		case cur != nil:
			updated++
			fmt.Fprintf(c.stdout, "update    %s\n", d.Path)
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: d.Path, Value: d.Value, Index: cur.ModifyIndex}})
		default:
			created++
			fmt.Fprintf(c.stdout, "create    %s\n", d.Path)
			// CAS at index 0: set only if the entry still does not exist.
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: d.Path, Value: d.Value, Index: 0}})
		}
		opPaths = append(opPaths, d.Path)
	}
	if *dry {
		fmt.Fprintf(c.stdout, "dry run: %d to create, %d to update, %d unchanged; nothing written\n", created, updated, unchanged)
		return nil
	}
	if err := c.txn(ops, opPaths); err != nil {
		return fmt.Errorf("kv import: %w", err)
	}
	fmt.Fprintf(c.stdout, "imported: %d created, %d updated, %d unchanged\n", created, updated, unchanged)
	return nil
}

// crossCheck validates the documents together with what KV holds (a rule
// may name a key that is already in KV): the refusals of the imported
// documents are errors; entries already refused in KV are not the file's.
func (c *kvCmd) crossCheck(current api.KVPairs, docs []ImportDoc) error {
	b := store.NewBuilder(validateOnly)
	inFile := map[string]bool{}
	for _, d := range docs {
		inFile[d.Path] = true
	}
	for _, p := range current {
		if inFile[p.Key] {
			continue
		}
		rel := strings.TrimPrefix(p.Key, c.pfx())
		top, id, _ := strings.Cut(rel, "/")
		switch store.Kind(top) {
		case store.KindKeys, store.KindRules, store.KindClients:
			_ = b.Put(store.Kind(top), id, p.Value, p.Key)
		}
	}
	for _, d := range docs {
		_ = b.Put(d.Kind, d.ID, d.Value, d.Path)
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

// txn runs ops in transactions of at most MaxTxnOps. Each transaction is
// atomic; a failed one reports every failing operation by path and stops.
func (c *kvCmd) txn(ops api.TxnOps, paths []string) error {
	for start := 0; start < len(ops); start += MaxTxnOps {
		end := min(start+MaxTxnOps, len(ops))
		ok, resp, _, err := c.client.Txn().Txn(ops[start:end], c.q())
		if err != nil {
			return fmt.Errorf("transaction %d (operations %d–%d): %w", start/MaxTxnOps+1, start+1, end, err)
		}
		if !ok {
			var msgs []string
			for _, e := range resp.Errors {
				p := "?"
				if i := start + e.OpIndex; e.OpIndex >= 0 && i < end {
					p = paths[i]
				}
				msgs = append(msgs, fmt.Sprintf("%s: %s", p, e.What))
			}
			done := ""
			if start > 0 {
				done = fmt.Sprintf(" (operations 1–%d were written)", start)
			}
			return fmt.Errorf("transaction %d rolled back%s:\n  %s", start/MaxTxnOps+1, done, strings.Join(msgs, "\n  "))
		}
		fmt.Fprintf(c.stdout, "transaction %d: %d operations written\n", start/MaxTxnOps+1, end-start)
	}
	return nil
}

// ---------------------------------------------------------------- export

func (c *kvCmd) exportCmd(args []string) error {
	fs := newFlagSet("export", c.prefix, c.stderr)
	show := fs.Bool("show-secrets", false, "print keys' secrets instead of masking them")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	pairs, _, err := c.kv.List(c.pfx(), c.q())
	if err != nil {
		return fmt.Errorf("%s: list: %w", c.pfx(), err)
	}
	var out struct {
		Settings json.RawMessage            `json:"settings,omitempty"`
		Keys     map[string]json.RawMessage `json:"keys"`
		Rules    map[string]json.RawMessage `json:"rules"`
		Clients  map[string]json.RawMessage `json:"clients"`
	}
	out.Keys, out.Rules, out.Clients = map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	for _, p := range pairs {
		rel := strings.TrimPrefix(p.Key, c.pfx())
		if rel == "" || strings.HasSuffix(rel, "/") {
			continue
		}
		top, id, _ := strings.Cut(rel, "/")
		var m map[string]json.RawMessage
		isKey := false
		switch {
		case rel == string(store.KindSettings):
		case top == string(store.KindKeys) && id != "":
			m, isKey = out.Keys, true
		case top == string(store.KindRules) && id != "":
			m = out.Rules
		case top == string(store.KindClients) && id != "":
			m = out.Clients
		default:
			continue // health and anything else: not configuration
		}
		if !json.Valid(p.Value) {
			fmt.Fprintf(c.stderr, "skipped %s: not valid JSON\n", p.Key)
			continue
		}
		v := p.Value
		if m == nil {
			out.Settings = v
			continue
		}
		if isKey && !*show {
			v = maskSecret(v)
		}
		m[id] = v
	}
	b, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

// maskSecret replaces a top-level "secret" string with MaskedSecret.
func maskSecret(raw []byte) []byte {
	var d map[string]json.RawMessage
	if json.Unmarshal(raw, &d) != nil {
		return raw
	}
	if _, ok := d["secret"]; !ok {
		return raw
	}
	v, err := sjson.SetBytes(raw, "secret", MaskedSecret)
	if err != nil {
		return []byte(`{"error":"cannot mask this document"}`)
	}
	return v
}

// ---------------------------------------------------------------- keys

func (c *kvCmd) keysList(args []string) error {
	fs := newFlagSet("keys list", c.prefix, c.stderr)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	m, ids, err := c.list(store.KindKeys)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROVIDER\tBASE_URL\tENABLED\tPRIORITY\tWEIGHT\tMODELS\tSECRET")
	for _, id := range ids {
		k, err := store.ParseKey(id, m[id].Value, validateOnly)
		if err != nil {
			fmt.Fprintf(tw, "%s\tINVALID: %v\n", id, err)
			continue
		}
		secret := "inline"
		if k.SecretRef != "" {
			secret = k.SecretRef
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\t%g\t%s\t%s\n", id, k.Provider, k.BaseURL, k.Enabled, k.Priority, k.Weight,
			listOrAny(k.Models), secret)
	}
	return tw.Flush()
}

func listOrAny(s []string) string {
	if len(s) == 0 {
		return "*"
	}
	return strings.Join(s, ",")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (c *kvCmd) keysAdd(args []string) error {
	fs := newFlagSet("keys add", c.prefix, c.stderr)
	file := fs.String("file", "", "read the key document from this file (- = stdin)")
	replace := fs.Bool("replace", false, "overwrite an existing key")
	provider := fs.String("provider", "", "openai | azure | anthropic | huggingface | openai_compatible")
	baseURL := fs.String("base-url", "", "upstream base URL (default per provider)")
	secretRef := fs.String("secret-ref", "", "env:NAME or file:/path, resolved by each sidecar")
	secret := fs.String("secret", "", "the API key itself (prefer --secret-ref: this lands in shell history)")
	models := fs.String("models", "", "comma-separated models the key serves (empty = any)")
	weight := fs.Float64("weight", 0, "weight (default 1)")
	priority := fs.Int("priority", 0, "priority (lower is preferred)")
	disabled := fs.Bool("disabled", false, "add the key disabled")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return errors.New("kv keys add: want ID [DOC]")
	}
	id := pos[0]
	raw, given, err := docArg(pos[1:], *file)
	if err != nil {
		return fmt.Errorf("kv keys add: %w", err)
	}
	if !given {
		d := map[string]any{"provider": *provider}
		if *baseURL != "" {
			d["base_url"] = *baseURL
		}
		if *secretRef != "" {
			d["secret_ref"] = *secretRef
		}
		if *secret != "" {
			d["secret"] = *secret
		}
		if ms := splitList(*models); len(ms) > 0 {
			d["models"] = ms
		}
		if *weight != 0 {
			d["weight"] = *weight
		}
		if *priority != 0 {
			d["priority"] = *priority
		}
		if *disabled {
			d["enabled"] = false
		}
		raw, _ = json.Marshal(d)
	}
	return c.putDoc(store.KindKeys, id, raw, *replace)
}

// putDoc validates and writes one document, creating it (index 0) or, with
// replace, overwriting the version just read.
func (c *kvCmd) putDoc(kind store.Kind, id string, raw []byte, replace bool) error {
	path := c.path(kind, id)
	v, err := compact(raw)
	if err != nil {
		return fmt.Errorf("%s: not valid JSON: %w", path, err)
	}
	if err := checkDoc(kind, id, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var index uint64
	if replace {
		cur, err := c.get(path)
		if err != nil {
			return err
		}
		if cur != nil {
			index = cur.ModifyIndex
		}
	}
	if err := c.cas(path, v, index); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "wrote %s\n", path)
	return nil
}

func (c *kvCmd) keysEnable(enabled bool) func([]string) error {
	return func(args []string) error {
		fs := newFlagSet("keys enable", c.prefix, c.stderr)
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("kv keys enable/disable: want ID")
		}
		id := pos[0]
		path := c.path(store.KindKeys, id)
		cur, err := c.get(path)
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("%s: not found", path)
		}
		v, err := sjson.SetBytes(cur.Value, "enabled", enabled)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := checkDoc(store.KindKeys, id, v); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := c.cas(path, v, cur.ModifyIndex); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s enabled=%t\n", path, enabled)
		return nil
	}
}

func (c *kvCmd) keysRm(args []string) error {
	fs := newFlagSet("keys rm", c.prefix, c.stderr)
	force := fs.Bool("force", false, "remove even when rules name the key (they will be refused)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("kv keys rm: want ID")
	}
	id := pos[0]
	if !*force {
		rules, ids, err := c.list(store.KindRules)
		if err != nil {
			return err
		}
		var users []string
		for _, rid := range ids {
			if r, err := store.ParseRule(rid, rules[rid].Value); err == nil && r.KeyID == id {
				users = append(users, c.path(store.KindRules, rid))
			}
		}
		if len(users) > 0 {
			return fmt.Errorf("%s: named by %s; remove those first or use --force", c.path(store.KindKeys, id), strings.Join(users, ", "))
		}
	}
	return c.rm(store.KindKeys, id)
}

func (c *kvCmd) rm(kind store.Kind, id string) error {
	path := c.path(kind, id)
	cur, err := c.get(path)
	if err != nil {
		return err
	}
	if cur == nil {
		return fmt.Errorf("%s: not found", path)
	}
	ok, _, err := c.kv.DeleteCAS(&api.KVPair{Key: path, ModifyIndex: cur.ModifyIndex}, c.w())
	if err != nil {
		return fmt.Errorf("%s: delete: %w", path, err)
	}
	if !ok {
		return fmt.Errorf("%s: changed by someone else while being removed; retry", path)
	}
	fmt.Fprintf(c.stdout, "removed %s\n", path)
	return nil
}

func (c *kvCmd) simpleRm(kind store.Kind) func([]string) error {
	return func(args []string) error {
		fs := newFlagSet(string(kind)+" rm", c.prefix, c.stderr)
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("kv %s rm: want ID", kind)
		}
		return c.rm(kind, pos[0])
	}
}

// ---------------------------------------------------------------- rules

func (c *kvCmd) rulesList(args []string) error {
	fs := newFlagSet("rules list", c.prefix, c.stderr)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	m, ids, err := c.list(store.KindRules)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKEY\tFROM\tTO\tENABLED")
	for _, id := range ids {
		r, err := store.ParseRule(id, m[id].Value)
		if err != nil {
			fmt.Fprintf(tw, "%s\tINVALID: %v\n", id, err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", id, r.KeyID, r.From, r.To, r.Enabled)
	}
	return tw.Flush()
}

func (c *kvCmd) rulesAdd(args []string) error {
	fs := newFlagSet("rules add", c.prefix, c.stderr)
	file := fs.String("file", "", "read the rule document from this file (- = stdin)")
	replace := fs.Bool("replace", false, "overwrite an existing rule")
	key := fs.String("key", "", "key id, or * for every key")
	from := fs.String("from", "", "model requested")
	to := fs.String("to", "", "model sent upstream")
	disabled := fs.Bool("disabled", false, "add the rule disabled")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return errors.New("kv rules add: want ID [DOC]")
	}
	id := pos[0]
	raw, given, err := docArg(pos[1:], *file)
	if err != nil {
		return fmt.Errorf("kv rules add: %w", err)
	}
	if !given {
		d := map[string]any{"key": *key, "from": *from, "to": *to}
		if *disabled {
			d["enabled"] = false
		}
		raw, _ = json.Marshal(d)
	}
	path := c.path(store.KindRules, id)
	r, err := store.ParseRule(id, raw)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if r.KeyID != "*" {
		k, err := c.get(c.path(store.KindKeys, r.KeyID))
		if err != nil {
			return err
		}
		if k == nil {
			return fmt.Errorf("%s: field \"key\": key %q does not exist at %s", path, r.KeyID, c.path(store.KindKeys, r.KeyID))
		}
	}
	return c.putDoc(store.KindRules, id, raw, *replace)
}

// ---------------------------------------------------------------- clients

func (c *kvCmd) clientsList(args []string) error {
	fs := newFlagSet("clients list", c.prefix, c.stderr)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	m, ids, err := c.list(store.KindClients)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tENABLED\tMODELS\tRPM\tTPM")
	for _, id := range ids {
		cl, err := store.ParseClient(id, m[id].Value)
		if err != nil {
			fmt.Fprintf(tw, "%s\tINVALID: %v\n", id, err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%d\t%d\n", id, cl.Name, cl.Enabled, listOrAny(cl.Models), cl.Limits.RPM, cl.Limits.TPM)
	}
	return tw.Flush()
}

// NewClientToken returns a fresh client token ("km-" and 43 base64url
// characters, 256 random bits) and the hex SHA-256 stored in KV.
func NewClientToken() (token, sha256Hex string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = "km-" + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:]), nil
}

func (c *kvCmd) clientsAdd(args []string) error {
	fs := newFlagSet("clients add", c.prefix, c.stderr)
	name := fs.String("name", "", "display name (default: the id)")
	models := fs.String("models", "", "comma-separated models the client may use (empty = any)")
	disabled := fs.Bool("disabled", false, "add the client disabled")
	rpm := fs.Int("rpm", 0, "requests per minute (0 = unlimited)")
	tpm := fs.Int("tpm", 0, "tokens per minute (0 = unlimited)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("kv clients add: want ID")
	}
	id := pos[0]
	token, sum, err := NewClientToken()
	if err != nil {
		return fmt.Errorf("kv clients add: %w", err)
	}
	d := map[string]any{"token_sha256": sum}
	if *name != "" {
		d["name"] = *name
	}
	if ms := splitList(*models); len(ms) > 0 {
		d["models"] = ms
	}
	if *disabled {
		d["enabled"] = false
	}
	if *rpm != 0 || *tpm != 0 {
		d["limits"] = map[string]int{"rpm": *rpm, "tpm": *tpm}
	}
	raw, _ := json.Marshal(d)
	if err := c.putDoc(store.KindClients, id, raw, false); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "token for client %s (shown once; keymux keeps only its SHA-256):\n%s\n", id, token)
	return nil
}

// ---------------------------------------------------------------- settings

func (c *kvCmd) settingsGet(args []string) error {
	fs := newFlagSet("settings get", c.prefix, c.stderr)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	path := c.path(store.KindSettings, "")
	cur, err := c.get(path)
	if err != nil {
		return err
	}
	if cur == nil {
		fmt.Fprintf(c.stderr, "%s is not set: defaults apply\n", path)
		fmt.Fprintln(c.stdout, "{}")
		return nil
	}
	var b bytes.Buffer
	if err := json.Indent(&b, cur.Value, "", "  "); err != nil {
		return fmt.Errorf("%s: not valid JSON: %w", path, err)
	}
	fmt.Fprintln(c.stdout, b.String())
	return nil
}

func (c *kvCmd) settingsSet(args []string) error {
	fs := newFlagSet("settings set", c.prefix, c.stderr)
	file := fs.String("file", "", "read the settings document from this file (- = stdin)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return errors.New("kv settings set: want DOC or --file")
	}
	raw, given, err := docArg(pos, *file)
	if err != nil {
		return fmt.Errorf("kv settings set: %w", err)
	}
	if !given {
		return errors.New("kv settings set: want DOC or --file")
	}
	return c.putDoc(store.KindSettings, "", raw, true)
}
