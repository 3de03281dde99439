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
	b.WriteString(`{"settings":{"strategy":"round_robin"},"keys":{`)
	for i := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":{"provider":"openai","secret":"sk-alias-%d","models":["gpt-4o","gpt-4o-mini"]}`, i, i)
	}
	b.WriteString(`},"rules":{`)
	for i := range rules {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"r%d":{"key":"k%d","from":"alias-%d","to":"gpt-4o-mini"}`, i, i%keys, i)
	}
	b.WriteString(`}}`)
	return []byte(b.String())
}
