// Package consul is keymux's Consul KV configuration source, its last-good
// snapshot on disk, and what the `keymux kv` command (cmd/keymux/app) needs
// of KV: document paths (DocPath, Docs) and checked writes in transactions
// (WriteAll).
//
// # KV layout
//
// Under a prefix (default "keymux/"), JSON documents as described in
// README.md ("Configuration"): "settings", "keys/<id>", "rules/<id>", "clients/<id>",
// and "health/<key id>" (written by the health leader, handed to
// Options.OnHealth); package fleet's "state/<key id>" (shared key states,
// handed to Options.OnState with their ModifyIndex) and "members/<id>"
// (live members: the ids of the entries held by a session go to
// Options.OnMembers when they change). Other paths under the prefix are
// ignored.
//
// # Watching
//
// Source.Run does one consistent read of the prefix, then a blocking-query
// loop: an unchanged index is skipped; an index that goes
// backwards (Consul restored or a dev agent restarted) resets the wait index
// to 0 and the next answer is diffed in full; the index is kept ≥ 1; entries
// whose ModifyIndex and value did not change are not re-validated, and an
// answer that changes nothing applies nothing. With a client made by
// NewClient the answer's body (uncompressed) is read by the source's own
// scanner, which decodes only the entries whose ModifyIndex or session
// moved (listing.go); with another client, the Consul client decodes it.
// Queries are rate-limited by a
// token bucket that never waits while tokens remain; errors back off
// exponentially with equal jitter (half fixed, half random) up to a cap, reset on the next success, and
// the next query after an error is a fresh, non-blocking read; ctx cancels
// the long poll.
//
// Each changed entry goes through store's Builder, which validates it alone:
// a refused entry keeps its last good version and is listed (KV path and
// reason, never a secret) in SourceInfo.Refused and Source.Refused. The
// change reaches the store in one go-memdb write transaction
// (Store.ApplyBuilt): only the changed documents and the pools they touch
// (Builder.BuildDelta, Store.ApplyDelta), or the whole configuration the
// first time and after a failed apply.
//
// # Last-good snapshot
//
// With Options.StateDir set, after every applied change the source writes
// StateDir/consul-snapshot.json: the raw value of every settings, keys,
// rules and clients entry under the prefix exactly as read from Consul
// (refused ones included, so that a reload validates them the same way), the
// prefix, the Consul index they were read at, and the time they were read,
// wrapped with the SHA-256 of those bytes. Health entries are not kept (they
// go stale within a probe interval). Raw values may contain upstream API keys
// (a key's "secret" field), so the file is written with mode 0600, through a
// temporary file in the same directory that is fsynced, renamed over the old
// one, and followed by an fsync of the directory: a crash leaves either the
// old or the new snapshot, never a torn one, and a corrupt file is detected by
// its checksum and ignored.
//
// When Run starts and Consul cannot be read, the snapshot (if any, and only
// if it was written for the same prefix) is applied and the store reports
// source "snapshot", stale since the snapshot's read time. Without one the
// store stays not ready. Either way Run keeps retrying Consul with backoff and
// resynchronises in full when it answers.
package consul
