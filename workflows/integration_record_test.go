//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/proto"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

var recordHistoriesFlag = flag.Bool("record-histories", false,
	"TestRecordHistories: run its scenarios on the dev server and write their histories to testdata/histories")

// TestRecordHistories runs one tiny run per scenario (30 users, 10 per chunk) on the dev server
// with the harness's in-process worker, and writes the histories TestReplaySavedHistories replays
// on every build into testdata/histories (the files and index.json). It runs only when asked:
//
//	RECORD_HISTORIES=1 go test -tags integration -count=1 -run TestRecordHistories ./workflows/
//	go test -tags integration -count=1 -run TestRecordHistories ./workflows/ -args -record-histories
//
// Nothing is written unless every scenario passed; the top-level files are then replaced.
func TestRecordHistories(t *testing.T) {
	if !*recordHistoriesFlag && os.Getenv("RECORD_HISTORIES") != "1" {
		t.Skip("records testdata/histories only when asked: RECORD_HISTORIES=1 or -args -record-histories")
	}
	rec := &historyRecorder{staging: t.TempDir()}
	t.Run(scenarioCompleted, rec.completed)
	t.Run(scenarioPausedResumed, rec.pausedResumed)
	t.Run(scenarioQueued, rec.queued)
	t.Run(scenarioContinuedAsNew, rec.continuedAsNew)
	t.Run(scenarioList, rec.list)
	t.Run(scenarioPausedOpen, rec.pausedOpen)
	if t.Failed() {
		t.Fatal("a scenario failed: testdata/histories is left as it was")
	}
	rec.write(t)
}

// historyRecorder stages the histories of the scenarios, then writes them all at once.
type historyRecorder struct {
	staging string
	entries []replayEntry
}

// tinySpec is the harness's activation with 10 rows per chunk: 3 chunks for 30 users.
func tinySpec(h *harness) spec.Activation {
	act := h.spec()
	act.Sync = spec.SyncSettings{ChunkRows: 10, UsersPerRequest: 10, RequestsPerSecond: 50, Concurrency: 2}
	return act
}

// pausingSpec pauses once 20 rows were attempted with 30% rejected (2 chunks of 3), before the last chunk.
func pausingSpec(h *harness) spec.Activation {
	act := tinySpec(h)
	act.Sync.Concurrency = 1
	maxRejected := 10.0
	act.Thresholds = &spec.Thresholds{MaxRejectedPercent: &maxRejected, MinAttempted: 20}
	return act
}

// pausingUsers are 30 users, 3 in every 10 with a malformed email (rejected before sending).
func pausingUsers() (us []user, invalid int) {
	us = users(30)
	for i := range us {
		if i%10 < 3 {
			us[i].email = fmt.Sprintf("invalid-address-%d", i)
			invalid++
		}
	}
	return us, invalid
}

func startInput(ctx context.Context, h *harness, id string, in workflows.RunInput) client.WorkflowRun {
	h.t.Helper()
	if id == "" {
		id = fmt.Sprintf("it-%s-%d", h.queue, time.Now().UnixNano())
	}
	run, err := h.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: h.queue}, workflows.WorkflowName, in)
	require.NoError(h.t, err)
	return run
}

func applySchedule(ctx context.Context, h *harness, act spec.Activation) {
	h.t.Helper()
	_, err := schedules.Apply(ctx, h.c, []spec.Activation{act}, schedules.ApplyOptions{TaskQueue: h.queue})
	require.NoError(h.t, err)
	sched := h.c.ScheduleClient().GetHandle(ctx, schedules.ID(act.ID))
	h.t.Cleanup(func() { _ = sched.Delete(context.Background()) })
}

// waitPausedAndQuiet waits until the run is Paused and its history stands still: no workflow
// task or activity pending (the pause's records are written) and no new event for a while.
func waitPausedAndQuiet(ctx context.Context, h *harness, run client.WorkflowRun) workflows.Progress {
	h.t.Helper()
	p := waitForState(ctx, h, run, workflows.StatePaused, time.Minute, "the run pauses")
	last := int64(-1)
	require.Eventually(h.t, func() bool {
		d, err := h.c.DescribeWorkflowExecution(ctx, run.GetID(), run.GetRunID())
		if err != nil || len(d.GetPendingActivities()) > 0 || d.GetPendingWorkflowTask() != nil {
			return false
		}
		n := d.GetWorkflowExecutionInfo().GetHistoryLength()
		quiet := n == last
		last = n
		return quiet
	}, 30*time.Second, 500*time.Millisecond, "the paused run's history stands still")
	return p
}

func fetchHistory(ctx context.Context, c client.Client, workflowID, runID string) (*historypb.History, error) {
	h := &historypb.History{}
	it := c.GetWorkflowHistory(ctx, workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return nil, err
		}
		h.Events = append(h.Events, ev)
	}
	return h, nil
}

// save stages the history of one execution as `temporal workflow show --output json` writes it,
// after checking it holds no row data nor the project's key, reads back identical and replays.
func (rec *historyRecorder) save(t *testing.T, h *harness, scenario, file, about, workflowID, runID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hist, err := fetchHistory(ctx, h.c, workflowID, runID)
	require.NoError(t, err)
	require.NotEmpty(t, hist.GetEvents())
	bin, err := proto.Marshal(hist)
	require.NoError(t, err)
	require.Contains(t, string(bin), "it-", "control: the scan sees payloads")
	js, err := temporalproto.CustomJSONMarshalOptions{Indent: " "}.Marshal(hist)
	require.NoError(t, err)
	js = append(js, '\n')
	for _, needle := range append([]string{h.key}, replayNeedles...) {
		require.False(t, bytes.Contains(bin, []byte(needle)), "the history of %s holds %q", file, needle)
		require.False(t, bytes.Contains(js, []byte(needle)), "%s holds %q", file, needle)
	}
	back, err := client.HistoryFromJSON(bytes.NewReader(js), client.HistoryJSONOptions{})
	require.NoError(t, err)
	require.True(t, proto.Equal(hist, back), "%s reads back as the server's history", file)

	e := replayEntry{File: file, Scenario: scenario, About: about,
		WorkflowType: hist.GetEvents()[0].GetWorkflowExecutionStartedEventAttributes().GetWorkflowType().GetName(),
		WorkflowID:   workflowID, RunID: runID, Closed: closedAs(hist), Events: len(hist.GetEvents())}
	if e.RunID == "" {
		e.RunID = hist.GetEvents()[0].GetWorkflowExecutionStartedEventAttributes().GetOriginalExecutionRunId()
	}
	rp := worker.NewWorkflowReplayer()
	workflows.Register(replayRegistry{rp}, nil)
	require.NoError(t, rp.ReplayWorkflowHistoryWithOptions(replayLogger(t), hist, replayEntryOptions(e)), "%s replays", file)

	require.NoError(t, os.WriteFile(filepath.Join(rec.staging, file), js, 0o644))
	rec.entries = append(rec.entries, e)
	t.Logf("%s: %d events, %d bytes (%s)", file, e.Events, len(js), e.Closed)
}

// write replaces the saved histories (the top-level files of testdata/histories; subfolders keep
// earlier releases' sets) with the staged ones and writes index.json.
func (rec *historyRecorder) write(t *testing.T) {
	require.NoError(t, os.MkdirAll(replayHistoriesDir, 0o755))
	old, err := filepath.Glob(filepath.Join(replayHistoriesDir, "*.json"))
	require.NoError(t, err)
	for _, f := range old {
		require.NoError(t, os.Remove(f))
	}
	for _, e := range rec.entries {
		b, err := os.ReadFile(filepath.Join(rec.staging, e.File))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(replayHistoriesDir, e.File), b, 0o644))
	}
	idx := replayIndex{
		About: "Histories of real runs, replayed by replay_test.go on every build. Recorded by TestRecordHistories " +
			"(integration_record_test.go): RECORD_HISTORIES=1 go test -tags integration -count=1 -run TestRecordHistories ./workflows/",
		RecordedBy: "go.temporal.io/sdk v1.51.0 worker, Temporal CLI v1.5.1 dev server",
		Histories:  rec.entries,
	}
	b, err := json.MarshalIndent(idx, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(replayHistoriesDir, replayIndexFile), append(b, '\n'), 0o644))
}

func (rec *historyRecorder) completed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(30)
	h.writeModel(us)
	run := startInput(ctx, h, "", workflows.RunInput{Spec: tinySpec(h)})
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 3, rep.ChunksDone)
	h.requireIterableEqualsModel(us)
	rec.save(t, h, scenarioCompleted, "completed.json",
		"a first run of 30 users: lock, plan, 3 chunks 2 at a time, commits, run log, Completed", run.GetID(), run.GetRunID())
}

func (rec *historyRecorder) pausedResumed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us, invalid := pausingUsers()
	h.writeModel(us)
	act := pausingSpec(h)
	applySchedule(ctx, h, act)
	run := startInput(ctx, h, "", workflows.RunInput{Spec: act})
	p := waitPausedAndQuiet(ctx, h, run)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	require.Equal(t, 2, p.ChunksDone)

	refused, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{}}, WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.ErrorContains(t, refused.Get(ctx, nil), "a reason is required")
	resumed, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{Reason: "known bad addresses, ticket OPS-1"}},
		WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.NoError(t, resumed.Get(ctx, nil))

	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 3, rep.ChunksDone)
	require.Equal(t, int64(invalid), rep.Rejected.Added)
	require.Len(t, rep.Pauses, 1)
	rec.save(t, h, scenarioPausedResumed, "paused-resumed.json",
		"30% malformed emails: paused at the rejection threshold after 2 of 3 chunks (schedule paused), "+
			"a resume update without reason refused, one with a reason accepted, last chunk, Completed",
		run.GetID(), run.GetRunID())
}

func (rec *historyRecorder) queued(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Iterable answers one request a second: the first run holds the lock for about 6 s.
	h := newHarness(t, iterabletest.Options{BulkUpdateRPS: 1})
	h.startWorker()
	us := users(30)
	h.writeModel(us)
	act := tinySpec(h)
	act.Sync = spec.SyncSettings{ChunkRows: 10, UsersPerRequest: 5, RequestsPerSecond: 1, Concurrency: 1}
	first := startInput(ctx, h, "", workflows.RunInput{Spec: act})
	waitForState(ctx, h, first, workflows.StateRunning, time.Minute, "the first run sends")
	second := startInput(ctx, h, "", workflows.RunInput{Spec: act})
	queued := waitForState(ctx, h, second, workflows.StateQueued, 30*time.Second, "the second run waits")
	require.Equal(t, first.GetID(), queued.WaitingFor)

	var a, b workflows.RunReport
	require.NoError(t, first.Get(ctx, &a))
	require.NoError(t, second.Get(ctx, &b))
	require.Equal(t, workflows.StateCompleted, b.State)
	require.Zero(t, b.Planned.Total(), "the queued run planned after the first committed")
	lockID := activities.LockWorkflowID(act.ID)
	var lockRunID string
	require.Eventually(t, func() bool {
		d, err := h.c.DescribeWorkflowExecution(ctx, lockID, "")
		if err != nil || d.GetWorkflowExecutionInfo().GetCloseTime() == nil {
			return false
		}
		lockRunID = d.GetWorkflowExecutionInfo().GetExecution().GetRunId()
		return true
	}, 30*time.Second, 100*time.Millisecond, "the idle lock workflow completes")
	rec.save(t, h, scenarioQueued, "queued.json",
		"a run started while another run of the activation sent: Queued (lock-queued signal), granted, plans nothing, Completed",
		second.GetID(), second.GetRunID())
	rec.save(t, h, scenarioLock, "lock.json",
		"the activation's LockWorkflow of queued.json: grants the first run, queues and then grants the second, completes when idle",
		lockID, lockRunID)
}

func (rec *historyRecorder) continuedAsNew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(30)
	h.writeModel(us)
	act := tinySpec(h)
	act.Sync.Concurrency = 1
	run := startInput(ctx, h, fmt.Sprintf("it-%s-chain", h.queue), workflows.RunInput{Spec: act, ChunksPerExecution: 1})
	firstRunID := run.GetRunID()
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 3, rep.Executions)

	runID := firstRunID
	for i := 1; runID != ""; i++ {
		hist, err := fetchHistory(ctx, h.c, run.GetID(), runID)
		require.NoError(t, err)
		evs := hist.GetEvents()
		next := evs[len(evs)-1].GetWorkflowExecutionContinuedAsNewEventAttributes().GetNewExecutionRunId()
		about := fmt.Sprintf("execution %d of 3 of a run that continues as new after every chunk", i)
		if i == 1 {
			about += ": lock, plan, chunk 1, commit, continue-as-new with the rest of the plan and the lock"
		}
		rec.save(t, h, scenarioContinuedAsNew, fmt.Sprintf("continued-as-new-%d.json", i), about, run.GetID(), runID)
		runID = next
	}
}

func (rec *historyRecorder) list(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	// The profiles exist in Iterable (an attribute activation put them there).
	us := users(30)
	h.writeModel(us)
	require.Equal(t, workflows.StateCompleted, h.run(tinySpec(h)).State)

	act := h.listSpec()
	act.Sync = spec.SyncSettings{ChunkRows: 10, UsersPerRequest: 10, RequestsPerSecond: 50, Concurrency: 2}
	runList := func() (client.WorkflowRun, workflows.RunReport) {
		run := startInput(ctx, h, "", workflows.RunInput{Spec: act})
		var rep workflows.RunReport
		require.NoError(t, run.Get(ctx, &rep))
		require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
		return run, rep
	}
	first, rep := runList()
	require.True(t, rep.List.Created)
	require.Equal(t, int64(30), rep.Succeeded.Added)
	rec.save(t, h, scenarioList, "list-first-run.json",
		"a list activation's first run: the list is created, 30 members subscribed", first.GetID(), first.GetRunID())

	// 5 members leave, 2 new people enter (unknown to Iterable: skipped in update mode), 3 scores change.
	next := append([]user(nil), us[5:]...)
	for i := 0; i < 3; i++ {
		next[i].score += 7
	}
	next = append(next, user{id: "31", email: "person00031@example.com", name: "Name 31"},
		user{id: "32", email: "person00032@example.com", name: "Name 32"})
	h.writeModel(next)
	second, rep := runList()
	require.Equal(t, int64(5), rep.Succeeded.Removed)
	require.Equal(t, int64(2), rep.Skipped.Added)
	rec.save(t, h, scenarioList, "list-members-change.json",
		"the list's next run: 5 members unsubscribed, 2 unknown people skipped, 3 members' scores updated",
		second.GetID(), second.GetRunID())
}

func (rec *historyRecorder) pausedOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us, _ := pausingUsers()
	h.writeModel(us)
	act := pausingSpec(h)
	applySchedule(ctx, h, act)
	run := startInput(ctx, h, "", workflows.RunInput{Spec: act})
	p := waitPausedAndQuiet(ctx, h, run)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	rec.save(t, h, scenarioPausedOpen, "paused-open.json",
		"the run of paused-resumed.json saved while it waits Paused for an operator (open): what the next deploy meets",
		run.GetID(), run.GetRunID())
	require.NoError(t, h.c.TerminateWorkflow(ctx, run.GetID(), run.GetRunID(), "recorded"))
}

// replayWitness notes, per workflow id, whether the first workflow task of the run that its
// worker handled was a replay: the worker rebuilt the run from its history.
type replayWitness struct {
	interceptor.WorkerInterceptorBase
	mu       sync.Mutex
	replayed map[string]bool
}

func (w *replayWitness) InterceptWorkflow(_ workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &replayWitnessInbound{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, w: w}
}

type replayWitnessInbound struct {
	interceptor.WorkflowInboundInterceptorBase
	w *replayWitness
}

func (i *replayWitnessInbound) ExecuteWorkflow(ctx workflow.Context, in *interceptor.ExecuteWorkflowInput) (any, error) {
	id, replaying := workflow.GetInfo(ctx).WorkflowExecution.ID, workflow.IsReplaying(ctx)
	i.w.mu.Lock()
	if _, seen := i.w.replayed[id]; !seen {
		i.w.replayed[id] = replaying
	}
	i.w.mu.Unlock()
	return i.Next.ExecuteWorkflow(ctx, in)
}

// TestPausedRunResumesOnANewWorker: a run pauses at the rejection threshold; its worker stops (a
// deploy); a new worker (a fresh worker.New and Activities, the process's workflow cache purged)
// takes the task queue, rebuilds the paused run from its history, takes the resume update, and
// the run completes. The saved open paused history (testdata/histories/paused-open.json),
// replayed by replay_test.go on every build, is what says a new version of the code can do this.
func TestPausedRunResumesOnANewWorker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	stopOld := h.startWorker()
	us, invalid := pausingUsers()
	h.writeModel(us)
	act := pausingSpec(h)
	applySchedule(ctx, h, act)
	run := startInput(ctx, h, "", workflows.RunInput{Spec: act})
	p := waitPausedAndQuiet(ctx, h, run)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	require.Equal(t, 2, p.ChunksDone)

	// The deploy: the old worker stops; nothing of it stays in this process.
	stopOld()
	worker.PurgeStickyWorkflowCache()

	witness := &replayWitness{replayed: map[string]bool{}}
	acts := activities.New(slog.New(slog.DiscardHandler))
	acts.Temporal = h.c
	w := worker.New(h.c, h.queue, worker.Options{Interceptors: []interceptor.WorkerInterceptor{witness}})
	workflows.Register(w, acts)
	require.NoError(t, w.Start())
	t.Cleanup(func() {
		w.Stop()
		_ = acts.Close()
	})

	resumed, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{Reason: "resumed after the deploy"}},
		WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	var msg string
	require.NoError(t, resumed.Get(ctx, &msg))
	require.Contains(t, msg, "resumes")

	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 3, rep.ChunksDone, "the last chunk was sent by the new worker")
	require.Equal(t, int64(invalid), rep.Rejected.Added)
	require.Equal(t, int64(len(us)-invalid), rep.Committed)
	require.Len(t, rep.Pauses, 1)
	require.Contains(t, rep.Pauses[0].EndedBy, "resumed after the deploy")
	require.Len(t, h.emu.Users(h.key), len(us)-invalid)

	// Control: a run the new worker starts itself is not a replay at its first task.
	dry := startInput(ctx, h, "", workflows.RunInput{Spec: act, DryRun: true})
	require.NoError(t, dry.Get(ctx, &rep))
	require.Equal(t, workflows.StateDryRun, rep.State)

	witness.mu.Lock()
	defer witness.mu.Unlock()
	replayed, seen := witness.replayed[run.GetID()]
	require.True(t, seen, "the new worker ran the workflow")
	require.True(t, replayed, "the new worker rebuilt the paused run by replaying its history")
	fresh, seen := witness.replayed[dry.GetID()]
	require.True(t, seen)
	require.False(t, fresh, "control: a new run's first task is no replay")
}
