package store

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keymux/keymux/testutil/bigconfig"
)

// countdownCtx is a context whose Err turns to context.Canceled after left
// calls; it counts the calls.
type countdownCtx struct {
	context.Context
	left  atomic.Int64
	calls atomic.Int64
}

func countdown(n int64) *countdownCtx {
	c := &countdownCtx{Context: context.Background()}
	c.left.Store(n)
	return c
}

func (c *countdownCtx) Err() error {
	c.calls.Add(1)
	if c.left.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestApplyStopsAtAnyPoint cancels each stage of an apply (file into the
// builder, build, store apply) at every point it checks: each gives up with
// an error wrapping context.Canceled, and the store keeps the configuration
// it had. Only a context that lasts through every check applies.
func TestApplyStopsAtAnyPoint(t *testing.T) {
	data := bigconfig.Aliases(8, 30)
	st := newStore(t)
	old := NewBuilder(testResolve)
	if err := old.PutFile(bigconfig.Aliases(2, 1)); err != nil {
		t.Fatal(err)
	}
	oldCfg, _ := old.Build()
	if _, err := st.Apply(oldCfg, SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}

	// minChecks: one check per document (the settings, 8 keys, 30 rules) at
	// least, and for the store apply one per key, rule and pool (the 30
	// aliases and 2 models): a stage that does not check in one of its
	// loops runs that loop to the end.
	stages := []struct {
		name      string
		minChecks int64
		run       func(ctx context.Context) error
	}{
		{"PutFileContext", 39, func(ctx context.Context) error {
			return NewBuilder(testResolve).PutFileContext(ctx, data)
		}},
		{"BuildContext", 39, func(ctx context.Context) error {
			b := NewBuilder(testResolve)
			if err := b.PutFile(data); err != nil {
				t.Fatal(err)
			}
			_, _, err := b.BuildContext(ctx)
			return err
		}},
		{"ApplyContext", 8 + 30 + 32, func(ctx context.Context) error {
			b := NewBuilder(testResolve)
			if err := b.PutFile(data); err != nil {
				t.Fatal(err)
			}
			cfg, _ := b.Build()
			_, err := st.ApplyContext(ctx, cfg, SourceInfo{Source: "test"})
			return err
		}},
	}
	for _, s := range stages {
		t.Run(s.name, func(t *testing.T) {
			probe := countdown(1 << 40)
			if err := s.run(probe); err != nil {
				t.Fatalf("uncancelled: %v", err)
			}
			checks := probe.calls.Load()
			if checks < s.minChecks {
				t.Fatalf("%d checks of the context, want %d at least", checks, s.minChecks)
			}
			if s.name == "ApplyContext" {
				// The probe run applied: put the old configuration back.
				if _, err := st.Apply(oldCfg, SourceInfo{Source: "test"}); err != nil {
					t.Fatal(err)
				}
			}
			gen := st.Read().Generation()
			for k := range checks {
				err := s.run(countdown(k))
				if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "configuration apply stopped") {
					t.Fatalf("cancelled after %d of %d checks: err = %v, want the apply stopped by context.Canceled", k, checks, err)
				}
				snap := st.Read()
				if snap.Generation() != gen || len(snap.Keys()) != 2 || len(snap.Rules()) != 1 {
					t.Fatalf("cancelled after %d checks: store at generation %d with %d keys, %d rules; want generation %d, 2 keys, 1 rule",
						k, snap.Generation(), len(snap.Keys()), len(snap.Rules()), gen)
				}
			}
		})
	}
}
