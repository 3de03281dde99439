package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
)

// Histogram bucket boundaries.
var (
	// durationBuckets in seconds, for end-to-end latency (LLM calls run long).
	durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320}
	// overheadBuckets in microseconds, for keymux's own time on the request path.
	overheadBuckets = []float64{10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000}
	// tokenBuckets as the GenAI semantic conventions advise for gen_ai.client.token.usage.
	tokenBuckets = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
)

// instruments is one MeterProvider's set of keymux instruments. Telemetry
// records into one set per provider: the internal Prometheus one, and the
// optional Config.MeterProvider (OTLP push).
type instruments struct {
	requests   metric.Int64Counter
	errors     metric.Int64Counter
	duration   metric.Float64Histogram
	overhead   metric.Float64Histogram
	tokens     metric.Int64Counter
	tokenUsage metric.Int64Histogram
	dropped    metric.Int64Counter
	retries    metric.Int64Counter
}

// errList collects the errors of a series of instrument creations.
type errList []error

func (e *errList) add(err error) {
	if err != nil {
		*e = append(*e, err)
	}
}

func newInstruments(mp metric.MeterProvider, t *Telemetry) (*instruments, error) {
	m := mp.Meter(TracerName)
	var errs errList
	in := newRecorders(m, &errs)
	obs := newObservers(m, &errs)
	if len(errs) > 0 {
		return nil, fmt.Errorf("telemetry: instruments: %v", []error(errs))
	}
	in.dropped.Add(context.Background(), 0) // the series exists from the start
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(obs.inFlight, t.inFlight.Load())
		t.observeKeys(o, obs)
		t.observeConfig(o, obs)
		t.observeAlerts(o, obs)
		return nil
	}, obs.all()...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: register callback: %w", err)
	}
	return in, nil
}

// newRecorders creates the instruments Telemetry records into as calls end.
func newRecorders(m metric.Meter, errs *errList) *instruments {
	var (
		in  instruments
		err error
	)
	in.requests, err = m.Int64Counter(MetricRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests keymux handled, by key, requested model and status class."))
	errs.add(err)
	in.errors, err = m.Int64Counter(MetricErrors, metric.WithUnit("{error}"),
		metric.WithDescription("Failed calls by key and error class (rate_limited, auth, server, timeout, client, stream_cut, local)."))
	errs.add(err)
	in.duration, err = m.Float64Histogram(MetricDuration, metric.WithUnit("s"),
		metric.WithDescription("End-to-end request duration, from the request headers to the end of the response."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	errs.add(err)
	in.overhead, err = m.Float64Histogram(MetricOverhead, metric.WithUnit("us"),
		metric.WithDescription("Time keymux spent deciding on the request path (ext_proc request phases)."),
		metric.WithExplicitBucketBoundaries(overheadBuckets...))
	errs.add(err)
	in.tokens, err = m.Int64Counter(MetricTokens, metric.WithUnit("{token}"),
		metric.WithDescription("Tokens reported by the upstream, by key and type (input, output)."))
	errs.add(err)
	in.tokenUsage, err = m.Int64Histogram(MetricTokenUsage, metric.WithUnit("{token}"),
		metric.WithDescription("Number of input and output tokens used."),
		metric.WithExplicitBucketBoundaries(tokenBuckets...))
	errs.add(err)
	in.retries, err = m.Int64Counter(MetricRetries, metric.WithUnit("{attempt}"),
		metric.WithDescription("Upstream attempts retried on another key, by the key that failed and why (rate_limited, auth, server, reset)."))
	errs.add(err)
	in.dropped, err = m.Int64Counter(MetricCallLogDropped, metric.WithUnit("{record}"),
		metric.WithDescription("Call log records dropped because the queue was full or the log closed."))
	errs.add(err)
	return &in
}

// observers are the instruments read at collection time, in one callback.
type observers struct {
	inFlight, keyUp, keyState, ejections, cooldowns    metric.Int64Observable
	modelState, headroomReqs, headroomToks, badHeaders metric.Int64Observable
	gen, stale, refused, refusals, readErrors, active  metric.Int64Observable
	staleFor, threshold, ratio                         metric.Float64Observable
}

func (obs *observers) all() []metric.Observable {
	return []metric.Observable{obs.inFlight, obs.keyUp, obs.keyState, obs.ejections, obs.cooldowns,
		obs.modelState, obs.headroomReqs, obs.headroomToks, obs.badHeaders,
		obs.gen, obs.stale, obs.refused, obs.refusals, obs.readErrors, obs.active,
		obs.staleFor, obs.threshold, obs.ratio}
}

func newObservers(m metric.Meter, errs *errList) *observers {
	b := observerMaker{m, errs}
	return &observers{
		inFlight: b.gauge(MetricInFlight, "{request}", "Requests between Begin and End."),
		keyUp:    b.gauge(MetricKeyUp, "", "1 when the key can serve (healthy or half_open), else 0."),
		keyState: b.gauge(MetricKeyState, "", "The key's current state (value 1): healthy, half_open, cooling_down, ejected, disabled, probe_failed."),
		ejections: b.counter(MetricKeyEjections, "{ejection}",
			"Times the key was ejected after consecutive upstream failures."),
		cooldowns: b.counter(MetricKeyCooldowns, "{cooldown}", "Times the key cooled down after a 429."),
		modelState: b.gauge(MetricKeyModelState, "",
			"The key's state for a model the configuration names (value 1): healthy, cooling_down, no_headroom, model_unavailable."),
		headroomReqs: b.gauge(MetricKeyHeadroomRequests, "{request}",
			"Requests the provider lets the key send for the model until its reset, as keymux estimates them."),
		headroomToks: b.gauge(MetricKeyHeadroomTokens, "{token}",
			"Tokens the provider lets the key use for the model until its reset, as keymux estimates them."),
		badHeaders: b.counter(MetricRateLimitHeaderErrs, "{value}",
			"Provider rate-limit header values that did not parse (ignored)."),
		gen: b.gauge(MetricConfigGeneration, "", "Generation of the configuration in force, by source."),
		stale: b.gauge(MetricConfigStale, "",
			"1 while the configuration source cannot be read and the last good configuration serves."),
		staleFor: b.floatGauge(MetricConfigStaleDuration, "s",
			"How long the configuration source has been stale (0 when fresh)."),
		refused: b.gauge(MetricConfigRefused, "{entry}",
			"Configuration entries refused (the last good version of each keeps serving)."),
		refusals: b.counter(MetricConfigRefusals, "{entry}",
			"Refusals of configuration entries since start (Consul source), each (path, reason) once."),
		readErrors: b.counter(MetricConfigReadErrors, "{error}",
			"Failed reads of the configuration source since start (Consul source)."),
		threshold: b.floatGauge(MetricAlertThreshold, "",
			"Alert thresholds from settings.alerts: error_rate (a fraction) and usage (tokens per key)."),
		active: b.gauge(MetricAlertActive, "",
			"1 while an alert is active: error_rate (all calls, over 5m) or usage (per key)."),
		ratio: b.floatGauge(MetricErrorRatio, "", "Failed calls / calls over the last 5 minutes (minute buckets), without anonymous 401 refusals: the error-rate alert's input."),
	}
}

// observerMaker creates observable instruments, collecting their errors.
type observerMaker struct {
	m    metric.Meter
	errs *errList
}

func (b observerMaker) gauge(name, unit, desc string) metric.Int64Observable {
	g, err := b.m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.errs.add(err)
	return g
}

func (b observerMaker) counter(name, unit, desc string) metric.Int64Observable {
	c, err := b.m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.errs.add(err)
	return c
}

func (b observerMaker) floatGauge(name, unit, desc string) metric.Float64Observable {
	g, err := b.m.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.errs.add(err)
	return g
}

// observeKeys reports every key's health gauges and counters.
func (t *Telemetry) observeKeys(o metric.Observer, obs *observers) {
	for _, kh := range t.keyHealth() {
		up := int64(0)
		if kh.State == "healthy" || kh.State == "half_open" {
			up = 1
		}
		key := metric.WithAttributes(attribute.String(LabelKey, kh.ID))
		o.ObserveInt64(obs.keyUp, up, key)
		o.ObserveInt64(obs.keyState, 1, metric.WithAttributes(attribute.String(LabelKey, kh.ID), attribute.String(LabelState, kh.State)))
		o.ObserveInt64(obs.ejections, int64(kh.Ejections), key)
		o.ObserveInt64(obs.cooldowns, int64(kh.Cooldowns), key)
		o.ObserveInt64(obs.badHeaders, int64(kh.RateLimitHeaderErrors), key)
		for _, m := range kh.Models {
			km := metric.WithAttributes(attribute.String(LabelKey, kh.ID), attribute.String(LabelModel, m.Model))
			o.ObserveInt64(obs.modelState, 1, metric.WithAttributes(attribute.String(LabelKey, kh.ID),
				attribute.String(LabelModel, m.Model), attribute.String(LabelState, m.State)))
			if m.Requests != nil {
				o.ObserveInt64(obs.headroomReqs, m.Requests.Remaining, km)
			}
			if m.Tokens != nil {
				o.ObserveInt64(obs.headroomToks, m.Tokens.Remaining, km)
			}
		}
	}
}

// observeConfig reports the configuration in force, when it is known.
func (t *Telemetry) observeConfig(o metric.Observer, obs *observers) {
	f := t.configFn.Load()
	if f == nil {
		return
	}
	ci := (*f)()
	o.ObserveInt64(obs.gen, int64(ci.Generation), metric.WithAttributes(attribute.String(LabelSource, ci.Source)))
	var since float64
	if ci.Stale && !ci.StaleSince.IsZero() {
		since = max(t.now().Sub(ci.StaleSince).Seconds(), 0)
	}
	o.ObserveInt64(obs.stale, b2i(ci.Stale))
	o.ObserveFloat64(obs.staleFor, since)
	o.ObserveInt64(obs.refused, int64(ci.Refused))
	if c := ci.Counters; c != nil {
		o.ObserveInt64(obs.refusals, int64(c.Refusals))
		o.ObserveInt64(obs.readErrors, int64(c.ReadErrors))
	}
}

// observeAlerts reports the alert thresholds, the error ratio and which
// alerts are active.
func (t *Telemetry) observeAlerts(o metric.Observer, obs *observers) {
	th := t.thresholds()
	o.ObserveFloat64(obs.threshold, th.ErrorRate, metric.WithAttributes(attribute.String(LabelAlert, AlertErrorRate)))
	o.ObserveFloat64(obs.threshold, float64(th.Usage), metric.WithAttributes(attribute.String(LabelAlert, AlertUsage)))
	now := t.now()
	t.stats.mu.Lock()
	w := t.stats.window(now, AlertWindow, false)
	errActive := t.stats.alerts.errorRate
	type ka struct {
		id string
		on bool
	}
	keys := make([]ka, 0, len(t.stats.alerts.usage))
	for id, on := range t.stats.alerts.usage {
		keys = append(keys, ka{id, on})
	}
	t.stats.mu.Unlock()
	errRatio, _ := w.alertRatio()
	o.ObserveFloat64(obs.ratio, errRatio)
	o.ObserveInt64(obs.active, b2i(errActive), metric.WithAttributes(attribute.String(LabelAlert, AlertErrorRate), attribute.String(LabelKey, "")))
	for _, k := range keys {
		o.ObserveInt64(obs.active, b2i(k.on), metric.WithAttributes(attribute.String(LabelAlert, AlertUsage), attribute.String(LabelKey, k.id)))
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// newPrometheus builds the internal MeterProvider whose only reader is a
// Prometheus exporter on its own registry (with the Go and process
// collectors); /metrics serves that registry.
func newPrometheus() (*sdkmetric.MeterProvider, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := promexporter.New(
		promexporter.WithRegisterer(reg),
		promexporter.WithoutScopeInfo(),
		promexporter.WithoutTargetInfo(),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(exp),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter),
	)
	return mp, reg, nil
}

// MetricsHandler serves GET /metrics in the Prometheus text format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// callAttrs are the attribute options of one call's measurements, as
// ready-made variadic slices so that recording does not allocate.
type callAttrs struct {
	reqAdd        []metric.AddOption
	reqRec        []metric.RecordOption
	errAdd        []metric.AddOption
	tokIn, tokOut []metric.AddOption
	useIn, useOut []metric.RecordOption
	retries       [][]metric.AddOption // one per retried attempt
}

type reqKey struct{ key, model, statusClass string }
type errKey struct{ key, class string }
type tokKey struct{ key, op, provider, model, modelFinal string }

type reqSets struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

type tokSets struct {
	in, out       []metric.AddOption
	useIn, useOut []metric.RecordOption
}

// maxCachedSets bounds each attribute-set cache; past it sets are built per
// call (labels are bounded anyway: keys, folded models, classes).
const maxCachedSets = 10000

// attrCache keeps the attribute sets already built, so End does not hash
// and sort attributes on every call. Guarded by stats.mu.
type attrCache struct {
	req map[reqKey]reqSets
	err map[errKey][]metric.AddOption
	tok map[tokKey]tokSets
	// retry: by the key that failed and the reason (errKey's class)
	retry map[errKey][]metric.AddOption
}

func cached[K comparable, V any](m *map[K]V, k K, build func() V) V {
	if v, ok := (*m)[k]; ok {
		return v
	}
	v := build()
	if *m == nil {
		*m = make(map[K]V)
	}
	if len(*m) < maxCachedSets {
		(*m)[k] = v
	}
	return v
}

func addOpt(kv ...attribute.KeyValue) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
}

func recOpt(kv ...attribute.KeyValue) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
}

// attrs returns the attribute options of c. Callers hold stats.mu.
func (a *attrCache) attrs(c *Call, o outcome, model, modelFinal string) callAttrs {
	var ca callAttrs
	rk := reqKey{c.KeyID, model, statusClass(c.Status)}
	rs := cached(&a.req, rk, func() reqSets {
		set := metric.WithAttributeSet(attribute.NewSet(
			attribute.String(LabelKey, rk.key),
			attribute.String(LabelModel, rk.model),
			attribute.String(LabelStatusClass, rk.statusClass),
		))
		return reqSets{add: []metric.AddOption{set}, rec: []metric.RecordOption{set}}
	})
	ca.reqAdd, ca.reqRec = rs.add, rs.rec
	if o.failed {
		ek := errKey{c.KeyID, o.class}
		ca.errAdd = cached(&a.err, ek, func() []metric.AddOption {
			return addOpt(attribute.String(LabelKey, ek.key), attribute.String(LabelClass, ek.class))
		})
	}
	if c.UsageKnown && o.upstream {
		tk := tokKey{c.KeyID, c.Operation, ProviderName(c.Provider), model, modelFinal}
		ts := cached(&a.tok, tk, func() tokSets {
			usage := func(typ string) []metric.RecordOption {
				return recOpt(
					AttrGenAIOperationName.String(tk.op),
					AttrGenAIProviderName.String(tk.provider),
					AttrGenAIRequestModel.String(tk.model),
					AttrGenAIResponseModel.String(tk.modelFinal),
					AttrGenAITokenType.String(typ),
				)
			}
			return tokSets{
				in:     addOpt(attribute.String(LabelKey, tk.key), attribute.String(LabelType, TokenTypeInput)),
				out:    addOpt(attribute.String(LabelKey, tk.key), attribute.String(LabelType, TokenTypeOutput)),
				useIn:  usage(TokenTypeInput),
				useOut: usage(TokenTypeOutput),
			}
		})
		ca.tokIn, ca.tokOut, ca.useIn, ca.useOut = ts.in, ts.out, ts.useIn, ts.useOut
	}
	for _, at := range c.Attempts {
		if at.Retried != "" {
			rk := errKey{at.KeyID, at.Retried}
			ca.retries = append(ca.retries, cached(&a.retry, rk, func() []metric.AddOption {
				return addOpt(attribute.String(LabelKey, rk.key), attribute.String(LabelReason, rk.class))
			}))
		}
	}
	return ca
}

// recordMetrics books one finished call in every instrument set.
func (t *Telemetry) recordMetrics(c *Call, o outcome, ca callAttrs, end time.Time) {
	ctx := t.ctx
	var dur float64
	if !c.Start.IsZero() && end.After(c.Start) {
		dur = end.Sub(c.Start).Seconds()
	}
	for _, in := range t.meters {
		in.requests.Add(ctx, 1, ca.reqAdd...)
		if ca.errAdd != nil {
			in.errors.Add(ctx, 1, ca.errAdd...)
		}
		if o.counted {
			in.duration.Record(ctx, dur, ca.reqRec...)
		}
		if c.Overhead > 0 {
			in.overhead.Record(ctx, float64(c.Overhead)/float64(time.Microsecond))
		}
		for _, r := range ca.retries {
			in.retries.Add(ctx, 1, r...)
		}
		if ca.tokIn != nil {
			in.tokens.Add(ctx, c.InputTokens, ca.tokIn...)
			in.tokens.Add(ctx, c.OutputTokens, ca.tokOut...)
			in.tokenUsage.Record(ctx, c.InputTokens, ca.useIn...)
			in.tokenUsage.Record(ctx, c.OutputTokens, ca.useOut...)
		}
	}
}
