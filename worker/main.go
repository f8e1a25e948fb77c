// Command worker runs the activation workflow and its activities on a Temporal task queue.
//
// Temporal connection settings come from the standard environment (TEMPORAL_ADDRESS, default
// localhost:7233; TEMPORAL_NAMESPACE, default "default"; TEMPORAL_API_KEY; TLS files; profiles).
// ACTIVATIONS_TASK_QUEUE overrides the task queue (default "activations");
// ACTIVATIONS_WORKER_STOP_TIMEOUT how long SIGTERM lets in-flight chunks finish (default 90s).
//
// Telemetry (docs/telemetry.md): an HTTP server on ACTIVATIONS_HTTP_ADDR (default ":9090",
// "off" for none) serves /metrics (Prometheus), /healthz and /readyz; traces and metrics are
// exported over OTLP/gRPC when the standard OTEL_* variables ask for it; LOG_FORMAT=json and
// LOG_LEVEL set logging.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

// serviceName is the OpenTelemetry service.name unless OTEL_SERVICE_NAME says otherwise.
const serviceName = "activations-worker"

// defaultStopTimeout is how long a stopping worker lets in-flight activities finish
// (ACTIVATIONS_WORKER_STOP_TIMEOUT overrides it).
const defaultStopTimeout = 90 * time.Second

// stopTimeoutFromEnv reads ACTIVATIONS_WORKER_STOP_TIMEOUT (a Go duration such as 90s).
func stopTimeoutFromEnv() (time.Duration, error) {
	v := os.Getenv("ACTIVATIONS_WORKER_STOP_TIMEOUT")
	if v == "" {
		return defaultStopTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("ACTIVATIONS_WORKER_STOP_TIMEOUT=%q: want a duration such as 90s", v)
	}
	return d, nil
}

// shutdownTimeout bounds the last telemetry flush and the HTTP server's shutdown.
const shutdownTimeout = 10 * time.Second

func main() {
	logger := telemetry.Logger(os.Stderr)
	if err := run(logger); err != nil {
		logger.Error("worker stopped", "error", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tel, err := telemetry.Setup(ctx, logger, serviceName)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			logger.Warn("telemetry flush", "error", err)
		}
	}()
	// The only globals: the BigQuery client library and Google's HTTP/gRPC transports trace
	// through the global provider and propagator; the engine itself is given its providers.
	otel.SetTracerProvider(tel.TracerProvider)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { logger.Warn("opentelemetry", "error", err) }))

	// The probes read c only once SetReady(true) has published it.
	var c client.Client
	probes := telemetry.NewProbes(func(ctx context.Context) error {
		_, err := c.CheckHealth(ctx, &client.CheckHealthRequest{})
		return err
	})
	httpAddr := telemetry.HTTPAddr()
	if httpAddr != "" {
		srv, err := telemetry.Serve(ctx, logger, httpAddr, tel.Handler(probes))
		if err != nil {
			// The worker still does its job; probes failing make the problem visible.
			logger.Error("telemetry HTTP server not started: no /metrics, /healthz or /readyz", "error", err)
			httpAddr = ""
		} else {
			httpAddr = srv.Addr().String()
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
				defer cancel()
				if err := srv.Shutdown(sctx); err != nil {
					logger.Warn("telemetry HTTP server", "error", err)
				}
			}()
		}
	}

	opts, err := temporalclient.Options(logger)
	if err != nil {
		return err
	}
	if opts, err = tel.TemporalClientOptions(opts, logger); err != nil {
		return err
	}
	c, err = client.DialContext(ctx, opts)
	if err != nil {
		return fmt.Errorf("connect to Temporal at %s (namespace %s): %w", opts.HostPort, opts.Namespace, err)
	}
	defer c.Close()
	if err := temporalclient.EnsureSearchAttributes(ctx, c, opts.Namespace, workflows.SearchAttributes()); err != nil {
		// Runs still work; only the search attributes would fail, so say it loudly and go on.
		logger.Warn("search attributes", "error", err)
	}
	queue := os.Getenv("ACTIVATIONS_TASK_QUEUE")
	if queue == "" {
		queue = workflows.TaskQueue
	}
	acts := activities.New(logger)
	acts.Temporal = c // pauses and unpauses schedules when runs pause and resume
	acts.Tracer = tel.Tracer()
	acts.Metrics = tel.Metrics
	acts.IterableObserver = tel.Metrics
	// Iterable requests get client spans named by route, with no email or userId in them.
	acts.HTTPClient.Transport = telemetry.HTTPTransport(acts.HTTPClient.Transport, tel.TracerProvider, nil, iterable.Route)
	defer func() {
		if err := acts.Close(); err != nil {
			logger.Warn("close planners", "error", err)
		}
	}()

	stopTimeout, err := stopTimeoutFromEnv()
	if err != nil {
		return err
	}
	fatal := make(chan error, 1)
	// On SIGTERM the worker stops polling and gives in-flight chunks stopTimeout to finish (they
	// commit sooner, and resume from their cursor elsewhere if cut off); keep it below the pod's
	// terminationGracePeriodSeconds.
	w := worker.New(c, queue, worker.Options{WorkerStopTimeout: stopTimeout, OnFatalError: func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}})
	workflows.Register(w, acts)
	if err := w.Start(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	probes.SetReady(true)
	logger.Info("worker started", "address", opts.HostPort, "namespace", opts.Namespace, "task_queue", queue,
		"http_addr", httpAddr, "otlp_traces", tel.OTLPTraces, "otlp_metrics", tel.OTLPMetrics)

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("worker stopping", "cause", "signal")
	case err := <-fatal:
		runErr = fmt.Errorf("worker: %w", err)
	}
	probes.SetReady(false)
	w.Stop()
	return runErr
}
