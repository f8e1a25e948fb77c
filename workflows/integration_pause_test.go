//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"google.golang.org/protobuf/proto"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// TestRunPausesOnRejectionsAndResumes: a model with 30% invalid emails (rejected before sending,
// which counts) pauses its run once 500 rows were attempted; the activation's schedule is paused,
// visibility finds the run as Paused, a resume without a reason is refused, a resume with one
// sends the remaining chunks and unpauses the schedule.
func TestRunPausesOnRejectionsAndResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(900)
	invalid := 0
	for i := range us {
		if i%10 < 3 {
			us[i].email = fmt.Sprintf("invalid-address-%d", i)
			invalid++
		}
	}
	h.writeModel(us)
	act := h.spec()
	act.ID = "it-pause"
	act.Sync.ChunkRows, act.Sync.Concurrency = 100, 1
	maxRejected := 10.0
	act.Thresholds = &spec.Thresholds{MaxRejectedPercent: &maxRejected, MinAttempted: 500}

	// The activation's schedule (manual only: it never fires by itself).
	_, err := schedules.Apply(ctx, h.c, []spec.Activation{act}, schedules.ApplyOptions{TaskQueue: h.queue})
	require.NoError(t, err)
	sched := h.c.ScheduleClient().GetHandle(ctx, schedules.ID(act.ID))
	t.Cleanup(func() { _ = sched.Delete(context.Background()) })

	run := h.start(act)

	// Visibility is eventually consistent: poll.
	query := fmt.Sprintf(`ActivationId = "%s" AND ActivationState = "Paused"`, act.ID)
	require.Eventually(t, func() bool {
		resp, err := h.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: "default", Query: query})
		return err == nil && len(resp.GetExecutions()) == 1 && resp.GetExecutions()[0].GetExecution().GetRunId() == run.GetRunID()
	}, time.Minute, 200*time.Millisecond, "visibility finds the paused run")

	v, err := h.c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.QueryProgress)
	require.NoError(t, err)
	var p workflows.Progress
	require.NoError(t, v.Get(&p))
	require.Equal(t, workflows.StatePaused, p.State)
	require.NotNil(t, p.Pause)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	require.Equal(t, 5, p.ChunksDone, "paused once 500 rows were attempted")
	require.False(t, p.Pause.AutoResume, "rejections wait for a person")
	require.True(t, p.Pause.SchedulePaused)
	require.NotEmpty(t, p.Pause.TopRejections)
	require.Contains(t, p.Pause.TopRejections[0].Reason, "invalid email in column email")
	require.Contains(t, p.Pause.NextStep, "starter resume it-pause --reason")
	committedAtPause := p.Committed
	require.Positive(t, committedAtPause, "the finished chunks were committed before pausing")

	desc, err := sched.Describe(ctx)
	require.NoError(t, err)
	require.True(t, desc.Schedule.State.Paused, "the activation's schedule is paused")
	require.Contains(t, desc.Schedule.State.Note, run.GetRunID())
	require.Contains(t, desc.Schedule.State.Note, "rejections")

	// The memo carries the pause, for status and the UI.
	wd, err := h.c.DescribeWorkflowExecution(ctx, run.GetID(), run.GetRunID())
	require.NoError(t, err)
	var memo workflows.PauseInfo
	require.NoError(t, converter.GetDefaultDataConverter().FromPayload(wd.GetWorkflowExecutionInfo().GetMemo().GetFields()[workflows.MemoPause], &memo))
	require.Equal(t, workflows.CauseRejections, memo.Cause)

	// A refused update does not make UpdateWorkflow fail: the refusal comes from Get.
	refused, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{}}, WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.ErrorContains(t, refused.Get(ctx, nil), "a reason is required")

	resumed, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{Reason: "known bad addresses, ticket OPS-1"}},
		WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	var msg string
	require.NoError(t, resumed.Get(ctx, &msg))
	require.Contains(t, msg, "resumes")

	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, 9, rep.ChunksDone, "the remaining chunks were sent")
	require.Equal(t, int64(invalid), rep.Rejected.Added)
	require.Equal(t, int64(len(us)-invalid), rep.Succeeded.Added)
	require.Equal(t, int64(len(us)-invalid), rep.Committed)
	require.Len(t, rep.Pauses, 1)
	require.Contains(t, rep.Pauses[0].EndedBy, "known bad addresses")
	require.Len(t, h.emu.Users(h.key), len(us)-invalid)

	desc, err = sched.Describe(ctx)
	require.NoError(t, err)
	require.False(t, desc.Schedule.State.Paused, "the resume unpaused the schedule")
	require.Contains(t, desc.Schedule.State.Note, "known bad addresses")

	// Pauses, details and memo hold no model data.
	var all bytes.Buffer
	it := h.c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		b, err := proto.Marshal(ev)
		require.NoError(t, err)
		all.Write(b)
	}
	require.Contains(t, all.String(), "known bad addresses", "control: the scan sees payloads")
	for _, needle := range []string{"@example.com", "invalid-address-", "Name 1", h.key} {
		require.False(t, strings.Contains(all.String(), needle), "history contains %q", needle)
	}
}
