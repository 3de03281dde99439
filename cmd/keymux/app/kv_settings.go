package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/keymux/keymux/store"
)

// settingsGet is `kv settings get`: the document indented, {} when unset.
func (c *kvCmd) settingsGet(args []string) error {
	if _, err := c.parse(c.flags("settings get"), args, "no arguments", 0, 0); err != nil {
		return err
	}
	path := c.path(store.KindSettings, "")
	cur, err := c.get(path)
	if err != nil {
		return err
	}
	if cur == nil {
		fmt.Fprintf(c.Stderr, "%s is not set: defaults apply\n", path)
		fmt.Fprintln(c.Stdout, "{}")
		return nil
	}
	var b bytes.Buffer
	if err := json.Indent(&b, cur.Value, "", "  "); err != nil {
		return fmt.Errorf("%s: not valid JSON: %w", path, err)
	}
	fmt.Fprintln(c.Stdout, b.String())
	return nil
}

// settingsSet is `kv settings set DOC|--file F`: it replaces the document.
func (c *kvCmd) settingsSet(args []string) error {
	fs := c.flags("settings set")
	file := fs.String("file", "", "read the settings document from this file (- = stdin)")
	pos, err := c.parse(fs, args, "DOC or --file", 0, 1)
	if err != nil {
		return err
	}
	raw, given, err := c.docArg(pos, *file)
	if err != nil {
		return fmt.Errorf("kv settings set: %w", err)
	}
	if !given {
		return errors.New("kv settings set: want DOC or --file")
	}
	return c.putDoc(store.KindSettings, "", raw, true)
}
