package extproc

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// countMessage counts an ext_proc message by kind.
func (s *Server) countMessage(req *extprocv3.ProcessingRequest) {
	i := len(messageKindList) - 1 // unknown
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		i = 0
	case *extprocv3.ProcessingRequest_RequestBody:
		i = 1
	case *extprocv3.ProcessingRequest_RequestTrailers:
		i = 2
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		i = 3
	case *extprocv3.ProcessingRequest_ResponseBody:
		i = 4
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		i = 5
	}
	s.messages[i].Add(1)
}

// Messages returns the ext_proc messages received so far, by kind
// (request_headers, request_body, request_trailers, response_headers,
// response_body, response_trailers, unknown).
func (s *Server) Messages() map[string]uint64 {
	m := make(map[string]uint64, len(messageKindList))
	for i, k := range messageKindList {
		m[k] = s.messages[i].Load()
	}
	return m
}

// AccessLogStatus is the health of the access-log join, for /status.
type AccessLogStatus struct {
	Streams int64  `json:"streams"` // access-log streams connected now
	Entries uint64 `json:"entries"` // final entries of forwarded calls received
	Matched uint64 `json:"matched"` // calls booked with their entry
	Pending int    `json:"pending"` // calls waiting for their entry
	// Dropped counts the entries not booked, by reason: not_forwarded
	// (keymux answered the request itself), intermediate, malformed,
	// unknown, duplicate, late, full.
	Dropped map[string]uint64 `json:"dropped"`
	// Unmatched counts the calls booked from what keymux saw alone, by
	// reason: timeout, full, shutdown, no_log (no access-log stream).
	Unmatched map[string]uint64 `json:"unmatched"`
	// LagSeconds is how long after its end (by Envoy's clock) the latest
	// entry arrived: the logger's flush interval plus the transport.
	LagSeconds float64 `json:"lag_seconds"`
}

// AccessLogStatus reports the access-log join.
func (s *Server) AccessLogStatus() AccessLogStatus {
	l := s.ledger
	st := AccessLogStatus{
		Streams: l.streams.Load(), Entries: l.entries.Load(), Matched: l.matched.Load(), Pending: l.pendingLen(),
		Dropped: make(map[string]uint64, len(dropReasons)), Unmatched: make(map[string]uint64, len(unmatchedReasons)),
		LagSeconds: float64(l.lagNanos.Load()) / 1e9,
	}
	for i, r := range dropReasons {
		st.Dropped[r] = l.drops[i].Load()
	}
	for i, r := range unmatchedReasons {
		st.Unmatched[r] = l.unmatched[i].Load()
	}
	return st
}

// Prometheus metrics of the Server (Collector).
var (
	descMessages  = prometheus.NewDesc("keymux_extproc_messages_total", "ext_proc messages received, by kind.", []string{"kind"}, nil)
	descStreams   = prometheus.NewDesc("keymux_accesslog_streams", "Access-log streams from Envoy connected now.", nil, nil)
	descEntries   = prometheus.NewDesc("keymux_accesslog_entries_total", "Final access-log entries of forwarded calls received.", nil, nil)
	descMatched   = prometheus.NewDesc("keymux_accesslog_matched_total", "Calls booked with their access-log entry.", nil, nil)
	descPending   = prometheus.NewDesc("keymux_accesslog_pending", "Calls waiting for their access-log entry.", nil, nil)
	descDropped   = prometheus.NewDesc("keymux_accesslog_dropped_total", "Access-log entries not booked, by reason.", []string{"reason"}, nil)
	descUnmatched = prometheus.NewDesc("keymux_accesslog_unmatched_total", "Calls booked without their access-log entry, by reason.", []string{"reason"}, nil)
	descLag       = prometheus.NewDesc("keymux_accesslog_lag_seconds", "How long after its end the latest access-log entry arrived.", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMessages, descStreams, descEntries, descMatched, descPending, descDropped, descUnmatched, descLag} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	for i, k := range messageKindList {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(s.messages[i].Load()), k)
	}
	st := s.AccessLogStatus()
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(st.Streams))
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.CounterValue, float64(st.Entries))
	ch <- prometheus.MustNewConstMetric(descMatched, prometheus.CounterValue, float64(st.Matched))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.Pending))
	for _, r := range dropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Dropped[r]), r)
	}
	for _, r := range unmatchedReasons {
		ch <- prometheus.MustNewConstMetric(descUnmatched, prometheus.CounterValue, float64(st.Unmatched[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, st.LagSeconds)
}

var _ prometheus.Collector = (*Server)(nil)
