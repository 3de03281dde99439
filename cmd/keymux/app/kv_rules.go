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
	key := fs.String("key", "", "key id, or * for every key")
	from := fs.String("from", "", "model requested")
	to := fs.String("to", "", "model sent upstream")
	disabled := fs.Bool("disabled", false, "add the rule disabled")
	a, err := c.addArgs(fs, args)
	if err != nil {
		return err
	}
	if !a.given {
		d := map[string]any{"key": *key, "from": *from, "to": *to}
		if *disabled {
			d["enabled"] = false
		}
		a.raw, _ = json.Marshal(d)
	}
	path := c.path(store.KindRules, a.id)
	r, err := store.ParseRule(a.id, a.raw)
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
	return c.putDoc(store.KindRules, a.id, a.raw, a.replace)
}
