package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Names of the tracer and meters this module creates, and of the OTLP signals.
const (
	traceSignal  = "traces"
	metricSignal = "metrics"

	// InstrumentationName names the tracer and the meter of the engine's own spans and metrics.
	InstrumentationName = "github.com/activation-engine/activations"
	// TemporalMeterName names the meter of the Temporal SDK's metrics.
	TemporalMeterName = "temporal-sdk-go"
)

// Telemetry holds the trace and metric pipelines of one process. Pass its providers to what
// needs them; nothing here is installed globally.
type Telemetry struct {
	TracerProvider *sdktrace.TracerProvider
	MeterProvider  *sdkmetric.MeterProvider
	// Registry is the Prometheus registry /metrics serves: this process's OTel metrics plus the
	// Go runtime and process collectors. It is not prometheus.DefaultRegisterer.
	Registry *prometheus.Registry
	// Metrics are the engine's instruments, created on MeterProvider.
	Metrics *Metrics
	// OTLPTraces and OTLPMetrics tell whether the OTLP exporters are on.
	OTLPTraces, OTLPMetrics bool
}

// Setup builds the pipelines from the standard OpenTelemetry environment:
//
//   - the resource: service.name = serviceName unless OTEL_SERVICE_NAME or
//     OTEL_RESOURCE_ATTRIBUTES say otherwise, plus the SDK and host attributes;
//   - traces are exported over OTLP/gRPC when OTEL_TRACES_EXPORTER is "otlp", or when it is unset
//     and OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; "none"
//     (or OTEL_SDK_DISABLED=true) turns the export off. Spans are still created without an
//     exporter (unsampled: they only carry ids), so logs carry trace ids. OTEL_TRACES_SAMPLER is
//     honoured when traces are exported;
//   - metrics likewise with OTEL_METRICS_EXPORTER and OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, every
//     OTEL_METRIC_EXPORT_INTERVAL; the Prometheus exporter (Registry, served by MetricsHandler)
//     is always on;
//   - the exporters read the rest themselves (headers, TLS, timeouts, compression).
//
// OTLP over HTTP is not built in: OTEL_EXPORTER_OTLP_PROTOCOL other than "grpc" is an error,
// rather than a worker exporting to nowhere. Nothing is dialled here (gRPC connects lazily), so
// Setup works offline. Call Shutdown to flush.
func Setup(ctx context.Context, logger *slog.Logger, serviceName string) (*Telemetry, error) {
	return setup(ctx, logger, serviceName, os.Getenv)
}

func setup(ctx context.Context, logger *slog.Logger, serviceName string, getenv func(string) string) (*Telemetry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		// Last, so that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}

	tracesOn, err := otlpEnabled(getenv, logger, traceSignal)
	if err != nil {
		return nil, err
	}
	metricsOn, err := otlpEnabled(getenv, logger, metricSignal)
	if err != nil {
		return nil, err
	}

	t := &Telemetry{Registry: prometheus.NewRegistry(), OTLPTraces: tracesOn, OTLPMetrics: metricsOn}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if tracesOn {
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP trace exporter: %w", err)
		}
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(scrubForeignErrors(sdktrace.NewBatchSpanProcessor(exp))))
	} else {
		// Nothing records spans: they only carry ids (for logs and Temporal headers), at no cost.
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	t.TracerProvider = sdktrace.NewTracerProvider(tpOpts...)

	if err := t.Registry.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry: register the Go collector: %w", err)
	}
	if err := t.Registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry: register the process collector: %w", err)
	}
	prom, err := otelprom.New(otelprom.WithRegisterer(t.Registry))
	if err != nil {
		_ = t.TracerProvider.Shutdown(ctx)
		return nil, fmt.Errorf("telemetry: Prometheus exporter: %w", err)
	}
	mpOpts := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(prom),
		// The Temporal SDK's timers are in seconds; OTel's default buckets are made for milliseconds.
		sdkmetric.WithView(sdkmetric.NewView(
			sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram, Scope: instrumentation.Scope{Name: TemporalMeterName}},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: secondsBuckets()}},
		)),
	}
	if metricsOn {
		exp, err := otlpmetricgrpc.New(ctx)
		if err != nil {
			_ = t.TracerProvider.Shutdown(ctx)
			return nil, fmt.Errorf("telemetry: OTLP metric exporter: %w", err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	t.MeterProvider = sdkmetric.NewMeterProvider(mpOpts...)

	t.Metrics, err = NewMetrics(t.MeterProvider)
	if err != nil {
		_ = t.Shutdown(ctx)
		return nil, err
	}
	logger.Debug("telemetry set up", "otlp_traces", tracesOn, "otlp_metrics", metricsOn)
	return t, nil
}

// Tracer is the tracer of the engine's own spans.
func (t *Telemetry) Tracer() trace.Tracer {
	return t.TracerProvider.Tracer(InstrumentationName)
}

// MetricsHandler serves Registry in the Prometheus text (or OpenMetrics) format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{Registry: t.Registry})
}

// Shutdown flushes and stops both pipelines (pending spans and a last metric export).
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.TracerProvider != nil {
		if err := t.TracerProvider.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("tracer provider: %w", err))
		}
	}
	if t.MeterProvider != nil {
		if err := t.MeterProvider.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("meter provider: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry shutdown: %w", err)
	}
	return nil
}

// otlpEnabled decides whether the OTLP exporter of signal ("traces" or "metrics") runs (see Setup).
func otlpEnabled(getenv func(string) string, logger *slog.Logger, signal string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	up := strings.ToUpper(signal)
	exporterVar := "OTEL_" + up + "_EXPORTER"
	on := false
	if v := strings.TrimSpace(getenv(exporterVar)); v != "" {
		for _, name := range strings.Split(strings.ToLower(v), ",") {
			switch name = strings.TrimSpace(name); name {
			case "otlp":
				on = true
			case "none":
				return false, nil
			case "prometheus":
				if signal != metricSignal {
					logger.Warn("telemetry: unsupported exporter ignored", "variable", exporterVar, "exporter", name)
				}
				// Always on for metrics, at /metrics.
			case "":
			default:
				logger.Warn("telemetry: unsupported exporter ignored (supported: otlp, none)", "variable", exporterVar, "exporter", name)
			}
		}
	} else {
		on = getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_"+up+"_ENDPOINT") != ""
	}
	if !on {
		return false, nil
	}
	protocol := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_" + up + "_PROTOCOL"))
	if protocol == "" {
		protocol = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	}
	if protocol != "" && protocol != "grpc" {
		return false, fmt.Errorf("telemetry: OTLP %s protocol %q is not supported by this worker: set OTEL_EXPORTER_OTLP_PROTOCOL=grpc and point the endpoint at the collector's gRPC port (4317)", signal, protocol)
	}
	return true, nil
}
