package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/telemetry/telemetrytest"
)

// clearOTelEnv unsets every variable Setup reads, for the test.
func clearOTelEnv(t *testing.T) {
	for _, v := range []string{"OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
		"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_TRACES_SAMPLER"} {
		t.Setenv(v, "")
	}
}

func setupTest(t *testing.T) *Telemetry {
	t.Helper()
	tel, err := Setup(context.Background(), nil, "activations-test")
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, tel.Shutdown(ctx))
	})
	return tel
}

func TestSetupWithoutOTelVariablesWorksOffline(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_SERVICE_NAME", "worker-from-env")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
	tel := setupTest(t)
	require.False(t, tel.OTLPTraces)
	require.False(t, tel.OTLPMetrics)

	_, span := tel.Tracer().Start(context.Background(), "x")
	require.True(t, span.SpanContext().IsValid(), "spans exist without an exporter, for log correlation")
	span.End()

	fams := telemetrytest.Scrape(t, tel.Handler(NewProbes(nil)), PathMetrics)
	_, ok := fams.Sample("target_info", map[string]string{"service_name": "worker-from-env", "deployment_environment": "test"})
	require.True(t, ok, "the resource comes from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES: %v", fams.Labels("target_info"))
	_, ok = fams.Sample("go_goroutines", nil)
	require.True(t, ok, "the Go runtime collector is registered")
}

func TestSetupWithOTLPEndpointDoesNotDial(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	tel, err := Setup(context.Background(), nil, "activations-test")
	require.NoError(t, err)
	require.True(t, tel.OTLPTraces)
	require.True(t, tel.OTLPMetrics)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = tel.Shutdown(ctx) // the last export fails: nobody listens
}

func TestSetupRefusesOTLPOverHTTP(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	_, err := Setup(context.Background(), nil, "activations-test")
	require.ErrorContains(t, err, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc")
}

func TestOTLPEnabled(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		signal  string
		want    bool
		wantErr bool
	}{
		{name: "nothing set", signal: traceSignal, want: false},
		{name: "common endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, signal: traceSignal, want: true},
		{name: "traces endpoint enables traces", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, signal: traceSignal, want: true},
		{name: "traces endpoint leaves metrics off", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, signal: metricSignal, want: false},
		{name: "metrics endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317"}, signal: metricSignal, want: true},
		{name: "exporter otlp without endpoint (exporter default localhost:4317)", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, signal: traceSignal, want: true},
		{name: "exporter none wins over an endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, signal: traceSignal, want: false},
		{name: "metrics exporter prometheus only", env: map[string]string{"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, signal: metricSignal, want: false},
		{name: "list with otlp", env: map[string]string{"OTEL_METRICS_EXPORTER": "prometheus, otlp"}, signal: metricSignal, want: true},
		{name: "unknown exporter ignored", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, signal: traceSignal, want: false},
		{name: "SDK disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, signal: traceSignal, want: false},
		{name: "grpc protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, signal: traceSignal, want: true},
		{name: "http protocol refused", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, signal: traceSignal, wantErr: true},
		{name: "signal protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, signal: metricSignal, want: true},
		{name: "http protocol of a signal that is off is fine", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, signal: traceSignal, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := otlpEnabled(func(k string) string { return tc.env[k] }, slog.New(slog.DiscardHandler), tc.signal)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestMetricsEndpointServesTheInstruments(t *testing.T) {
	clearOTelEnv(t)
	tel := setupTest(t)
	ctx := context.Background()
	m := tel.Metrics
	m.Records(ctx, "users", "added", "succeeded", 3)
	m.Records(ctx, "users", "changed", "rejected", 1)
	m.Records(ctx, "users", "removed", "skipped", 0) // nothing to count
	m.ChunkDone(ctx, "users", "succeeded", 2*time.Second)
	m.ChunkDone(ctx, "users", "stopped", time.Second)
	m.PlanDone(ctx, "users", "succeeded", 3*time.Second)
	m.CommitDone(ctx, "users", "failed", time.Second)
	m.IterableRequest(ctx, "POST /api/users/bulkUpdate", 200, 120*time.Millisecond)
	m.IterableRequest(ctx, "POST /api/users/bulkUpdate", 429, 20*time.Millisecond)
	m.IterableRequest(ctx, "GET /api/users/getByEmail", 0, time.Second)
	m.IterableBudgetWait(ctx, "POST /api/users/bulkUpdate", 300*time.Millisecond)

	srv := httptest.NewServer(tel.Handler(NewProbes(nil)))
	defer srv.Close()
	res, err := http.Get(srv.URL + PathMetrics)
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Contains(t, string(body), `activations_records_total{activation="users",operation="added",otel_scope_name="github.com/activation-engine/activations"`)

	fams := telemetrytest.Scrape(t, tel.Handler(NewProbes(nil)), PathMetrics)
	tests := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"activations_records_total", map[string]string{"activation": "users", "operation": "added", "outcome": "succeeded"}, 3},
		{"activations_records_total", map[string]string{"activation": "users", "operation": "changed", "outcome": "rejected"}, 1},
		{"activations_chunks_total", map[string]string{"activation": "users", "outcome": "succeeded"}, 1},
		{"activations_chunks_total", map[string]string{"activation": "users", "outcome": "stopped"}, 1},
		{"activations_chunk_duration_seconds", map[string]string{"activation": "users", "outcome": "succeeded"}, 1},
		{"activations_plan_duration_seconds", map[string]string{"activation": "users", "outcome": "succeeded"}, 1},
		{"activations_commit_duration_seconds", map[string]string{"activation": "users", "outcome": "failed"}, 1},
		{"activations_iterable_request_duration_seconds", map[string]string{"endpoint": "POST /api/users/bulkUpdate", "status_code": "200"}, 1},
		{"activations_iterable_request_duration_seconds", map[string]string{"endpoint": "POST /api/users/bulkUpdate", "status_code": "429"}, 1},
		{"activations_iterable_request_duration_seconds", map[string]string{"endpoint": "GET /api/users/getByEmail", "status_code": "0"}, 1},
		{"activations_iterable_ratelimit_wait_seconds", map[string]string{"endpoint": "POST /api/users/bulkUpdate"}, 1},
	}
	for _, tc := range tests {
		got, ok := fams.Sample(tc.metric, tc.labels)
		require.True(t, ok, "%s%v missing; have %v", tc.metric, tc.labels, fams.Labels(tc.metric))
		require.Equal(t, tc.want, got, "%s%v", tc.metric, tc.labels)
	}
	_, ok := fams.Sample("activations_records_total", map[string]string{"operation": "removed"})
	require.False(t, ok, "zero counts add no series")
	h := fams["activations_iterable_ratelimit_wait_seconds"].GetMetric()[0].GetHistogram()
	require.InDelta(t, 0.3, h.GetSampleSum(), 1e-9, "seconds")
}

func TestTemporalClientOptions(t *testing.T) {
	clearOTelEnv(t)
	tel := setupTest(t)
	opts, err := tel.TemporalClientOptions(client.Options{HostPort: "temporal:7233"}, nil)
	require.NoError(t, err)
	require.Equal(t, "temporal:7233", opts.HostPort, "other options are kept")
	require.Len(t, opts.Interceptors, 1, "the tracing interceptor")
	require.NotNil(t, opts.MetricsHandler)

	h := opts.MetricsHandler.WithTags(map[string]string{"namespace": "default"})
	h.Counter("temporal_request").Inc(2)
	h.Timer("temporal_activity_execution_latency").Record(150 * time.Millisecond)
	fams := telemetrytest.Scrape(t, tel.Handler(NewProbes(nil)), PathMetrics)
	got, ok := fams.Sample("temporal_request_total", map[string]string{"namespace": "default"})
	require.True(t, ok, "monotonic counters become Prometheus counters")
	require.Equal(t, 2.0, got)
	lat := fams["temporal_activity_execution_latency_seconds"]
	require.NotNil(t, lat)
	var bounds []float64
	for _, b := range lat.GetMetric()[0].GetHistogram().GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	require.Contains(t, bounds, 0.25, "Temporal's seconds get second buckets")
	require.Contains(t, bounds, 3600.0)
}

func TestReadyzFollowsTheWorker(t *testing.T) {
	clearOTelEnv(t)
	tel := setupTest(t)
	var healthErr error
	slow := false
	probes := NewProbes(func(ctx context.Context) error {
		if slow {
			<-ctx.Done()
			return ctx.Err()
		}
		return healthErr
	})
	probes.Timeout = 50 * time.Millisecond
	srv := httptest.NewServer(tel.Handler(probes))
	defer srv.Close()
	get := func(path string) (int, string) {
		res, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	steps := []struct {
		name      string
		apply     func()
		wantReady int
		wantBody  string
	}{
		{"starting", func() {}, http.StatusServiceUnavailable, "not polling"},
		{"worker started", func() { probes.SetReady(true) }, http.StatusOK, "ok"},
		{"Temporal unreachable", func() { healthErr = errors.New("connection refused") }, http.StatusServiceUnavailable, "connection refused"},
		{"Temporal back", func() { healthErr = nil }, http.StatusOK, "ok"},
		{"Temporal hangs", func() { slow = true }, http.StatusServiceUnavailable, "deadline exceeded"},
		{"Temporal answers", func() { slow = false }, http.StatusOK, "ok"},
		{"shutting down", func() { probes.SetReady(false) }, http.StatusServiceUnavailable, "shutting down"},
	}
	for _, st := range steps {
		st.apply()
		code, body := get(PathReadyz)
		require.Equal(t, st.wantReady, code, st.name)
		require.Contains(t, body, st.wantBody, st.name)
		code, _ = get(PathHealthz)
		require.Equal(t, http.StatusOK, code, "%s: liveness does not depend on readiness", st.name)
	}
	res, err := http.Post(srv.URL+PathReadyz, "text/plain", nil)
	require.NoError(t, err)
	_ = res.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
}

func TestServeAndShutdown(t *testing.T) {
	clearOTelEnv(t)
	tel := setupTest(t)
	s, err := Serve(context.Background(), nil, "127.0.0.1:0", tel.Handler(NewProbes(nil)))
	require.NoError(t, err)
	res, err := http.Get("http://" + s.Addr().String() + PathHealthz)
	require.NoError(t, err)
	_ = res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)

	_, err = Serve(context.Background(), nil, s.Addr().String(), http.NotFoundHandler())
	require.ErrorContains(t, err, "listen on", "a taken port is reported at once")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
}

func TestHTTPAddr(t *testing.T) {
	tests := []struct{ env, want string }{
		{"", ":9090"},
		{"127.0.0.1:9464", "127.0.0.1:9464"},
		{"off", ""},
		{"OFF", ""},
	}
	for _, tc := range tests {
		t.Setenv(EnvHTTPAddr, tc.env)
		require.Equal(t, tc.want, HTTPAddr(), "ACTIVATIONS_HTTP_ADDR=%q", tc.env)
	}
}

func TestLogsCarryTraceIDs(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	spanCtx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := span.SpanContext()

	tests := []struct {
		name      string
		ctx       context.Context
		wantTrace string
		wantSpan  string
	}{
		{"inside a span", spanCtx, sc.TraceID().String(), sc.SpanID().String()},
		{"no span", context.Background(), "", ""},
		{"nil context", nil, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(TraceHandler(slog.NewJSONHandler(&buf, nil))).With("activation_id", "users")
			logger.Log(tc.ctx, slog.LevelInfo, "chunk synced", "attempted", 3) //nolint:staticcheck // a nil ctx is tested on purpose
			var rec map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
			require.Equal(t, "users", rec["activation_id"], "attributes added with With are kept")
			require.Equal(t, 3.0, rec["attempted"])
			if tc.wantTrace == "" {
				require.NotContains(t, rec, LogKeyTraceID)
				require.NotContains(t, rec, LogKeySpanID)
				return
			}
			require.Equal(t, tc.wantTrace, rec[LogKeyTraceID])
			require.Equal(t, tc.wantSpan, rec[LogKeySpanID])
		})
	}
}

func TestLoggerFormats(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	tests := []struct {
		format string
		json   bool
	}{{"", false}, {"text", false}, {"json", true}, {"JSON", true}}
	for _, tc := range tests {
		t.Setenv("LOG_FORMAT", tc.format)
		var buf bytes.Buffer
		Logger(&buf).InfoContext(ctx, "hello")
		out := buf.String()
		require.Equal(t, tc.json, strings.HasPrefix(out, "{"), "LOG_FORMAT=%q: %s", tc.format, out)
		require.Contains(t, out, span.SpanContext().TraceID().String(), "LOG_FORMAT=%q", tc.format)
	}
}

func TestScrubForeignErrors(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(scrubForeignErrors(sdktrace.NewSimpleSpanProcessor(exp))))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	const secret = "Bad int64 value: jane@example.com"
	for _, scope := range []string{"cloud.google.com/go", InstrumentationName} {
		_, span := tp.Tracer(scope).Start(context.Background(), scope)
		span.RecordError(errors.New(secret))
		span.SetStatus(codes.Error, secret)
		span.End()
	}
	spans := exp.GetSpans()
	require.Len(t, spans, 2)
	for _, s := range spans {
		foreign := s.InstrumentationScope.Name != InstrumentationName
		require.Equal(t, codes.Error, s.Status.Code)
		var messages []string
		for _, e := range s.Events {
			for _, a := range e.Attributes {
				if a.Key == "exception.message" {
					messages = append(messages, a.Value.AsString())
				}
			}
		}
		require.Len(t, messages, 1)
		if foreign {
			require.Equal(t, Redacted, s.Status.Description)
			require.Equal(t, Redacted, messages[0])
		} else {
			require.Equal(t, secret, s.Status.Description, "the engine's errors hold no row data and are kept")
			require.Equal(t, secret, messages[0])
		}
	}
}
