package telemetry

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of keymux's spans and metrics.
const TracerName = "github.com/keymux/keymux/telemetry"

var propagator = propagation.TraceContext{}

// parentCarrier exposes the client's trace headers to the W3C propagator.
type parentCarrier struct{ traceparent, tracestate string }

func (p *parentCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return p.traceparent
	case "tracestate":
		return p.tracestate
	}
	return ""
}
func (p *parentCarrier) Set(string, string) {}
func (p *parentCarrier) Keys() []string     { return []string{"traceparent", "tracestate"} }

// parentContext is a context carrying the client's span context, if valid.
func parentContext(c *Call) context.Context {
	ctx := context.Background()
	if c.TraceParent == "" {
		return ctx
	}
	return propagator.Extract(ctx, &parentCarrier{c.TraceParent, c.TraceState})
}

// startSpan starts the call's span at c.Start with the request attributes.
func (t *Telemetry) startSpan(c *Call, kind trace.SpanKind) trace.Span {
	attrs := make([]attribute.KeyValue, 0, 12)
	if c.Operation != "" {
		attrs = append(attrs, AttrGenAIOperationName.String(c.Operation))
	}
	if c.Provider != "" {
		attrs = append(attrs, AttrGenAIProviderName.String(ProviderName(c.Provider)))
	}
	if c.ModelOriginal != "" {
		attrs = append(attrs, AttrGenAIRequestModel.String(c.ModelOriginal))
	}
	if c.KeyID != "" {
		attrs = append(attrs, AttrGenAIRequestStream.Bool(c.Stream))
	}
	if c.UpstreamHost != "" {
		host, port := splitHostPort(c.UpstreamHost)
		attrs = append(attrs, AttrServerAddress.String(host))
		if port > 0 {
			attrs = append(attrs, AttrServerPort.Int(port))
		}
	}
	for _, kv := range [...]struct {
		k attribute.Key
		v string
	}{
		{AttrKeyID, c.KeyID}, {AttrRuleID, c.RuleID}, {AttrStrategy, c.Strategy},
		{AttrClientID, c.ClientID}, {AttrRequestID, c.RequestID},
	} {
		if kv.v != "" {
			attrs = append(attrs, kv.k.String(kv.v))
		}
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(kind), trace.WithAttributes(attrs...)}
	if !c.Start.IsZero() {
		opts = append(opts, trace.WithTimestamp(c.Start))
	}
	_, span := t.tracer.Start(parentContext(c), SpanName(c.Operation, c.ModelOriginal, c.Method), opts...)
	return span
}

// endSpan adds the response attributes and the error status, and ends the
// span at end.
func endSpan(span trace.Span, c *Call, o outcome, endOpt trace.SpanEndOption) {
	if !span.IsRecording() {
		span.End(endOpt)
		return
	}
	attrs := make([]attribute.KeyValue, 0, 5)
	if c.ModelFinal != "" {
		attrs = append(attrs, AttrGenAIResponseModel.String(c.ModelFinal))
	}
	if c.Status != 0 {
		attrs = append(attrs, AttrHTTPResponseStatusCode.Int(c.Status))
	}
	if c.UsageKnown {
		attrs = append(attrs, AttrGenAIUsageInputTokens.Int64(c.InputTokens), AttrGenAIUsageOutputTokens.Int64(c.OutputTokens))
	}
	if o.failed {
		attrs = append(attrs, AttrErrorType.String(o.errType))
	}
	attrs = appendChoice(attrs, c)
	span.SetAttributes(attrs...)
	if o.failed {
		msg := failureMessage(c, o)
		span.RecordError(errors.New(msg))
		span.SetStatus(codes.Error, msg)
	}
	span.End(endOpt)
}

// appendChoice adds how the call's key was chosen: the keys that could
// take it, why others could not, and its upstream attempts when retried.
func appendChoice(attrs []attribute.KeyValue, c *Call) []attribute.KeyValue {
	if len(c.Attempts) > 0 {
		// Begin named the first attempt's key and rule: the last one's
		// answered (an empty rule: none for that key).
		attrs = append(attrs, AttrAttempts.Int(len(c.Attempts)), AttrKeyID.String(c.KeyID), AttrRuleID.String(c.RuleID))
	}
	if c.Candidates > 0 {
		attrs = append(attrs, AttrCandidates.Int(c.Candidates))
	}
	if c.NSkipped == 0 {
		return attrs
	}
	skipped := make([]string, 0, len(c.Skipped))
	for _, sk := range c.Skipped {
		v := sk.KeyID + ": " + sk.Reason
		if !sk.Until.IsZero() {
			v += " until " + sk.Until.UTC().Format(time.RFC3339)
		}
		skipped = append(skipped, v)
	}
	return append(attrs, AttrSkipped.StringSlice(skipped), AttrSkippedN.Int(c.NSkipped))
}

// attemptSpans adds one child span of the call's span per upstream
// attempt of a retried call: its key, its status and why it was retried.
func (t *Telemetry) attemptSpans(parent trace.Span, c *Call) {
	ctx := trace.ContextWithSpan(context.Background(), parent)
	for i, at := range c.Attempts {
		attrs := []attribute.KeyValue{AttrAttempt.Int(i + 1), AttrKeyID.String(at.KeyID)}
		if at.Status != 0 {
			attrs = append(attrs, AttrHTTPResponseStatusCode.Int(at.Status))
		}
		if at.Retried != "" {
			attrs = append(attrs, AttrRetryReason.String(at.Retried))
		}
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...)}
		if !at.Start.IsZero() {
			opts = append(opts, trace.WithTimestamp(at.Start))
		}
		_, span := t.tracer.Start(ctx, AttemptSpanName, opts...)
		if at.Retried != "" {
			span.SetStatus(codes.Error, "retried on another key: "+at.Retried)
		}
		end := at.End
		if end.IsZero() {
			end = c.End
		}
		span.End(trace.WithTimestamp(end))
	}
}

// failureMessage describes a failure from keymux's own fields only.
func failureMessage(c *Call, o outcome) string {
	status := "no response"
	if c.Status != 0 {
		status = "status " + strconv.Itoa(c.Status)
	}
	switch {
	case c.Local:
		return "refused by keymux: " + status + " " + o.errType
	case c.Truncated:
		return "upstream response cut: " + status + " " + o.errType
	}
	return "upstream call failed: " + status + " " + o.errType
}

func splitHostPort(hostport string) (string, int) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, 0
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return host, 0
	}
	return host, p
}

// traceparent formats sc as a W3C traceparent header value.
func traceparent(sc trace.SpanContext) string {
	var b [55]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	b[0], b[1], b[2] = '0', '0', '-'
	for i, c := range tid {
		b[3+2*i], b[4+2*i] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	b[35] = '-'
	for i, c := range sid {
		b[36+2*i], b[37+2*i] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	b[52] = '-'
	f := byte(sc.TraceFlags())
	b[53], b[54] = hexDigits[f>>4], hexDigits[f&0xf]
	return string(b[:])
}
