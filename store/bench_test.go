package store

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/bigconfig"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	cfg, refused := loadDemo(b, "demo.json")
	st := newStore(b)
	if _, err := st.Apply(cfg, SourceInfo{Refused: refused}); err != nil {
		b.Fatal(err)
	}
	return st
}

func BenchmarkSnapshot(b *testing.B) {
	st := benchStore(b)
	b.Run("Read", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = st.Read()
		}
	})
	snap := st.Read()
	b.Run("Pool", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(snap.Pool("gpt-4o").Entries) != 3 {
				b.Fatal("wrong pool")
			}
		}
	})
	b.Run("PoolUnlisted", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(snap.Pool("llama-3").Entries) != 1 {
				b.Fatal("wrong pool")
			}
		}
	})
	b.Run("Rule", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if snap.Rule("k2", "gpt-4") == nil {
				b.Fatal("no rule")
			}
		}
	})
	b.Run("RuleMiss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if snap.Rule("k1", "gpt-4o") != nil {
				b.Fatal("rule")
			}
		}
	})
	b.Run("ClientByTokenSHA256", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if snap.ClientByTokenSHA256(tokA) == nil {
				b.Fatal("no client")
			}
		}
	})
	// What one request does: a snapshot, settings, client, pool, the chosen key's rule.
	b.Run("Request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s := st.Read()
			_ = s.Settings()
			if s.ClientByTokenSHA256(tokA) == nil {
				b.Fatal("no client")
			}
			p := s.Pool("gpt-4")
			if s.Rule(p.Entries[0].Key.ID, "gpt-4") == nil {
				b.Fatal("no rule")
			}
		}
	})
}

// BenchmarkApplyAtScale is a configuration file at scale through the real
// file source: the first load into an empty store, then reloads of the same
// file. It reports the heap in use after a GC following 5 reloads
// (heap-MB), the state a long-running process keeps.
//
//	go test -run '^$' -bench ApplyAtScale -benchtime 5x ./store/
func BenchmarkApplyAtScale(b *testing.B) {
	cases := []struct {
		name string
		data []byte
	}{
		{"10k-keys-100k-rules-10-aliases", bigconfig.Shared(10_000, 10)},
		{"10k-keys-100k-distinct-aliases", bigconfig.Aliases(10_000, 100_000)},
	}
	for _, c := range cases {
		path := filepath.Join(b.TempDir(), "keymux.json")
		if err := os.WriteFile(path, c.data, 0o600); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name+"/first", func(b *testing.B) {
			defer reportCPU(b)()
			for b.Loop() {
				src := NewFileSource(path, newStore(b), nil)
				if err := src.Load(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/reload", func(b *testing.B) {
			st := newStore(b)
			src := NewFileSource(path, st, nil)
			if err := src.Load(context.Background()); err != nil {
				b.Fatal(err)
			}
			report := reportCPU(b)
			for b.Loop() {
				if err := src.Reload(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			report()
			for range 5 {
				if err := src.Reload(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
			if got := st.Status().Rules; got != 100_000 {
				b.Fatalf("rules = %d, want 100000", got)
			}
			runtime.KeepAlive(src)
		})
	}
}

// reportCPU starts counting the process's CPU time (user and system, GC
// included); the function it returns reports it per iteration (cpu-ms/op),
// the figure that does not move with the machine's load as wall time does.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
