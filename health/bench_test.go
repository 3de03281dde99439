package health_test

import (
	"fmt"
	"testing"

	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// BenchmarkSnapshot1000 measures /status and /stats' view of 1000 keys.
func BenchmarkSnapshot1000(b *testing.B) {
	st, err := store.New(store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := &store.Config{Settings: policy.Defaults(), Keys: map[string]*policy.Key{}}
	for i := range 1000 {
		id := fmt.Sprintf("k%04d", i)
		k, err := store.ParseKey(id, fmt.Appendf(nil, `{"provider":"openai","secret":"sk-test-%d"}`, i), nil)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Keys[id] = k
	}
	if _, err := st.Apply(cfg, store.SourceInfo{Source: "bench"}); err != nil {
		b.Fatal(err)
	}
	c, err := health.New(health.Config{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if n := len(c.Snapshot()); n != 1000 {
			b.Fatal(n)
		}
	}
}
