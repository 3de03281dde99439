package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"

	"github.com/keymux/keymux/policy"
)

// Delta is a change to the configuration a store holds: the documents
// that changed, each with its new value, nil for a deleted one. Applying it
// to the configuration it was computed against gives the same generation
// as a full Apply of the resulting Config (delta_test.go checks both ways
// against each other).
type Delta struct {
	Settings *policy.Settings // nil: unchanged
	Keys     map[string]*policy.Key
	Rules    map[string]*policy.Rule
	Clients  map[string]*policy.Client
}

// Empty reports whether d changes nothing.
func (d *Delta) Empty() bool {
	return d.Settings == nil && len(d.Keys) == 0 && len(d.Rules) == 0 && len(d.Clients) == 0
}

// ErrStaleBase is returned by ApplyDelta when the store's generation is not
// the one the delta was computed against: the caller applies the whole
// configuration instead.
var ErrStaleBase = errors.New("delta base is not the current generation")

// ApplyDelta changes the current configuration, generation base, by d in
// one write transaction over the current database (memdb's copy-on-write
// trees: only the changed rows are written) and returns the new
// generation. It recomputes only the pools of the models the changed
// documents touch; unchanged keys keep their entries, unchanged pools
// their Pool (and its selection state). Runtime state and pool counters
// carry over as in Apply. The checks of Apply hold for the result; on any
// error the store is left unchanged.
func (s *Store) ApplyDelta(ctx context.Context, base uint64, d *Delta, src SourceInfo) (uint64, error) {
	if d == nil {
		return 0, fmt.Errorf("%w: nil delta", ErrInvalidConfig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	db := s.db.Load()
	prev := s.snap.Load().meta()
	if base == 0 || prev.Generation != base {
		return 0, fmt.Errorf("%w: base %d, store at %d", ErrStaleBase, base, prev.Generation)
	}
	txn := db.Txn(true)
	defer txn.Abort()
	meta, err := applyDeltaTxn(ctx, txn, prev, d, src, &s.fleet)
	if err != nil {
		return 0, err
	}
	txn.Commit()
	byToken := s.snap.Load().byToken
	if len(d.Clients) > 0 {
		byToken = nil // rebuilt by newSnapshot
	}
	s.db.Store(db)
	s.snap.Store(newSnapshotWith(db.Txn(false), byToken))
	s.notifyLocked()
	s.logger.Info("config applied", "generation", meta.Generation, "source", src.Source, "delta", true,
		"keys", meta.Keys, "rules", meta.Rules, "clients", meta.Clients, "refused", len(src.Refused))
	return meta.Generation, nil
}

// keyChange is one key of a delta: its previous and new versions (nil when
// absent), and the new version's entry.
type keyChange struct {
	old, new *policy.Key
	entry    *Entry
}

// applyDeltaTxn writes d into txn (over the generation whose meta row is
// prev) and returns the new meta row, inserted.
func applyDeltaTxn(ctx context.Context, txn *memdb.Txn, prev *metaRow, d *Delta, src SourceInfo, fleet *Fleet) (*metaRow, error) {
	meta := *prev
	meta.Generation++
	meta.Source = src
	meta.Source.Refused = slices.Clone(src.Refused)

	keys, err := patchKeys(ctx, txn, d.Keys, &meta, fleet)
	if err != nil {
		return nil, err
	}
	oldRules, err := patchRules(ctx, txn, d.Rules, keys, &meta)
	if err != nil {
		return nil, err
	}
	if err := patchClients(txn, d.Clients, &meta); err != nil {
		return nil, err
	}
	if d.Settings != nil {
		settings := *d.Settings
		if err := txn.Insert(tableSettings, &settingsRow{ID: singletonID, Settings: &settings}); err != nil {
			return nil, fmt.Errorf("insert settings: %w", err)
		}
	}
	if err := patchPools(ctx, prev, &meta, keys, d, oldRules); err != nil {
		return nil, err
	}
	if err := txn.Insert(tableMeta, &meta); err != nil {
		return nil, fmt.Errorf("insert meta: %w", err)
	}
	return &meta, nil
}

// patchKeys writes the changed keys, each new version with its previous
// Runtime (or a new one), and returns them by id.
func patchKeys(ctx context.Context, txn *memdb.Txn, changed map[string]*policy.Key, meta *metaRow, fleet *Fleet) (map[string]keyChange, error) {
	out := make(map[string]keyChange, len(changed))
	for _, id := range slices.Sorted(maps.Keys(changed)) {
		if err := checkStop(ctx); err != nil {
			return nil, err
		}
		k := changed[id]
		if k != nil && k.ID != id {
			return nil, fmt.Errorf("%w: keys/%s: id mismatch", ErrInvalidConfig, id)
		}
		var c keyChange
		c.new = k
		raw, err := txn.First(tableKeys, indexID, id)
		if err != nil {
			return nil, err
		}
		var rt *Runtime
		if raw != nil {
			old := raw.(*keyRow)
			c.old, rt = old.Entry.Key, old.Entry.RT
		}
		switch {
		case k == nil && raw != nil:
			if err := txn.Delete(tableKeys, raw); err != nil {
				return nil, fmt.Errorf("delete keys/%s: %w", id, err)
			}
			meta.Keys--
		case k != nil:
			if rt == nil {
				rt = NewRuntime()
				meta.Keys++
			}
			c.entry = &Entry{Key: k, RT: rt, fleet: fleet}
			if err := txn.Insert(tableKeys, &keyRow{ID: id, Enabled: k.Enabled, Entry: c.entry}); err != nil {
				return nil, fmt.Errorf("insert keys/%s: %w", id, err)
			}
		}
		if c.old != nil || c.new != nil {
			out[id] = c
		}
	}
	if len(out) > 0 {
		meta.KeyModels = maps.Clone(meta.KeyModels)
		if meta.KeyModels == nil {
			meta.KeyModels = map[string]int{}
		}
		for _, c := range out {
			if c.old != nil {
				countModels(meta.KeyModels, c.old, -1)
			}
			if c.new != nil {
				countModels(meta.KeyModels, c.new, 1)
			}
		}
	}
	return out, nil
}

// patchRules patches copies of the rule index and list with the changed
// rules, checks the rules as checkConfig does (only those a change can
// break), and returns the previous versions of the changed rules.
func patchRules(ctx context.Context, txn *memdb.Txn, changed map[string]*policy.Rule, keys map[string]keyChange, meta *metaRow) ([]*policy.Rule, error) {
	deletedKey := false
	for _, c := range keys {
		deletedKey = deletedKey || c.new == nil
	}
	if len(changed) == 0 && !deletedKey {
		return nil, nil
	}
	byID := func(r *policy.Rule, id string) int { return strings.Compare(r.ID, id) }
	var old []*policy.Rule
	if len(changed) > 0 {
		index := writeRules(meta.RuleIndex)
		list := slices.Clone(meta.RuleList)
		ids := slices.Sorted(maps.Keys(changed))
		for _, id := range ids { // take the previous versions out first
			i, found := slices.BinarySearchFunc(list, id, byID)
			if !found {
				continue
			}
			r := list[i]
			old = append(old, r)
			if rk := (ruleKey{r.KeyID, r.From}); r.Enabled && index.x.get(rk) == r {
				index.del(rk)
			}
			list = slices.Delete(list, i, i+1)
		}
		for _, id := range ids {
			if err := checkStop(ctx); err != nil {
				return nil, err
			}
			r := changed[id]
			if r == nil {
				continue
			}
			if r.ID != id || r.From == "" || r.KeyID == "" {
				return nil, fmt.Errorf("%w: rules/%s: missing, incomplete or id mismatch", ErrInvalidConfig, id)
			}
			if r.KeyID != policy.AnyKey {
				if raw, err := txn.First(tableKeys, indexID, r.KeyID); err != nil || raw == nil {
					return nil, fmt.Errorf("%w: rules/%s: unknown key %q", ErrInvalidConfig, id, r.KeyID)
				}
			}
			if r.Enabled {
				rk := ruleKey{r.KeyID, r.From}
				if other := index.x.get(rk); other != nil {
					return nil, fmt.Errorf("%w: rules/%s: same key and from as rules/%s", ErrInvalidConfig, id, other.ID)
				}
				index.set(rk, r)
			}
			i, _ := slices.BinarySearchFunc(list, id, byID)
			list = slices.Insert(list, i, r)
		}
		meta.RuleIndex, meta.RuleList, meta.Rules = index.x, slices.Clip(list), len(list)
	}
	if deletedKey {
		for _, r := range meta.RuleList {
			if c, ok := keys[r.KeyID]; ok && c.new == nil && r.KeyID != policy.AnyKey {
				return nil, fmt.Errorf("%w: rules/%s: unknown key %q", ErrInvalidConfig, r.ID, r.KeyID)
			}
		}
	}
	return old, nil
}

// patchClients writes the changed clients and checks that no two clients
// share a token.
func patchClients(txn *memdb.Txn, changed map[string]*policy.Client, meta *metaRow) error {
	ids := slices.Sorted(maps.Keys(changed))
	for _, id := range ids { // deletions and old versions first: tokens may move between clients
		c := changed[id]
		if c != nil && c.ID != id {
			return fmt.Errorf("%w: clients/%s: missing or id mismatch", ErrInvalidConfig, id)
		}
		raw, err := txn.First(tableClients, indexID, id)
		if err != nil {
			return err
		}
		if raw != nil {
			if err := txn.Delete(tableClients, raw); err != nil {
				return fmt.Errorf("delete clients/%s: %w", id, err)
			}
			meta.Clients--
		}
	}
	for _, id := range ids {
		c := changed[id]
		if c == nil {
			continue
		}
		if raw, err := txn.First(tableClients, indexTokenSHA256, c.TokenSHA256); err != nil {
			return err
		} else if raw != nil {
			return fmt.Errorf("%w: clients/%s: same token_sha256 as clients/%s", ErrInvalidConfig, id, raw.(*clientRow).ID)
		}
		if err := txn.Insert(tableClients, &clientRow{ID: id, Client: c}); err != nil {
			return fmt.Errorf("insert clients/%s: %w", id, err)
		}
		meta.Clients++
	}
	return nil
}

// patchPools recomputes the pools, models and names the change touches.
// A pool's keys are each tested alone (poolOf), so a change touches, in
// the pools of some models, the membership of some keys only: a key's
// change, in the models it lists (before and after), the models a "*"
// rule rewrites to one of them and the models of its own rules; a key's
// rule, in its from. Those pools are patched (patchPool); a "*" rule's
// change re-tests every key of its from's pool. A key that lists no
// model, or a settings change (a pool's selection state depends on the
// settings), rebuilds every pool. Nothing here reads every key: the
// enabled keys are the previous pool "" patched, and whether a key lists
// a model is meta.KeyModels.
func patchPools(ctx context.Context, prev, meta *metaRow, keys map[string]keyChange, d *Delta, oldRules []*policy.Rule) error {
	all := d.Settings != nil
	whole := map[string]bool{}           // models whose pool is computed again
	some := map[string]map[string]bool{} // model → the keys whose membership may change
	names := map[string]bool{}           // names whose Named entry may change
	listers := map[string][]string{}     // model → the changed keys that list it
	touchKey := func(model, keyID string) {
		if some[model] == nil {
			some[model] = map[string]bool{}
		}
		some[model][keyID] = true
	}
	for id, c := range keys {
		for _, k := range []*policy.Key{c.old, c.new} {
			if k == nil {
				continue
			}
			all = all || len(k.Models) == 0
			for _, m := range k.Models {
				touchKey(m, id)
				names[m] = true
				listers[m] = append(listers[m], id)
			}
		}
	}
	touchRule := func(r *policy.Rule) {
		names[r.From], names[r.To] = true, true
		if r.KeyID == policy.AnyKey {
			whole[r.From] = true
		} else {
			touchKey(r.From, r.KeyID)
		}
	}
	for _, r := range oldRules {
		touchRule(r)
	}
	for _, r := range d.Rules {
		if r != nil {
			touchRule(r)
		}
	}
	var enabled []*Entry
	if p := prev.Pools[""]; p != nil {
		enabled = p.Entries
	}
	if len(keys) > 0 {
		enabled = patchEnabled(enabled, keys)
		if !all {
			for _, r := range meta.RuleList {
				if !r.Enabled {
					continue
				}
				if _, own := keys[r.KeyID]; own {
					touchKey(r.From, r.KeyID)
				}
				if r.KeyID == policy.AnyKey {
					for _, id := range listers[r.To] {
						touchKey(r.From, id)
					}
				}
			}
		}
	}
	if len(whole) == 0 && len(some) == 0 && len(keys) == 0 && !all {
		return nil
	}
	// What the rules say of the touched names and models, in one pass.
	ruleNamed, ruleListed := map[string]bool{}, map[string]bool{}
	if err := checkStop(ctx); err != nil {
		return err
	}
	for _, r := range meta.RuleList {
		if names[r.From] {
			ruleNamed[r.From] = true
		}
		if names[r.To] {
			ruleNamed[r.To] = true
		}
		if r.Enabled && (whole[r.From] || some[r.From] != nil) {
			ruleListed[r.From] = true
		}
	}
	meta.Named = patchNamed(prev.Named, names, func(n string) bool { return meta.KeyModels[n] > 0 || ruleNamed[n] })
	seqs := make(map[string]*atomic.Uint64, len(prev.Pools))
	for model, p := range prev.Pools {
		seqs[model] = p.Seq
	}
	if all {
		pools, models, err := buildPools(ctx, poolModels(meta.KeyModels, meta.RuleIndex), enabled, meta.RuleIndex, seqs)
		if err != nil {
			return err
		}
		meta.Pools, meta.Models = pools, models
		return nil
	}
	pools := maps.Clone(prev.Pools)
	models := slices.Clone(prev.Models)
	set := func(model string, entries []*Entry) {
		seq := seqs[model]
		if seq == nil {
			seq = new(atomic.Uint64)
		}
		pools[model] = &Pool{Model: model, Entries: entries, Seq: seq}
	}
	if len(keys) > 0 {
		set("", enabled)
	}
	touched := slices.Sorted(maps.Keys(whole))
	for m := range some {
		if !whole[m] {
			touched = append(touched, m)
		}
	}
	for _, m := range touched {
		if err := checkStop(ctx); err != nil {
			return err
		}
		var entries []*Entry
		switch p := prev.Pools[m]; {
		case meta.KeyModels[m] == 0 && !ruleListed[m]:
			delete(pools, m)
		case whole[m] || p == nil:
			entries = poolOf(m, enabled, meta.RuleIndex)
			set(m, entries)
		default:
			entries = patchPool(m, p.Entries, some[m], enabled, meta.RuleIndex)
			set(m, entries)
		}
		i, found := slices.BinarySearch(models, m)
		switch serves := len(entries) > 0; {
		case serves && !found:
			models = slices.Insert(models, i, m)
		case !serves && found:
			models = slices.Delete(models, i, i+1)
		}
	}
	meta.Pools, meta.Models = pools, slices.Clip(models)
	return nil
}

// byKeyID compares an entry with a key id (entries are in key id order).
func byKeyID(e *Entry, id string) int { return strings.Compare(e.Key.ID, id) }

// patchPool returns a copy of the pool of model, entries, with the keys
// ids tested again (as poolOf does) against the enabled keys and rules.
func patchPool(model string, entries []*Entry, ids map[string]bool, enabled []*Entry, rules *ruleIndex) []*Entry {
	out := slices.Clone(entries)
	target := poolTarget(model, rules)
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		var e *Entry
		if j, ok := slices.BinarySearchFunc(enabled, id, byKeyID); ok {
			e = enabled[j]
		}
		in := e != nil && servesAfterRule(e, model, target, rules)
		i, found := slices.BinarySearchFunc(out, id, byKeyID)
		switch {
		case found && in:
			out[i] = e
		case found:
			out = slices.Delete(out, i, i+1)
		case in:
			out = slices.Insert(out, i, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return slices.Clip(out)
}

// poolTarget is the model a request for model is rewritten to by the "*"
// rule (model itself without one).
func poolTarget(model string, rules *ruleIndex) string {
	if r := rules.get(ruleKey{policy.AnyKey, model}); r != nil {
		return r.To
	}
	return model
}

// servesAfterRule reports whether e serves model once its own rule, else
// the "*" one (target), has rewritten it.
func servesAfterRule(e *Entry, model, target string, rules *ruleIndex) bool {
	if r := rules.get(ruleKey{e.Key.ID, model}); r != nil {
		target = r.To
	}
	return e.Key.ServesModel(target)
}

// patchEnabled returns a copy of enabled (the enabled keys in id order)
// with the changed keys' entries.
func patchEnabled(enabled []*Entry, keys map[string]keyChange) []*Entry {
	out := slices.Clone(enabled)
	for _, id := range slices.Sorted(maps.Keys(keys)) {
		c := keys[id]
		i, found := slices.BinarySearchFunc(out, id, byKeyID)
		on := c.new != nil && c.new.Enabled
		switch {
		case found && on:
			out[i] = c.entry
		case found:
			out = slices.Delete(out, i, i+1)
		case on:
			out = slices.Insert(out, i, c.entry)
		}
	}
	return slices.Clip(out)
}

// patchNamed returns prev with the entries of names set as named says; prev
// itself when none changes.
func patchNamed(prev, names map[string]bool, named func(string) bool) map[string]bool {
	out, copied := prev, false
	for n := range names {
		now := named(n)
		if now == prev[n] {
			continue
		}
		if !copied {
			out, copied = maps.Clone(prev), true
			if out == nil {
				out = map[string]bool{}
			}
		}
		if now {
			out[n] = true
		} else {
			delete(out, n)
		}
	}
	return out
}

// poolOf is poolIndex.pool for one model without the index: the enabled
// keys (in id order) that serve model once their rule — their own before
// policy.AnyKey's — has rewritten it; nil when none does.
func poolOf(model string, enabled []*Entry, rules *ruleIndex) []*Entry {
	target := poolTarget(model, rules)
	var out []*Entry
	for _, e := range enabled {
		if servesAfterRule(e, model, target, rules) {
			out = append(out, e)
		}
	}
	return out
}

// ApplyBuilt applies b's configuration to s: only what changed since b's
// last build (Builder.BuildDelta, ApplyDelta) when s is still at base, the
// generation the apply of that build made; else the whole of it
// (Builder.BuildContext, ApplyContext): the first time (base 0), or when
// s has moved on. It returns the new generation and the build's refusals.
// After an error the builder may be ahead of the store: the next call
// must pass base 0.
func (s *Store) ApplyBuilt(ctx context.Context, b *Builder, base uint64, src SourceInfo) (uint64, []Refusal, error) {
	if base != 0 {
		d, refused, err := b.BuildDelta(ctx)
		if err == nil {
			src.Refused = refused
			var gen uint64
			if gen, err = s.ApplyDelta(ctx, base, d, src); err == nil {
				return gen, refused, nil
			}
		}
		if err := checkStop(ctx); err != nil {
			return 0, nil, err
		}
		if !errors.Is(err, ErrStaleBase) {
			s.logger.Error("store: the change cannot be applied alone; applying the whole configuration", "error", err)
		}
	}
	cfg, refused, err := b.BuildContext(ctx)
	if err != nil {
		return 0, nil, err
	}
	src.Refused = refused
	gen, err := s.ApplyContext(ctx, cfg, src)
	if err != nil {
		return 0, nil, err
	}
	return gen, refused, nil
}
