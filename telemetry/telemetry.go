package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Config configures New.
type Config struct {
	Logger *slog.Logger
	// CallLog receives one JSON line per call, written by one goroutine
	// from a bounded queue; nil turns the call log off.
	CallLog io.Writer
	// CallLogQueue is the queue length (default DefaultCallLogQueue); a
	// record that finds the queue full is dropped and counted.
	CallLogQueue int
	// TracerProvider makes one span per call; nil (or a no-op provider)
	// means no spans and Begin returns "".
	TracerProvider trace.TracerProvider
	// MeterProvider optionally receives the same metrics (e.g. OTLP push);
	// /metrics always works through an internal Prometheus registry.
	MeterProvider metric.MeterProvider
	// Now is the clock (default time.Now); it places calls without an End
	// time and ends /stats windows.
	Now func() time.Time
}

// KeyHealth is one key's state for /stats and the key gauges. State is
// healthy, half_open, cooling_down, ejected, disabled or probe_failed (the
// health.State* values; why a key is disabled is on /status).
type KeyHealth struct {
	ID       string    `json:"id"`
	State    string    `json:"state"`
	Until    time.Time `json:"until,omitzero"`
	Requests uint64    `json:"requests"`
	Errors   uint64    `json:"errors"`
	Tokens   uint64    `json:"tokens"`
	// Passive-health transitions since start.
	Ejections uint64 `json:"ejections"`
	Cooldowns uint64 `json:"cooldowns"`
	// RateLimitHeaderErrors counts the provider's rate-limit header values
	// that did not parse (ignored).
	RateLimitHeaderErrors uint64 `json:"ratelimit_header_errors"`
	// Models is the key's state per model the configuration names.
	Models []ModelHealth `json:"models,omitempty"`
}

// ModelHealth is a key's state for one model: State is healthy,
// cooling_down (a 429 for this model), no_headroom (the provider's
// remaining requests or tokens are spent until Until) or
// model_unavailable (403/404 for the model, until the next probe); the
// provider's headroom as keymux estimates it.
type ModelHealth struct {
	Model    string          `json:"model"`
	State    string          `json:"state"`
	Until    time.Time       `json:"until,omitzero"`
	Requests *HeadroomBudget `json:"requests,omitempty"`
	Tokens   *HeadroomBudget `json:"tokens,omitempty"`
}

// HeadroomBudget is one provider rate limit as keymux estimates it: the
// limit, what remains until Reset (after Reset the whole limit).
type HeadroomBudget struct {
	Limit     int64     `json:"limit,omitempty"`
	Remaining int64     `json:"remaining"`
	Reset     time.Time `json:"reset,omitzero"`
}

// ConfigInfo describes the configuration in force for the config gauges.
type ConfigInfo struct {
	Generation uint64
	Source     string
	Stale      bool
	StaleSince time.Time
	Refused    int
	Counters   *SourceCounters // nil: the source keeps no counters (file)
}

// SourceCounters are a configuration source's totals since start.
type SourceCounters struct {
	Refusals   uint64 `json:"refusals"`    // entries refused, each (path, reason) once
	ReadErrors uint64 `json:"read_errors"` // failed reads of the source
}

// Telemetry is keymux's Observer: spans, metrics, the call log, /stats and
// threshold alerts.
type Telemetry struct {
	ctx      context.Context // background: End outlives any request
	log      *slog.Logger
	now      func() time.Time
	tracer   trace.Tracer // nil: no spans
	inFlight atomic.Int64

	meters   []*instruments
	prom     *sdkmetric.MeterProvider
	registry *prometheus.Registry

	calls *callLog // nil: off
	stats stats

	healthFn atomic.Pointer[func() []KeyHealth]
	modelFn  atomic.Pointer[func(string) bool]
	configFn atomic.Pointer[func() ConfigInfo]
	alertsFn atomic.Pointer[func() Alerts]
}

var _ Observer = (*Telemetry)(nil)

// New validates cfg and builds a Telemetry. Call Shutdown to flush the
// call log.
func New(cfg Config) (*Telemetry, error) {
	if cfg.CallLogQueue < 0 {
		return nil, fmt.Errorf("telemetry: CallLogQueue %d: must not be negative", cfg.CallLogQueue)
	}
	t := &Telemetry{ctx: context.Background(), log: cfg.Logger, now: cfg.Now}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.stats.models = make(modelSet)
	if tp := cfg.TracerProvider; tp != nil && !isNoopTracerProvider(tp) {
		t.tracer = tp.Tracer(TracerName)
	}
	var err error
	if t.prom, t.registry, err = newPrometheus(); err != nil {
		return nil, err
	}
	providers := []metric.MeterProvider{t.prom}
	if mp := cfg.MeterProvider; mp != nil && !isNoopMeterProvider(mp) {
		providers = append(providers, mp)
	}
	for _, mp := range providers {
		in, err := newInstruments(mp, t)
		if err != nil {
			_ = t.prom.Shutdown(context.Background())
			return nil, err
		}
		t.meters = append(t.meters, in)
	}
	if cfg.CallLog != nil {
		q := cfg.CallLogQueue
		if q == 0 {
			q = DefaultCallLogQueue
		}
		t.calls = newCallLog(cfg.CallLog, q, t.log)
	}
	return t, nil
}

func isNoopTracerProvider(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case tracenoop.TracerProvider, *tracenoop.TracerProvider:
		return true
	}
	return false
}

func isNoopMeterProvider(mp metric.MeterProvider) bool {
	switch mp.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
		return true
	}
	return false
}

// begun marks c.Data of a call that went through Begin without a span.
type begun struct{}

// Begin implements Observer. It runs on the request path once the key is
// chosen: it counts the request in flight and starts the call's span
// (kind CLIENT, parent from c.TraceParent/c.TraceState, start c.Start).
// It returns the traceparent of that span to send upstream, or "" without
// a TracerProvider. No I/O.
func (t *Telemetry) Begin(c *Call) string {
	c.clean()
	t.inFlight.Add(1)
	if t.tracer == nil {
		c.Data = begun{}
		return ""
	}
	span := t.startSpan(c, trace.SpanKindClient)
	c.Data = span
	if sc := span.SpanContext(); sc.IsValid() {
		return traceparent(sc)
	}
	return ""
}

// End implements Observer. It ends the span (starting one, kind INTERNAL,
// for a call that never went through Begin, such as a local refusal),
// books the metrics, /stats and alerts, and queues the call log record.
func (t *Telemetry) End(c *Call) {
	c.clean()
	var span trace.Span
	switch d := c.Data.(type) {
	case trace.Span:
		span = d
		t.inFlight.Add(-1)
		c.Data = nil
	case begun:
		t.inFlight.Add(-1)
		c.Data = nil
	}
	end := c.End
	if end.IsZero() {
		end = t.now()
	}
	o := classify(c)

	if t.tracer != nil && span == nil {
		span = t.startSpan(c, trace.SpanKindInternal)
	}
	var traceID [16]byte
	hasTrace := false
	if span != nil {
		if sc := span.SpanContext(); sc.HasTraceID() {
			traceID, hasTrace = sc.TraceID(), true
		}
		if len(c.Attempts) > 0 && span.IsRecording() {
			t.attemptSpans(span, c)
		}
		endSpan(span, c, o, trace.WithTimestamp(end))
	} else if c.TraceParent != "" && t.calls != nil {
		if sc := trace.SpanContextFromContext(parentContext(c)); sc.HasTraceID() {
			traceID, hasTrace = sc.TraceID(), true
		}
	}

	th := t.thresholds()
	admitOriginal, admitFinal := t.admitsModel(c.ModelOriginal, o.upstream), t.admitsModel(c.ModelFinal, o.upstream)
	t.stats.mu.Lock()
	model := t.stats.models.fold(c.ModelOriginal, admitOriginal)
	modelFinal := t.stats.models.fold(c.ModelFinal, admitFinal)
	ca := t.stats.sets.attrs(c, o, model, modelFinal)
	var events []alertEvent
	if o.counted {
		t.stats.record(o, c, model, end)
		events = t.stats.evalAlerts(th, t.now(), c.KeyID, nil)
	}
	t.stats.mu.Unlock()

	t.recordMetrics(c, o, ca, end)
	if len(events) > 0 {
		t.logAlerts(events)
	}
	if t.calls != nil {
		q := queued{
			keyID: c.KeyID, modelOriginal: c.ModelOriginal, modelFinal: c.ModelFinal,
			operation: c.Operation, clientID: c.ClientID, requestID: c.RequestID,
			errType: o.errType, traceID: traceID, hasTrace: hasTrace,
			start: c.Start, end: end, status: c.Status, success: !o.failed,
			usageKnown: c.UsageKnown, in: c.InputTokens, out: c.OutputTokens,
			attempts: len(c.Attempts),
		}
		if !t.calls.enqueue(&q) {
			for _, in := range t.meters {
				in.dropped.Add(t.ctx, 1)
			}
		}
	}
}

// RegisterCollector adds c's metrics to /metrics (only: the OpenTelemetry
// MeterProvider does not see them).
func (t *Telemetry) RegisterCollector(c prometheus.Collector) error {
	if err := t.registry.Register(c); err != nil {
		return fmt.Errorf("telemetry: register collector: %w", err)
	}
	return nil
}

// SetKeyHealth installs the key health source for /stats and the key
// gauges; it is called on every /stats request and metrics collection.
func (t *Telemetry) SetKeyHealth(f func() []KeyHealth) {
	if f == nil {
		t.healthFn.Store(nil)
		return
	}
	t.healthFn.Store(&f)
}

func (t *Telemetry) keyHealth() []KeyHealth {
	if f := t.healthFn.Load(); f != nil {
		return (*f)()
	}
	return nil
}

// SetModelFilter installs the test of which model names may become metric
// labels and /stats entries: those the configuration names (a key's models,
// a rule's from and to). Other names are counted as OtherModel, so that
// names clients make up cannot fill the bounded set (MaxModels) before the
// real models are seen. Without a filter, a model is admitted once a call
// for it was forwarded upstream.
func (t *Telemetry) SetModelFilter(f func(model string) bool) {
	if f == nil {
		t.modelFn.Store(nil)
		return
	}
	t.modelFn.Store(&f)
}

func (t *Telemetry) admitsModel(name string, upstream bool) bool {
	if name == "" {
		return false
	}
	if f := t.modelFn.Load(); f != nil {
		return (*f)(name)
	}
	return upstream
}

// SetConfigInfo installs the configuration source for the config gauges.
func (t *Telemetry) SetConfigInfo(f func() ConfigInfo) {
	if f == nil {
		t.configFn.Store(nil)
		return
	}
	t.configFn.Store(&f)
}

// CallLogDropped is the number of call log records dropped so far.
func (t *Telemetry) CallLogDropped() uint64 {
	if t.calls == nil {
		return 0
	}
	return t.calls.dropped.Load()
}

// Shutdown stops the call log after writing every queued record (bounded
// by ctx). Calls ending afterwards are still counted, but their call log
// records are dropped. /metrics and /stats keep working. The
// MeterProvider and TracerProvider given in Config belong to the caller.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.calls != nil {
		if err := t.calls.shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("telemetry: call log: %w", err))
		}
	}
	return errors.Join(errs...)
}
