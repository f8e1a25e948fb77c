package workflows_test

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/workflows"
)

// lockWorld runs LockWorkflow alone and records, in order, what it signals and what it receives.
type lockWorld struct {
	e         *testsuite.TestWorkflowEnvironment
	mu        sync.Mutex
	events    []string
	grantedAt map[string]time.Time
}

func newLockWorld(t *testing.T) *lockWorld {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	e := s.NewTestWorkflowEnvironment()
	e.RegisterWorkflowWithOptions(workflows.LockWorkflow, workflow.RegisterOptions{Name: workflows.LockWorkflowName})
	e.RegisterActivity(&activities.Activities{})
	e.OnActivity("RecordRun", mock.Anything, mock.Anything).Return(nil).Maybe() // the run log: a warehouse write
	w := &lockWorld{e: e, grantedAt: map[string]time.Time{}}
	e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).Return(
		func(_, wfID, _, signal string, arg any) error {
			switch signal {
			case activities.SignalLockGranted:
				w.add("grant " + wfID)
				w.mu.Lock()
				w.grantedAt[wfID] = e.Now()
				w.mu.Unlock()
			case activities.SignalLockQueued:
				w.add(fmt.Sprintf("queued %s behind %s", wfID, arg.(activities.LockQueued).Holder))
			}
			return nil
		})
	return w
}

func (w *lockWorld) add(ev string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, ev)
}

func (w *lockWorld) signal(at time.Duration, name, wfID string) {
	w.e.RegisterDelayedCallback(func() {
		if name == activities.SignalLockRelease {
			w.add("release " + wfID)
		}
		w.e.SignalWorkflow(name, activities.LockRequest{WorkflowID: wfID, RunID: "run-" + wfID})
	}, at)
}

func holder(wfID string) activities.WaitForCloseInput {
	return activities.WaitForCloseInput{WorkflowID: wfID, RunID: "run-" + wfID}
}

func TestLockGrantsInOrderOfArrivalAndCompletesWhenIdle(t *testing.T) {
	w := newLockWorld(t)
	w.e.OnActivity("WaitForClose", mock.Anything, mock.Anything).After(24 * time.Hour).Return(nil).Maybe()
	w.signal(0, activities.SignalLockAcquire, "a") // SignalWithStart: the first signal comes with the start
	w.signal(2*time.Second, activities.SignalLockAcquire, "b")
	w.signal(3*time.Second, activities.SignalLockAcquire, "c")
	w.signal(4*time.Second, activities.SignalLockAcquire, "b") // a retried RequestLock: ignored
	w.signal(10*time.Second, activities.SignalLockRelease, "a")
	w.signal(20*time.Second, activities.SignalLockRelease, "b")
	w.signal(30*time.Second, activities.SignalLockRelease, "c")
	w.e.ExecuteWorkflow(workflows.LockWorkflow, activities.LockInput{ActivationID: "users"})
	require.True(t, w.e.IsWorkflowCompleted())
	require.NoError(t, w.e.GetWorkflowError(), "idle: the lock workflow completes")
	require.Equal(t, []string{
		"grant a",
		"queued b behind a",
		"queued c behind a",
		"release a",
		"grant b",
		"queued c behind b",
		"release b",
		"grant c",
		"release c",
	}, w.events)
}

func TestLockFreesAHolderThatClosedWithoutReleasing(t *testing.T) {
	w := newLockWorld(t)
	// a is terminated after 5 minutes and never releases; b releases after an hour.
	w.e.OnActivity("WaitForClose", mock.Anything, holder("a")).After(5 * time.Minute).Return(nil)
	w.e.OnActivity("WaitForClose", mock.Anything, holder("b")).After(24 * time.Hour).Return(nil).Maybe()
	w.signal(0, activities.SignalLockAcquire, "a") // SignalWithStart: the first signal comes with the start
	w.signal(2*time.Second, activities.SignalLockAcquire, "b")
	w.signal(time.Hour, activities.SignalLockRelease, "b")
	start := w.e.Now()
	w.e.ExecuteWorkflow(workflows.LockWorkflow, activities.LockInput{ActivationID: "users"})
	require.True(t, w.e.IsWorkflowCompleted())
	require.NoError(t, w.e.GetWorkflowError())
	require.Equal(t, []string{"grant a", "queued b behind a", "grant b", "release b"}, w.events)
	require.WithinDuration(t, start.Add(5*time.Minute), w.grantedAt["b"], 5*time.Second,
		"b gets the lock when a closes, not when someone releases it")
}

func TestLockSkipsAQueuedRunThatLeft(t *testing.T) {
	w := newLockWorld(t)
	w.e.OnActivity("WaitForClose", mock.Anything, mock.Anything).After(24 * time.Hour).Return(nil).Maybe()
	w.signal(0, activities.SignalLockAcquire, "a") // SignalWithStart: the first signal comes with the start
	w.signal(2*time.Second, activities.SignalLockAcquire, "b")
	w.signal(3*time.Second, activities.SignalLockRelease, "b") // b was cancelled while queued
	w.signal(10*time.Second, activities.SignalLockRelease, "a")
	w.e.ExecuteWorkflow(workflows.LockWorkflow, activities.LockInput{ActivationID: "users"})
	require.NoError(t, w.e.GetWorkflowError())
	require.Equal(t, []string{"grant a", "queued b behind a", "release b", "release a"}, w.events)
}
