package activities

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// The lock of an activation: one workflow per activation (LockWorkflowID) that lets one run of
// it go at a time, whichever way the runs were started (schedule, `starter run`, the UI).
const (
	// LockWorkflowName is the registered name of the lock workflow.
	LockWorkflowName = "ActivationLockWorkflow"
	// LockWorkflowIDPrefix starts the id of every lock workflow.
	LockWorkflowIDPrefix = "activation-lock-"
	// SignalLockAcquire (a LockRequest) queues a run for the lock.
	SignalLockAcquire = "acquire"
	// SignalLockRelease (a LockRequest) frees the lock, or removes a queued run from the queue.
	SignalLockRelease = "release"
	// SignalLockGranted (no payload) tells a run that it holds the lock.
	SignalLockGranted = "lock-granted"
	// SignalLockQueued (a LockQueued) tells a run that it waits for another one.
	SignalLockQueued = "lock-queued"
)

// LockWorkflowID is the id of the lock workflow of an activation.
func LockWorkflowID(activationID string) string { return LockWorkflowIDPrefix + activationID }

// LockRequest names the run that asks for, or gives back, the lock.
type LockRequest struct {
	WorkflowID string `json:"workflowId"`
	RunID      string `json:"runId"`
}

// LockInput is the input of the lock workflow. Queue carries the waiting runs over a
// continue-as-new.
type LockInput struct {
	ActivationID string        `json:"activationId"`
	Queue        []LockRequest `json:"queue,omitempty"`
}

// LockQueued tells a waiting run which run holds the lock (workflow ids only, no PII).
type LockQueued struct {
	Holder   string `json:"holder"`
	Position int    `json:"position"`
}

// RequestLockInput is the input of RequestLock.
type RequestLockInput struct {
	ActivationID string      `json:"activationId"`
	Request      LockRequest `json:"request"`
}

// RequestLock queues the calling run for its activation's lock: it signals the lock workflow,
// starting it on the caller's task queue if it is not running. The grant comes as a signal.
func (a *Activities) RequestLock(ctx context.Context, in RequestLockInput) error {
	if a.Temporal == nil {
		return temporal.NewNonRetryableApplicationError(
			"the worker has no Temporal client (Activities.Temporal) to take the activation's lock", ErrTypeNoTemporalClient, nil)
	}
	_, err := a.Temporal.SignalWithStartWorkflow(ctx, LockWorkflowID(in.ActivationID), SignalLockAcquire, in.Request,
		client.StartWorkflowOptions{TaskQueue: activity.GetInfo(ctx).TaskQueue},
		LockWorkflowName, LockInput{ActivationID: in.ActivationID})
	return err
}

// WaitForCloseInput names the run that holds a lock.
type WaitForCloseInput struct {
	WorkflowID string `json:"workflowId"`
	RunID      string `json:"runId"`
}

// chainRuns says whether the latest execution of the holder's workflow id is running and
// belongs to the holder's chain (its first run is the holder's run).
func (a *Activities) chainRuns(ctx context.Context, in WaitForCloseInput) (bool, error) {
	desc, err := a.Temporal.DescribeWorkflowExecution(ctx, in.WorkflowID, "")
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &nf):
		return false, nil
	case err != nil:
		return false, err
	}
	info := desc.GetWorkflowExecutionInfo()
	return info.GetStatus() == enums.WORKFLOW_EXECUTION_STATUS_RUNNING && info.GetFirstRunId() == in.RunID, nil
}

// waitBeat is how often WaitForClose heartbeats while it long-polls (its heartbeat timeout is
// a minute).
const waitBeat = 15 * time.Second

// WaitForClose returns when the run is closed in any way (completed, failed, terminated, timed
// out) or unknown, so that a lock is not held forever by a run that never released it. A run
// that continued as new is followed to its last execution: the chain holds the lock as a whole.
//
// It long-polls the run's close with the activity's own context and heartbeats beside it. A
// deadline of its own on each poll (20 s, before) made the server answer one second early and
// the SDK ask again at once until the deadline: about a thousand requests in that second, every
// 20 s of every run (TestWaitForCloseAsksEverySoOften).
func (a *Activities) WaitForClose(ctx context.Context, in WaitForCloseInput) error {
	if a.Temporal == nil {
		return temporal.NewNonRetryableApplicationError(
			"the worker has no Temporal client (Activities.Temporal) to watch a lock's holder", ErrTypeNoTemporalClient, nil)
	}
	activity.RecordHeartbeat(ctx)
	stop := heartbeatWhile(ctx, waitBeat, func() any { return nil })
	defer stop()
	for {
		err := a.Temporal.GetWorkflow(ctx, in.WorkflowID, in.RunID).Get(ctx, nil)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			return nil
		}
		// Get fails for a failed run or a broken connection: ask.
		desc, derr := a.Temporal.DescribeWorkflowExecution(ctx, in.WorkflowID, in.RunID)
		var nf *serviceerror.NotFound
		switch {
		case errors.As(derr, &nf):
			return nil
		case derr != nil:
			return derr
		case desc.GetWorkflowExecutionInfo().GetStatus() == enums.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW:
			// The holder continued as new and keeps the lock: wait for the chain's last execution.
			if running, err := a.chainRuns(ctx, in); err != nil || !running {
				return err
			}
		case desc.GetWorkflowExecutionInfo().GetStatus() != enums.WORKFLOW_EXECUTION_STATUS_RUNNING:
			return nil
		}
		// Get failed at once on a running run: do not spin.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
