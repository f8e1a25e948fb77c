//go:build integration

package workflows_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// TestContinueAsNewKeepsTheLock: a run of 8 chunks (25 s) that continues as new every 2 chunks (4
// executions on the real server) sends every row once, ends Completed with one report for the
// whole chain, and holds the activation's lock across executions: a second run started meanwhile
// stays Queued until the chain's last execution ends, then finds nothing to send.
func TestContinueAsNewKeepsTheLock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// 25 requests at 1 a second: the chain outlives one long poll of the lock's watch
	// (WaitForClose; the server answers one after 20 s), which must then follow the chain
	// rather than free the lock.
	h, act, us := slowActivation(t, iterabletest.Options{BulkUpdateRPS: 1}, 1000,
		spec.SyncSettings{ChunkRows: 125, UsersPerRequest: 40, RequestsPerSecond: 1, Concurrency: 1})

	first, err := h.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: fmt.Sprintf("it-%s-chain", h.queue), TaskQueue: h.queue,
	}, workflows.WorkflowName, workflows.RunInput{Spec: act, ChunksPerExecution: 2})
	require.NoError(t, err)
	firstRunID := first.GetRunID() // Get follows the chain and moves the handle's run id
	latest := func() client.WorkflowRun { return h.c.GetWorkflow(ctx, first.GetID(), "") }
	require.Eventually(t, func() bool {
		p, err := progressOf(ctx, h, latest())
		return err == nil && p.State == workflows.StateRunning
	}, time.Minute, 50*time.Millisecond, "the first run sends")

	second := h.start(act)
	waitForState(ctx, h, second, workflows.StateQueued, 30*time.Second, "the second run waits")

	// Wait until the chain has moved to a later execution: the second run must still wait.
	require.Eventually(t, func() bool {
		d, err := h.c.DescribeWorkflowExecution(ctx, first.GetID(), "")
		return err == nil && d.GetWorkflowExecutionInfo().GetExecution().GetRunId() != firstRunID
	}, time.Minute, 100*time.Millisecond, "the run continued as new")
	p, err := progressOf(ctx, h, latest())
	require.NoError(t, err)
	require.Equal(t, firstRunID, p.RunID, "the continued execution reports the first execution's run id")
	p2, err := progressOf(ctx, h, second)
	require.NoError(t, err)
	require.Equal(t, workflows.StateQueued, p2.State, "the lock stays with the chain")

	var rep workflows.RunReport
	require.NoError(t, first.Get(ctx, &rep), "Get follows the chain to its end")
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, firstRunID, rep.RunID)
	require.Equal(t, 4, rep.Executions, "8 chunks at 2 per execution")
	require.Equal(t, 8, rep.ChunksDone)
	require.Equal(t, int64(len(us)), rep.Succeeded.Total())
	require.Equal(t, int64(len(us)), rep.Committed)

	var again workflows.RunReport
	require.NoError(t, second.Get(ctx, &again))
	require.Equal(t, workflows.StateCompleted, again.State)
	require.Zero(t, again.Planned.Total(), "the queued run planned after the whole chain committed")
	require.False(t, again.StartedAt.Add(again.PlanDuration).Before(rep.FinishedAt), "it planned after the chain ended")
	require.Equal(t, len(us), h.emu.Stats(h.key).UsersReceived, "no row was sent twice")
	h.requireIterableEqualsModel(us)

	// The server holds 4 executions of the chain: 3 continued as new, the last completed.
	statuses := map[enumspb.WorkflowExecutionStatus]int{}
	require.Eventually(t, func() bool {
		resp, err := h.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: fmt.Sprintf("WorkflowId = '%s'", first.GetID()),
		})
		if err != nil {
			return false
		}
		statuses = map[enumspb.WorkflowExecutionStatus]int{}
		for _, e := range resp.GetExecutions() {
			statuses[e.GetStatus()]++
		}
		return statuses[enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW] == 3 &&
			statuses[enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED] == 1
	}, 30*time.Second, 200*time.Millisecond, "executions: 3 continued as new, 1 completed")
}
