package consul_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/testutil/consultest"
)

// BenchmarkPropagation measures, per edit, the time from the start of a KV
// PUT to the store having applied it (Store.Read sees the new value), with a
// real Consul and the source's default settings. Edits come every 100 ms (an
// operator's pace, under the default 20 queries/s rate limit). Run with at
// least 100 edits:
//
//	go test ./store/consul -run '^$' -bench Propagation -benchtime 200x
//
// It reports p50/p99 of the whole delay and of Consul's own write (the PUT
// round trip) in milliseconds.
func BenchmarkPropagation(b *testing.B) {
	a := consultest.Start(b)
	seed(b, a)
	r := startSource(b, a, consul.Options{})
	waitStore(b, r.st, "first apply", r.st.Ready)
	const pace = 100 * time.Millisecond
	var total, write []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		weight := float64(i + 2)
		doc := fmt.Sprintf(`{"provider":"openai","base_url":"http://127.0.0.1:9/v1","secret":"sk-test-k1","models":["gpt-4o"],"weight":%g}`, weight)
		next := time.Now().Add(pace)
		t0 := time.Now()
		put(b, a, "keys/k1", doc)
		write = append(write, time.Since(t0))
		waitStore(b, r.st, "edit applied", func() bool {
			k := r.st.Read().Key("k1")
			return k != nil && k.Key.Weight == weight
		})
		total = append(total, time.Since(t0))
		b.StopTimer()
		time.Sleep(time.Until(next)) // pacing between edits, not a readiness wait
		b.StartTimer()
	}
	b.StopTimer()
	p := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(p(total, 0.50), "p50-ms")
	b.ReportMetric(p(total, 0.99), "p99-ms")
	b.ReportMetric(p(write, 0.50), "put-p50-ms")
	b.ReportMetric(p(write, 0.99), "put-p99-ms")
	b.Logf("%d edits: KV PUT → store applied p50 %.2f ms, p99 %.2f ms, max %.2f ms; Consul PUT alone p50 %.2f ms, p99 %.2f ms",
		len(total), p(total, 0.5), p(total, 0.99), p(total, 1), p(write, 0.5), p(write, 0.99))
}
