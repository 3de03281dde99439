// Package jaegertest starts a real Jaeger for tests and reads traces back
// through its query API.
//
// The binary is the one tools/build.sh builds into tools/bin/jaeger (Jaeger
// v2, from module github.com/jaegertracing/jaeger v1.76.0), or the path in
// $KEYMUX_JAEGER_BIN. When it is missing the test FAILS with the command that
// builds it: tests that need Jaeger never skip silently.
//
// Every instance runs all-in-one from a YAML config written into
// t.TempDir(): in-memory trace storage, the OTLP gRPC and HTTP receivers, the
// query service (HTTP JSON API of Jaeger v1, /api/...) and the v2 health
// check, all on free loopback ports. It is stopped by t.Cleanup.
package jaegertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/testutil/daemon"
	"github.com/keymux/keymux/testutil/toolbin"
)

// EnvBinary overrides the Jaeger binary the tests run.
const EnvBinary = "KEYMUX_JAEGER_BIN"

// startTimeout bounds how long Jaeger may take to report healthy.
const startTimeout = 60 * time.Second

// startAttempts is how often Start picks new ports when one was taken
// between choosing it and Jaeger binding it.
const startAttempts = 3

// ErrNotFound is returned by Trace for a trace Jaeger does not hold (yet).
var ErrNotFound = errors.New("jaegertest: trace not found")

// Jaeger is one running Jaeger all-in-one.
type Jaeger struct {
	t     testing.TB
	ports ports
	proc  *daemon.Process
	http  *http.Client
}

type ports struct {
	otlpGRPC, otlpHTTP, queryHTTP, queryGRPC, health int
}

// tool is tools/bin/jaeger.
var tool = toolbin.Tool{Name: "jaeger", EnvVar: EnvBinary, About: "builds Jaeger v2 from module github.com/jaegertracing/jaeger, tools/jaeger/go.mod"}

// Binary returns the path of the Jaeger binary the tests use, or an error
// that says how to build it.
func Binary() (string, error) { return tool.Path() }

// binaryIn is tools/bin/jaeger under root, or how to build it.
func binaryIn(root string) (string, error) { return tool.In(root) }

// configTemplate is a minimal all-in-one: OTLP in, memory storage, query
// API out, health check; no Jaeger/Zipkin receivers, no sampling server,
// no self-telemetry (its metrics endpoint would need a fixed port).
const configTemplate = `service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{{HEALTH}}
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{{QUERY_HTTP}}
    grpc:
      endpoint: 127.0.0.1:{{QUERY_GRPC}}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{{OTLP_GRPC}}
      http:
        endpoint: 127.0.0.1:{{OTLP_HTTP}}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// Start runs Jaeger and waits until it is healthy, its query API answers
// and both OTLP receivers accept connections. It is stopped when the test
// ends; its output is logged if the test failed.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("jaegertest: %v", err)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		j := &Jaeger{t: t, http: &http.Client{Timeout: 5 * time.Second}}
		j.ports = ports{
			otlpGRPC: daemon.FreePort(t), otlpHTTP: daemon.FreePort(t),
			queryHTTP: daemon.FreePort(t), queryGRPC: daemon.FreePort(t), health: daemon.FreePort(t),
		}
		cfgPath := filepath.Join(dir, "jaeger-"+strconv.Itoa(attempt)+".yaml")
		if err := os.WriteFile(cfgPath, []byte(j.config()), 0o600); err != nil {
			t.Fatalf("jaegertest: %v", err)
		}
		err := j.start(bin, cfgPath)
		if err == nil {
			t.Cleanup(func() {
				j.Stop()
				if t.Failed() {
					t.Logf("jaeger output:\n%s", j.Output())
				}
			})
			return j
		}
		lastErr = err
		if j.proc == nil || !j.proc.AddrInUse() {
			break
		}
	}
	t.Fatalf("jaegertest: %v", lastErr)
	return nil
}

func (j *Jaeger) config() string {
	return strings.NewReplacer(
		"{{HEALTH}}", strconv.Itoa(j.ports.health),
		"{{QUERY_HTTP}}", strconv.Itoa(j.ports.queryHTTP),
		"{{QUERY_GRPC}}", strconv.Itoa(j.ports.queryGRPC),
		"{{OTLP_GRPC}}", strconv.Itoa(j.ports.otlpGRPC),
		"{{OTLP_HTTP}}", strconv.Itoa(j.ports.otlpHTTP),
	).Replace(configTemplate)
}

func (j *Jaeger) start(bin, cfgPath string) error {
	var err error
	if j.proc, err = daemon.Start("jaeger", bin, "--config=file:"+cfgPath); err != nil {
		return err
	}
	if err := j.proc.WaitReady(startTimeout, j.ready); err != nil {
		j.Stop()
		return err
	}
	return nil
}

// ready checks the health check, the query API and the receivers.
func (j *Jaeger) ready(ctx context.Context) bool {
	var health struct {
		Healthy bool   `json:"healthy"`
		Status  string `json:"status"`
	}
	if code, body, err := j.get(ctx, "http://127.0.0.1:"+strconv.Itoa(j.ports.health)+"/status"); err != nil || code != http.StatusOK ||
		json.Unmarshal(body, &health) != nil || !health.Healthy || health.Status != "StatusOK" {
		return false
	}
	if code, _, err := j.get(ctx, j.QueryURL()+"/api/services"); err != nil || code != http.StatusOK {
		return false
	}
	for _, p := range []int{j.ports.otlpGRPC, j.ports.otlpHTTP} {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(p), time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func (j *Jaeger) get(ctx context.Context, u string) (int, []byte, error) {
	return daemon.Get(ctx, j.http, u)
}

// Stop ends Jaeger (SIGTERM, then SIGKILL) and waits for it.
func (j *Jaeger) Stop() {
	if j.proc != nil {
		j.proc.Stop()
	}
}

// Output is what Jaeger printed so far.
func (j *Jaeger) Output() string {
	if j.proc == nil {
		return ""
	}
	return j.proc.Output()
}

// OTLPGRPCEndpoint is the OTLP/gRPC receiver as an OTEL_EXPORTER_OTLP_ENDPOINT
// value ("http://127.0.0.1:PORT": plaintext).
func (j *Jaeger) OTLPGRPCEndpoint() string {
	return "http://127.0.0.1:" + strconv.Itoa(j.ports.otlpGRPC)
}

// OTLPHTTPEndpoint is the OTLP/HTTP receiver's base URL, an
// OTEL_EXPORTER_OTLP_ENDPOINT value (the exporter appends /v1/traces).
func (j *Jaeger) OTLPHTTPEndpoint() string {
	return "http://127.0.0.1:" + strconv.Itoa(j.ports.otlpHTTP)
}

// QueryURL is the base URL of the query service ("http://127.0.0.1:PORT").
func (j *Jaeger) QueryURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(j.ports.queryHTTP)
}

// OTelEnv is the OTEL_* environment that makes an OpenTelemetry SDK send
// its traces to this Jaeger over protocol ("grpc" or "http/protobuf"),
// with a short batch delay; metrics and logs exporters are off (Jaeger
// only stores traces).
func (j *Jaeger) OTelEnv(protocol string) map[string]string {
	endpoint := j.OTLPHTTPEndpoint()
	if protocol == "grpc" {
		endpoint = j.OTLPGRPCEndpoint()
	}
	return map[string]string{
		"OTEL_SDK_DISABLED":           "false",
		"OTEL_TRACES_EXPORTER":        "otlp",
		"OTEL_METRICS_EXPORTER":       "none",
		"OTEL_LOGS_EXPORTER":          "none",
		"OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
		"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
		"OTEL_EXPORTER_OTLP_INSECURE": "true",
		"OTEL_BSP_SCHEDULE_DELAY":     "50",
		"OTEL_TRACES_SAMPLER":         "parentbased_always_on",
		// Empty = unset: a developer's own OTEL_* must not redirect the test.
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "",
		"OTEL_SERVICE_NAME":                  "",
		"OTEL_RESOURCE_ATTRIBUTES":           "",
	}
}

// Trace is one trace in the query API's JSON (Jaeger's v1 model).
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
	Warnings  []string           `json:"warnings"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	StartTime     int64       `json:"startTime"` // µs since the epoch
	Duration      int64       `json:"duration"`  // µs
	Tags          []KeyValue  `json:"tags"`
	Logs          []Log       `json:"logs"`
	ProcessID     string      `json:"processID"`
	Warnings      []string    `json:"warnings"`
}

// Reference links a span to another (CHILD_OF: its parent).
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// KeyValue is a tag; Value is a string, bool, float64 (JSON number) or
// whatever Type says.
type KeyValue struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Log is a span event.
type Log struct {
	Timestamp int64      `json:"timestamp"`
	Fields    []KeyValue `json:"fields"`
}

// Process is the emitting service.
type Process struct {
	ServiceName string     `json:"serviceName"`
	Tags        []KeyValue `json:"tags"`
}

// Tag returns the value of the tag key.
func (s *Span) Tag(key string) (any, bool) {
	for _, kv := range s.Tags {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// TagString returns the tag key formatted as text ("" when absent):
// integers without a decimal point, booleans as true/false.
func (s *Span) TagString(key string) string {
	v, ok := s.Tag(key)
	if !ok {
		return ""
	}
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

// ParentSpanID is the span id of the span's CHILD_OF reference, or "".
func (s *Span) ParentSpanID() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Kind is the span kind as Jaeger tags it ("client", "server", "internal"…;
// "" for internal when the tag is absent).
func (s *Span) Kind() string { return s.TagString("span.kind") }

// Service is the service name of the span's process in tr.
func (tr *Trace) Service(s *Span) string { return tr.Processes[s.ProcessID].ServiceName }

// TraceRaw returns the query API's JSON body of GET /api/traces/{id}, or
// ErrNotFound.
func (j *Jaeger) TraceRaw(ctx context.Context, traceID string) ([]byte, error) {
	code, body, err := j.get(ctx, j.QueryURL()+"/api/traces/"+url.PathEscape(traceID))
	if err != nil {
		return nil, fmt.Errorf("jaegertest: GET trace %s: %w", traceID, err)
	}
	switch code {
	case http.StatusOK:
		return body, nil
	case http.StatusNotFound:
		return nil, ErrNotFound
	}
	return nil, fmt.Errorf("jaegertest: GET trace %s: status %d: %s", traceID, code, truncate(body))
}

// Trace reads one trace through the query API, or ErrNotFound.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (*Trace, error) {
	body, err := j.TraceRaw(ctx, traceID)
	if err != nil {
		return nil, err
	}
	traces, err := decodeTraces(body)
	if err != nil {
		return nil, err
	}
	if len(traces) == 0 {
		return nil, ErrNotFound
	}
	return &traces[0], nil
}

// FindRaw returns the query API's JSON body of GET /api/traces searching
// service (and operation, if not "") over the last hour.
func (j *Jaeger) FindRaw(ctx context.Context, service, operation string, limit int) ([]byte, error) {
	q := url.Values{"service": {service}, "limit": {strconv.Itoa(limit)}, "lookback": {"1h"}}
	if operation != "" {
		q.Set("operation", operation)
	}
	code, body, err := j.get(ctx, j.QueryURL()+"/api/traces?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("jaegertest: find traces: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("jaegertest: find traces: status %d: %s", code, truncate(body))
	}
	return body, nil
}

// Find returns the traces of service (and operation, if not "") of the
// last hour, at most limit.
func (j *Jaeger) Find(ctx context.Context, service, operation string, limit int) ([]Trace, error) {
	body, err := j.FindRaw(ctx, service, operation, limit)
	if err != nil {
		return nil, err
	}
	return decodeTraces(body)
}

// WaitTrace polls the trace until done(trace) holds or ctx ends; the
// error then says what the last poll saw.
func (j *Jaeger) WaitTrace(ctx context.Context, traceID string, done func(*Trace) bool) (*Trace, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		tr, err := j.Trace(ctx, traceID)
		if err == nil && done(tr) {
			return tr, nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("trace %s has %d spans, condition not met yet", traceID, len(tr.Spans))
		}
		select {
		case <-ctx.Done():
			return tr, fmt.Errorf("jaegertest: waiting for trace %s: %w (last: %v)", traceID, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func decodeTraces(body []byte) ([]Trace, error) {
	var doc struct {
		Data   []Trace `json:"data"`
		Errors []struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("jaegertest: decode traces: %w", err)
	}
	if len(doc.Errors) > 0 {
		return nil, fmt.Errorf("jaegertest: query API error %d: %s", doc.Errors[0].Code, doc.Errors[0].Msg)
	}
	return doc.Data, nil
}

func truncate(b []byte) string {
	if len(b) > 512 {
		return string(b[:512]) + "…"
	}
	return string(b)
}
