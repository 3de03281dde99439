package fleet

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

// Status is the fleet's part of /status. It never holds a secret.
type Status struct {
	Mode       string `json:"mode"` // "standalone" | "consul"
	ID         string `json:"id"`
	Registered bool   `json:"registered"` // this instance's member entry is held
	// Members are the live members (this one included), in rank order;
	// Rank is this instance's place among them.
	Members []string `json:"members"`
	Rank    int      `json:"rank"`
	// Shares lists every configured limit with this instance's share.
	Shares []ShareStatus `json:"shares"`
	// States are the shared key states known here; Refused the state
	// records refused (path and reason).
	States   []StateStatus   `json:"states"`
	Refused  []store.Refusal `json:"refused"`
	Counters Counters        `json:"counters"`
}

// ShareStatus is one key's or client's limits and this instance's share.
type ShareStatus struct {
	Kind     string `json:"kind"` // "key" | "client"
	ID       string `json:"id"`
	RPM      int    `json:"rpm,omitempty"`
	TPM      int    `json:"tpm,omitempty"`
	ShareRPM int    `json:"share_rpm,omitempty"`
	ShareTPM int    `json:"share_tpm,omitempty"`
}

// StateStatus is one shared record known here.
type StateStatus struct {
	Key    string    `json:"key"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
	Until  time.Time `json:"until,omitzero"`
	By     string    `json:"by,omitempty"`
}

// Counters are the fleet's totals since start.
type Counters struct {
	Writes        uint64 `json:"writes"`         // records written (compare-and-set won)
	Covered       uint64 `json:"covered"`        // not written: KV already said as much
	Conflicts     uint64 `json:"conflicts"`      // compare-and-set lost to another writer
	WriteErrors   uint64 `json:"write_errors"`   // Consul errors, or too many conflicts
	Dropped       uint64 `json:"dropped"`        // observations dropped on a full queue
	Applied       uint64 `json:"applied"`        // records that changed a key here
	Refusals      uint64 `json:"refusals"`       // records refused
	Cleared       uint64 `json:"cleared"`        // records deleted after a passing probe
	MemberChanges uint64 `json:"member_changes"` // membership changes seen
}

// Status returns the fleet's state for /status.
func (f *Fleet) Status() Status {
	f.mu.Lock()
	st := Status{Mode: "standalone", ID: f.cfg.ID, Registered: f.registered.Load(), Members: slices.Clone(f.members)}
	for _, id := range slices.Sorted(maps.Keys(f.known)) {
		r := f.known[id].rec
		st.States = append(st.States, StateStatus{Key: id, Reason: r.Reason, At: r.At, Until: r.Until, By: r.By})
	}
	for _, id := range slices.Sorted(maps.Keys(f.refused)) {
		st.Refused = append(st.Refused, f.refused[id])
	}
	f.mu.Unlock()
	if f.shared() {
		st.Mode = "consul"
	}
	members, rank := f.view.View()
	st.Rank = rank
	snap := f.cfg.Store.Read()
	for _, e := range snap.Keys() {
		st.Shares = appendShare(st.Shares, "key", e.Key.ID, e.Key.Limits, members, rank)
	}
	for _, c := range snap.Clients() {
		st.Shares = appendShare(st.Shares, "client", c.ID, c.Limits, members, rank)
	}
	st.Counters = f.counters()
	return st
}

func appendShare(out []ShareStatus, kind, id string, l policy.Limits, members, rank int) []ShareStatus {
	if l.RPM <= 0 && l.TPM <= 0 {
		return out
	}
	s := l.Share(members, rank)
	return append(out, ShareStatus{Kind: kind, ID: id, RPM: l.RPM, TPM: l.TPM, ShareRPM: s.RPM, ShareTPM: s.TPM})
}

func (f *Fleet) counters() Counters {
	return Counters{
		Writes: f.writes.Load(), Covered: f.covered.Load(), Conflicts: f.conflicts.Load(),
		WriteErrors: f.writeErrors.Load(), Dropped: f.dropped.Load(), Applied: f.applied.Load(),
		Refusals: f.refusals.Load(), Cleared: f.cleared.Load(), MemberChanges: f.memberChanges.Load(),
	}
}

// Prometheus metrics of the Fleet (Collector).
var (
	descMembers = prometheus.NewDesc("keymux_fleet_members", "Live keymux instances sharing the limits, as this instance sees them (1 standalone).", nil, nil)
	descWrites  = prometheus.NewDesc("keymux_fleet_state_writes_total",
		"Shared key-state writes to Consul by result: written, covered (KV already said as much), conflict (compare-and-set lost), error, dropped (queue full), cleared (deleted after a passing probe).", []string{"result"}, nil)
	descApplied = prometheus.NewDesc("keymux_fleet_state_applied_total", "Shared key-state records from other instances that changed a key here.", nil, nil)
	descRefused = prometheus.NewDesc("keymux_fleet_state_refused_total", "Shared key-state records refused (future time, cooldown too long, malformed).", nil, nil)
	descChanges = prometheus.NewDesc("keymux_fleet_member_changes_total", "Membership changes seen (limits re-balanced).", nil, nil)
)

// Describe implements prometheus.Collector.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descWrites, descApplied, descRefused, descChanges} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	members, _ := f.view.View()
	c := f.counters()
	ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(members))
	for _, w := range []struct {
		result string
		n      uint64
	}{{"written", c.Writes}, {"covered", c.Covered}, {"conflict", c.Conflicts}, {"error", c.WriteErrors}, {"dropped", c.Dropped}, {"cleared", c.Cleared}} {
		ch <- prometheus.MustNewConstMetric(descWrites, prometheus.CounterValue, float64(w.n), w.result)
	}
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.CounterValue, float64(c.Applied))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(c.Refusals))
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(c.MemberChanges))
}
