package store

import (
	"testing"
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
