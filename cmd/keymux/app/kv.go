package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
)

const kvUsage = `usage: keymux kv [--consul-prefix P] COMMAND ...

Consul address, token and TLS come from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_CACERT, ... ; the prefix defaults to $KEYMUX_CONSUL_PREFIX or keymux/
("/" is appended when missing).

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

DOC is the JSON document itself; FILE or --file - reads it from stdin.
`

// commands are the commands of `keymux kv`, by group and name; a group
// without subcommands has its function under "".
func (c *kvCmd) commands() map[string]map[string]func([]string) error {
	return map[string]map[string]func([]string) error{
		"import": {"": c.importCmd},
		"export": {"": c.exportCmd},
		"keys": {
			"list": c.keysList(), "add": c.keysAdd, "enable": c.keysEnable(true), "disable": c.keysEnable(false), "rm": c.keysRm,
		},
		"rules":    {"list": c.rulesList(), "add": c.rulesAdd, "rm": c.rmCmd(store.KindRules)},
		"clients":  {"list": c.clientsList(), "add": c.clientsAdd, "rm": c.rmCmd(store.KindClients)},
		"settings": {"get": c.settingsGet, "set": c.settingsSet},
	}
}

// runKV is `keymux kv ARGS`: Consul KV administration with the sidecar's
// validators. Output goes to stdout, diagnostics to stderr.
func (e Env) runKV(ctx context.Context, args []string) error {
	c := &kvCmd{ctx: ctx, Env: e}
	fs := c.flags("kv")
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if err := c.normalizePrefix(); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(e.Stderr, kvUsage)
		return &usageError{msg: "kv: missing command"}
	}
	if rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		fmt.Fprint(e.Stdout, kvUsage)
		return nil
	}
	group, ok := c.commands()[rest[0]]
	if !ok {
		fmt.Fprint(e.Stderr, kvUsage)
		return &usageError{msg: fmt.Sprintf("kv: unknown command %q", rest[0])}
	}
	run, args := group[""], rest[1:]
	if run == nil {
		if len(args) == 0 {
			fmt.Fprint(e.Stderr, kvUsage)
			return &usageError{msg: fmt.Sprintf("kv %s: missing subcommand", rest[0])}
		}
		if run = group[args[0]]; run == nil {
			fmt.Fprint(e.Stderr, kvUsage)
			return &usageError{msg: fmt.Sprintf("kv %s: unknown subcommand %q", rest[0], args[0])}
		}
		args = args[1:]
	}
	c.client = e.Consul
	if c.client == nil {
		var err error
		if c.client, err = api.NewClient(api.DefaultConfig()); err != nil {
			return fmt.Errorf("kv: consul client: %w", err)
		}
	}
	c.kv = c.client.KV()
	return run(args)
}

// kvCmd is one run of `keymux kv`.
type kvCmd struct {
	Env
	ctx    context.Context
	client *api.Client
	kv     *api.KV
	prefix string // --consul-prefix, normalised once parsed
}

// flags opens the flag set of the kv command name, with --consul-prefix
// (default $KEYMUX_CONSUL_PREFIX, then consul.DefaultPrefix).
func (c *kvCmd) flags(name string) *flag.FlagSet {
	if c.prefix == "" {
		c.prefix = os.Getenv(EnvName("consul-prefix"))
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.Stderr)
	fs.StringVar(&c.prefix, "consul-prefix", c.prefix, "Consul KV prefix")
	return fs
}

// parse parses the arguments of one kv command into fs (flags anywhere
// among them) and returns the positional ones: between lo and hi of them,
// described by want ("ID [DOC]").
func (c *kvCmd) parse(fs *flag.FlagSet, args []string, want string, lo, hi int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, flagErr(err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) < lo || len(pos) > hi {
		return nil, &usageError{msg: fmt.Sprintf("kv %s: want %s", fs.Name(), want)}
	}
	return pos, c.normalizePrefix()
}

func (c *kvCmd) normalizePrefix() error {
	p, err := consul.NormalizePrefix(c.prefix)
	if err != nil {
		return &usageError{msg: fmt.Sprintf("--consul-prefix: %v", err)}
	}
	c.prefix = p
	return nil
}

// flagErr marks a flag error as a usage error (--help stays flag.ErrHelp).
func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{msg: err.Error()}
}

func (c *kvCmd) path(kind store.Kind, id string) string { return consul.DocPath(c.prefix, kind, id) }

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

// all lists every entry under the prefix.
func (c *kvCmd) all() (api.KVPairs, error) {
	pairs, _, err := c.kv.List(c.prefix, c.q())
	if err != nil {
		return nil, fmt.Errorf("%s: list: %w", c.prefix, err)
	}
	return pairs, nil
}

// list returns the documents of one kind, by id.
func (c *kvCmd) list(kind store.Kind) ([]consul.Doc, error) {
	base := c.prefix + string(kind) + "/"
	pairs, _, err := c.kv.List(base, c.q())
	if err != nil {
		return nil, fmt.Errorf("%s: list: %w", base, err)
	}
	docs := slices.DeleteFunc(consul.Docs(c.prefix, pairs), func(d consul.Doc) bool { return d.Kind != kind })
	slices.SortFunc(docs, func(a, b consul.Doc) int { return strings.Compare(a.ID, b.ID) })
	return docs, nil
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
	fmt.Fprintf(c.Stdout, "wrote %s\n", path)
	return nil
}

// rm deletes one document at the version just read.
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
	fmt.Fprintf(c.Stdout, "removed %s\n", path)
	return nil
}

// rmCmd is `kv KIND rm ID`.
func (c *kvCmd) rmCmd(kind store.Kind) func([]string) error {
	return func(args []string) error {
		pos, err := c.parse(c.flags(string(kind)+" rm"), args, "ID", 1, 1)
		if err != nil {
			return err
		}
		return c.rm(kind, pos[0])
	}
}

// readFile reads a named file, or the injected stdin for "-".
func (c *kvCmd) readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(c.Stdin)
	}
	return os.ReadFile(name)
}

// addArgs are the arguments of `kv KIND add ID [DOC|--file F] [--replace]`.
type addArgs struct {
	id      string
	raw     []byte // the document given, if given
	given   bool   // false: build it from the command's own flags
	replace bool
}

// addArgs parses the arguments of `kv KIND add`: fs holds the command's
// own flags (they build the document when none is given); --file and
// --replace are added here.
func (c *kvCmd) addArgs(fs *flag.FlagSet, args []string) (addArgs, error) {
	file := fs.String("file", "", "read the document from this file (- = stdin)")
	replace := fs.Bool("replace", false, "overwrite an existing document")
	pos, err := c.parse(fs, args, "ID [DOC]", 1, 2)
	if err != nil {
		return addArgs{}, err
	}
	raw, given, err := c.docArg(pos[1:], *file)
	if err != nil {
		return addArgs{}, fmt.Errorf("kv %s: %w", fs.Name(), err)
	}
	return addArgs{id: pos[0], raw: raw, given: given, replace: *replace}, nil
}

// docArg reads a document from the positional argument or --file.
func (c *kvCmd) docArg(pos []string, file string) ([]byte, bool, error) {
	switch {
	case file != "" && len(pos) > 0:
		return nil, false, errors.New("give the document either as an argument or with --file, not both")
	case file != "":
		b, err := c.readFile(file)
		return b, true, err
	case len(pos) > 0:
		return []byte(pos[0]), true, nil
	}
	return nil, false, nil
}

// maskedSecret replaces a key's secret in `keymux kv export` output. import
// refuses it, so that a masked export cannot overwrite real secrets.
const maskedSecret = "***masked***"

// validateOnly resolves nothing: the admin host need not have the sidecar's
// environment or files. The syntax of the ref is still checked by ParseKey.
func validateOnly(string) (string, error) { return "unresolved-at-admin-time", nil }

// checkDoc validates one document alone with the sidecar's parsers.
func checkDoc(kind store.Kind, id string, raw []byte) error {
	var err error
	switch kind {
	case store.KindSettings:
		_, err = store.ParseSettings(raw)
	case store.KindKeys:
		if masked(raw) {
			return fmt.Errorf("keys/%s: field \"secret\": is the export mask %q (export with --show-secrets, or use secret_ref)", id, maskedSecret)
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
	return json.Unmarshal(raw, &d) == nil && d.Secret != nil && *d.Secret == maskedSecret
}

// compact returns raw as compact JSON (what keymux writes to KV).
func compact(raw []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
