package telemetry

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Stats is the /stats document: the seed's fields (total_calls,
// successful_calls, error_rate as a percentage, top_keys) plus per-model
// counts, latency percentiles and key health.
type Stats struct {
	Window          string            `json:"window"` // "all" or the requested window, e.g. "5m"
	TotalCalls      uint64            `json:"total_calls"`
	SuccessfulCalls uint64            `json:"successful_calls"`
	ErrorRate       float64           `json:"error_rate"` // percent of failed calls, 2 decimals; 0 without calls
	TopKeys         []KeyUsage        `json:"top_keys"`   // at most MaxTopKeys, usage desc then id
	Models          map[string]uint64 `json:"models"`     // calls per requested model (folded, see MaxModels)
	LatencyMS       Latency           `json:"latency_ms"` // upstream calls only
	Keys            []KeyHealth       `json:"keys"`       // current, from SetKeyHealth (not windowed)
	// Retries are the upstream attempts retried on another key, by the
	// key that failed and why; sorted by key, then reason.
	Retries []KeyRetries `json:"retries"`
}

// KeyRetries counts a key's attempts that were retried on another key
// for one reason (an error class, or "reset").
type KeyRetries struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	Count  uint64 `json:"count"`
}

// retryKey is a key and a retry reason.
type retryKey struct{ key, reason string }

// KeyUsage is one entry of top_keys: usage is the tokens (input + output)
// of the key's upstream calls, errors its failed upstream calls.
type KeyUsage struct {
	ID     string `json:"id"`
	Usage  uint64 `json:"usage"`
	Errors uint64 `json:"errors"`
}

// Latency holds end-to-end latency percentiles (nearest rank) in
// milliseconds. Latencies are kept in log-linear buckets: exact below 32 ms,
// then 16 buckets per power of two, so a reported value is a bucket's lower
// bound, at most 6.25 % below the true value (and at most 2^24 ms).
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// MaxTopKeys bounds top_keys.
const MaxTopKeys = 10

// ringMinutes is how far back windows reach: one bucket per minute.
const ringMinutes = 24 * 60

// MaxWindow is the longest ?window= accepted; MinWindow the shortest.
const (
	MaxWindow = ringMinutes * time.Minute
	MinWindow = time.Minute
)

// ErrBadWindow is returned by ParseWindow for an unusable window.
var ErrBadWindow = errors.New("bad window")

// ParseWindow parses a /stats ?window= value: "" or "all" is all time (0);
// otherwise a Go duration between MinWindow and MaxWindow ("5m", "1h").
func ParseWindow(s string) (time.Duration, error) {
	if s == "" || s == "all" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < MinWindow || d > MaxWindow {
		// 16 bytes: quoted, each may take 4 characters (\xNN), and the
		// whole error stays short.
		if len(s) > 16 {
			s = s[:16] + "…"
		}
		return 0, fmt.Errorf("%w %q: want all or a duration between 1m and 24h, e.g. 5m or 1h", ErrBadWindow, s)
	}
	return d, nil
}

// Latency buckets: values below latExact ms have their own bucket; above,
// each power of two [2^e, 2^(e+1)) is split in latSub buckets.
const (
	latSubBits = 4
	latSub     = 1 << latSubBits // 16
	latExact   = latSub          // 0..15 exact
	latMaxExp  = 23              // values are capped at 2^24-1 ms
	latBuckets = latExact + (latMaxExp-latSubBits+1)*latSub
)

type latHist [latBuckets]uint32

func latIndex(ms uint64) int {
	if ms < latExact {
		return int(ms)
	}
	if ms >= 1<<(latMaxExp+1) {
		ms = 1<<(latMaxExp+1) - 1
	}
	e := bits.Len64(ms) - 1
	sub := int(ms>>(e-latSubBits)) & (latSub - 1)
	return latExact + (e-latSubBits)*latSub + sub
}

func latLower(i int) float64 {
	if i < latExact {
		return float64(i)
	}
	e := (i-latExact)/latSub + latSubBits
	sub := (i - latExact) % latSub
	return float64(uint64(latSub+sub) << (e - latSubBits))
}

// percentile is the nearest-rank p-th percentile of h holding n values.
func (h *latHist) percentile(p float64, n uint64) float64 {
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(n)))
	rank = max(rank, 1)
	var cum uint64
	for i, c := range h {
		cum += uint64(c)
		if cum >= rank {
			return latLower(i)
		}
	}
	return latLower(latBuckets - 1)
}

type keyAgg struct {
	usage, errors uint64
}

// agg is the aggregate of one minute (in the ring) or of all time.
type agg struct {
	minute   int64 // Unix minute of a ring bucket
	total    uint64
	success  uint64
	anon     uint64 // anonymous refusals among total (outcome.anonymous)
	upstream uint64 // calls in lat
	keys     map[string]*keyAgg
	models   map[string]uint64
	lat      *latHist
	retries  map[retryKey]uint64
}

func (a *agg) reset(minute int64) {
	a.minute, a.total, a.success, a.anon, a.upstream = minute, 0, 0, 0, 0
	clear(a.keys)
	clear(a.retries)
	clear(a.models)
	if a.lat != nil {
		*a.lat = latHist{}
	}
}

// addRetries counts the call's retried attempts.
func (a *agg) addRetries(attempts []Attempt) {
	for _, at := range attempts {
		if at.Retried == "" {
			continue
		}
		if a.retries == nil {
			a.retries = make(map[retryKey]uint64)
		}
		a.retries[retryKey{at.KeyID, at.Retried}]++
	}
}

func (a *agg) add(o outcome, keyID, model string, tokens uint64, ms uint64) {
	a.total++
	if !o.failed {
		a.success++
	}
	if o.anonymous {
		a.anon++
	}
	if model != "" {
		if a.models == nil {
			a.models = make(map[string]uint64)
		}
		a.models[model]++
	}
	if !o.upstream {
		return
	}
	if a.keys == nil {
		a.keys = make(map[string]*keyAgg)
	}
	k := a.keys[keyID]
	if k == nil {
		k = new(keyAgg)
		a.keys[keyID] = k
	}
	k.usage += tokens
	if o.failed {
		k.errors++
	}
	if a.lat == nil {
		a.lat = new(latHist)
	}
	a.lat[latIndex(ms)]++
	a.upstream++
}

func (a *agg) merge(b *agg) {
	a.total += b.total
	a.success += b.success
	a.anon += b.anon
	a.upstream += b.upstream
	for id, k := range b.keys {
		if a.keys == nil {
			a.keys = make(map[string]*keyAgg)
		}
		ak := a.keys[id]
		if ak == nil {
			ak = new(keyAgg)
			a.keys[id] = ak
		}
		ak.usage += k.usage
		ak.errors += k.errors
	}
	for k, n := range b.retries {
		if a.retries == nil {
			a.retries = make(map[retryKey]uint64)
		}
		a.retries[k] += n
	}
	for m, n := range b.models {
		if a.models == nil {
			a.models = make(map[string]uint64)
		}
		a.models[m] += n
	}
	if b.lat != nil {
		if a.lat == nil {
			a.lat = new(latHist)
		}
		for i, c := range b.lat {
			a.lat[i] += c
		}
	}
}

// stats keeps all-time totals and a ring of per-minute buckets so windows
// up to MaxWindow work in bounded memory. It also holds the model set and
// the alert state, all under one short critical section per call.
type stats struct {
	mu     sync.Mutex
	all    agg
	ring   [ringMinutes]agg
	models modelSet
	alerts alertState
	sets   attrCache
}

func unixMinute(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		return (s - 59) / 60
	}
	return s / 60
}

// record books one counted call ended at end. Callers hold s.mu.
func (s *stats) record(o outcome, c *Call, model string, end time.Time) {
	var tokens uint64
	if c.UsageKnown {
		tokens = uint64(max(c.InputTokens, 0) + max(c.OutputTokens, 0))
	}
	var ms uint64
	if d := end.Sub(c.Start); d > 0 && !c.Start.IsZero() {
		ms = uint64(d / time.Millisecond)
	}
	s.all.add(o, c.KeyID, model, tokens, ms)
	s.all.addRetries(c.Attempts)
	m := unixMinute(end)
	b := &s.ring[int(((m%ringMinutes)+ringMinutes)%ringMinutes)]
	switch {
	case b.minute == m:
	case b.minute < m:
		b.reset(m)
	default:
		return // older than what the bucket holds now: all time only
	}
	b.add(o, c.KeyID, model, tokens, ms)
	b.addRetries(c.Attempts)
}

// window sums the buckets overlapping (now-w, now]; w == 0 is all time.
// Callers hold s.mu.
func (s *stats) window(now time.Time, w time.Duration, withDetail bool) agg {
	var out agg
	if w == 0 {
		if withDetail {
			out.merge(&s.all)
		} else {
			out.total, out.success, out.anon = s.all.total, s.all.success, s.all.anon
		}
		return out
	}
	last := unixMinute(now)
	first := unixMinute(now.Add(-w))
	first = max(first, last-ringMinutes+1)
	for m := first; m <= last; m++ {
		b := &s.ring[int(((m%ringMinutes)+ringMinutes)%ringMinutes)]
		if b.minute != m || b.total == 0 {
			continue
		}
		if withDetail {
			out.merge(b)
		} else {
			out.total += b.total
			out.success += b.success
			out.anon += b.anon
		}
	}
	return out
}

// errorRatio is failed/total (0 without calls).
func (a *agg) errorRatio() float64 {
	if a.total == 0 {
		return 0
	}
	return float64(a.total-a.success) / float64(a.total)
}

// alertRatio is the error-rate alert's view of a: failed/total and total
// without the anonymous refusals.
func (a *agg) alertRatio() (ratio float64, calls uint64) {
	calls = a.total - a.anon
	if calls == 0 {
		return 0, 0
	}
	return float64(a.total-a.success-a.anon) / float64(calls), calls
}

// Stats returns the /stats document for the calls that ended in the last
// window (0: all time since the process started).
func (t *Telemetry) Stats(window time.Duration) Stats {
	now := t.now()
	t.stats.mu.Lock()
	a := t.stats.window(now, window, true)
	t.stats.mu.Unlock()

	st := Stats{
		Window:          "all",
		TotalCalls:      a.total,
		SuccessfulCalls: a.success,
		ErrorRate:       math.Round(a.errorRatio()*100*100) / 100,
		TopKeys:         make([]KeyUsage, 0, len(a.keys)),
		Models:          a.models,
		Keys:            t.keyHealth(),
		Retries:         make([]KeyRetries, 0, len(a.retries)),
	}
	for k, n := range a.retries {
		st.Retries = append(st.Retries, KeyRetries{ID: k.key, Reason: k.reason, Count: n})
	}
	slices.SortFunc(st.Retries, func(x, y KeyRetries) int {
		return cmp.Or(cmp.Compare(x.ID, y.ID), cmp.Compare(x.Reason, y.Reason))
	})
	if window != 0 {
		st.Window = window.String()
	}
	if st.Models == nil {
		st.Models = map[string]uint64{}
	}
	if st.Keys == nil {
		st.Keys = []KeyHealth{}
	}
	for id, k := range a.keys {
		st.TopKeys = append(st.TopKeys, KeyUsage{ID: id, Usage: k.usage, Errors: k.errors})
	}
	slices.SortFunc(st.TopKeys, func(x, y KeyUsage) int {
		if c := cmp.Compare(y.Usage, x.Usage); c != 0 {
			return c
		}
		return cmp.Compare(x.ID, y.ID)
	})
	if len(st.TopKeys) > MaxTopKeys {
		st.TopKeys = st.TopKeys[:MaxTopKeys]
	}
	if a.lat != nil {
		st.LatencyMS = Latency{
			P50: a.lat.percentile(50, a.upstream),
			P95: a.lat.percentile(95, a.upstream),
			P99: a.lat.percentile(99, a.upstream),
		}
	}
	return st
}

// StatsHandler serves GET /stats[?window=5m] as JSON; a bad window is a 400
// with {"error": "..."}.
func (t *Telemetry) StatsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		raw := r.URL.Query().Get("window")
		d, err := ParseWindow(raw)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		st := t.Stats(d)
		if d != 0 {
			st.Window = raw
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
}
