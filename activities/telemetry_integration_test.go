//go:build integration

package activities_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/internal/telemetry/telemetrytest"
	"github.com/activation-engine/activations/internal/warehouse"
)

// TestTelemetryOfARun wires the activities as the worker does (telemetry.Setup's metrics and
// Prometheus endpoint, the Iterable transport with redacted spans, the Temporal tracing
// interceptor) and runs Plan, SyncChunk and Commit of an update-mode activation on a real DuckDB
// model against the emulator, with per-user lookups (getByEmail puts the email in the URL). It
// then scrapes /metrics for the row counts and Iterable latencies, and reads the spans from an
// in-memory exporter: the engine's spans under Temporal's RunActivity spans, one HTTP span per
// request, and no email anywhere.
func TestTelemetryOfARun(t *testing.T) {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"} {
		t.Setenv(v, "")
	}
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, nil, "activations-it")
	require.NoError(t, err)
	defer func() { require.NoError(t, tel.Shutdown(ctx)) }()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	defer func() { _ = tp.Shutdown(ctx) }()

	const key = "telemetry-it-key"
	emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer emu.Close()
	emu.AddProject(key, iterabletest.ProjectHybrid)
	t.Setenv("TELEMETRY_IT_KEY", key)

	// The model: 20 users, the first 10 already in Iterable, plus one malformed email.
	dir := t.TempDir()
	var csv strings.Builder
	csv.WriteString("user_id,email,name\n")
	var existing []iterable.Record
	for i := 1; i <= 20; i++ {
		email := fmt.Sprintf("person%d@example.com", i)
		fmt.Fprintf(&csv, "%d,%s,Name%d\n", i, email, i)
		if i <= 10 {
			existing = append(existing, iterable.Record{Index: i, User: iterable.User{Email: email, DataFields: map[string]any{"name": "old"}}})
		}
	}
	csv.WriteString("21,not-an-email,Name21\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "users.csv"), []byte(csv.String()), 0o600))
	seed, err := iterable.New(iterable.Config{BaseURL: emu.URL(), APIKey: key, RequestsPerSecond: -1})
	require.NoError(t, err)
	_, err = seed.SendBatch(ctx, iterable.Batch{Records: existing, CreateNewFields: true})
	require.NoError(t, err)

	act := spec.Activation{
		ID: "telemetry-it", BaseDir: dir,
		Source: spec.Source{Type: "duckdb", PrimaryKey: "user_id",
			Query: "SELECT * FROM read_csv('users.csv', header=true, columns={'user_id':'BIGINT','email':'VARCHAR','name':'VARCHAR'})"},
		State: spec.State{DuckDB: &spec.DuckDBState{Path: filepath.Join(dir, "state.duckdb")}},
		Destination: spec.Destination{
			Type: "iterable", Mode: spec.ModeUpdate,
			Iterable:   spec.Iterable{Region: "us", BaseURL: emu.URL(), APIKey: spec.SecretRef{Env: "TELEMETRY_IT_KEY"}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "name", Field: "name"}},
		},
		Sync: spec.SyncSettings{UsersPerRequest: 100, RequestsPerSecond: 50},
	}

	acts := activities.New(slog.New(telemetry.TraceHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	defer func() { require.NoError(t, acts.Close()) }()
	acts.Tracer = tp.Tracer(telemetry.InstrumentationName)
	acts.Metrics = tel.Metrics
	acts.IterableObserver = tel.Metrics
	acts.HTTPClient.Transport = telemetry.HTTPTransport(acts.HTTPClient.Transport, tp, nil, iterable.Route)

	tracing, err := temporalotel.NewTracingInterceptor(temporalotel.TracerOptions{Tracer: tp.Tracer(telemetry.TemporalMeterName)})
	require.NoError(t, err)
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{tracing}})
	env.RegisterActivity(acts)

	val, err := env.ExecuteActivity(acts.Plan, activities.PlanInput{Spec: act, RunID: "run-it"})
	require.NoError(t, err)
	var plan warehouse.Plan
	require.NoError(t, val.Get(&plan))
	require.Equal(t, int64(21), plan.Counts.Added)
	var chunks []int
	for i := range plan.ChunkCount() { // the plan travels as its size: chunks are derived
		ch := plan.ChunkAt(i)
		val, err := env.ExecuteActivity(acts.SyncChunk, activities.SyncChunkInput{Spec: act, RunID: "run-it", Table: plan.Table,
			Chunk: ch, Existence: activities.ExistenceLookup})
		require.NoError(t, err)
		var res activities.ChunkResult
		require.NoError(t, val.Get(&res))
		chunks = append(chunks, ch.Index)
	}
	_, err = env.ExecuteActivity(acts.Commit, activities.CommitInput{Spec: act, RunID: "run-it", Table: plan.Table, Chunks: chunks})
	require.NoError(t, err)

	// Metrics, as Prometheus scrapes them.
	fams := telemetrytest.Scrape(t, tel.Handler(telemetry.NewProbes(nil)), telemetry.PathMetrics)
	metrics := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"activations_records_total", map[string]string{"activation": act.ID, "operation": "added", "outcome": "succeeded"}, 10},
		{"activations_records_total", map[string]string{"activation": act.ID, "operation": "added", "outcome": "skipped"}, 10},
		{"activations_records_total", map[string]string{"activation": act.ID, "operation": "added", "outcome": "rejected"}, 1},
		{"activations_chunks_total", map[string]string{"activation": act.ID, "outcome": "succeeded"}, float64(len(chunks))},
		{"activations_plan_duration_seconds", map[string]string{"activation": act.ID, "outcome": "succeeded"}, 1},
		{"activations_commit_duration_seconds", map[string]string{"activation": act.ID, "outcome": "succeeded"}, 1},
		{"activations_iterable_request_duration_seconds", map[string]string{"endpoint": "GET /api/users/getByEmail", "status_code": "200"}, 20},
		{"activations_iterable_request_duration_seconds", map[string]string{"endpoint": "POST /api/users/bulkUpdate", "status_code": "200"}, 1},
		{"activations_iterable_ratelimit_wait_seconds", map[string]string{"endpoint": "GET /api/users/getByEmail"}, 20},
		{"activations_iterable_ratelimit_wait_seconds", map[string]string{"endpoint": "POST /api/users/bulkUpdate"}, 1},
	}
	for _, m := range metrics {
		got, ok := fams.Sample(m.name, m.labels)
		require.True(t, ok, "%s%v; have %v", m.name, m.labels, fams.Labels(m.name))
		require.Equal(t, m.want, got, "%s%v", m.name, m.labels)
	}

	// Spans.
	all := spans.GetSpans()
	byName := map[string][]tracetest.SpanStub{}
	for _, s := range all {
		byName[s.Name] = append(byName[s.Name], s)
		text := s.Name + " " + s.Status.Description
		for _, a := range s.Attributes {
			text += " " + string(a.Key) + "=" + a.Value.Emit()
		}
		for _, e := range s.Events {
			for _, a := range e.Attributes {
				text += " " + a.Value.Emit()
			}
		}
		require.NotContains(t, text, "@example.com", "span %s", s.Name)
		require.NotContains(t, text, "person", "span %s", s.Name)
		require.NotContains(t, text, key, "span %s", s.Name)
	}
	require.Len(t, byName["GET /api/users/getByEmail"], 20, "one span per lookup; names: %v", keys(byName))
	require.Len(t, byName["POST /api/users/bulkUpdate"], 1)
	require.Len(t, byName["activation.sync_chunk"], len(chunks))
	require.Len(t, byName["activation.plan"], 1)
	require.Len(t, byName["activation.commit"], 1)

	chunk := byName["activation.sync_chunk"][0]
	run := byName["RunActivity:SyncChunk"]
	require.Len(t, run, len(chunks), "Temporal's interceptor traced the activity; names: %v", keys(byName))
	require.Equal(t, run[0].SpanContext.SpanID(), chunk.Parent.SpanID(), "the chunk's span is a child of RunActivity:SyncChunk")
	for _, s := range append(byName["GET /api/users/getByEmail"], byName["POST /api/users/bulkUpdate"]...) {
		require.Equal(t, chunk.SpanContext.SpanID(), s.Parent.SpanID(), "HTTP spans are children of the chunk's span")
		require.Equal(t, chunk.SpanContext.TraceID(), s.SpanContext.TraceID())
		for _, a := range s.Attributes {
			if a.Key == "url.full" {
				require.False(t, strings.Contains(a.Value.AsString(), "email=") && !strings.Contains(a.Value.AsString(), "email=REDACTED"),
					a.Value.AsString())
			}
			if a.Key == "http.response.status_code" {
				require.Equal(t, int64(http.StatusOK), a.Value.AsInt64())
			}
		}
	}
	attrs := map[string]string{}
	for _, a := range chunk.Attributes {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	require.Equal(t, act.ID, attrs["activation.id"])
	require.Equal(t, "run-it", attrs["activation.run_id"])
	require.Equal(t, "10", attrs["chunk.succeeded"])
	require.Equal(t, "10", attrs["chunk.skipped"])
	require.Equal(t, "1", attrs["chunk.rejected"])
}

func keys(m map[string][]tracetest.SpanStub) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
