//go:build integration

package workflows_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enums "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"google.golang.org/grpc"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// slowActivation starts a worker and writes a model of n users for an activation that sends
// them at sync's pace: a run of it holds the lock for a while.
func slowActivation(t *testing.T, opts iterabletest.Options, n int, sync spec.SyncSettings) (*harness, spec.Activation, []user) {
	t.Helper()
	h := newHarness(t, opts)
	h.startWorker()
	us := users(n)
	h.writeModel(us)
	act := h.spec()
	act.Sync = sync
	return h, act, us
}

// waitForState waits until the run's progress query answers the state, and returns that answer.
func waitForState(ctx context.Context, h *harness, run client.WorkflowRun, state string, within time.Duration, msg string) workflows.Progress {
	h.t.Helper()
	var p workflows.Progress
	require.Eventually(h.t, func() bool {
		var err error
		p, err = progressOf(ctx, h, run)
		return err == nil && p.State == state
	}, within, 50*time.Millisecond, msg)
	return p
}

func progressOf(ctx context.Context, h *harness, run client.WorkflowRun) (workflows.Progress, error) {
	var p workflows.Progress
	v, err := h.c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.QueryProgress)
	if err == nil {
		err = v.Get(&p)
	}
	return p, err
}

// TestManualStartQueuesBehindScheduledRun: while a scheduled run of an activation sends (slowly:
// Iterable answers one bulk request a second), a manual start of the same activation (as
// `starter run` makes it, another workflow id) waits in state Queued, names the run it waits
// for, and plans only once that run has committed: it finds nothing left to send.
func TestManualStartQueuesBehindScheduledRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{BulkUpdateRPS: 1})
	h.startWorker()
	us := users(600)
	h.writeModel(us)
	act := h.spec()
	act.Sync = spec.SyncSettings{ChunkRows: 100, UsersPerRequest: 100, RequestsPerSecond: 1, Concurrency: 2}

	_, err := schedules.Apply(ctx, h.c, []spec.Activation{act}, schedules.ApplyOptions{TaskQueue: h.queue})
	require.NoError(t, err)
	sched := h.c.ScheduleClient().GetHandle(ctx, schedules.ID(act.ID))
	t.Cleanup(func() { _ = sched.Delete(context.Background()) })
	require.NoError(t, sched.Trigger(ctx, client.ScheduleTriggerOptions{}))
	var scheduled client.WorkflowRun
	require.Eventually(t, func() bool {
		desc, err := sched.Describe(ctx)
		if err != nil || len(desc.Info.RunningWorkflows) == 0 {
			return false
		}
		ex := desc.Info.RunningWorkflows[0]
		scheduled = h.c.GetWorkflow(ctx, ex.WorkflowID, ex.FirstExecutionRunID)
		return true
	}, 30*time.Second, 100*time.Millisecond, "the schedule started a run")
	waitForState(ctx, h, scheduled, workflows.StateRunning, time.Minute, "the scheduled run sends")

	manual, err := h.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: fmt.Sprintf("%s%s-manual-%s", schedules.Prefix, act.ID, time.Now().UTC().Format("20060102T150405.000")), TaskQueue: h.queue,
	}, workflows.WorkflowName, workflows.RunInput{Spec: act})
	require.NoError(t, err)
	require.NotEqual(t, scheduled.GetID(), manual.GetID())
	queued := waitForState(ctx, h, manual, workflows.StateQueued, 30*time.Second, "the manual run waits")
	require.Equal(t, scheduled.GetID(), queued.WaitingFor, "it names the run it waits for")
	p, err := progressOf(ctx, h, scheduled)
	require.NoError(t, err)
	require.Equal(t, workflows.StateRunning, p.State, "the scheduled run is still live")
	require.Less(t, h.emu.Stats(h.key).UsersReceived, len(us), "the scheduled run has not finished sending")

	var first, second workflows.RunReport
	require.NoError(t, scheduled.Get(ctx, &first))
	require.NoError(t, manual.Get(ctx, &second))
	require.Equal(t, workflows.StateCompleted, first.State)
	require.Equal(t, workflows.StateCompleted, second.State)
	require.Equal(t, int64(len(us)), first.Planned.Total())
	require.Zero(t, second.Planned.Total(), "the manual run planned after the scheduled run committed")
	require.False(t, second.StartedAt.Add(second.PlanDuration).Before(first.FinishedAt), "its plan ended after the first run ended")
	require.Equal(t, len(us), h.emu.Stats(h.key).UsersReceived, "no row was sent twice")
	h.requireIterableEqualsModel(us)

	// With nobody holding or waiting, the lock workflow completes.
	require.Eventually(t, func() bool {
		d, err := h.c.DescribeWorkflowExecution(ctx, activities.LockWorkflowID(act.ID), "")
		return err == nil && d.GetWorkflowExecutionInfo().GetCloseTime() != nil
	}, 30*time.Second, 100*time.Millisecond, "the idle lock workflow completes")
}

// TestLockIsFreedWhenTheHolderIsTerminated: a run terminated while it holds the lock never
// releases it; the lock workflow notices the close and lets the queued run go.
func TestLockIsFreedWhenTheHolderIsTerminated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, act, us := slowActivation(t, iterabletest.Options{BulkUpdateRPS: 1}, 600,
		spec.SyncSettings{ChunkRows: 100, UsersPerRequest: 100, RequestsPerSecond: 1, Concurrency: 1})

	first := h.start(act)
	waitForState(ctx, h, first, workflows.StateRunning, time.Minute, "the first run sends")
	second := h.start(act)
	waitForState(ctx, h, second, workflows.StateQueued, 30*time.Second, "the second run waits")
	require.NoError(t, h.c.TerminateWorkflow(ctx, first.GetID(), first.GetRunID(), "test: the holder dies"))

	var rep workflows.RunReport
	require.NoError(t, second.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	h.requireIterableEqualsModel(us)
}

// TestWaitForCloseAsksEverySoOften: watching a holder that runs longer than one long poll of its
// history (20 s on the dev server) costs a request per long poll, not a stream of them. Before,
// each poll had a 20-second deadline: the server answered a second before it, and the SDK asked
// again at once, about a thousand times in that last second (1,113 history requests in one
// 20-second sync of the rate benchmark). It returns once the holder closed.
func TestWaitForCloseAsksEverySoOften(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, act, _ := slowActivation(t, iterabletest.Options{BulkUpdateRPS: 2}, 2400,
		spec.SyncSettings{ChunkRows: 200, UsersPerRequest: 100, RequestsPerSecond: 1, Concurrency: 2})
	holder := h.start(act)
	waitForState(ctx, h, holder, workflows.StateRunning, time.Minute, "the holder sends")

	var calls sync.Map // method -> *atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n, _ := calls.LoadOrStore(method, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c, err := client.Dial(client.Options{HostPort: dev.HostPort, ConnectionOptions: client.ConnectionOptions{
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}}})
	require.NoError(t, err)
	defer c.Close()
	acts := activities.New(slog.New(slog.DiscardHandler))
	acts.Temporal = c
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	env.SetTestTimeout(2 * time.Minute)
	began := time.Now()
	_, err = env.ExecuteActivity(acts.WaitForClose, activities.WaitForCloseInput{WorkflowID: holder.GetID(), RunID: holder.GetRunID()})
	require.NoError(t, err)
	watched := time.Since(began)

	desc, err := h.c.DescribeWorkflowExecution(ctx, holder.GetID(), holder.GetRunID())
	require.NoError(t, err)
	require.Equal(t, enums.WORKFLOW_EXECUTION_STATUS_COMPLETED, desc.GetWorkflowExecutionInfo().GetStatus(), "it returned once the holder closed")
	require.Greater(t, watched, 21*time.Second, "the holder outlived one long poll (2,400 users at 100 users/s)")
	total := int64(0)
	calls.Range(func(k, v any) bool {
		if strings.Contains(k.(string), "WorkflowService/") && !strings.Contains(k.(string), "GetSystemInfo") {
			total += v.(*atomic.Int64).Load()
		}
		return true
	})
	t.Logf("%d Temporal requests in %s", total, watched.Round(time.Millisecond))
	require.LessOrEqual(t, total, int64(watched/(10*time.Second))+3, "Temporal requests while watching for %s", watched.Round(time.Millisecond))
}
