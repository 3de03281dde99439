package store

import (
	"iter"
	"maps"

	"github.com/keymux/keymux/policy"
)

// ruleShards is the number of maps a ruleIndex spreads its rules over.
const ruleShards = 256

// ruleIndex holds the enabled rules by (key, from), spread over maps by a
// hash of the pair: a generation shares the maps of the previous one that
// an apply did not change (ApplyDelta copies only the shards it writes:
// at 100k rules, a few hundred entries instead of the whole index). A
// published ruleIndex is never written.
type ruleIndex struct {
	shards [ruleShards]map[ruleKey]*policy.Rule
	n      int
}

// shardOf is FNV-1a over the pair (cheap, and the same in every process).
func shardOf(k ruleKey) int {
	h := uint32(2166136261)
	for i := 0; i < len(k.key); i++ {
		h = (h ^ uint32(k.key[i])) * 16777619
	}
	h = (h ^ 0xff) * 16777619 // separates ("ab","c") from ("a","bc")
	for i := 0; i < len(k.from); i++ {
		h = (h ^ uint32(k.from[i])) * 16777619
	}
	return int(h % ruleShards)
}

// get returns the enabled rule of k, or nil.
func (x *ruleIndex) get(k ruleKey) *policy.Rule {
	if x == nil {
		return nil
	}
	return x.shards[shardOf(k)][k]
}

// len is the number of rules in x.
func (x *ruleIndex) len() int {
	if x == nil {
		return 0
	}
	return x.n
}

// all yields every rule of x, in no order.
func (x *ruleIndex) all() iter.Seq2[ruleKey, *policy.Rule] {
	return func(yield func(ruleKey, *policy.Rule) bool) {
		if x == nil {
			return
		}
		for _, m := range x.shards {
			for k, r := range m {
				if !yield(k, r) {
					return
				}
			}
		}
	}
}

// ruleIndexWriter changes a copy of a ruleIndex, copying each shard at its
// first write.
type ruleIndexWriter struct {
	x     *ruleIndex
	owned [ruleShards]bool
}

// writeRules returns a writer over a copy of prev (nil: empty).
func writeRules(prev *ruleIndex) *ruleIndexWriter {
	w := &ruleIndexWriter{x: &ruleIndex{}}
	if prev != nil {
		*w.x = *prev
	}
	return w
}

func (w *ruleIndexWriter) shard(k ruleKey) map[ruleKey]*policy.Rule {
	i := shardOf(k)
	if !w.owned[i] {
		w.owned[i] = true
		if m := maps.Clone(w.x.shards[i]); m != nil {
			w.x.shards[i] = m
		} else {
			w.x.shards[i] = map[ruleKey]*policy.Rule{}
		}
	}
	return w.x.shards[i]
}

func (w *ruleIndexWriter) set(k ruleKey, r *policy.Rule) {
	m := w.shard(k)
	if _, had := m[k]; !had {
		w.x.n++
	}
	m[k] = r
}

func (w *ruleIndexWriter) del(k ruleKey) {
	if w.x.shards[shardOf(k)][k] == nil {
		return
	}
	delete(w.shard(k), k)
	w.x.n--
}
