package activities

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.temporal.io/sdk/testsuite"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/internal/warehouse"
)

// telemetryPlanner plans and serves one chunk: adds with valid emails, one add with an invalid
// email (rejected locally) and one removal kept in Iterable (no request).
type telemetryPlanner struct {
	warehouse.Planner
	valid int
}

func (p *telemetryPlanner) rows() int64 { return int64(p.valid) + 2 }

func (p *telemetryPlanner) Plan(context.Context, warehouse.PlanRequest) (warehouse.Plan, error) {
	n := p.rows()
	return warehouse.Plan{Table: "plan_t", Counts: warehouse.Counts{ModelRows: n, Added: n - 1, Removed: 1},
		Chunks: []warehouse.Chunk{{Index: 0, FirstSeq: 1, LastSeq: n, Added: n - 1, Removed: 1}}}, nil
}

func (p *telemetryPlanner) ReadChunk(_ context.Context, req warehouse.ChunkRequest, fn func(warehouse.Row) error) error {
	for i := req.AfterSeq + 1; i <= p.rows(); i++ {
		r := warehouse.Row{Seq: i, Key: fmt.Sprint(i), Op: warehouse.OpAdd, Identifier: fmt.Sprintf("secret.user%d@example.com", i),
			Values: warehouse.ValuesOf(map[string]any{"a": i}), Changed: []string{"a"}}
		switch i {
		case int64(p.valid) + 1:
			r.Identifier = "secret-not-an-email"
		case int64(p.valid) + 2:
			r = warehouse.Row{Seq: i, Key: fmt.Sprint(i), Op: warehouse.OpRemove, Identifier: "secret.removed@example.com"}
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (p *telemetryPlanner) RecordRejections(context.Context, string, string, []warehouse.Rejection) error {
	return nil
}

func (p *telemetryPlanner) Commit(context.Context, warehouse.CommitRequest) (warehouse.CommitResult, error) {
	return warehouse.CommitResult{Upserted: int64(p.valid), Deleted: 1, Held: 1}, nil
}

// recordedMetrics implements Metrics and iterable.Observer.
type recordedMetrics struct {
	mu       sync.Mutex
	records  map[string]int64 // operation/outcome
	steps    []string         // step:outcome
	requests []string         // endpoint status
	waits    int
}

func (m *recordedMetrics) Records(_ context.Context, activationID, operation, outcome string, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.records == nil {
		m.records = map[string]int64{}
	}
	m.records[activationID+"/"+operation+"/"+outcome] += n
}

func (m *recordedMetrics) step(name, activationID, outcome string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.steps = append(m.steps, name+":"+activationID+":"+outcome)
}

func (m *recordedMetrics) PlanDone(_ context.Context, id, outcome string, _ time.Duration) {
	m.step("plan", id, outcome)
}

func (m *recordedMetrics) ChunkDone(_ context.Context, id, outcome string, _ time.Duration) {
	m.step("chunk", id, outcome)
}

func (m *recordedMetrics) CommitDone(_ context.Context, id, outcome string, _ time.Duration) {
	m.step("commit", id, outcome)
}

func (m *recordedMetrics) IterableRequest(_ context.Context, endpoint string, status int, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests = append(m.requests, fmt.Sprintf("%s %d", endpoint, status))
}

func (m *recordedMetrics) IterableBudgetWait(context.Context, string, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.waits++
}

func telemetrySpec(t *testing.T, url, keyEnv string) spec.Activation {
	return spec.Activation{
		ID: "telemetry",
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: url, APIKey: spec.SecretRef{Env: keyEnv}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "a", Field: "a"}},
		},
		Sync: spec.SyncSettings{UsersPerRequest: 5, RequestsPerSecond: -1},
	}
}

// TestActivitiesRecordMetricsSpansAndLogIDs runs Plan, SyncChunk and Commit in Temporal's
// activity environment against the emulator and checks what they record: row counts by
// operation and outcome, one outcome per step, Iterable requests by endpoint, spans with ids and
// counts but no email, and log records carrying the activation, run, workflow and trace ids.
func TestActivitiesRecordMetricsSpansAndLogIDs(t *testing.T) {
	emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer emu.Close()
	emu.AddProject("telemetry-key", iterabletest.ProjectHybrid)
	t.Setenv("TELEMETRY_TEST_KEY", "telemetry-key")
	act := telemetrySpec(t, emu.URL(), "TELEMETRY_TEST_KEY")

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var logs bytes.Buffer
	rec := &recordedMetrics{}
	planner := &telemetryPlanner{valid: 12}
	acts := &Activities{Planners: fakePlannerSource{planner}, Budgets: iterable.NewBudgets(),
		Logger: slog.New(telemetry.TraceHandler(slog.NewJSONHandler(&logs, nil))), Tracer: tp.Tracer("test"),
		Metrics: rec, IterableObserver: rec}
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)

	val, err := env.ExecuteActivity(acts.Plan, PlanInput{Spec: act, RunID: "run-1"})
	require.NoError(t, err)
	var plan warehouse.Plan
	require.NoError(t, val.Get(&plan))
	val, err = env.ExecuteActivity(acts.SyncChunk, SyncChunkInput{Spec: act, RunID: "run-1", Table: plan.Table, Chunk: plan.ChunkAt(0)})
	require.NoError(t, err)
	var res ChunkResult
	require.NoError(t, val.Get(&res))
	require.Equal(t, int64(13), res.Succeeded.Total())
	_, err = env.ExecuteActivity(acts.Commit, CommitInput{Spec: act, RunID: "run-1", Table: plan.Table, Chunks: []int{0}})
	require.NoError(t, err)

	require.Equal(t, map[string]int64{
		"telemetry/added/succeeded":   12,
		"telemetry/added/rejected":    1,
		"telemetry/removed/succeeded": 1,
	}, rec.records)
	require.Equal(t, []string{"plan:telemetry:succeeded", "chunk:telemetry:succeeded", "commit:telemetry:succeeded"}, rec.steps)
	require.Equal(t, []string{"POST /api/users/bulkUpdate 200", "POST /api/users/bulkUpdate 200", "POST /api/users/bulkUpdate 200"},
		rec.requests, "12 users, 5 per request")
	require.Equal(t, 3, rec.waits)

	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Ended() {
		byName[s.Name()] = s
	}
	tests := []struct {
		span string
		want map[string]string
	}{
		{"activation.plan", map[string]string{"activation.id": "telemetry", "activation.run_id": "run-1", "plan.added": "13", "plan.chunks": "1"}},
		{"activation.sync_chunk", map[string]string{"activation.id": "telemetry", "activation.run_id": "run-1", "activation.chunk.index": "0",
			"chunk.attempted": "14", "chunk.succeeded": "13", "chunk.rejected": "1", "chunk.requests": "3"}},
		{"activation.commit", map[string]string{"activation.id": "telemetry", "activation.run_id": "run-1", "commit.upserted": "12", "commit.held": "1"}},
	}
	for _, tc := range tests {
		s, ok := byName[tc.span]
		require.True(t, ok, "span %s; have %v", tc.span, byName)
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.Emit()
			require.NotContains(t, a.Value.Emit(), "secret", "%s: %s", tc.span, a.Key)
		}
		for k, v := range tc.want {
			require.Equal(t, v, attrs[k], "%s: %s", tc.span, k)
		}
	}

	chunkSpan := byName["activation.sync_chunk"].SpanContext()
	found := false
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		require.NotContains(t, line, "secret")
		if r["msg"] != "chunk synced" {
			continue
		}
		found = true
		require.Equal(t, "telemetry", r["activation_id"])
		require.Equal(t, "run-1", r["run_id"])
		require.NotEmpty(t, r["workflow_id"])
		require.Equal(t, chunkSpan.TraceID().String(), r["trace_id"])
		require.Equal(t, chunkSpan.SpanID().String(), r["span_id"])
	}
	require.True(t, found, logs.String())
}

// TestSyncChunkOutcomeStoppedOnFatalIterable: a bad API key stops the chunk without retries,
// counted as "stopped", and the span records the error.
func TestSyncChunkOutcomeStoppedOnFatalIterable(t *testing.T) {
	emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer emu.Close()
	t.Setenv("TELEMETRY_TEST_KEY", "unknown-key")
	act := telemetrySpec(t, emu.URL(), "TELEMETRY_TEST_KEY")
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	rec := &recordedMetrics{}
	acts := &Activities{Planners: fakePlannerSource{&telemetryPlanner{valid: 3}}, Budgets: iterable.NewBudgets(),
		Tracer: tp.Tracer("test"), Metrics: rec, IterableObserver: rec}
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	_, err := env.ExecuteActivity(acts.SyncChunk, SyncChunkInput{Spec: act, RunID: "run-1", Table: "plan_t",
		Chunk: warehouse.Chunk{Index: 0, FirstSeq: 1, LastSeq: 5}})
	require.Error(t, err)
	require.Equal(t, []string{"chunk:telemetry:stopped"}, rec.steps)
	require.Equal(t, []string{"POST /api/users/bulkUpdate 401"}, rec.requests)
	require.Len(t, spans.Ended(), 1)
	require.Equal(t, "Error", spans.Ended()[0].Status().Code.String())
}

func TestStepOutcome(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"no error", context.Background(), nil, OutcomeSucceeded},
		{"retryable", context.Background(), fmt.Errorf("warehouse busy"), OutcomeFailed},
		{"non-retryable", context.Background(), iterableError(&iterable.APIError{Status: 401, Code: "BadApiKey"}, "x"), OutcomeStopped},
		{"context ended", canceled, fmt.Errorf("read: %w", context.Canceled), OutcomeCanceled},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, stepOutcome(tc.ctx, tc.err), tc.name)
	}
}

// TestNilTelemetryIsANoOp: Activities without Tracer, Metrics or observer work as before.
func TestNilTelemetryIsANoOp(t *testing.T) {
	acts := &Activities{Planners: fakePlannerSource{&telemetryPlanner{valid: 1}}}
	plan, err := acts.Plan(context.Background(), PlanInput{Spec: spec.Activation{ID: "x"}, RunID: "r"})
	require.NoError(t, err)
	require.Equal(t, "plan_t", plan.Table)
	_, err = acts.Commit(context.Background(), CommitInput{Spec: spec.Activation{ID: "x"}, RunID: "r", Chunks: []int{0}})
	require.NoError(t, err)
}

type fakePlannerSource struct{ p warehouse.Planner }

func (f fakePlannerSource) Planner(context.Context, spec.Activation) (warehouse.Planner, error) {
	return f.p, nil
}
