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

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/workflows"
)

// world records what a run did through its (mocked) activities.
type world struct {
	t *testing.T
	e *testsuite.TestWorkflowEnvironment
	// checkFields, when set, answers CheckFields.
	checkFields func(context.Context, activities.CheckFieldsInput) (activities.CheckFieldsResult, error)
	// planFn and commitFn, when set, answer Plan and Commit.
	planFn   func(context.Context, activities.PlanInput) (warehouse.Plan, error)
	commitFn func(context.Context, activities.CommitInput) (warehouse.CommitResult, error)
	// syncMock is the SyncChunk mock (tests may add .After to make chunks take time).
	syncMock *testsuite.MockCallWrapper

	mu        sync.Mutex
	synced    []int // chunk indices, in the order SyncChunk answered them successfully
	commits   [][]int
	skipped   [][]int
	paused    []activities.ScheduleInput
	unpaused  []activities.ScheduleInput
	probes    int
	probeErrs []error // answers of the successive probes; nil once exhausted
	updates   []*sent
	finished  bool
	runLog    []warehouse.RunRecord // what RecordRun was given
}

// chunkFunc answers SyncChunk; call is the 1-based number of calls for this chunk so far.
type chunkFunc func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error)

// rejecting answers every chunk with `rejected` of its rows rejected (before or by Iterable).
func rejecting(rejected int64) chunkFunc {
	return func(in activities.SyncChunkInput, _ int) (activities.ChunkResult, error) {
		n := in.Chunk.Rows()
		return activities.ChunkResult{Chunk: in.Chunk.Index, Attempted: activities.OpCounts{Added: n},
			Succeeded: activities.OpCounts{Added: n - rejected}, Rejected: activities.OpCounts{Added: rejected}, Requests: 1}, nil
	}
}

func newWorld(t *testing.T, p warehouse.Plan, sync chunkFunc) *world {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.ActivationWorkflow, workflowRegisterOptions())
	e.RegisterActivity(&activities.Activities{})
	grantLock(e)
	w := &world{t: t, e: e}
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RecordRunInput) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.runLog = append(w.runLog, in.Record)
		return nil
	}).Maybe()
	calls := map[int]int{}
	e.OnActivity("Plan", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.PlanInput) (warehouse.Plan, error) {
			if w.planFn != nil {
				return w.planFn(ctx, in)
			}
			return p, nil
		})
	e.OnActivity("CheckFields", mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.CheckFieldsInput) (activities.CheckFieldsResult, error) {
			if w.checkFields != nil {
				return w.checkFields(ctx, in)
			}
			return activities.CheckFieldsResult{}, nil
		}).Maybe()
	w.syncMock = e.OnActivity("SyncChunk", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SyncChunkInput) (activities.ChunkResult, error) {
			w.mu.Lock()
			calls[in.Chunk.Index]++
			call := calls[in.Chunk.Index]
			w.mu.Unlock()
			res, err := sync(in, call)
			if err == nil {
				w.mu.Lock()
				w.synced = append(w.synced, in.Chunk.Index)
				w.mu.Unlock()
			}
			return res, err
		}).Maybe()
	e.OnActivity("Commit", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
			if w.commitFn != nil {
				return w.commitFn(context.Background(), in)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			w.commits = append(w.commits, append([]int(nil), in.Chunks...))
			// 10 rows per chunk, 3 of them held back in the rejection tests' chunks.
			return warehouse.CommitResult{Upserted: int64(7 * len(in.Chunks)), Held: int64(3 * len(in.Chunks))}, nil
		}).Maybe()
	e.OnActivity("SkipRejected", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.skipped = append(w.skipped, append(append([]int(nil), in.Chunks...), activities.ChunksOf(in.Ranges)...))
			return warehouse.CommitResult{Upserted: int64(10 * len(in.Chunks))}, nil
		}).Maybe()
	e.OnActivity("Finish", mock.Anything, mock.Anything).Return(
		func(context.Context, activities.FinishInput) (activities.FinishResult, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.finished = true
			return activities.FinishResult{}, nil
		}).Maybe()
	e.OnActivity("TopRejections", mock.Anything, mock.Anything).Return(
		[]warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "invalid email in column email: it has no @", Count: 9}}, nil).Maybe()
	e.OnActivity("PauseSchedule", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ScheduleInput) (activities.ScheduleResult, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.paused = append(w.paused, in)
			return activities.ScheduleResult{Found: true}, nil
		}).Maybe()
	e.OnActivity("UnpauseSchedule", mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ScheduleInput) (activities.ScheduleResult, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.unpaused = append(w.unpaused, in)
			return activities.ScheduleResult{Found: true, WasPaused: true}, nil
		}).Maybe()
	e.OnActivity("Probe", mock.Anything, mock.Anything).Return(
		func(context.Context, activities.ProbeInput) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.probes++
			if len(w.probeErrs) == 0 {
				return nil
			}
			err := w.probeErrs[0]
			w.probeErrs = w.probeErrs[1:]
			return err
		}).Maybe()
	return w
}

// chunks10 is a plan of n chunks of 10 added rows against a state of `synced` unchanged rows.
func chunks10(n int, synced int64) warehouse.Plan {
	p := plan(n)
	p.Counts.Unchanged = synced
	p.Counts.ModelRows = int64(n*10) + synced
	return p
}

func serial(th *spec.Thresholds) spec.Activation {
	s := testSpec()
	s.Sync.Concurrency = 1
	s.Thresholds = th
	return s
}

func pct(v float64) *float64 { return &v }

func (w *world) progress() workflows.Progress {
	w.t.Helper()
	v, err := w.e.QueryWorkflow(workflows.QueryProgress)
	require.NoError(w.t, err)
	var p workflows.Progress
	require.NoError(w.t, v.Get(&p))
	return p
}

// sent is an update sent to the run; its answer arrives after the delayed callback returns.
type sent struct {
	name      string
	accept    bool // the test expects it to be accepted
	refused   error
	completed bool
	err       error
}

// update sends an update that the test expects to be accepted (report checks it was).
func (w *world) update(name string, arg any) *sent { return w.send(name, arg, true) }

// refusal sends an update that the test expects to be refused; check its refused field later.
func (w *world) refusal(name string, arg any) *sent { return w.send(name, arg, false) }

func (w *world) send(name string, arg any, accept bool) *sent {
	u := &sent{name: name, accept: accept}
	w.mu.Lock()
	w.updates = append(w.updates, u)
	w.mu.Unlock()
	w.e.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
		OnAccept:   func() {},
		OnReject:   func(err error) { u.refused = err },
		OnComplete: func(_ any, err error) { u.completed, u.err = true, err },
	}, arg)
	return u
}

func (w *world) report() workflows.RunReport {
	w.t.Helper()
	for _, u := range w.updates {
		if u.accept {
			require.NoError(w.t, u.refused, "update %s", u.name)
			require.True(w.t, u.completed, "update %s", u.name)
			require.NoError(w.t, u.err, "update %s", u.name)
		} else {
			require.Error(w.t, u.refused, "update %s should have been refused", u.name)
		}
	}
	require.True(w.t, w.e.IsWorkflowCompleted())
	require.NoError(w.t, w.e.GetWorkflowError())
	var rep workflows.RunReport
	require.NoError(w.t, w.e.GetWorkflowResult(&rep))
	return rep
}

func (w *world) syncedSorted() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]int(nil), w.synced...)
	sort.Ints(out)
	return out
}

func (w *world) allCommitted() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for _, c := range w.commits {
		out = append(out, c...)
	}
	sort.Ints(out)
	return out
}

// TestThresholdsPause checks that each threshold pauses the run with its cause, that nothing is
// started while paused, and that the pause says why and what to do.
func TestThresholdsPause(t *testing.T) {
	tests := []struct {
		name        string
		thresholds  *spec.Thresholds
		plan        warehouse.Plan
		sync        chunkFunc
		cause       string
		reason      string
		chunksDone  int
		autoResume  bool
		syncedFirst []int
	}{
		{
			name:       "rejected percent, once minAttempted rows were attempted",
			thresholds: &spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 30},
			plan:       chunks10(6, 1000), sync: rejecting(3),
			cause: workflows.CauseRejections, reason: "9 of 30 rows attempted", chunksDone: 3, syncedFirst: []int{0, 1, 2},
		},
		{
			name:       "maxRejectedPercent 0 pauses on the first rejection",
			thresholds: &spec.Thresholds{MaxRejectedPercent: pct(0), MinAttempted: 1},
			plan:       chunks10(6, 1000), sync: rejecting(1),
			cause: workflows.CauseRejections, reason: "1 of 10 rows attempted", chunksDone: 1, syncedFirst: []int{0},
		},
		{
			name:       "consecutive failed requests: IterableUnavailable is a transient pause",
			thresholds: &spec.Thresholds{PauseTimeout: spec.Duration(time.Hour)},
			plan:       chunks10(4, 1000),
			sync: func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
				if in.Chunk.Index == 2 {
					return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError(
						"chunk 2: Iterable unavailable: 20 consecutive requests failed (last: HTTP 503)", activities.ErrTypeIterableUnavailable, nil)
				}
				return rejecting(0)(in, call)
			},
			cause: workflows.CauseTransient, reason: "20 consecutive requests failed", chunksDone: 2, autoResume: true, syncedFirst: []int{0, 1},
		},
		{
			name:       "exhausted retries of a retryable error are a transient pause",
			thresholds: &spec.Thresholds{PauseTimeout: spec.Duration(time.Hour)},
			plan:       chunks10(4, 1000),
			sync: func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
				if in.Chunk.Index == 1 {
					return activities.ChunkResult{}, errors.New("bulkUpdate: giving up after 8 attempts: HTTP 503")
				}
				return rejecting(0)(in, call)
			},
			cause: workflows.CauseTransient, reason: "HTTP 503", chunksDone: 1, autoResume: true, syncedFirst: []int{0},
		},
		{
			name: "changed percent: the volume guard, before anything is sent",
			plan: func() warehouse.Plan {
				p := chunks10(6, 0)
				p.Counts = warehouse.Counts{ModelRows: 100, Unchanged: 40, Added: 30, Changed: 30}
				return p
			}(),
			sync:  rejecting(0),
			cause: workflows.CauseVolume, reason: "adds or changes 60 of the model's 100 rows (60.0%", chunksDone: 0,
		},
		{
			name: "removed percent: the volume guard, before anything is sent",
			plan: func() warehouse.Plan {
				p := chunks10(3, 0)
				p.Counts = warehouse.Counts{ModelRows: 70, Unchanged: 70, Removed: 30}
				return p
			}(),
			sync:  rejecting(0),
			cause: workflows.CauseVolume, reason: "removes 30 of the 100 rows previously synced (30.0%", chunksDone: 0,
		},
		{
			name:       "a fatal destination error pauses at once",
			thresholds: nil,
			plan:       chunks10(4, 1000),
			sync: func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
				if in.Chunk.Index == 1 {
					return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError(
						"Iterable refused the project: HTTP 401 BadApiKey (fatal)", activities.ErrTypeIterableFatal, nil)
				}
				return rejecting(0)(in, call)
			},
			cause: workflows.CauseFatal, reason: "BadApiKey", chunksDone: 1, syncedFirst: []int{0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.plan, tc.sync)
			if tc.autoResume {
				// Iterable stays down: the probes fail until the test ends the run.
				w.probeErrs = make([]error, 100)
				for i := range w.probeErrs {
					w.probeErrs[i] = errors.New("getFields: HTTP 503")
				}
			}
			var seen workflows.Progress
			var syncedWhilePaused []int
			w.e.RegisterDelayedCallback(func() {
				seen = w.progress()
				syncedWhilePaused = w.syncedSorted()
				w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "test over"})
			}, 10*time.Minute)
			w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(tc.thresholds)})

			require.Equal(t, workflows.StatePaused, seen.State)
			require.NotNil(t, seen.Pause)
			require.Equal(t, tc.cause, seen.Pause.Cause)
			require.Contains(t, seen.Pause.Reason, tc.reason)
			require.Equal(t, tc.autoResume, seen.Pause.AutoResume)
			require.Contains(t, seen.Pause.NextStep, "starter resume users --reason")
			require.True(t, seen.Pause.SchedulePaused)
			require.Equal(t, tc.chunksDone, seen.ChunksDone)
			require.Equal(t, tc.syncedFirst, syncedWhilePaused, "nothing starts after the pause; in-flight chunks finished")
			require.Equal(t, tc.syncedFirst, w.allCommitted(), "what finished was committed before pausing")
			require.Len(t, w.paused, 1)
			require.Equal(t, "activation-users", w.paused[0].ScheduleID)
			require.Contains(t, w.paused[0].Note, tc.cause)

			rep := w.report()
			require.Equal(t, workflows.StateAborted, rep.State)
			require.Equal(t, "test over", rep.AbortReason)
			require.Len(t, rep.Pauses, 1)
			require.Contains(t, rep.Pauses[0].EndedBy, "abort")
			if tc.cause == workflows.CauseRejections {
				require.NotEmpty(t, seen.Pause.TopRejections, "the pause says what was rejected")
			}
			if !tc.autoResume {
				require.Zero(t, w.probes, "data and fatal causes wait for a person")
			}
		})
	}
}

func TestRejectedPercentWaitsForMinAttempted(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(3))
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{
		Spec: serial(&spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 100})})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State, "30% rejected, but only 60 of the required 100 rows attempted")
	require.Equal(t, int64(18), rep.Rejected.Total())
	require.Empty(t, rep.Pauses)
	require.Empty(t, w.paused)
}

func TestVolumeGuardSkipsFirstRunsAndFullResyncs(t *testing.T) {
	first := chunks10(3, 0) // empty state: everything is added
	w := newWorld(t, first, rejecting(0))
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.StateCompleted, w.report().State)

	full := chunks10(3, 0)
	full.Counts = warehouse.Counts{ModelRows: 30, Added: 30, Removed: 1}
	w = newWorld(t, full, rejecting(0))
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil), FullResync: true})
	require.Equal(t, workflows.StateCompleted, w.report().State)
}

func TestVolumeGuardDoesNotCountRetriedRows(t *testing.T) {
	// 60 of 100 rows are adds, but 55 of them were held back by earlier runs: 5% of new volume.
	p := chunks10(3, 0)
	p.Counts = warehouse.Counts{ModelRows: 100, Unchanged: 40, Added: 60, Retried: 55}
	w := newWorld(t, p, rejecting(0))
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.StateCompleted, w.report().State)
	require.Empty(t, w.paused)

	p.Counts.Retried = 5 // 55 new adds: above the default 50%
	w = newWorld(t, p, rejecting(0))
	w.e.RegisterDelayedCallback(func() {
		require.Equal(t, workflows.StatePaused, w.progress().State)
		w.e.CancelWorkflow()
	}, time.Minute)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.NotEmpty(t, w.paused)
}

func TestDryRunReportsTheVolumeGuardWithoutPausing(t *testing.T) {
	p := chunks10(3, 0)
	p.Counts = warehouse.Counts{ModelRows: 100, Unchanged: 40, Added: 60}
	w := newWorld(t, p, rejecting(0))
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil), DryRun: true})
	rep := w.report()
	require.Equal(t, workflows.StateDryRun, rep.State)
	require.Contains(t, rep.Warnings[len(rep.Warnings)-1], "a real run would pause here: volume guard")
	require.Empty(t, w.paused)
}

// TestResumeContinuesRemainingChunksAndUnpausesSchedule pauses on rejections, resumes through the
// update and checks that the remaining chunks are sent with a fresh threshold window.
func TestResumeContinuesRemainingChunksAndUnpausesSchedule(t *testing.T) {
	w := newWorld(t, chunks10(5, 1000), rejecting(3))
	w.e.RegisterDelayedCallback(func() {
		require.Equal(t, workflows.StatePaused, w.progress().State)
		require.Empty(t, w.unpaused)
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "known bad emails, fixed upstream tomorrow"})
	}, time.Hour)
	w.e.RegisterDelayedCallback(func() {
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "still known"})
	}, 2*time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{
		Spec: serial(&spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 20})})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	// Paused after chunk 1 (20 rows attempted); after the resume the window starts again, so it
	// pauses once more after chunk 3 (had the window not been fresh: after chunk 2).
	require.Len(t, rep.Pauses, 2)
	require.Equal(t, 2, rep.Pauses[0].ChunksDone)
	require.Equal(t, 4, rep.Pauses[1].ChunksDone, "a fresh window: 20 more rows before the threshold is evaluated again")
	require.Contains(t, rep.Pauses[0].EndedBy, "operator resume (update): known bad emails")
	require.Equal(t, []int{0, 1, 2, 3, 4}, w.syncedSorted(), "every remaining chunk was sent")
	require.Equal(t, []int{0, 1, 2, 3, 4}, w.allCommitted())
	require.Len(t, w.unpaused, 2)
	require.Equal(t, "activation-users", w.unpaused[0].ScheduleID)
	require.Contains(t, w.unpaused[0].Note, "known bad emails")
}

// TestResumeValidatorRefusesEmptyReason checks the update's validator: a refused update does
// not resume the run.
func TestResumeValidatorRefusesEmptyReason(t *testing.T) {
	w := newWorld(t, chunks10(4, 1000), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		if in.Chunk.Index == 1 && call == 1 {
			return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError("HTTP 403 Forbidden (fatal)", activities.ErrTypeIterableFatal, nil)
		}
		return rejecting(0)(in, call)
	})
	var empty, blank *sent
	w.e.RegisterDelayedCallback(func() {
		empty = w.refusal(workflows.UpdateResume, workflows.ResumeInput{})
		blank = w.refusal(workflows.UpdateResume, workflows.ResumeInput{Reason: "   "})
	}, 30*time.Minute)
	w.e.RegisterDelayedCallback(func() {
		require.Equal(t, workflows.StatePaused, w.progress().State, "a refused update does not resume")
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "key rotated"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(&spec.Thresholds{PauseTimeout: spec.Duration(3 * time.Hour)})})
	require.ErrorContains(t, empty.refused, "a reason is required")
	require.ErrorContains(t, blank.refused, "a reason is required")
	require.NoError(t, w.e.GetWorkflowError())
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, []int{0, 1, 2, 3}, w.syncedSorted(), "the chunk that failed is sent again after the resume")
}

// TestOperatorPauseAndAbortLetInFlightChunksFinish uses chunks that take a minute: a resume of
// a running run is refused, a pause waits for the chunks in flight, an abort of a running run
// commits what finished.
func TestOperatorPauseAndAbortLetInFlightChunksFinish(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(0))
	w.syncMock.After(time.Minute)
	var refused *sent
	var running, paused workflows.Progress
	w.e.RegisterDelayedCallback(func() {
		running = w.progress()
		refused = w.refusal(workflows.UpdateResume, workflows.ResumeInput{Reason: "go on"})
		w.e.SignalWorkflow(workflows.SignalPause, workflows.PauseInput{Reason: "Iterable maintenance"})
	}, 90*time.Second)
	w.e.RegisterDelayedCallback(func() { paused = w.progress() }, 10*time.Minute)
	w.e.RegisterDelayedCallback(func() {
		w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "postponed"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.StateRunning, running.State)
	require.Equal(t, 1, running.ChunksDone)
	require.ErrorContains(t, refused.refused, "the run is not paused (state Running)")
	require.Equal(t, workflows.StatePaused, paused.State)
	require.Equal(t, 2, paused.ChunksDone, "the chunk in flight when the pause came finished")
	require.Equal(t, workflows.CauseOperator, paused.Pause.Cause)
	require.Equal(t, []int{0, 1}, w.allCommitted())
	rep := w.report()
	require.Equal(t, workflows.StateAborted, rep.State)

	// Abort while running: the chunk in flight finishes and is committed.
	w = newWorld(t, chunks10(6, 1000), rejecting(0))
	w.syncMock.After(time.Minute)
	w.e.RegisterDelayedCallback(func() {
		w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "stop"})
	}, 90*time.Second)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	rep = w.report()
	require.Equal(t, workflows.StateAborted, rep.State)
	require.Equal(t, []int{0, 1}, w.allCommitted())
	require.Empty(t, w.paused, "an abort of a running run does not touch the schedule")
}

func TestSkipRejectedCommitsTheRunsRejections(t *testing.T) {
	w := newWorld(t, chunks10(3, 1000), rejecting(3))
	w.e.RegisterDelayedCallback(func() {
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "accept them", SkipRejected: true})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{
		Spec: serial(&spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 20})})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, [][]int{{0, 1}}, w.skipped, "the chunks committed before the pause are committed again, rejections included")
	require.Equal(t, int64(6), rep.SkippedByOperator, "3 held rows in each of the 2 chunks")
	// 3 chunks × 7 accepted rows, plus the 6 rows committed on the operator's request.
	require.Equal(t, int64(27), rep.Committed)
	require.Contains(t, rep.Pauses[0].EndedBy, "skipping the rows rejected so far")
}

func TestAbortCommitsWhatSucceeded(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(3))
	var noReason *sent
	w.e.RegisterDelayedCallback(func() {
		noReason = w.refusal(workflows.UpdateAbort, workflows.AbortInput{})
		w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "wrong model deployed"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{
		Spec: serial(&spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 30})})
	rep := w.report()
	require.ErrorContains(t, noReason.refused, "a reason is required")
	require.Equal(t, workflows.StateAborted, rep.State)
	require.Equal(t, "wrong model deployed", rep.AbortReason)
	require.Equal(t, []int{0, 1, 2}, w.allCommitted(), "the finished chunks are committed")
	require.Equal(t, []int{0, 1, 2}, w.syncedSorted(), "nothing is sent after the pause")
	require.Equal(t, int64(21), rep.Committed)
	require.True(t, w.finished, "the plan table is dropped")
	require.Empty(t, w.unpaused, "an aborted run leaves the schedule paused")
	require.Contains(t, rep.Warnings[len(rep.Warnings)-1], "stays paused")
}

// TestAutoResumeAfterTransientPause: the probes fail twice, then Iterable answers; the run
// resumes by itself, sends the chunk that failed and the rest, and unpauses the schedule.
func TestAutoResumeAfterTransientPause(t *testing.T) {
	w := newWorld(t, chunks10(4, 1000), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		if in.Chunk.Index == 1 && call == 1 {
			return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError(
				"Iterable unavailable: 20 consecutive requests failed (last: HTTP 429)", activities.ErrTypeIterableUnavailable, nil)
		}
		return rejecting(0)(in, call)
	})
	w.probeErrs = []error{errors.New("HTTP 503"), errors.New("HTTP 503")}
	var during workflows.Progress
	w.e.RegisterDelayedCallback(func() { during = w.progress() }, 45*time.Second)
	start := w.e.Now()
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	rep := w.report()
	require.Equal(t, workflows.StatePaused, during.State)
	require.True(t, during.Pause.AutoResume)
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 3, w.probes, "two failed probes, then a healthy one")
	// 30s before the first probe, then 30s and 60s between the probes.
	require.GreaterOrEqual(t, rep.FinishedAt.Sub(start), 2*time.Minute)
	require.Less(t, rep.FinishedAt.Sub(start), 5*time.Minute)
	require.Equal(t, []int{0, 1, 2, 3}, w.syncedSorted())
	require.Len(t, w.unpaused, 1, "the run unpauses the schedule it paused")
	require.Contains(t, rep.Pauses[0].EndedBy, "automatic resume")
}

func TestProbeRefusedTurnsTransientPauseIntoFatal(t *testing.T) {
	w := newWorld(t, chunks10(3, 1000), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		if in.Chunk.Index == 1 {
			return activities.ChunkResult{}, errors.New("timed out")
		}
		return rejecting(0)(in, call)
	})
	w.probeErrs = []error{temporal.NewNonRetryableApplicationError("HTTP 401 BadApiKey (fatal)", activities.ErrTypeIterableFatal, nil)}
	var seen workflows.Progress
	w.e.RegisterDelayedCallback(func() {
		seen = w.progress()
		w.update(workflows.UpdateAbort, workflows.AbortInput{Reason: "done"})
	}, 3*time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.CauseFatal, seen.Pause.Cause)
	require.False(t, seen.Pause.AutoResume)
	require.Contains(t, seen.Pause.Reason, "BadApiKey")
	require.Equal(t, 1, w.probes, "no more probes once Iterable refused the project")
	require.Equal(t, workflows.StateAborted, w.report().State)
}

func TestPauseTimeoutFailsTheRun(t *testing.T) {
	w := newWorld(t, chunks10(3, 1000), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		if in.Chunk.Index == 1 {
			return activities.ChunkResult{}, temporal.NewNonRetryableApplicationError("HTTP 401 BadApiKey (fatal)", activities.ErrTypeIterableFatal, nil)
		}
		return rejecting(0)(in, call)
	})
	start := w.e.Now()
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(&spec.Thresholds{PauseTimeout: spec.Duration(48 * time.Hour)})})
	require.True(t, w.e.IsWorkflowCompleted())
	err := w.e.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "paused for 48h0m0s (thresholds.pauseTimeout) and not resumed")
	require.Contains(t, err.Error(), "BadApiKey")
	require.Contains(t, err.Error(), "Schedule activation-users stays paused")
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	var rep workflows.RunReport
	require.NoError(t, appErr.Details(&rep))
	require.Equal(t, workflows.StateFailed, rep.State)
	require.GreaterOrEqual(t, rep.FinishedAt.Sub(start), 48*time.Hour)
	require.Equal(t, "timeout", rep.Pauses[0].EndedBy)
	require.Equal(t, []int{0}, w.allCommitted())
	require.True(t, w.finished)
}

// TestSignalsPauseResumeAbort drives the run with signals, as the UI's signal form does.
func TestSignalsPauseResumeAbort(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(0))
	var afterPause, afterBadResume workflows.Progress
	// The run's chunks take no time: pause it before it starts sending.
	w.e.RegisterDelayedCallback(func() {
		w.e.SignalWorkflow(workflows.SignalPause, workflows.PauseInput{Reason: "maintenance window"})
	}, 0)
	w.e.RegisterDelayedCallback(func() {
		afterPause = w.progress()
		w.e.SignalWorkflow(workflows.SignalResume, workflows.ResumeInput{})
	}, time.Hour)
	w.e.RegisterDelayedCallback(func() {
		afterBadResume = w.progress()
		w.e.SignalWorkflow(workflows.SignalResume, workflows.ResumeInput{Reason: "window over"})
	}, 2*time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.StatePaused, afterPause.State)
	require.Equal(t, workflows.CauseOperator, afterPause.Pause.Cause)
	require.Contains(t, afterPause.Pause.Reason, "maintenance window")
	require.Equal(t, workflows.StatePaused, afterBadResume.State, "a resume signal without a reason is ignored")
	require.Len(t, afterBadResume.Ignored, 1)
	require.Contains(t, afterBadResume.Ignored[0], "a reason is required")
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, []int{0, 1, 2, 3, 4, 5}, w.syncedSorted())
	require.Contains(t, rep.Pauses[0].EndedBy, "operator resume (signal): window over")

	w = newWorld(t, chunks10(6, 1000), rejecting(0))
	w.e.RegisterDelayedCallback(func() {
		w.e.SignalWorkflow(workflows.SignalAbort, workflows.AbortInput{Reason: "not today"})
	}, 0)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	rep = w.report()
	require.Equal(t, workflows.StateAborted, rep.State)
	require.Equal(t, "not today", rep.AbortReason)
}

func TestFatalErrorInCheckFieldsPausesAndRetriesTheStep(t *testing.T) {
	w := newWorld(t, chunks10(2, 1000), rejecting(0))
	calls := 0
	w.checkFields = func(context.Context, activities.CheckFieldsInput) (activities.CheckFieldsResult, error) {
		calls++
		if calls == 1 {
			return activities.CheckFieldsResult{}, temporal.NewNonRetryableApplicationError("HTTP 401 BadApiKey (fatal)", activities.ErrTypeIterableFatal, nil)
		}
		return activities.CheckFieldsResult{}, nil
	}
	var seen workflows.Progress
	w.e.RegisterDelayedCallback(func() {
		seen = w.progress()
		w.update(workflows.UpdateResume, workflows.ResumeInput{Reason: "new key deployed"})
	}, time.Hour)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.CauseFatal, seen.Pause.Cause)
	require.Contains(t, seen.Pause.Reason, "check field types: HTTP 401 BadApiKey")
	require.Zero(t, seen.ChunksDone, "nothing was sent before the fields were checked")
	require.Equal(t, 2, calls)
	require.Equal(t, workflows.StateCompleted, w.report().State)
}

// Known rejections (the same rows refused for the same reasons by the previous run) are
// reported but do not count towards maxRejectedPercent or minAttempted; new ones do. Rows held
// back by a known rejection are reported apart.
func TestKnownRejectionsDoNotPause(t *testing.T) {
	thresholds := &spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 30}
	knownOnly := func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		res, err := rejecting(3)(in, call)
		res.Known = activities.OpCounts{Added: 3}
		res.StillRejected = activities.OpCounts{Added: 2}
		return res, err
	}
	w := newWorld(t, chunks10(6, 1000), knownOnly)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(thresholds)})
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State, "30 percent rejected, all of it known")
	require.Equal(t, int64(18), rep.Rejected.Total())
	require.Equal(t, int64(18), rep.KnownRejected.Total())
	require.Equal(t, int64(12), rep.StillRejected.Total())
	require.Empty(t, w.paused)

	// One new rejection per chunk on top of the known ones: 1 of 7 new attempts, 14%.
	mixed := func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		res, err := rejecting(4)(in, call)
		res.Known = activities.OpCounts{Added: 3}
		return res, err
	}
	w = newWorld(t, chunks10(6, 1000), mixed)
	w.e.RegisterDelayedCallback(func() {
		p := w.progress()
		require.Equal(t, workflows.StatePaused, p.State)
		require.Contains(t, p.Pause.Reason, "5 of 35 rows attempted")
		w.e.CancelWorkflow()
	}, time.Minute)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(thresholds)})
	require.NotEmpty(t, w.paused)
}

// Unconfirmed answers count as rejections for the threshold: a run whose answers Iterable does
// not account for pauses.
func TestUnconfirmedCountsAsRejected(t *testing.T) {
	unconfirmed := func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		n := in.Chunk.Rows()
		return activities.ChunkResult{Chunk: in.Chunk.Index, Attempted: activities.OpCounts{Added: n},
			Succeeded: activities.OpCounts{Added: n - 5}, Unconfirmed: activities.OpCounts{Added: 5}, Requests: 1}, nil
	}
	w := newWorld(t, chunks10(6, 1000), unconfirmed)
	w.e.RegisterDelayedCallback(func() {
		p := w.progress()
		require.Equal(t, workflows.StatePaused, p.State)
		require.Equal(t, int64(15), p.Unconfirmed.Total())
		w.e.CancelWorkflow()
	}, time.Minute)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(&spec.Thresholds{MinAttempted: 30})})
	require.NotEmpty(t, w.paused)
}

// A paused run shows what its plan found (model rows, unchanged, duplicates), and Commit gets
// the run's type conflicts so that it holds the rows a known conflict holds back.
func TestPausedProgressShowsThePlan(t *testing.T) {
	p := chunks10(3, 0)
	p.Counts = warehouse.Counts{ModelRows: 100, Unchanged: 40, Added: 60, DuplicateKeys: 2, DuplicateIdentifiers: 4}
	w := newWorld(t, p, rejecting(0))
	w.e.RegisterDelayedCallback(func() {
		pr := w.progress()
		require.Equal(t, workflows.StatePaused, pr.State)
		require.Equal(t, workflows.PlanCounts{ModelRows: 100, Unchanged: 40, DuplicateKeys: 2, DuplicateIdentifiers: 4}, pr.Plan)
		w.e.CancelWorkflow()
	}, time.Minute)
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.NotEmpty(t, w.paused)

	conflicts := map[string]string{"age": "type conflict: age"}
	w = newWorld(t, chunks10(2, 0), rejecting(0))
	w.checkFields = func(context.Context, activities.CheckFieldsInput) (activities.CheckFieldsResult, error) {
		return activities.CheckFieldsResult{Conflicts: conflicts}, nil
	}
	var got []map[string]string
	w.commitFn = func(_ context.Context, in activities.CommitInput) (warehouse.CommitResult, error) {
		got = append(got, in.Conflicts)
		return warehouse.CommitResult{}, nil
	}
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.Equal(t, workflows.StateCompleted, w.report().State)
	require.NotEmpty(t, got)
	for _, c := range got {
		require.Equal(t, conflicts, c)
	}
}

// The run log gets one record when a pause starts and one when the run ends, with the counts
// so far and how the run was started.
func TestRunLogRecordsPausesAndTheEnd(t *testing.T) {
	w := newWorld(t, chunks10(6, 1000), rejecting(3))
	// Nobody resumes: the run fails at its pause's deadline, and that is its end.
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{
		Spec: serial(&spec.Thresholds{MaxRejectedPercent: pct(10), MinAttempted: 30, PauseTimeout: spec.Duration(time.Hour)})})
	require.Error(t, w.e.GetWorkflowError())
	w.mu.Lock()
	defer w.mu.Unlock()
	require.NotEmpty(t, w.runLog)
	first, last := w.runLog[0], w.runLog[len(w.runLog)-1]
	require.Equal(t, warehouse.RunEventPaused, first.Event)
	require.Equal(t, workflows.StatePaused, first.State)
	require.Contains(t, first.PauseReason, "rejections")
	require.Equal(t, []string{workflows.CauseRejections}, first.PauseCauses)
	require.Equal(t, int64(9), first.Rejected.Added, "the counts when the pause started")
	require.Equal(t, warehouse.TriggerManual, first.Trigger)
	require.True(t, first.EndedAt.IsZero())
	require.Equal(t, warehouse.RunEventEnded, last.Event)
	require.Equal(t, workflows.StateFailed, last.State)
	require.Equal(t, int64(9), last.Rejected.Added)
	require.Equal(t, first.RunID, last.RunID)
	require.Len(t, w.runLog, 2)
	require.False(t, last.EndedAt.IsZero())
	require.NotEmpty(t, last.PauseCauses)
}

// The run's record carries the project's good rate the last chunk that knew one reported: a
// new worker process starts the next run there (a chunk that knew none does not erase it).
func TestRunLogRecordsTheSendRate(t *testing.T) {
	rates := map[int]float64{0: 4.0, 1: 4.6, 2: 0}
	w := newWorld(t, chunks10(3, 0), func(in activities.SyncChunkInput, call int) (activities.ChunkResult, error) {
		res, err := rejecting(0)(in, call)
		res.SendRate = rates[in.Chunk.Index]
		return res, err
	})
	w.e.ExecuteWorkflow(workflows.ActivationWorkflow, workflows.RunInput{Spec: serial(nil)})
	require.NoError(t, w.e.GetWorkflowError())
	rep := w.report()
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 4.6, rep.SendRate)
	w.mu.Lock()
	defer w.mu.Unlock()
	require.Len(t, w.runLog, 1)
	require.Equal(t, warehouse.RunEventEnded, w.runLog[0].Event)
	require.Equal(t, 4.6, w.runLog[0].SendRate)
}
