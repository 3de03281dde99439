package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

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

// maskSecret rebuilds a keys document member by member, replacing the value
// of every secret-bearing member with maskedSecret: each "secret" (duplicates
// and case or escape variants included: names are compared decoded and
// case-insensitively) and each "secret_ref" that is not an env: or file:
// reference (often a pasted secret). A document that is not one JSON object
// is not shown at all.
func maskSecret(raw []byte) []byte {
	const unmaskable = `{"error":"cannot mask this document"}`
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return []byte(unmaskable)
	}
	var out bytes.Buffer
	out.WriteByte('{')
	for dec.More() {
		tok, err := dec.Token()
		name, ok := tok.(string)
		var v json.RawMessage
		if err != nil || !ok || dec.Decode(&v) != nil {
			return []byte(unmaskable)
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		n, _ := json.Marshal(name)
		out.Write(n)
		out.WriteByte(':')
		if secretBearing(name, v) {
			v, _ = json.Marshal(maskedSecret)
		}
		out.Write(v)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return []byte(unmaskable)
	}
	if _, err := dec.Token(); err != io.EOF {
		return []byte(unmaskable)
	}
	out.WriteByte('}')
	return out.Bytes()
}

// secretBearing reports whether a keys document's top-level member may hold
// a secret.
func secretBearing(name string, v json.RawMessage) bool {
	switch {
	case strings.EqualFold(name, "secret"):
		return true
	case strings.EqualFold(name, "secret_ref"):
		var ref string
		return json.Unmarshal(v, &ref) != nil ||
			!(strings.HasPrefix(ref, "env:") || strings.HasPrefix(ref, "file:"))
	}
	return false
}
