package app

import (
	"encoding/json"
	"fmt"

	"github.com/tidwall/sjson"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
)

// exportCmd is `kv export [--show-secrets]`: the KV documents in the file
// format, keys' secrets masked unless asked.
func (c *kvCmd) exportCmd(args []string) error {
	fs := c.flags("export")
	show := fs.Bool("show-secrets", false, "print keys' secrets instead of masking them")
	if _, err := c.parse(fs, args, "no arguments", 0, 0); err != nil {
		return err
	}
	pairs, err := c.all()
	if err != nil {
		return err
	}
	var out struct {
		Settings json.RawMessage            `json:"settings,omitempty"`
		Keys     map[string]json.RawMessage `json:"keys"`
		Rules    map[string]json.RawMessage `json:"rules"`
		Clients  map[string]json.RawMessage `json:"clients"`
	}
	out.Keys, out.Rules, out.Clients = map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	sections := map[store.Kind]map[string]json.RawMessage{
		store.KindKeys: out.Keys, store.KindRules: out.Rules, store.KindClients: out.Clients,
	}
	for _, d := range consul.Docs(c.prefix, pairs) {
		v := d.Pair.Value
		if !json.Valid(v) {
			fmt.Fprintf(c.Stderr, "skipped %s: not valid JSON\n", d.Pair.Key)
			continue
		}
		switch d.Kind {
		case store.KindSettings:
			out.Settings = v
		case store.KindKeys:
			if !*show {
				v = maskSecret(v)
			}
			fallthrough
		default:
			sections[d.Kind][d.ID] = v
		}
	}
	b, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.Stdout, "%s\n", b)
	return err
}

// maskSecret replaces a top-level "secret" string with maskedSecret.
func maskSecret(raw []byte) []byte {
	var d map[string]json.RawMessage
	if json.Unmarshal(raw, &d) != nil {
		return raw
	}
	if _, ok := d["secret"]; !ok {
		return raw
	}
	v, err := sjson.SetBytes(raw, "secret", maskedSecret)
	if err != nil {
		return []byte(`{"error":"cannot mask this document"}`)
	}
	return v
}
