// Package health runs keymux's active key probes: which key is probed when,
// by which instance, and how the result reaches every instance's runtime
// state (store.Runtime, read by extproc through policy.Eligible).
//
// # Probes
//
// The cheapest call that proves a credential works (ProbeRequest): GET
// {base_url}/models with a Bearer token for openai, huggingface and
// openai_compatible keys; GET {base_url}/openai/models?api-version=… with
// api-key for azure; GET {base_url}/models with x-api-key and
// anthropic-version for anthropic. Verdicts (Interpret): 2xx passes; 429
// passes (the credential is valid) and cools the key down until the
// provider's reset (policy.RetryAt) or settings.ejection.cooldown; 401/403
// fail (auth), 403/429 insufficient_quota fail (quota); 5xx, 408 and
// timeouts fail; other 4xx pass with a remark, since the credential was not
// refused (a server without a model list must not take the pool down).
// Results go through policy.ProbeResult: a pass clears Disabled (auth,
// quota), ProbeFailed and any ejection; a failure sets ProbeFailed, which
// keeps the key out (reason probe_failed) until a probe passes. Error texts
// are built here from the status, the provider's error code and a
// transport error class: never a URL, a body or a secret.
//
// # Schedule
//
// A key in rotation is probed every settings.health.interval (default 10m;
// Config.Interval overrides), up to Config.Jitter (10%) early so that probes
// spread out and every key is probed at least once per interval; a key never
// probed is probed within min(10% of the interval, 30s) of being seen. A key
// out of rotation — disabled after 401/403 or insufficient_quota, probe
// failed, or ejected after consecutive 5xx — is always scheduled for a
// recovery probe, RecoveryDelay(base, max, failures) after it went out or
// after its latest probe: base = min(interval, 30s), doubled per consecutive
// failed probe, capped at min(interval, 5m). No key stays out without a
// next probe (KeyStatus.NextProbe). A 429 cooldown is not "out": it ends by
// itself. Keys whose document says enabled: false are not probed.
//
// # One prober per cluster
//
// With Config.Consul, instances campaign for a lock on <prefix>leader/health
// held by a Consul session (behavior "release"). Only the holder probes keys
// in rotation and writes each result as JSON to <prefix>health/<key id>
// (Record: healthy, checked_at, latency_ms, error, status, failures,
// cooldown_until, by); results that end within 50 ms of each other share
// one Consul transaction (at most MaxTxnOps operations), and the record of
// a key removed from the configuration (not merely disabled) is deleted. Every instance, the leader included, applies the
// records it reads through the Consul source (wire Checker.OnHealth as
// store/consul Options.OnHealth); Record.Apply ignores a record not newer
// than the key's latest probe, so the leader's own write coming back is a
// no-op. Records carry the consecutive-failure count, so every instance
// knows the recovery backoff and a new leader continues the old schedule
// instead of probing everything at once. A passing probe the leader wrote
// is also handed to Config.OnLeaderPass: package fleet then deletes the
// key's shared state record, which the probe made obsolete.
//
// A follower probes only as a fallback: a key that is out of rotation on
// this instance (typically after a 401 that only this sidecar saw) and
// that no record has covered for one recovery delay more than the leader
// would need. Such results are applied locally and not written to KV.
//
// # Session TTL and lock-delay
//
// SessionTTL is 10s, Consul's minimum: the leader renews every TTL/2 and
// steps down by itself when no renewal succeeded for a whole TTL. When a
// leader dies without releasing, Consul invalidates its session after the
// TTL (Consul allows itself up to 2×TTL), the lock is released, and after the
// lock-delay another instance acquires it: takeover within TTL..2×TTL +
// lock-delay, i.e. 11–21s. A leader that stops cleanly releases the lock
// and destroys its session: takeover is immediate (no lock-delay applies to
// a release). LockDelay is 1s rather than Consul's 15s default: the delay
// only protects against two instances probing at once while the old one
// has not yet noticed its loss, and the worst case of that overlap is a few
// extra GET /models calls; the old leader stops probing no later than one
// TTL after its last renewal, so 1s on top of the session's invalidation is
// enough margin, and a short delay keeps keys from going unprobed. Both are
// Config knobs (SessionTTL ≥ 10s, LockDelay ≤ 60s).
//
// Without Consul the instance probes every key itself and writes nothing.
//
// # Exposure
//
// Snapshot lists every key's state (healthy, cooling_down, ejected,
// half_open, disabled, probe_failed — telemetry's KeyHealth vocabulary), the
// latest probe, its latency and error, the next probe and whether this
// instance leads; Stats holds the counters (probes, failures, rate-limited,
// recovery probes, KV writes, leader terms).
package health
