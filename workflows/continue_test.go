package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/proto"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/workflows"
)

// chain runs the executions of one run in the test environment, one environment per execution,
// as the server does on continue-as-new, and records what each did.
type chain struct {
	t       *testing.T
	mu      sync.Mutex
	plans   int
	commits [][]int
	synced  []int
	// signals lists the external signals per execution: "<workflow id>/<signal name>".
	signals  [][]string
	requests int // RequestLock calls
	finishes int
	// sizes keeps, per activity, the largest input (or result) it was given, in JSON bytes.
	sizes map[string]int
}

func (c *chain) size(name string, v any) {
	b, err := json.Marshal(v)
	require.NoError(c.t, err)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sizes == nil {
		c.sizes = map[string]int{}
	}
	c.sizes[name] = max(c.sizes[name], len(b))
}

// execute runs one execution; it returns the next execution's input when it continued as new.
func (c *chain) execute(in workflows.RunInput, p warehouse.Plan) (workflows.RunReport, *workflows.RunInput, error) {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe() // the run log: a warehouse write
	idx := len(c.signals)
	c.signals = append(c.signals, nil)
	e.OnActivity("RequestLock", mock.Anything, mock.Anything).Return(func(context.Context, activities.RequestLockInput) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.requests++
		return nil
	}).Maybe()
	e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(
		func(_, workflowID, _, name string, _ any) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.signals[idx] = append(c.signals[idx], workflowID+"/"+name)
			return nil
		}).Maybe()
	if in.Continued == nil {
		e.RegisterDelayedCallback(func() { e.SignalWorkflow(activities.SignalLockGranted, nil) }, 0)
	}
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(func(context.Context, activities.PlanInput) (warehouse.Plan, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.plans++
		return p, nil
	}).Maybe()
	e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(activities.CheckFieldsResult{}, nil).Maybe()
	e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			c.size("SyncChunk input", in)
			c.mu.Lock()
			c.synced = append(c.synced, in.Chunk.Index)
			c.mu.Unlock()
			return rejecting(1)(in, 1)
		}).Maybe()
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
			c.size("Commit input", in)
			c.mu.Lock()
			defer c.mu.Unlock()
			c.commits = append(c.commits, append([]int(nil), in.Chunks...))
			return warehouse.CommitResult{Upserted: int64(9 * len(in.Chunks)), Held: int64(len(in.Chunks))}, nil
		}).Maybe()
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(func(context.Context, activities.FinishInput) (activities.FinishResult, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.finishes++
		return activities.FinishResult{}, nil
	}).Maybe()

	e.ExecuteWorkflow(workflows.ActivationWorkflow, in)
	require.True(c.t, e.IsWorkflowCompleted())
	err := e.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	if errors.As(err, &can) {
		require.Equal(c.t, workflows.WorkflowName, can.WorkflowType.Name)
		var next workflows.RunInput
		require.NoError(c.t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
		c.mu.Lock()
		if c.sizes == nil {
			c.sizes = map[string]int{}
		}
		c.sizes["continue-as-new input"] = max(c.sizes["continue-as-new input"], proto.Size(can.Input))
		c.mu.Unlock()
		return workflows.RunReport{}, &next, nil
	}
	if err != nil {
		return workflows.RunReport{}, nil, err
	}
	var rep workflows.RunReport
	require.NoError(c.t, e.GetWorkflowResult(&rep))
	c.size("run report", rep)
	return rep, nil, nil
}

// TestPayloadsStayBoundedOnAHugePlan: a plan of 50,000 chunks (500 million rows at the default
// chunk size) keeps every payload far below Temporal's 2 MB limit. What travels is the plan's
// size, a cursor into it, the failed chunks and the committed chunks as ranges: the first
// execution, and a late one that has committed 49,990 chunks with a few gaps, stay under 512 KB.
func TestPayloadsStayBoundedOnAHugePlan(t *testing.T) {
	const chunks = 50000
	huge := warehouse.Plan{Table: "plan_users_x", Rows: chunks * 10, ChunkRows: 10,
		Counts: warehouse.Counts{ModelRows: chunks * 10, Added: chunks * 10}}
	c := &chain{t: t}
	act := testSpec()
	in := workflows.RunInput{Spec: act, ChunksPerExecution: 200}
	_, next, err := c.execute(in, huge)
	require.NoError(t, err)
	require.NotNil(t, next, "the run continues as new")
	require.Equal(t, 200, next.Continued.Next)
	c.size("Plan result", huge)

	// A late execution: 49,990 chunks committed, four of them failed and still to redo.
	late := *next.Continued
	late.Next = chunks - 10
	late.Redo = []int{7, 1000, 20000, 40000}
	late.Committed = nil
	for i := 0; i < chunks-10; i++ {
		if !slices.Contains(late.Redo, i) {
			late.Committed = activities.AddChunk(late.Committed, i)
		}
	}
	require.Len(t, late.Committed, 5)
	in.Continued = &late
	in.ChunksPerExecution = 0
	rep, next, err := c.execute(in, huge)
	require.NoError(t, err)
	require.Nil(t, next)
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, chunks, rep.Chunks)

	require.Subset(t, slices.Collect(maps.Keys(c.sizes)), []string{"Plan result", "SyncChunk input", "Commit input", "continue-as-new input", "run report"})
	for name, n := range c.sizes {
		t.Logf("largest %s: %d bytes", name, n)
		require.Less(t, n, 512*1024, "%s", name)
	}
}

// TestContinueAsNewCarriesTheRun: a run of 10 chunks with chunksPerExecution 4 takes three
// executions. Each hands over only what is left, after committing what finished; the chain
// plans once, takes the lock once and releases it once (at the end), keeps the first
// execution's run id for the warehouse, and reports the sum of all executions.
func TestContinueAsNewCarriesTheRun(t *testing.T) {
	c := &chain{t: t}
	act := testSpec()
	act.Sync.Concurrency = 3
	in := workflows.RunInput{Spec: act, ChunksPerExecution: 4}
	p := plan(10)

	var handovers []workflows.Continuation
	var rep workflows.RunReport
	for i := 0; ; i++ {
		require.Less(t, i, 5, "the chain ends")
		r, next, err := c.execute(in, p)
		require.NoError(t, err)
		if next == nil {
			rep = r
			break
		}
		require.NotNil(t, next.Continued)
		handovers = append(handovers, *next.Continued)
		in = *next
	}

	require.Len(t, handovers, 2, "10 chunks at 4 per execution: 3 executions")
	first := handovers[0]
	require.NotEmpty(t, first.RunID)
	require.Equal(t, 2, first.Executions)
	require.Equal(t, first.RunID, first.Lock.RunID, "the lock is the first execution's request")
	require.Equal(t, 4, first.Next, "only where the chunks left start is handed over")
	require.Empty(t, first.Redo)
	require.Nil(t, first.Plan.Chunks, "the plan's chunks are never listed")
	require.Equal(t, []activities.ChunkRange{{First: 0, Last: 3}}, first.Committed, "what finished was committed before the hand-over")
	require.Equal(t, 4, first.Report.ChunksDone)
	require.Equal(t, int64(40), first.Report.Attempted.Total())
	require.Equal(t, int64(4), first.Held)
	require.Equal(t, []string{p.Table}, first.Tables, "the plan table is kept for the next execution")
	second := handovers[1]
	require.Equal(t, first.RunID, second.RunID, "every execution works on the first one's plan and rejections")
	require.Equal(t, first.Lock, second.Lock)
	require.Equal(t, 3, second.Executions)
	require.Equal(t, 8, second.Next)

	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, first.RunID, rep.RunID)
	require.Equal(t, 3, rep.Executions)
	require.Equal(t, 10, rep.Chunks)
	require.Equal(t, 10, rep.ChunksDone)
	require.Equal(t, int64(100), rep.Attempted.Total())
	require.Equal(t, int64(10), rep.Rejected.Total())
	require.Equal(t, int64(90), rep.Committed)

	require.Equal(t, 1, c.plans, "the chain plans once")
	require.Equal(t, 1, c.requests, "the chain asks for the lock once")
	require.Equal(t, 1, c.finishes, "the plan table is dropped once, at the end")
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, sortedInts(c.synced), "every chunk was sent once")
	var committed []int
	for _, cm := range c.commits {
		committed = append(committed, cm...)
	}
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, sortedInts(committed), "every chunk was committed once")
	release := activities.LockWorkflowID(act.ID) + "/" + activities.SignalLockRelease
	require.NotContains(t, c.signals[0], release, "the first execution keeps the lock")
	require.NotContains(t, c.signals[1], release, "the second execution keeps the lock")
	require.Contains(t, c.signals[2], release, "the last execution releases it")
}

// TestContinueAsNewWaitsForAPauseFirst: an operator's pause that arrives when the execution
// should hand over wins: the run pauses (Temporal keeps the execution), and continues as new
// only after the resume, with the pause in its report.
func TestContinueAsNewAfterAResume(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(0))
	w.e.RegisterDelayedCallback(func() {
		w.e.SignalWorkflow(workflows.SignalPause, workflows.PauseInput{Reason: "check the model"})
	}, 0)
	w.e.RegisterDelayedCallback(func() {
		require.Equal(t, workflows.StatePaused, w.progress().State)
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "model checked"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil), ChunksPerExecution: 2})
	require.True(t, w.e.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, w.e.GetWorkflowError(), &can)
	var next workflows.RunInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.NotNil(t, next.Continued)
	require.Len(t, next.Continued.Report.Pauses, 1)
	require.Equal(t, workflows.CauseOperator, next.Continued.Report.Pauses[0].Cause)
	require.NotNil(t, next.Continued.Report.Pauses[0].EndedAt)
	require.Equal(t, 2, next.Continued.Next, "2 of 6 chunks were sent in the first execution")
	require.Len(t, w.unpaused, 1, "the resume unpaused the schedule")
	require.False(t, next.Continued.SchedulePaused)
}

func sortedInts(in []int) []int {
	out := append([]int(nil), in...)
	sort.Ints(out)
	return out
}

// queuedWorld is a run that waits for the activation's lock: RequestLock succeeds but the lock
// is granted only when the test says so.
func queuedWorld(t *testing.T) (*world, *[]string) {
	w := newWorld(t, chunks10(3, 1000), rejecting(0))
	// newWorld grants the lock at once; a second environment is simpler than undoing that.
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe() // the run log: a warehouse write
	w.e = e
	var mu sync.Mutex
	var released []string
	e.OnActivity("RequestLock", mock.Anything, mock.Anything).Return(nil)
	e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(
		func(_, workflowID, _, name string, arg any) error {
			mu.Lock()
			defer mu.Unlock()
			if name == activities.SignalLockRelease {
				released = append(released, workflowID)
			}
			return nil
		}).Maybe()
	return w, &released
}

// TestAbortWhileQueuedEndsAtOnce: an abort sent to a run that waits for the lock ends it at
// once, without planning, and the run leaves the lock's queue.
func TestAbortWhileQueuedEndsAtOnce(t *testing.T) {
	w, released := queuedWorld(t)
	plans := 0
	w.e.OnActivity("Plan", mock.Anything, mock.Anything).Return(func(context.Context, activities.PlanInput) (warehouse.Plan, error) {
		plans++
		return chunks10(3, 1000), nil
	}).Maybe()
	w.e.RegisterDelayedCallback(func() {
		w.e.SignalWorkflow(activities.SignalLockQueued, activities.LockQueued{Holder: "activation-users-earlier", Position: 1})
	}, time.Second)
	w.e.RegisterDelayedCallback(func() {
		p := w.progress()
		require.Equal(t, workflows.StateQueued, p.State)
		require.Equal(t, "activation-users-earlier", p.WaitingFor)
		w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "not needed any more"})
	}, time.Minute)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	rep := w.report()
	require.Equal(t, workflows.StateAborted, rep.State)
	require.Equal(t, "not needed any more", rep.AbortReason)
	require.Less(t, rep.Duration, time.Hour, "it did not wait for the lock")
	require.Zero(t, plans, "an aborted queued run does not plan")
	require.Equal(t, []string{activities.LockWorkflowID("users")}, *released, "it leaves the lock's queue")
}

// TestPauseWhileQueuedAppliesBeforePlanning: a pause sent to a waiting run is kept; once the run
// holds the lock it pauses before planning, and plans after the resume.
func TestPauseWhileQueuedAppliesBeforePlanning(t *testing.T) {
	w, _ := queuedWorld(t)
	plans := 0
	w.e.OnActivity("Plan", mock.Anything, mock.Anything).Return(func(context.Context, activities.PlanInput) (warehouse.Plan, error) {
		plans++
		return chunks10(3, 1000), nil
	})
	w.e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			return rejecting(0)(in, 1)
		})
	w.e.OnActivity("Commit", mock.Anything, mock.Anything).Return(warehouse.CommitResult{Upserted: 10}, nil)
	w.e.OnActivity("Finish", mock.Anything, mock.Anything).Return(activities.FinishResult{}, nil)
	w.e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(activities.CheckFieldsResult{}, nil)
	w.e.OnActivity("PauseSchedule", mock.Anything, mock.Anything).Return(activities.ScheduleResult{Found: true}, nil)
	w.e.OnActivity("UnpauseSchedule", mock.Anything, mock.Anything).Return(activities.ScheduleResult{Found: true, WasPaused: true}, nil)
	w.e.RegisterDelayedCallback(func() {
		w.e.SignalWorkflow(workflows.SignalPause, workflows.PauseInput{Reason: "maintenance"})
	}, time.Second)
	w.e.RegisterDelayedCallback(func() { w.e.SignalWorkflow(activities.SignalLockGranted, nil) }, time.Minute)
	w.e.RegisterDelayedCallback(func() {
		p := w.progress()
		require.Equal(t, workflows.StatePaused, p.State)
		require.NotNil(t, p.Pause)
		require.Equal(t, workflows.CauseOperator, p.Pause.Cause)
		require.Contains(t, p.Pause.Reason, "maintenance")
		require.Zero(t, plans, "paused before planning")
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "done"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: testSpec()})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 1, plans)
	require.Equal(t, 3, rep.ChunksDone)
}

// TestWarehousePauses: a plan or a commit whose retries run out pauses the run with cause
// warehouse; the run probes the warehouse and runs the step again by itself. A step that keeps
// failing after maxAutoResumes automatic resumes waits for a person.
func TestWarehousePauses(t *testing.T) {
	down := errors.New("warehouse: connection refused")
	tests := []struct {
		name       string
		planFails  int // failed Plan attempts (the policy tries 5 times per activity)
		commitFail int // failed Commit attempts (10 per activity)
		wantState  string
		wantCause  string
		wantAuto   []bool // AutoResume of each pause, in order
	}{
		{name: "plan, the warehouse comes back", planFails: 5, wantState: workflows.StateCompleted,
			wantCause: workflows.CauseWarehouse, wantAuto: []bool{true}},
		{name: "commit, the warehouse comes back", commitFail: 10, wantState: workflows.StateCompleted,
			wantCause: workflows.CauseWarehouse, wantAuto: []bool{true}},
		{name: "plan keeps failing: a person decides", planFails: 1000, wantState: workflows.StateAborted,
			wantCause: workflows.CauseWarehouse, wantAuto: []bool{true, true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, chunks10(3, 1000), rejecting(0))
			planCalls, commitCalls, probes := 0, 0, 0
			w.planFn = func(context.Context, activities.PlanInput) (warehouse.Plan, error) {
				planCalls++
				if planCalls <= tc.planFails {
					return warehouse.Plan{}, down
				}
				return chunks10(3, 1000), nil
			}
			w.commitFn = func(context.Context, activities.CommitInput) (warehouse.CommitResult, error) {
				commitCalls++
				if commitCalls <= tc.commitFail {
					return warehouse.CommitResult{}, down
				}
				return warehouse.CommitResult{Upserted: 30}, nil
			}
			w.e.OnActivity("ProbeWarehouse", mock.Anything, mock.Anything).Return(func(context.Context, activities.ProbeInput) error {
				probes++
				return nil
			})
			if tc.wantState == workflows.StateAborted {
				w.e.RegisterDelayedCallback(func() {
					p := w.progress()
					require.Equal(t, workflows.StatePaused, p.State)
					require.False(t, p.Pause.AutoResume)
					require.Contains(t, p.Pause.Reason, "resumed automatically 3 times without progress")
					w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "warehouse broken"})
				}, 24*time.Hour)
			}
			w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(&spec.Thresholds{PauseTimeout: spec.Duration(48 * time.Hour)})})
			rep := w.report()
			require.Equal(t, tc.wantState, rep.State)
			require.Len(t, rep.Pauses, len(tc.wantAuto))
			for i, p := range rep.Pauses {
				require.Equal(t, tc.wantCause, p.Cause, "pause %d", i)
				require.Equal(t, tc.wantAuto[i], p.AutoResume, "pause %d", i)
				require.Contains(t, p.Reason, "connection refused")
			}
			require.Equal(t, len(tc.wantAuto)-boolInt(tc.wantState == workflows.StateAborted), probes, "one successful probe per automatic resume")
			if tc.wantState == workflows.StateCompleted {
				require.Equal(t, 3, rep.ChunksDone)
				require.Contains(t, rep.Pauses[0].EndedBy, "the warehouse answers again")
				require.Equal(t, int64(30), rep.Committed, "the commit ran again")
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestFailedChunkResumesFromItsCursor: a chunk that fails (Iterable unavailable) after part of
// its rows were answered hands its cursor over in the error's details; after the automatic
// resume, its next activity starts after that cursor, and the report counts its rows once.
func TestFailedChunkResumesFromItsCursor(t *testing.T) {
	var resumed []*activities.ChunkProgress
	w := newWorld(t, chunks10(3, 1000), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		if in.Chunk.Index != 1 {
			return rejecting(0)(in, call)
		}
		if call == 1 {
			cur := activities.ChunkProgress{AfterSeq: in.Chunk.FirstSeq + 3, Result: activities.ChunkResult{
				Chunk: 1, Attempted: activities.OpCounts{Added: 4}, Succeeded: activities.OpCounts{Added: 4}, Requests: 1}}
			return activities.ChunkResult{}, temporal.NewApplicationErrorWithOptions("chunk 1: Iterable unavailable",
				activities.ErrTypeIterableUnavailable, temporal.ApplicationErrorOptions{NonRetryable: true, Details: []any{cur}})
		}
		resumed = append(resumed, in.Resume)
		if in.Resume == nil {
			return rejecting(0)(in, call)
		}
		// The activity goes on after the cursor: its result includes the rows answered before.
		res := in.Resume.Result
		rest := in.Chunk.LastSeq - in.Resume.AfterSeq
		res.Attempted.Added += rest
		res.Succeeded.Added += rest
		res.Requests++
		return res, nil
	})
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(&spec.Thresholds{PauseTimeout: spec.Duration(time.Hour)})})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Len(t, rep.Pauses, 1)
	require.Equal(t, workflows.CauseTransient, rep.Pauses[0].Cause)
	require.Len(t, resumed, 1)
	require.NotNil(t, resumed[0], "the chunk's next activity got its cursor")
	require.Equal(t, int64(14), resumed[0].AfterSeq)
	require.Equal(t, int64(30), rep.Attempted.Total(), "every row counted once")
	require.Equal(t, int64(30), rep.Succeeded.Total())
}
