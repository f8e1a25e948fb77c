package workflows_test

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/workflows"
)

func testSpec() spec.Activation {
	return spec.Activation{
		ID:     "users",
		Source: spec.Source{Type: "duckdb", Query: "SELECT 1", PrimaryKey: "id"},
		Destination: spec.Destination{
			Type:       "iterable",
			Iterable:   spec.Iterable{Region: "us", APIKey: spec.SecretRef{Env: "K"}, ProjectType: "hybrid"},
			Mode:       "upsert",
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "a", Field: "a"}},
		},
		Sync: spec.SyncSettings{Concurrency: 2},
	}
}

// plan makes a plan of chunks of 10 added rows each, against a state of 1,000 unchanged rows
// (well inside the volume guard).
func plan(chunks int) warehouse.Plan {
	p := warehouse.Plan{Table: "plan_users_x", Counts: warehouse.Counts{ModelRows: int64(chunks*10 + 1000), Added: int64(chunks * 10), Unchanged: 1000}}
	for i := 0; i < chunks; i++ {
		p.Chunks = append(p.Chunks, warehouse.Chunk{Index: i, FirstSeq: int64(i*10 + 1), LastSeq: int64(i*10 + 10), Added: 10})
	}
	p, err := p.Sized(10) // what the Plan activity returns: sizes, not the chunk list
	if err != nil {
		panic(err)
	}
	return p
}

func env(t *testing.T) *testsuite.TestWorkflowEnvironment {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe() // the run log: a warehouse write
	// Most tests are not about field types: no conflicts unless a test says otherwise.
	e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(activities.CheckFieldsResult{}, nil).Maybe()
	grantLock(e)
	return e
}

// grantLock makes the activation's lock free: RequestLock succeeds, the grant arrives at once
// and the release goes nowhere (lock_test.go tests the lock itself).
func grantLock(e *testsuite.TestWorkflowEnvironment) {
	e.RegisterWorkflowWithOptions(workflows.LockWorkflow, workflow.RegisterOptions{Name: workflows.LockWorkflowName})
	e.OnActivity("RequestLock", mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.RegisterDelayedCallback(func() { e.SignalWorkflow(activities.SignalLockGranted, nil) }, 0)
}

func chunkOK(_ context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
	n := in.Chunk.Rows()
	return activities.ChunkResult{Chunk: in.Chunk.Index, Attempted: activities.OpCounts{Added: n},
		Succeeded: activities.OpCounts{Added: n - 1}, Rejected: activities.OpCounts{Added: 1}, Requests: 1}, nil
}

func TestRunCommitsEveryChunkAndReports(t *testing.T) {
	e := env(t)
	var committed []int
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(5), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(chunkOK)
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
			committed = append([]int(nil), in.Chunks...)
			return warehouse.CommitResult{Upserted: 45, Held: 5}, nil
		})
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{
		TopReasons: []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "invalidEmails", Count: 5}}}, nil)

	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	require.True(t, e.IsWorkflowCompleted())
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	sort.Ints(committed)
	require.Equal(t, []int{0, 1, 2, 3, 4}, committed)
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(50), rep.Planned.Added)
	require.Equal(t, int64(50), rep.Attempted.Added)
	require.Equal(t, int64(45), rep.Succeeded.Added)
	require.Equal(t, int64(5), rep.Rejected.Added)
	require.Equal(t, int64(5), rep.Requests)
	require.Equal(t, int64(45), rep.Committed)
	require.Equal(t, 5, rep.ChunksDone)
	require.Len(t, rep.TopRejections, 1)
}

func TestRunNeverExceedsConcurrency(t *testing.T) {
	e := env(t)
	var mu sync.Mutex
	running, peak := 0, 0
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(9), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			mu.Lock()
			running++
			peak = max(peak, running)
			mu.Unlock()
			defer func() { mu.Lock(); running--; mu.Unlock() }()
			return chunkOK(ctx, in)
		})
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(warehouse.CommitResult{}, nil)
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	require.NoError(t, e.GetWorkflowError())
	require.LessOrEqual(t, peak, 2, "spec.sync.concurrency is 2")
}

func TestFailedChunkCommitsTheFinishedOnesAndFails(t *testing.T) {
	e := env(t)
	var committed []int
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(4), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			if in.Chunk.Index == 0 {
				// The model itself is wrong: no pause can cure it.
				return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError("column vanished", activities.ErrTypeInvalidModel, nil)
			}
			time.Sleep(50 * time.Millisecond) // the failure of chunk 0 arrives first
			return chunkOK(ctx, in)
		})
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
			committed = append([]int(nil), in.Chunks...)
			return warehouse.CommitResult{Upserted: 9}, nil
		})
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	err := e.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "column vanished")
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	var rep workflows.RunReport
	require.NoError(t, appErr.Details(&rep), "the failed run still carries its report")
	require.Equal(t, workflows.StateFailed, rep.State)
	require.Equal(t, []int{1}, committed, "the chunk in flight when chunk 0 failed finished and is committed; "+
		"the failed chunk is not, and no chunk starts after the failure (concurrency 2)")
	e.AssertNotCalled(t, "PauseSchedule", mock.Anything, mock.Anything)
}

func TestDryRunSendsNothing(t *testing.T) {
	e := env(t)
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(3), nil)
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec(), DryRun: true})
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	require.Equal(t, workflows.StateDryRun, rep.State)
	require.Equal(t, int64(30), rep.Planned.Added)
	require.Zero(t, rep.Attempted.Total())
	e.AssertNotCalled(t, "SyncChunk", mock.Anything, mock.Anything)
	e.AssertNotCalled(t, "Commit", mock.Anything, mock.Anything)
}

func TestInvalidSpecFailsBeforeAnyActivity(t *testing.T) {
	e := env(t)
	s := testSpec()
	s.Destination.Mode = "sometimes"
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: s})
	err := e.GetWorkflowError()
	require.ErrorContains(t, err, "destination.mode")
	e.AssertNotCalled(t, "Plan", mock.Anything, mock.Anything)
}

func TestProgressQuery(t *testing.T) {
	e := env(t)
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(2), nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(chunkOK)
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(warehouse.CommitResult{}, nil)
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil)
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	require.NoError(t, e.GetWorkflowError())
	v, err := e.QueryWorkflow(workflows.QueryProgress)
	require.NoError(t, err)
	var p workflows.Progress
	require.NoError(t, v.Get(&p))
	require.Equal(t, 2, p.ChunksDone)
	require.Equal(t, int64(18), p.Succeeded.Added)
}

func workflowRegisterOptions() workflow.RegisterOptions {
	return workflow.RegisterOptions{Name: workflows.WorkflowName}
}

func TestUpdateModeExportsIdentifiersAndPassesConflicts(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe() // the run log: a warehouse write
	grantLock(e)
	sp := testSpec()
	sp.Destination.Mode = "update"
	sp.Sync.LookupMaxRows = 10 // the 30-row plan is "large": export instead of lookups
	var inputs []activities.SyncChunkInput
	var dropped []string
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(plan(3), nil)
	e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(activities.CheckFieldsResult{
		Conflicts: map[string]string{"a": "type conflict: field a is string in Iterable"},
		Warnings:  []string{"type conflict: field a is string in Iterable"}}, nil)
	e.OnActivity("ExportIdentifiers", mock.Anything, mock.Anything).Return(activities.ExportIdentifiersResult{Table: "plan_users_known", Count: 7}, nil)
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			inputs = append(inputs, in)
			return chunkOK(ctx, in)
		})
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(warehouse.CommitResult{}, nil)
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.FinishInput) (activities.FinishResult, error) {
			dropped = in.Tables
			return activities.FinishResult{}, nil
		})
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: sp})
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	require.Equal(t, activities.ExistenceExport, rep.Existence)
	require.Contains(t, rep.Warnings, "type conflict: field a is string in Iterable", "reported once, at activation level")
	require.Len(t, inputs, 3)
	for _, in := range inputs {
		require.Equal(t, activities.ExistenceExport, in.Existence)
		require.Equal(t, "plan_users_known", in.KnownTable)
		require.Contains(t, in.Conflicts, "a")
	}
	require.ElementsMatch(t, []string{"plan_users_x", "plan_users_known"}, dropped, "the run's tables are dropped")
}

func TestExistenceStrategy(t *testing.T) {
	tests := []struct {
		name        string
		mode, ptype string
		idField     string
		rows        int64
		want        string
	}{
		{"upsert never checks", "upsert", "hybrid", "email", 5, activities.ExistenceNone},
		{"email project by userId: Iterable refuses to create", "update", "email", "userId", 1e6, activities.ExistenceNative},
		{"small plan: lookups", "update", "hybrid", "email", 10000, activities.ExistenceLookup},
		{"large plan: one export", "update", "hybrid", "email", 10001, activities.ExistenceExport},
		{"userId project, large plan", "update", "userId", "userId", 50000, activities.ExistenceExport},
		{"email project by email: lookups", "update", "email", "email", 3, activities.ExistenceLookup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := testSpec()
			sp.Destination.Mode, sp.Destination.Iterable.ProjectType, sp.Destination.Identifier.Field = tc.mode, tc.ptype, tc.idField
			require.Equal(t, tc.want, activities.ExistenceStrategy(sp, tc.rows))
		})
	}
}

// The UI's Start Workflow form takes {"activationId": "users"}: the run takes its spec from the
// activation's schedule, and says clearly when the activation was never applied.
func TestRunByActivationID(t *testing.T) {
	e := env(t)
	act := testSpec()
	var asked activities.ScheduleInput
	e.OnActivity("LoadSpec", mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ScheduleInput) (spec.Activation, error) {
		asked = in
		return act, nil
	})
	var planned activities.PlanInput
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanInput) (warehouse.Plan, error) {
		planned = in
		return plan(0), nil
	})
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil).Maybe()
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{ActivationID: act.ID, FullResync: true})
	require.NoError(t, e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(t, e.GetWorkflowResult(&rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, act.ID, rep.ActivationID)
	require.Equal(t, workflows.ScheduleID(act.ID), asked.ScheduleID)
	require.Equal(t, act.ID, planned.Spec.ID, "the run uses the schedule's spec")
	require.True(t, planned.FullResync)

	e = env(t)
	e.OnActivity("LoadSpec", mock.Anything, mock.Anything).Return(spec.Activation{},
		temporal.NewNonRetryableApplicationError("activation nope is not applied: there is no schedule activation-nope", activities.ErrTypeInvalidSpec, nil))
	e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{ActivationID: "nope"})
	err := e.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "activation nope is not applied")
}
