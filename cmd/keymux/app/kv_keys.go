package app

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tidwall/sjson"

	"github.com/keymux/keymux/store"
)

// keysList is `kv keys list`; a key's secret shows as "inline" or its ref.
func (c *kvCmd) keysList() func([]string) error {
	return c.listCmd(store.KindKeys, "PROVIDER\tBASE_URL\tENABLED\tPRIORITY\tWEIGHT\tMODELS\tSECRET", func(id string, raw []byte) (string, error) {
		k, err := store.ParseKey(id, raw, validateOnly)
		if err != nil {
			return "", err
		}
		secret := "inline"
		if k.SecretRef != "" {
			secret = k.SecretRef
		}
		return fmt.Sprintf("%s\t%s\t%t\t%d\t%g\t%s\t%s", k.Provider, k.BaseURL, k.Enabled, k.Priority, k.Weight, listOrAny(k.Models), secret), nil
	})
}

// keysAdd is `kv keys add ID [DOC|--file F|flags] [--replace]`.
func (c *kvCmd) keysAdd(args []string) error {
	fs := c.flags("keys add")
	provider := fs.String("provider", "", "openai | azure | anthropic | huggingface | openai_compatible")
	baseURL := fs.String("base-url", "", "upstream base URL (default per provider)")
	secretRef := fs.String("secret-ref", "", "env:NAME or file:/path, resolved by each sidecar")
	secret := fs.String("secret", "", "the API key itself (prefer --secret-ref: this lands in shell history)")
	models := fs.String("models", "", "comma-separated models the key serves (empty = any)")
	weight := fs.Float64("weight", 0, "weight (default 1)")
	priority := fs.Int("priority", 0, "priority (lower is preferred)")
	disabled := fs.Bool("disabled", false, "add the key disabled")
	a, err := c.addArgs(fs, args)
	if err != nil {
		return err
	}
	if !a.given {
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
		a.raw, _ = json.Marshal(d)
	}
	return c.putDoc(store.KindKeys, a.id, a.raw, a.replace)
}

// keysEnable is `kv keys enable ID` or `kv keys disable ID`.
func (c *kvCmd) keysEnable(enabled bool) func([]string) error {
	name := "keys disable"
	if enabled {
		name = "keys enable"
	}
	return func(args []string) error {
		pos, err := c.parse(c.flags(name), args, "ID", 1, 1)
		if err != nil {
			return err
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
		fmt.Fprintf(c.Stdout, "%s enabled=%t\n", path, enabled)
		return nil
	}
}

// keysRm is `kv keys rm ID [--force]`: refused while rules name the key.
func (c *kvCmd) keysRm(args []string) error {
	fs := c.flags("keys rm")
	force := fs.Bool("force", false, "remove even when rules name the key (they will be refused)")
	pos, err := c.parse(fs, args, "ID", 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	if !*force {
		rules, err := c.list(store.KindRules)
		if err != nil {
			return err
		}
		var users []string
		for _, d := range rules {
			if r, err := store.ParseRule(d.ID, d.Pair.Value); err == nil && r.KeyID == id {
				users = append(users, d.Pair.Key)
			}
		}
		if len(users) > 0 {
			return fmt.Errorf("%s: named by %s; remove those first or use --force", c.path(store.KindKeys, id), strings.Join(users, ", "))
		}
	}
	return c.rm(store.KindKeys, id)
}
