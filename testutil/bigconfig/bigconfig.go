// Package bigconfig generates large keymux configuration files for tests
// and benchmarks of the apply path.
package bigconfig

import (
	"fmt"
	"strings"
)

// Aliases is a JSON configuration file of keys keys (each listing two
// models, with an inline fake secret) and rules rules, each rewriting a
// distinct alias ("alias-N") on key N mod keys.
func Aliases(keys, rules int) []byte {
	var b strings.Builder
	writeKeys(&b, keys, "alias", `"gpt-4o","gpt-4o-mini"`)
	for i := range rules {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"r%d":{"key":"k%d","from":"alias-%d","to":"gpt-4o-mini"}`, i, i%keys, i)
	}
	b.WriteString(`}}`)
	return []byte(b.String())
}

// Shared is a JSON configuration file of keys keys, each listing three
// models, and keys × aliases rules: every key rewrites the same aliases
// ("alias-0" … ) to one of its models, so each alias's pool holds every key.
func Shared(keys, aliases int) []byte {
	var b strings.Builder
	writeKeys(&b, keys, "shared", `"gpt-4o","gpt-4o-mini","o3"`)
	for i := range keys {
		for j := range aliases {
			if i > 0 || j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"r%d-%d":{"key":"k%d","from":"alias-%d","to":"gpt-4o-mini"}`, i, j, i, j)
		}
	}
	b.WriteString(`}}`)
	return []byte(b.String())
}

// writeKeys writes the settings and the keys k0… (fake secrets
// "sk-<secret>-N", the models JSON list members), and opens the rules.
func writeKeys(b *strings.Builder, keys int, secret, models string) {
	b.WriteString(`{"settings":{"strategy":"round_robin"},"keys":{`)
	for i := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(b, `"k%d":{"provider":"openai","secret":"sk-%s-%d","models":[%s]}`, i, secret, i, models)
	}
	b.WriteString(`},"rules":{`)
}
