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
//
// ACTIVATIONS_BIGQUERY_ENDPOINT (the REST API's base URL) and ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT
// (host:port of the Storage Read and Write APIs, plaintext gRPC) point every BigQuery planner at
// an emulator, without credentials; set both or neither. ACTIVATIONS_CPU_PROFILE and
// ACTIVATIONS_MEM_PROFILE write a pprof CPU profile of the worker's life and a heap profile at
// its exit to those files (benchmarks).
package main

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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

// bigQueryEmulator reads ACTIVATIONS_BIGQUERY_ENDPOINT and ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT:
// the client options of the REST API and of the Storage APIs (gRPC) of a BigQuery emulator, used
// without credentials; nil when neither is set.
func bigQueryEmulator() (rest, storage []option.ClientOption, err error) {
	restURL := strings.TrimSpace(os.Getenv("ACTIVATIONS_BIGQUERY_ENDPOINT"))
	addr := strings.TrimSpace(os.Getenv("ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT"))
	if restURL == "" && addr == "" {
		return nil, nil, nil
	}
	if restURL == "" || addr == "" {
		return nil, nil, fmt.Errorf("ACTIVATIONS_BIGQUERY_ENDPOINT and ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT: set both (an emulator's REST URL and gRPC host:port) or neither")
	}
	if u, err := url.Parse(restURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("ACTIVATIONS_BIGQUERY_ENDPOINT=%q: want a URL such as http://localhost:9050/", restURL)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, nil, fmt.Errorf("ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT=%q: want host:port", addr)
	}
	rest = []option.ClientOption{option.WithEndpoint(strings.TrimSuffix(restURL, "/") + "/"), option.WithoutAuthentication()}
	storage = []option.ClientOption{option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}
	return rest, storage, nil
}

// startProfiles starts the CPU profile of ACTIVATIONS_CPU_PROFILE; stop ends it and writes the
// heap profile of ACTIVATIONS_MEM_PROFILE.
func startProfiles(logger *slog.Logger) (stop func()) {
	var cpu *os.File
	if path := os.Getenv("ACTIVATIONS_CPU_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			logger.Warn("CPU profile not started", "error", err)
		} else {
			cpu = f
		}
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			_ = cpu.Close()
		}
		if path := os.Getenv("ACTIVATIONS_MEM_PROFILE"); path != "" {
			f, err := os.Create(path)
			if err == nil {
				runtime.GC()
				err = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
			if err != nil {
				logger.Warn("heap profile not written", "error", err)
			}
		}
	}
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
	defer startProfiles(logger)()

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
	bqREST, bqStorage, err := bigQueryEmulator()
	if err != nil {
		return err
	}
	if pool, ok := acts.Planners.(*activities.PlannerPool); ok && bqREST != nil {
		pool.BigQueryClientOptions, pool.BigQueryStorageClientOptions = bqREST, bqStorage
		logger.Info("BigQuery planners use an emulator, without credentials", "endpoint", os.Getenv("ACTIVATIONS_BIGQUERY_ENDPOINT"),
			"storage_endpoint", os.Getenv("ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT"))
	}
	acts.Temporal = c // pauses and unpauses schedules when runs pause and resume
	acts.DataConverter = temporalclient.DataConverter(opts)
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
	if id := buildID(debug.ReadBuildInfo()); id != "" {
		worker.SetBinaryChecksum(id) // see buildID
	}
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

// buildID names the worker's code in Temporal (the UI's list of a task queue's workers, each
// workflow task's completion): the VCS revision Go stamped into the binary ("+dirty" when the tree
// had local changes), else the Go build ID of the executable (a hash of its content, like the
// SDK's own default, the binary checksum). Unless it is given one (worker.SetBinaryChecksum), the
// SDK reads and hashes the whole executable, about 80 MB with DuckDB: 0.15 CPU-s at every start,
// 1.5 % of a 1,000,000-user run.
func buildID(info *debug.BuildInfo, ok bool) string {
	if ok && info != nil {
		var rev, dirty string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			return rev + dirty
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return goBuildID(exe)
}

// goBuildID reads the Go build ID from an ELF executable's .note.go.buildid section (a note:
// name size, description size, type, "Go\x00\x00", the ID); "" when there is none.
func goBuildID(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sec := f.Section(".note.go.buildid")
	if sec == nil {
		return ""
	}
	data, err := sec.Data()
	if err != nil || len(data) < 16 {
		return ""
	}
	n := int(binary.LittleEndian.Uint32(data[4:8]))
	if 16+n > len(data) {
		return ""
	}
	return string(data[16 : 16+n])
}
