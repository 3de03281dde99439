package app

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/keymux/keymux/store"
)

// listCmd is `kv KIND list`: a table with header, then one row per document
// in id order, the id first and row's columns after it. A document that
// the validators refuse shows INVALID and the reason (never its content).
func (c *kvCmd) listCmd(kind store.Kind, header string, row func(id string, raw []byte) (string, error)) func([]string) error {
	return func(args []string) error {
		if _, err := c.parse(c.flags(string(kind)+" list"), args, "no arguments", 0, 0); err != nil {
			return err
		}
		docs, err := c.list(kind)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "ID\t%s\n", header)
		for _, d := range docs {
			cols, err := row(d.ID, d.Pair.Value)
			if err != nil {
				fmt.Fprintf(tw, "%s\tINVALID: %v\n", d.ID, err)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\n", d.ID, cols)
		}
		return tw.Flush()
	}
}

// listOrAny shows a model list, "*" when empty (any model).
func listOrAny(s []string) string {
	if len(s) == 0 {
		return "*"
	}
	return strings.Join(s, ",")
}

// splitList reads a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
