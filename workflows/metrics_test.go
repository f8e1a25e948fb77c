package workflows_test

import (
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/workflows"
)

// The run metrics (docs/telemetry.md): activations_runs and activations_run_duration, recorded
// on the workflow's metrics handler once per run, when it ends, with the activation and the
// state it ended in; never by an execution that continues as new.

// metricRecord is one counter increment or timer record.
type metricRecord struct {
	kind  string // counter, timer or gauge
	name  string
	tags  map[string]string
	value float64 // the increment, the gauge's value, or the timer's seconds
}

// metricsRecorder is a client.MetricsHandler that keeps what it is given.
type metricsRecorder struct {
	mu      *sync.Mutex
	tags    map[string]string
	records *[]metricRecord
}

func newMetricsRecorder() metricsRecorder {
	return metricsRecorder{mu: &sync.Mutex{}, tags: map[string]string{}, records: &[]metricRecord{}}
}

func (h metricsRecorder) WithTags(tags map[string]string) client.MetricsHandler {
	merged := maps.Clone(h.tags)
	maps.Copy(merged, tags)
	return metricsRecorder{mu: h.mu, tags: merged, records: h.records}
}

func (h metricsRecorder) add(kind, name string, v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.records = append(*h.records, metricRecord{kind: kind, name: name, tags: maps.Clone(h.tags), value: v})
}

func (h metricsRecorder) Counter(name string) client.MetricsCounter {
	return counterFunc(func(d int64) { h.add("counter", name, float64(d)) })
}

func (h metricsRecorder) Gauge(name string) client.MetricsGauge {
	return gaugeFunc(func(v float64) { h.add("gauge", name, v) })
}

func (h metricsRecorder) Timer(name string) client.MetricsTimer {
	return timerFunc(func(d time.Duration) { h.add("timer", name, d.Seconds()) })
}

type (
	counterFunc func(int64)
	gaugeFunc   func(float64)
	timerFunc   func(time.Duration)
)

func (f counterFunc) Inc(d int64)          { f(d) }
func (f gaugeFunc) Update(v float64)       { f(v) }
func (f timerFunc) Record(d time.Duration) { f(d) }

// engine lists the records of the engine's own metrics (not the SDK's temporal_*).
func (h metricsRecorder) engine() []metricRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []metricRecord
	for _, r := range *h.records {
		if strings.HasPrefix(r.name, "activations_") {
			out = append(out, r)
		}
	}
	return out
}

// metricsEnv is env() with the recorder as the suite's metrics handler; continued executions
// hold the lock already.
func metricsEnv(rec metricsRecorder, continued bool) *testsuite.TestWorkflowEnvironment {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	s.SetMetricsHandler(rec)
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(activities.CheckFieldsResult{}, nil).Maybe()
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(warehouse.CommitResult{}, nil).Maybe()
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil).Maybe()
	if continued {
		e.OnActivity("RequestLock", mock.Anything, mock.Anything).Return(nil).Maybe()
		e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(nil).Maybe()
	} else {
		grantLock(e)
	}
	return e
}

// requireRunMetrics checks that the run was counted once, with its duration, under the
// activation and state.
func requireRunMetrics(t *testing.T, rec metricsRecorder, activation, state string, duration time.Duration) {
	t.Helper()
	got := rec.engine()
	require.Len(t, got, 2, "one count and one duration per run: %+v", got)
	byName := map[string]metricRecord{}
	for _, r := range got {
		byName[r.kind+" "+r.name] = r
	}
	count, ok := byName["counter activations_runs"]
	require.True(t, ok, "no activations_runs counter: %+v", got)
	require.Equal(t, 1.0, count.value)
	dur, ok := byName["timer activations_run_duration"]
	require.True(t, ok, "no activations_run_duration timer: %+v", got)
	require.InDelta(t, duration.Seconds(), dur.value, 1e-9)
	for _, r := range got {
		require.Equal(t, activation, r.tags["activation"], "%s tags %v", r.name, r.tags)
		require.Equal(t, state, r.tags["state"], "%s tags %v", r.name, r.tags)
	}
}

func TestRunMetricsCompleted(t *testing.T) {
	rec := newMetricsRecorder()
	e := metricsEnv(rec, false)
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(3), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(chunkOK).After(time.Minute)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.GreaterOrEqual(t, rep.Duration, time.Minute, "the chunks took a minute each")
	requireRunMetrics(t, rec, "users", workflows.StateCompleted, rep.Duration)
}

func TestRunMetricsFailed(t *testing.T) {
	rec := newMetricsRecorder()
	e := metricsEnv(rec, false)
	s := testSpec()
	s.Destination.Mode = "sometimes"
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: s})
	require.Error(t, e.GetWorkflowError())
	rep := failedReport(t, e.GetWorkflowError())
	require.Equal(t, workflows.StateFailed, rep.State)
	requireRunMetrics(t, rec, "users", workflows.StateFailed, rep.Duration)
}

func TestRunMetricsDryRun(t *testing.T) {
	rec := newMetricsRecorder()
	e := metricsEnv(rec, false)
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(3), nil)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec(), DryRun: true})
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	requireRunMetrics(t, rec, "users", workflows.StateDryRun, rep.Duration)
}

func TestRunMetricsAborted(t *testing.T) {
	rec := newMetricsRecorder()
	e := metricsEnv(rec, false)
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(6), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(chunkOK).After(time.Minute)
	var abortErr error
	e.RegisterDelayedCallback(func() {
		e.UpdateWorkflow(workflows.UpdateAbort, "", &testsuite.TestUpdateCallback{
			OnAccept: func() {}, OnReject: func(err error) { abortErr = err }, OnComplete: func(any, error) {},
		}, workflows.AbortInput{Reason: "stop"})
	}, 90*time.Second)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	require.NoError(t, abortErr)
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	require.Equal(t, workflows.StateAborted, rep.State)
	requireRunMetrics(t, rec, "users", workflows.StateAborted, rep.Duration)
}

// TestRunMetricsOncePerRunAcrossContinueAsNew: a run of 5 chunks at 2 per execution takes three
// executions; only the last one, which ends the run, records it, with the whole run's duration.
func TestRunMetricsOncePerRunAcrossContinueAsNew(t *testing.T) {
	rec := newMetricsRecorder()
	in := workflows.RunInput{Spec: testSpec(), ChunksPerExecution: 2}
	var rep workflows.RunReport
	for i := 0; ; i++ {
		require.Less(t, i, 5, "the chain ends")
		e := metricsEnv(rec, in.Continued != nil)
		e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(5), nil).Maybe()
		e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(chunkOK).After(time.Minute)
		e.ExecuteWorkflow(workflows.ActivationWorkflow, in)
		require.True(t, e.IsWorkflowCompleted())
		err := e.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			require.Empty(t, rec.engine(), "an execution that continues as new records nothing (execution %d)", i+1)
			var next workflows.RunInput
			require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
			in = next
			continue
		}
		require.NoError(t, err)
		require.NoError(t, e.GetWorkflowResult(&rep))
		break
	}
	require.Equal(t, 3, rep.Executions)
	require.Equal(t, workflows.StateCompleted, rep.State)
	requireRunMetrics(t, rec, "users", workflows.StateCompleted, rep.Duration)
}

// failedReport is the report a failed run carries in its error's details.
func failedReport(t *testing.T, err error) workflows.RunReport {
	t.Helper()
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "%v", err)
	var rep workflows.RunReport
	require.NoError(t, appErr.Details(&rep))
	return rep
}
