package app

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/testutil/consultest"
)

// kvPrefix is the default prefix of `keymux kv`.
const kvPrefix = "keymux/"

// Key documents of the kv tests; secrets are obviously fake.
const (
	keyK1 = `{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k1","models":["gpt-4o","gpt-4o-mini"]}`
	keyK2 = `{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k2","models":["gpt-4o"]}`
)

// kvRun runs `keymux kv ARGS` against agent a (stdin empty) and returns
// stdout.
func kvRun(t *testing.T, a *consultest.Agent, args ...string) (string, error) {
	t.Helper()
	return kvRunIn(t, a, "", args...)
}

// kvRunIn is kvRun with stdin.
func kvRunIn(t *testing.T, a *consultest.Agent, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut, Consul: a.Client()}
	err := env.Run(t.Context(), append([]string{"kv"}, args...))
	if err != nil && errOut.Len() > 0 && !strings.Contains(errOut.String(), "usage:") {
		t.Logf("kv %v stderr: %s", args, errOut.String())
	}
	return out.String(), err
}

func mustKV(t *testing.T, a *consultest.Agent, args ...string) string {
	t.Helper()
	out, err := kvRun(t, a, args...)
	if err != nil {
		t.Fatalf("kv %v: %v", args, err)
	}
	return out
}

func put(t testing.TB, a *consultest.Agent, rel, value string) {
	t.Helper()
	a.Put(kvPrefix+rel, []byte(value))
}

func getKV(t *testing.T, a *consultest.Agent, rel string) *api.KVPair {
	t.Helper()
	p, _, err := a.Client().KV().Get(kvPrefix+rel, nil)
	if err != nil {
		t.Fatalf("get %s: %v", rel, err)
	}
	return p
}
