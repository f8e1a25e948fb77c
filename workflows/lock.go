package workflows

import (
	"time"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
)

// lockGrantsPerRun bounds the grants of one run of the lock workflow before it continues as new
// (with its queue), which keeps its history small.
const lockGrantsPerRun = 500

// LockWorkflow lets one run of an activation go at a time. Runs ask with the `acquire` signal
// (RequestLock signals it with start) and are granted the lock in order of arrival with the
// `lock-granted` signal; a waiting run gets `lock-queued` with the holder's workflow id. The
// holder gives the lock back with `release`; a holder that ends without releasing (terminated,
// timed out) is noticed by WaitForClose. With nobody holding or waiting, the workflow completes.
func LockWorkflow(ctx workflow.Context, in activities.LockInput) error {
	l := &lock{queue: append([]activities.LockRequest(nil), in.Queue...), logger: workflow.GetLogger(ctx)}
	acquire := workflow.GetSignalChannel(ctx, activities.SignalLockAcquire)
	release := workflow.GetSignalChannel(ctx, activities.SignalLockRelease)
	waitOpts := workflow.ActivityOptions{
		StartToCloseTimeout: time.Hour, // WaitForClose is retried while the holder runs
		HeartbeatTimeout:    time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
	}
	var (
		grants  int
		holder  *activities.LockRequest
		closed  workflow.Future
		cancelW workflow.CancelFunc
	)
	free := func() {
		holder, closed = nil, nil
		if cancelW != nil {
			cancelW()
			cancelW = nil
		}
	}
	onAcquire := func(req activities.LockRequest) {
		if holder != nil && *holder == req || !l.enqueue(req) {
			return // a retried RequestLock
		}
		if holder != nil {
			l.notify(ctx, req, holder.WorkflowID, len(l.queue))
		}
	}
	onRelease := func(req activities.LockRequest) {
		if holder != nil && *holder == req {
			free()
			return
		}
		l.remove(req) // a queued run that ended (cancelled) before its turn
	}
	// drain applies the signals that arrived and were not read yet.
	drain := func() {
		var req activities.LockRequest
		for acquire.ReceiveAsync(&req) {
			onAcquire(req)
		}
		for release.ReceiveAsync(&req) {
			onRelease(req)
		}
	}
	for {
		drain()
		if holder == nil {
			if len(l.queue) == 0 {
				return nil // drained above: no signal is lost
			}
			if grants >= lockGrantsPerRun {
				return workflow.NewContinueAsNewError(ctx, LockWorkflowName, activities.LockInput{ActivationID: in.ActivationID, Queue: l.queue})
			}
			next := l.queue[0]
			l.queue = l.queue[1:]
			if err := workflow.SignalExternalWorkflow(ctx, next.WorkflowID, next.RunID, activities.SignalLockGranted, nil).Get(ctx, nil); err != nil {
				l.logger.Warn("lock not granted: the run is gone", "workflow", next.WorkflowID, "error", err)
				continue
			}
			grants++
			holder = &next
			wctx, cancel := workflow.WithCancel(ctx)
			cancelW = cancel
			closed = workflow.ExecuteActivity(workflow.WithActivityOptions(wctx, waitOpts), a.WaitForClose,
				activities.WaitForCloseInput{WorkflowID: next.WorkflowID, RunID: next.RunID})
			for i, q := range l.queue {
				l.notify(ctx, q, next.WorkflowID, i+1)
			}
		}
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(acquire, func(c workflow.ReceiveChannel, _ bool) {
			var req activities.LockRequest
			c.Receive(ctx, &req)
			onAcquire(req)
		})
		sel.AddReceive(release, func(c workflow.ReceiveChannel, _ bool) {
			var req activities.LockRequest
			c.Receive(ctx, &req)
			onRelease(req)
		})
		f := closed
		sel.AddFuture(f, func(workflow.Future) {
			if closed == f { // still the same holder
				l.logger.Warn("lock holder closed without releasing", "workflow", holder.WorkflowID)
				free()
			}
		})
		sel.Select(ctx)
	}
}

// LockWorkflowName is the registered name of LockWorkflow.
const LockWorkflowName = activities.LockWorkflowName

type lock struct {
	queue  []activities.LockRequest
	logger log.Logger
}

// enqueue adds a request unless it is already queued.
func (l *lock) enqueue(req activities.LockRequest) bool {
	for _, q := range l.queue {
		if q == req {
			return false
		}
	}
	l.queue = append(l.queue, req)
	return true
}

func (l *lock) remove(req activities.LockRequest) {
	for i, q := range l.queue {
		if q == req {
			l.queue = append(l.queue[:i:i], l.queue[i+1:]...)
			return
		}
	}
}

// notify tells a waiting run who holds the lock; a run that is gone is removed at its turn.
func (l *lock) notify(ctx workflow.Context, req activities.LockRequest, holder string, position int) {
	workflow.SignalExternalWorkflow(ctx, req.WorkflowID, req.RunID, activities.SignalLockQueued,
		activities.LockQueued{Holder: holder, Position: position})
}

// acquireLock asks for the activation's lock and waits (state Queued) until it is granted, so
// that two runs of one activation never run at the same time.
// An operator's abort ends a queued run at once (it leaves the queue when it releases); a
// pause is kept and applies as soon as the run holds the lock, before it plans.
func (r *run) acquireLock(ctx workflow.Context) *ending {
	r.lockAsked = true
	r.lockReq = r.lockRequest(ctx)
	if err := workflow.ExecuteActivity(r.shortCtx, a.RequestLock, activities.RequestLockInput{
		ActivationID: r.act.ID, Request: r.lockReq}).Get(ctx, nil); err != nil {
		return r.fail(ctx, err)
	}
	granted := workflow.GetSignalChannel(ctx, activities.SignalLockGranted)
	queued := workflow.GetSignalChannel(ctx, activities.SignalLockQueued)
	got := false
	workflow.Go(ctx, func(gctx workflow.Context) {
		for !got {
			sel := workflow.NewSelector(gctx)
			sel.AddReceive(granted, func(c workflow.ReceiveChannel, _ bool) {
				c.Receive(gctx, nil)
				got = true
			})
			sel.AddReceive(queued, func(c workflow.ReceiveChannel, _ bool) {
				var q activities.LockQueued
				c.Receive(gctx, &q)
				if got {
					return
				}
				r.waitingFor = q.Holder
				r.logger.Info("queued behind another run of the activation", "holder", q.Holder, "position", q.Position)
				r.setState(gctx, StateQueued)
			})
			sel.Select(gctx)
		}
	})
	if err := workflow.Await(ctx, func() bool { return got || r.abortReq != nil }); err != nil {
		return r.fail(ctx, temporal.NewCanceledError("cancelled while waiting for the activation's lock"))
	}
	if r.abortReq != nil {
		return r.abort(ctx) // releaseLock takes the run out of the queue, or gives back a lock just granted
	}
	if r.waitingFor != "" {
		r.waitingFor = ""
		r.setState(ctx, StatePlanning)
	}
	return nil
}

// releaseLock gives the activation's lock back (or leaves its queue) however the run ends; it
// runs in a disconnected context so that a cancelled run still releases.
func (r *run) releaseLock(ctx workflow.Context) {
	if !r.lockAsked {
		return
	}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	err := workflow.SignalExternalWorkflow(dctx, activities.LockWorkflowID(r.act.ID), "",
		activities.SignalLockRelease, r.lockReq).Get(dctx, nil)
	if err != nil {
		// Not found: the lock workflow ended already (it watches its holder's close too).
		r.logger.Info("release of the activation's lock", "error", err)
	}
}

func (r *run) lockRequest(ctx workflow.Context) activities.LockRequest {
	ex := workflow.GetInfo(ctx).WorkflowExecution
	return activities.LockRequest{WorkflowID: ex.ID, RunID: ex.RunID}
}
