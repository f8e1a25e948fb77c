package telemetry

import (
	"fmt"
	"log/slog"

	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
	"go.temporal.io/sdk/interceptor"
)

// TemporalClientOptions returns opts with the Temporal SDK's metrics on t.MeterProvider (meter
// "temporal-sdk-go", monotonic counters, so Prometheus shows temporal_*_total counters) and the
// OpenTelemetry tracing interceptor appended: spans StartWorkflow:*, RunWorkflow:*,
// StartActivity:*, RunActivity:*, signals, queries and updates, on t.TracerProvider, with the
// span context carried in Temporal headers (W3C trace context). Activities started by a traced
// workflow run inside a RunActivity span, the parent of the engine's own spans.
func (t *Telemetry) TemporalClientOptions(opts client.Options, logger *slog.Logger) (client.Options, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts.MetricsHandler = temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{
		Meter:                t.MeterProvider.Meter(TemporalMeterName),
		UseMonotonicCounters: true,
		// The default panics; a metric that cannot be created must not stop the worker.
		OnError: func(err error) { logger.Warn("temporal metrics", "error", err) },
	})
	tracing, err := temporalotel.NewTracingInterceptor(temporalotel.TracerOptions{
		Tracer: t.TracerProvider.Tracer(TemporalMeterName),
	})
	if err != nil {
		return opts, fmt.Errorf("temporal tracing interceptor: %w", err)
	}
	opts.Interceptors = append(append([]interceptor.ClientInterceptor(nil), opts.Interceptors...), tracing)
	return opts, nil
}
