package app

import (
	"encoding/json"
	"fmt"

	"github.com/keymux/keymux/store"
)

// rulesList is `kv rules list`.
func (c *kvCmd) rulesList() func([]string) error {
	return c.listCmd(store.KindRules, "KEY\tFROM\tTO\tENABLED", func(id string, raw []byte) (string, error) {
		r, err := store.ParseRule(id, raw)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s\t%s\t%s\t%t", r.KeyID, r.From, r.To, r.Enabled), nil
	})
}

// rulesAdd is `kv rules add ID [DOC|--file F|--key K --from M --to M2]
// [--replace]`: the key the rule names must exist (or be *).
func (c *kvCmd) rulesAdd(args []string) error {
	fs := c.flags("rules add")
	file := fs.String("file", "", "read the rule document from this file (- = stdin)")
	replace := fs.Bool("replace", false, "overwrite an existing rule")
	key := fs.String("key", "", "key id, or * for every key")
	from := fs.String("from", "", "model requested")
	to := fs.String("to", "", "model sent upstream")
	disabled := fs.Bool("disabled", false, "add the rule disabled")
	pos, err := c.parse(fs, args, "ID [DOC]", 1, 2)
	if err != nil {
		return err
	}
	id := pos[0]
	raw, given, err := c.docArg(pos[1:], *file)
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
		keyPath := c.path(store.KindKeys, r.KeyID)
		k, err := c.get(keyPath)
		if err != nil {
			return err
		}
		if k == nil {
			return fmt.Errorf("%s: field \"key\": key %q does not exist at %s", path, r.KeyID, keyPath)
		}
	}
	return c.putDoc(store.KindRules, id, raw, *replace)
}
