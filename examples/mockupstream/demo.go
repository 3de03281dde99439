package mockupstream

import (
	"fmt"
	"strings"
)

// DemoModels are the models every key of DemoConfig serves (after its rule).
var DemoModels = []string{"gpt-4", "gpt-4o", "gpt-4o-mini", "text-embedding-3-small"}

// DemoConfig is the file-source configuration `keymux dev` runs when it is
// given no source: three openai_compatible keys k1, k2, k3 on the mock at
// upstreamURL (base_url upstreamURL + "/v1") with the fake literal secrets
// "sk-demo-1" … "sk-demo-3", each serving DemoModels, one rule sending gpt-4
// on k2 as gpt-4o-mini, strategy round_robin and no client authentication.
// The result is YAML.
func DemoConfig(upstreamURL string) []byte {
	base := strings.TrimRight(upstreamURL, "/") + "/v1"
	var b strings.Builder
	b.WriteString(`# keymux dev demo configuration: every key points at the in-process mock upstream.
# The secrets are fake; they only mean something to the mock.
settings:
  strategy: round_robin
  auth:
    mode: none
keys:
`)
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(&b, "  k%d:\n    provider: openai_compatible\n    base_url: %q\n    secret: \"sk-demo-%d\"\n    models: [%s]\n    enabled: true\n",
			i, base, i, strings.Join(DemoModels, ", "))
	}
	b.WriteString(`rules:
  k2-gpt-4:
    key: k2
    from: gpt-4
    to: gpt-4o-mini
    enabled: true
`)
	return []byte(b.String())
}
