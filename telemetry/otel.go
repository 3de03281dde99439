package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the default service.name of keymux's resource
// (OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES override it).
const ServiceName = "keymux"

// ShutdownTimeout bounds the flush of SetupOTel's shutdown function when
// its context has no deadline.
const ShutdownTimeout = 5 * time.Second

// SetupOTel builds the trace and meter providers from the standard OTEL_*
// environment through autoexport (OTLP over http/protobuf by default, or
// grpc with OTEL_EXPORTER_OTLP_PROTOCOL=grpc; console; none).
//
// Traces are exported when OTEL_TRACES_EXPORTER is set (and not "none"), or
// else when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// is set; metrics likewise with OTEL_METRICS_EXPORTER and
// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT. OTEL_METRICS_EXPORTER=prometheus is
// treated as "none": keymux serves /metrics itself. OTEL_SDK_DISABLED=true
// turns both off. A signal that is off gets a no-op provider.
//
// The resource has service.name=keymux, the SDK attributes, attrs, then
// OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (which win). The returned
// function flushes and stops both providers, within ShutdownTimeout unless
// its context has an earlier deadline. Nothing global is set.
func SetupOTel(ctx context.Context, attrs ...attribute.KeyValue) (trace.TracerProvider, metric.MeterProvider, func(context.Context) error, error) {
	var tp trace.TracerProvider = tracenoop.NewTracerProvider()
	var mp metric.MeterProvider = metricnoop.NewMeterProvider()
	nothing := func(context.Context) error { return nil }
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return tp, mp, nothing, nil
	}
	tracesOn := exporterWanted("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	metricsOn := exporterWanted("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
	if !tracesOn && !metricsOn {
		return tp, mp, nothing, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", ServiceName)),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attrs...),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("otel resource: %w", err)
	}

	var shutdowns []func(context.Context) error
	if tracesOn {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("otel span exporter: %w", err)
		}
		stp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		tp, shutdowns = stp, append(shutdowns, stp.Shutdown)
	}
	if metricsOn {
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			for _, f := range shutdowns {
				_ = f(ctx)
			}
			return nil, nil, nil, fmt.Errorf("otel metric reader: %w", err)
		}
		smp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
		mp, shutdowns = smp, append(shutdowns, smp.Shutdown)
	}
	shutdown := func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, ShutdownTimeout)
			defer cancel()
		}
		var errs []error
		for _, f := range shutdowns {
			errs = append(errs, f(ctx))
		}
		return errors.Join(errs...)
	}
	return tp, mp, shutdown, nil
}

// exporterWanted reads OTEL_{TRACES,METRICS}_EXPORTER, falling back to
// whether an OTLP endpoint is configured.
func exporterWanted(exporterEnv, endpointEnv string) bool {
	switch v := strings.TrimSpace(os.Getenv(exporterEnv)); v {
	case "":
	case "none", "prometheus":
		return false
	default:
		return true
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv(endpointEnv) != ""
}
