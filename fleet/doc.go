// Package fleet makes the sidecars of one Consul prefix act as one pool:
// key states one instance learns are shared with the others, and key and
// client limits hold for the fleet (docs/design/0011-fleet-limits-and-shared-states.md).
//
// # Shared key states
//
// The request path (extproc) changes a key's state through store.Runtime and
// tells Store.Fleet's observer (Fleet.observe): a lock-free, non-blocking
// call that keeps only what is worth sharing (policy.ShareWorthy: a disable
// after 401/403, a park after insufficient_quota, a cooldown of the whole key
// longer than settings.share.cooldown_over) and puts it on a bounded queue
// (full: dropped and counted). One writer goroutine merges the observations
// per key (a disable beats a cooldown, a later cooldown end beats an earlier
// one) and writes each key at most once per WriteInterval (1s) to
// <prefix>state/<key id> (Record: reason, at, until, by): it reads the entry,
// skips the write when the entry already says as much (Covers), else writes
// with a compare-and-set on the index it read; a lost race is looked at
// again, up to three rounds. So one 401 seen by several sidecars at once is
// written once.
//
// Every instance reads the entries through the Consul source's blocking
// query (store/consul Options.OnState → Fleet.OnState) and applies them to
// the key's runtime state (policy.ApplyShared) — not through the observer,
// so an applied record is never written back. A record observed before the
// key's latest probe (KeyState.ProbedAt) changes nothing: the probe decided
// after it. The health leader's passing probe re-admits the key on every
// instance through its own health record, and Fleet.ProbePassed then deletes
// the obsolete state entry (compare-and-set on its index).
//
// A record is refused (listed on /status with its path and reason, counted,
// nothing applied) when it is malformed, names another reason, has an at more
// than MaxSkew (5s) after the reader's clock (it would outlive every probe
// that should clear it), or a cooldown ending more than policy.MaxRetryDelay
// after its at (the longest Retry-After keymux accepts). An at within the
// skew but after now is taken as now.
//
// # Fleet-wide limits
//
// Each instance registers as <prefix>members/<id> (id: hostname-pid-random),
// an entry held by a Consul session (TTL 10s renewed every TTL/3, behavior
// delete): Consul deletes the entry when the instance stops (it destroys its
// session) or dies (its session expires after the TTL; Consul allows itself
// up to twice the TTL). The Consul source hands the live ids to
// Fleet.OnMembers; this instance counts itself in, and stores the number of
// members N and its rank r in the sorted ids in Store.Fleet, where the
// request path reads them with one atomic load: each key and client limit L
// is enforced here as policy.ShareOf(L, N, r) = L/N, plus one for the first
// L mod N ranks, never below 1 — the shares add up to L exactly (N when L <
// N). Without Consul an instance is alone and enforces the whole limit.
//
// # Exposure
//
// Status (/status "fleet"): mode, id, whether registered, members and rank,
// every limit with this instance's share, the shared records known and those
// refused, and the counters. Metrics: keymux_fleet_members,
// keymux_fleet_state_writes_total{result}, keymux_fleet_state_applied_total,
// keymux_fleet_state_refused_total, keymux_fleet_member_changes_total.
package fleet
