package store

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// jsonList renders n strings made by f as a JSON array.
func jsonList(n int, f func(i int) string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(f(i)))
	}
	b.WriteByte(']')
	return b.String()
}

// Hostile documents too big to keep as fixtures: huge arrays, huge strings,
// huge ids. Each gets the error naming its field (or id), without echoing
// the bulk of the input or a secret.
func TestParseHugeDocuments(t *testing.T) {
	// 100k models: the duplicate check must stay linear (a quadratic one
	// takes about a minute here).
	const n = 100_000
	token := `"token_sha256":"` + strings.Repeat("a", 64) + `"`
	bigSecret := "sk-test-" + strings.Repeat("s", 1<<20)
	withBaseURL := func(u string) string {
		return `{"provider":"openai","secret":"sk-test-k1","base_url":"` + u + `"}`
	}
	const dotSegment = `keys/k1: field "base_url": must not contain a "." or ".." path segment (plain or percent-encoded)`
	const noCtl = "must not contain control characters (NUL, newline, tab, …)"
	tests := []struct {
		name string
		kind Kind
		id   string
		raw  string
		err  string
	}{
		{"key models, duplicate at the end", KindKeys, "k1",
			`{"provider":"openai","secret":"sk-test-k1","models":` + jsonList(n+1, func(i int) string { return "m-" + strconv.Itoa(i%n) }) + `}`,
			`keys/k1: field "models[100000]": duplicate model "m-0"`},
		{"key models, empty at the end", KindKeys, "k1",
			`{"provider":"openai","secret":"sk-test-k1","models":` + jsonList(n, func(i int) string {
				if i == n-1 {
					return ""
				}
				return "m-" + strconv.Itoa(i)
			}) + `}`,
			`keys/k1: field "models[99999]": must not be empty`},
		{"client models, reserved at the end", KindClients, "c1",
			`{` + token + `,"models":` + jsonList(n, func(i int) string {
				if i == n-1 {
					return "*"
				}
				return "m-" + strconv.Itoa(i)
			}) + `}`,
			`clients/c1: field "models[99999]": "*" is reserved`},
		{"huge secret with a control character", KindKeys, "k1",
			`{"provider":"openai","secret":"` + bigSecret + `\u0007"}`,
			`keys/k1: field "secret": must be non-empty without control characters`},
		{"huge unknown field name", KindKeys, "k1",
			`{"provider":"openai","secret":"sk-test-k1","` + strings.Repeat("x", 1<<20) + `":1}`,
			`keys/k1: unknown field "` + strings.Repeat("x", 128) + `…"`},
		{"huge invalid id", KindKeys, strings.Repeat("k", 1<<16) + "/..",
			`{"provider":"openai","secret":"sk-test-k1"}`,
			`keys/"` + strings.Repeat("k", 128) + `…": invalid id (want 1 to 128 of A-Z a-z 0-9 . _ -)`},
		{"id with a NUL byte", KindRules, "r1\x00",
			`{"key":"*","from":"a","to":"b"}`,
			`rules/"r1\x00": invalid id (want 1 to 128 of A-Z a-z 0-9 . _ -)`},
		{"key model with a NUL", KindKeys, "k1",
			`{"provider":"openai","secret":"sk-test-k1","models":["gpt-4o","gpt\u0000x"]}`,
			`keys/k1: field "models[1]": ` + noCtl},
		{"client model with a newline", KindClients, "c1",
			`{` + token + `,"models":["gpt-4o\nX-Injected: 1"]}`,
			`clients/c1: field "models[0]": ` + noCtl},
		{"azure deployment model with an escape", KindKeys, "k1",
			`{"provider":"azure","secret":"sk-test-k1","base_url":"https://res.openai.azure.com","azure":{"api_version":"2024-10-21","deployments":{"gpt\u001b[31m":"d"}}}`,
			`keys/k1: field "azure.deployments": model names must not be empty or contain control characters`},
		{"rule from with a tab", KindRules, "r1",
			`{"key":"*","from":"gpt-4\t","to":"gpt-4o"}`,
			`rules/r1: field "from": ` + noCtl},
		{"rule to with a newline", KindRules, "r1",
			`{"key":"*","from":"gpt-4","to":"gpt-4o\n"}`,
			`rules/r1: field "to": ` + noCtl},
		{"rule to with DEL", KindRules, "r1",
			`{"key":"*","from":"gpt-4","to":"gpt-4o\u007f"}`,
			`rules/r1: field "to": ` + noCtl},
		{"rule to with a dot-dot segment", KindRules, "r1",
			`{"key":"*","from":"gpt-4","to":"../x"}`,
			`rules/r1: field "to": must not have a "." or ".." path segment`},
		{"client name with a newline", KindClients, "c1",
			`{` + token + `,"name":"team a\nlevel=ERROR msg=forged"}`,
			`clients/c1: field "name": ` + noCtl},
		{"base_url dot-dot", KindKeys, "k1", withBaseURL(`https://api.example.com/v1/../../x`), dotSegment},
		{"base_url encoded slashes", KindKeys, "k1", withBaseURL(`https://api.example.com/v1%2f..%2fx`), dotSegment},
		{"base_url encoded dots", KindKeys, "k1", withBaseURL(`https://api.example.com/v1/%2e%2e/x`), dotSegment},
		{"base_url backslash", KindKeys, "k1", withBaseURL(`https://api.example.com/v1\\..\\x`), dotSegment},
		{"base_url dot", KindKeys, "k1", withBaseURL(`https://api.example.com/./v1`), dotSegment},
		{"azure deployment dot-dot", KindKeys, "k1",
			`{"provider":"azure","secret":"sk-test-k1","base_url":"https://res.openai.azure.com","azure":{"api_version":"2024-10-21","deployments":{"gpt-4o":".."}}}`,
			`keys/k1: field "azure.deployments.gpt-4o": want a deployment name of A-Z a-z 0-9 . _ -`},
		{"azure api_version dot", KindKeys, "k1",
			`{"provider":"azure","secret":"sk-test-k1","base_url":"https://res.openai.azure.com","azure":{"api_version":"."}}`,
			`keys/k1: field "azure.api_version": want a version like "2024-10-21"`},
		{"huge number", KindSettings, "",
			`{"max_body_bytes":1` + strings.Repeat("0", 1<<16) + `}`,
			`settings: field "max_body_bytes": integer out of range`},
		{"weight beyond float64", KindKeys, "k1",
			`{"provider":"openai","secret":"sk-test-k1","weight":1e309}`,
			`keys/k1: field "weight": number out of range`},
		{"rpm beyond int", KindClients, "c1",
			`{` + token + `,"limits":{"rpm":99999999999999999999}}`,
			`clients/c1: field "limits.rpm": integer out of range`},
		{"rpm not an integer", KindClients, "c1",
			`{` + token + `,"limits":{"rpm":1.5}}`,
			`clients/c1: field "limits.rpm": want integer, got number 1.5`},
		{"null key document", KindKeys, "k1", ` null `, `keys/k1: want a JSON object, got null`},
		{"null rule document", KindRules, "r1", `null`, `rules/r1: want a JSON object, got null`},
		{"null client document", KindClients, "c1", `null`, `clients/c1: want a JSON object, got null`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			start := time.Now()
			switch tc.kind {
			case KindKeys:
				_, err = ParseKey(tc.id, []byte(tc.raw), testResolve)
			case KindRules:
				_, err = ParseRule(tc.id, []byte(tc.raw))
			case KindClients:
				_, err = ParseClient(tc.id, []byte(tc.raw))
			case KindSettings:
				_, err = ParseSettings([]byte(tc.raw))
			}
			// Linear work takes well under a second; a quadratic scan of
			// 100k names takes about a minute.
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Error() != tc.err {
				t.Fatalf("error\n got: %.300s\nwant: %.300s", err, tc.err)
			}
			if strings.Contains(err.Error(), "sk-test") {
				t.Errorf("error leaks a secret")
			}
		})
	}
}
