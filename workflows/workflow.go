package workflows

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// a is only used to name activity methods type-safely; the worker registers the real instance.
var a *activities.Activities

var nonRetryable = []string{activities.ErrTypeInvalidSpec, activities.ErrTypeInvalidModel,
	activities.ErrTypeIterableFatal, activities.ErrTypeIterableUnavailable, activities.ErrTypeNoTemporalClient}

// ActivationWorkflow runs one sync of an activation: plan in the warehouse, send the changed rows
// chunk by chunk (several at once), commit what Iterable accepted, and report. When a threshold
// is exceeded, Iterable refuses the project or does not answer, or an operator asks, the run
// pauses: it stops starting chunks, lets the in-flight ones finish, commits them, pauses the
// activation's schedule and waits (durably) for `resume` or `abort`, or, when the cause was
// transient, for Iterable to answer again.
func ActivationWorkflow(ctx workflow.Context, in RunInput) (RunReport, error) {
	r := newRun(ctx, in)
	if err := r.register(ctx); err != nil {
		return r.rep, err
	}
	defer func() {
		if !r.continuing { // the next execution keeps the lock
			r.releaseLock(ctx)
		}
	}()
	end := r.execute(ctx)
	r.ended = true
	end = r.notifyEnd(ctx, end)
	return end.rep, end.err
}

// run is the state of one execution of ActivationWorkflow. Its fields change only in the
// workflow's coroutines (the main one, the signal receiver, update handlers), one at a time.
type run struct {
	in       RunInput
	act      spec.Activation
	runID    string
	settings spec.SyncSettings
	limits   spec.Limits
	logger   log.Logger
	rep      RunReport
	shortCtx workflow.Context

	plan   warehouse.Plan
	tables []string
	fields activities.CheckFieldsResult
	known  activities.ExportIdentifiersResult
	list   activities.ListInfo // a list activation's list
	// next is the first chunk never started; redo the chunks to send again first (they
	// failed), in order. Chunk ranges come from the plan (ChunkAt): nothing lists them all.
	next int
	redo []int
	// finished chunks wait for the next commit; committed ones are in the state.
	finished  []int
	committed []activities.ChunkRange
	held      int64 // rows this run's commits kept out of the state (rejected or skipped)
	// cursors holds, by chunk index, how far a failed chunk got (see keepCursor).
	cursors map[int]*activities.ChunkProgress
	// window counts the rows attempted and rejected since the run started or last resumed.
	window struct{ attempted, rejected int64 }
	// transientSince is when the current series of transient pauses began (reset by progress),
	// so that pauseTimeout bounds it as a whole.
	transientSince time.Time
	// schedulePaused: this run paused the schedule and has not unpaused it yet.
	schedulePaused bool
	syncActive     time.Duration

	// Control (see pause.go).
	paused    *PauseInfo
	pauseReq  *PauseInput
	resumeReq *ResumeInput
	resumeVia string
	abortReq  *AbortInput
	ended     bool
	ignored   []string
	memoSet   bool

	// Lock (see lock.go): lockAsked once the run asked for the activation's lock (lockReq, the
	// request of the run's first execution); waitingFor is the workflow id of the run that holds
	// it while this one is Queued.
	lockAsked  bool
	lockReq    activities.LockRequest
	waitingFor string

	// Continue-as-new (see continue.go): executions of the run so far, chunks started by this
	// execution, and continuing once this execution hands over to the next.
	executions  int
	startedHere int
	continuing  bool
	autoResumes int // automatic resumes since the last progress (see pauseFor)
	notifying   int // notifications under way (see notify.go)
}

// ending is how a run ends: its report and its error.
type ending struct {
	rep RunReport
	err error
}

func newRun(ctx workflow.Context, in RunInput) *run {
	info := workflow.GetInfo(ctx)
	in.Spec.ApplyDefaults()
	r := &run{
		in: in, act: in.Spec, runID: info.WorkflowExecution.RunID,
		settings: in.Spec.Sync.WithDefaults(), limits: in.Spec.Limits(),
		logger: workflow.GetLogger(ctx),
	}
	r.rep = RunReport{ActivationID: r.act.ID, RunID: r.runID, State: StatePlanning, DryRun: in.DryRun,
		FullResync: in.FullResync, RetryRejected: in.RetryRejected, StartedAt: workflow.Now(ctx), Executions: 1}
	r.executions = 1
	if c := in.Continued; c != nil {
		r.restore(c)
	}
	r.shortCtx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: time.Minute, MaximumAttempts: 10, NonRetryableErrorTypes: nonRetryable},
	})
	return r
}

func (r *run) execute(ctx workflow.Context) *ending {
	if end := r.loadSpec(ctx); end != nil {
		return end
	}
	if err := r.act.Validate(); err != nil {
		r.setState(ctx, StatePlanning)
		return r.fail(ctx, temporal.NewNonRetryableApplicationError(err.Error(), activities.ErrTypeInvalidSpec, nil))
	}
	if r.in.Continued != nil {
		// A continued run holds the lock and has its plan: it goes on sending.
		r.setState(ctx, StateRunning)
	} else if end := r.prepare(ctx); end != nil {
		return end
	}
	return r.sync(ctx)
}

// loadSpec takes the spec from the activation's schedule when the run was started by
// activation id alone (the UI's Start Workflow form), and checks the two agree otherwise.
func (r *run) loadSpec(ctx workflow.Context) *ending {
	id := r.in.ActivationID
	switch {
	case id == "":
		return nil
	case r.in.Spec.ID != "" && r.in.Spec.ID != id:
		r.setState(ctx, StatePlanning)
		return r.fail(ctx, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"activationId %q and spec.id %q name different activations: give one of them", id, r.in.Spec.ID),
			activities.ErrTypeInvalidSpec, nil))
	case r.in.Spec.ID != "":
		return nil
	}
	r.act.ID, r.rep.ActivationID = id, id
	var act spec.Activation
	err := workflow.ExecuteActivity(r.shortCtx, a.LoadSpec, activities.ScheduleInput{ActivationID: id, ScheduleID: ScheduleID(id)}).Get(ctx, &act)
	if err != nil {
		r.setState(ctx, StatePlanning)
		return r.fail(ctx, err)
	}
	act.ApplyDefaults()
	r.in.Spec, r.act = act, act
	r.settings, r.limits = act.Sync.WithDefaults(), act.Limits()
	return nil
}

// prepare takes the activation's lock, plans in the warehouse, applies the volume guard,
// compares field types and, in update mode with the export strategy, loads the project's
// identifiers. A dry run ends here.
func (r *run) prepare(ctx workflow.Context) *ending {
	act := r.act
	r.setState(ctx, StatePlanning)
	// One run of an activation at a time: a real run waits here for the activation's lock.
	if !r.in.DryRun {
		if end := r.acquireLock(ctx); end != nil {
			return end
		}
		// An operator paused the activation while this run waited: pause before planning.
		if r.pauseReq != nil {
			if end := r.pauseFor(ctx, CauseOperator, "paused by an operator before planning: "+r.pauseReq.Reason); end != nil {
				return end
			}
		}
	}

	planCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Hour,
		HeartbeatTimeout:    time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: 2 * time.Minute, MaximumAttempts: 5, NonRetryableErrorTypes: nonRetryable},
	})
	if end := r.untilDone(ctx, warehouseStep, "plan", func() error {
		return workflow.ExecuteActivity(planCtx, a.Plan, activities.PlanInput{Spec: act, RunID: r.runID,
			FullResync: r.in.FullResync, RetryRejected: r.in.RetryRejected}).Get(ctx, &r.plan)
	}); end != nil {
		return end
	}
	rep := &r.rep
	rep.PlanDuration = workflow.Now(ctx).Sub(rep.StartedAt)
	c := r.plan.Counts
	rep.PlanCounts = PlanCounts{ModelRows: c.ModelRows, Unchanged: c.Unchanged, NullKeys: c.NullKeys,
		DuplicateKeys: c.DuplicateKeys, DuplicateIdentifiers: c.DuplicateIdentifiers, Retried: c.Retried, Refreshed: c.Refreshed}
	rep.KnownReasons = r.plan.KnownReasons
	rep.Planned = activities.OpCounts{Added: c.Added, Changed: c.Changed, Removed: c.Removed}
	rep.Chunks = r.plan.ChunkCount()
	r.next, r.redo = 0, nil
	r.tables = []string{r.plan.Table}

	// The volume guard, before anything is sent.
	guard := volumeGuard(c, r.limits, r.in.FullResync)
	if guard != "" && !r.in.DryRun {
		if end := r.pauseFor(ctx, CauseVolume, guard); end != nil {
			return end
		}
	}

	// Field types are compared once per run, before anything is sent.
	if rep.Planned.Total() > 0 {
		if end := r.untilDone(ctx, iterableStep, "check field types", func() error {
			return workflow.ExecuteActivity(r.shortCtx, a.CheckFields, activities.CheckFieldsInput{Spec: act, RunID: r.runID, Columns: r.plan.Columns}).Get(ctx, &r.fields)
		}); end != nil {
			return end
		}
		rep.Warnings = append(rep.Warnings, r.fields.Warnings...)
	}
	if act.Destination.List != nil {
		// Entering members are subscribed, leaving ones unsubscribed: only the changed members
		// go through bulkUpdate, and only subscribing could create a profile.
		rep.Existence = activities.ExistenceStrategy(act, rep.Planned.Changed)
		if rep.Planned.Changed == 0 {
			rep.Existence = activities.ExistenceNone
		}
		rep.ListExistence = activities.ListExistenceStrategy(act, rep.Planned.Added+rep.Planned.Changed)
		if rep.Planned.Total() > 0 {
			if end := r.untilDone(ctx, iterableStep, "find the list", func() error {
				return workflow.ExecuteActivity(r.shortCtx, a.ResolveList, activities.ListInput{Spec: act, RunID: r.runID, DryRun: r.in.DryRun}).Get(ctx, &r.list)
			}); end != nil {
				return end
			}
			list := r.list
			rep.List = &list
		}
	} else {
		rep.Existence = activities.ExistenceStrategy(act, rep.Planned.Total())
	}
	rep.RemovalExistence = activities.RemovalExistenceStrategy(act, rep.Existence, rep.Planned.Removed)

	if r.in.DryRun {
		if guard != "" {
			rep.Warnings = append(rep.Warnings, "a real run would pause here: "+guard)
		}
		r.finish(ctx)
		r.setState(ctx, StateCompleted)
		rep.State = StateDryRun
		return &ending{rep: done(ctx, rep)}
	}

	r.setState(ctx, StateRunning)
	if rep.Existence == activities.ExistenceExport || rep.RemovalExistence == activities.ExistenceExport ||
		rep.ListExistence == activities.ExistenceExport {
		exportCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: 2 * time.Hour,
			HeartbeatTimeout:    time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: 15 * time.Second, BackoffCoefficient: 2,
				MaximumInterval: 5 * time.Minute, MaximumAttempts: 5, NonRetryableErrorTypes: nonRetryable},
		})
		if end := r.untilDone(ctx, iterableStep, "export the project's identifiers", func() error {
			return workflow.ExecuteActivity(exportCtx, a.ExportIdentifiers, activities.ExportIdentifiersInput{Spec: act, RunID: r.runID}).Get(ctx, &r.known)
		}); end != nil {
			return end
		}
		r.tables = append(r.tables, r.known.Table)
	}
	return nil
}

// sync sends the pending chunks, commits what finished after each stretch, and pauses, aborts,
// fails or continues as new when syncChunks says so.
func (r *run) sync(ctx workflow.Context) *ending {
	rep := &r.rep
	for r.left() > 0 {
		start := workflow.Now(ctx)
		st := r.syncChunks(ctx)
		r.syncActive += workflow.Now(ctx).Sub(start)
		rep.SyncDuration = r.syncActive
		// What finished is committed before anything else: before pausing, aborting or failing.
		if end := r.untilDone(ctx, warehouseStep, "commit", func() error { return r.commit(ctx) }); end != nil {
			return end
		}
		switch {
		case st == nil:
		case st.abort:
			return r.abort(ctx)
		case st.continueAsNew:
			return r.continueAsNew(ctx)
		case st.cause == "":
			r.finish(ctx)
			return r.fail(ctx, st.err)
		default:
			if end := r.pauseFor(ctx, st.cause, st.reason); end != nil {
				return end
			}
		}
	}
	r.finish(ctx)
	r.setState(ctx, StateCompleted)
	return &ending{rep: done(ctx, rep)}
}

// Where a step that untilDone runs does its work: which pause a failure cures.
type stepKind int

const (
	// iterableStep talks to Iterable: a failure pauses as fatal (Iterable refused the project)
	// or transient (it did not answer); the run probes Iterable on transient pauses.
	iterableStep stepKind = iota
	// warehouseStep (plan, commit) works in the warehouse: a failure whose retries ran out (the
	// warehouse did not answer, a quota) pauses with cause warehouse, which probes the warehouse.
	warehouseStep
)

// untilDone runs a step; when it fails for a reason a pause can cure, the run pauses (see
// stepKind) and the step runs again on resume. Other failures (the spec, the model, a
// cancellation), and any failure of a dry run, fail the run.
func (r *run) untilDone(ctx workflow.Context, kind stepKind, step string, fn func() error) *ending {
	for {
		err := fn()
		if err == nil {
			return nil
		}
		cause := pauseCause(err)
		if cause == "" || r.in.DryRun {
			r.finish(ctx)
			return r.fail(ctx, err)
		}
		if kind == warehouseStep {
			cause = CauseWarehouse
		}
		if end := r.pauseFor(ctx, cause, step+": "+describe(err)); end != nil {
			return end
		}
	}
}

// stop says why syncChunks stopped starting chunks.
type stop struct {
	abort         bool
	continueAsNew bool
	cause         string // a pause cause; "" with err set: the run fails
	reason        string
	err           error
}

// syncChunks runs at most sync.concurrency SyncChunk activities at once until no chunk is left,
// or until something asks to stop (an error, the rejection threshold, an operator's pause or
// abort): then it starts no new chunk, lets the running ones finish (their rows can still be
// committed), puts the failed chunks back at the front of the queue and says why it stopped.
func (r *run) syncChunks(ctx workflow.Context) *stop {
	chunkCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Hour,
		HeartbeatTimeout:    time.Duration(r.settings.HeartbeatTimeout),
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: time.Minute, MaximumAttempts: 10, NonRetryableErrorTypes: nonRetryable},
	})
	var (
		first    *stop
		failed   []int
		inflight int
		sel      = workflow.NewSelector(ctx)
	)
	for {
		for first == nil && r.pauseReq == nil && r.abortReq == nil && inflight < r.settings.Concurrency && r.left() > 0 &&
			!r.shouldContinueAsNew(ctx) {
			ch := r.take()
			inflight++
			r.startedHere++
			f := workflow.ExecuteActivity(chunkCtx, a.SyncChunk, activities.SyncChunkInput{
				Spec: r.act, RunID: r.runID, Table: r.plan.Table, Chunk: ch,
				Existence: r.rep.Existence, KnownTable: r.known.Table, Conflicts: r.fields.Conflicts,
				RemovalExistence: r.rep.RemovalExistence, ListID: r.list.ID, ListExistence: r.rep.ListExistence,
				Resume: r.cursors[ch.Index]})
			sel.AddFuture(f, func(f workflow.Future) {
				inflight--
				var res activities.ChunkResult
				if err := f.Get(ctx, &res); err != nil {
					failed = append(failed, ch.Index)
					r.keepCursor(ch.Index, err)
					cerr := &chunkError{index: ch.Index, err: err}
					if first == nil {
						first = &stop{cause: pauseCause(err), reason: describe(cerr), err: cerr}
					} else {
						r.logger.Warn("another chunk failed while stopping", "chunk", ch.Index, "error", describe(cerr))
					}
					return
				}
				r.record(ctx, ch, res)
				if first == nil {
					if reason := rejectionGuard(r.window.attempted, r.window.rejected, r.limits); reason != "" {
						first = &stop{cause: CauseRejections, reason: reason}
					}
				}
			})
		}
		if inflight == 0 {
			break
		}
		sel.Select(ctx)
	}
	if len(failed) > 0 {
		sort.Ints(failed)
		r.redo = append(failed, r.redo...)
	}
	switch {
	case first != nil && first.cause == "":
		return first // a failure wins over an operator's request: the run cannot go on anyway
	case r.abortReq != nil:
		return &stop{abort: true}
	case first != nil:
		return first
	case r.pauseReq != nil && r.left() == 0:
		r.pauseReq = nil
		r.ignore("pause: nothing was left to send when the in-flight chunks finished")
	case r.pauseReq != nil:
		return &stop{cause: CauseOperator, reason: "paused by an operator: " + r.pauseReq.Reason}
	}
	if r.left() > 0 && r.shouldContinueAsNew(ctx) {
		return &stop{continueAsNew: true}
	}
	return nil
}

// left is the number of chunks still to send.
func (r *run) left() int { return len(r.redo) + r.plan.ChunkCount() - r.next }

// take returns the next chunk to send: a failed one first, else the next never started.
func (r *run) take() warehouse.Chunk {
	if len(r.redo) > 0 {
		i := r.redo[0]
		r.redo = r.redo[1:]
		return r.plan.ChunkAt(i)
	}
	r.next++
	return r.plan.ChunkAt(r.next - 1)
}

// keepCursor keeps the cursor a failed chunk reached (its error's details), for the chunk's
// next activity: the rows it answered are not sent again.
func (r *run) keepCursor(index int, err error) {
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.HasDetails() {
		return
	}
	var cur activities.ChunkProgress
	if appErr.Details(&cur) != nil || cur.Result.Chunk != index {
		return
	}
	if r.cursors == nil {
		r.cursors = map[int]*activities.ChunkProgress{}
	}
	r.cursors[index] = &cur
}

// record adds a finished chunk's counts to the report and to the threshold window.
func (r *run) record(ctx workflow.Context, ch warehouse.Chunk, res activities.ChunkResult) {
	delete(r.cursors, ch.Index)
	rep := &r.rep
	r.finished = append(r.finished, ch.Index)
	rep.ChunksDone++
	if res.Resumed {
		rep.ResumedChunks++
	}
	rep.Attempted = rep.Attempted.Add(res.Attempted)
	rep.Succeeded = rep.Succeeded.Add(res.Succeeded)
	rep.Rejected = rep.Rejected.Add(res.Rejected)
	rep.KnownRejected = rep.KnownRejected.Add(res.Known)
	rep.Skipped = rep.Skipped.Add(res.Skipped)
	rep.StillRejected = rep.StillRejected.Add(res.StillRejected)
	rep.Unconfirmed = rep.Unconfirmed.Add(res.Unconfirmed)
	rep.Requests += res.Requests
	rep.RateLimited += res.RateLimited
	if res.SendRate > 0 {
		rep.SendRate = res.SendRate
	}
	// The threshold is about new breakage: a known rejection (the same row refused for the
	// same reason by the previous run) counts neither as attempted nor as rejected. An answer
	// that Iterable did not account for counts as a rejection.
	r.window.attempted += res.Attempted.Total() - res.Known.Total()
	r.window.rejected += res.Rejected.Total() - res.Known.Total() + res.Unconfirmed.Total()
	// A chunk got through: a later transient pause starts a new pauseTimeout.
	r.transientSince = time.Time{}
	r.autoResumes = 0
	for _, f := range res.CreatedFields {
		r.warn(fmt.Sprintf("Iterable created field %s", f))
	}
	for _, f := range res.FilteredOutFields {
		r.warn(fmt.Sprintf("Iterable dropped field %s (createNewFields is false and the field does not exist)", f))
	}
	workflow.SetCurrentDetails(ctx, r.details(workflow.Now(ctx)))
}

// commit moves the chunks finished since the last commit into the state (Commit is idempotent).
func (r *run) commit(ctx workflow.Context) error {
	if len(r.finished) == 0 {
		return nil
	}
	var cr warehouse.CommitResult
	if err := workflow.ExecuteActivity(r.shortCtx, a.Commit, activities.CommitInput{
		Spec: r.act, RunID: r.runID, Table: r.plan.Table, Chunks: r.finished, Conflicts: r.fields.Conflicts}).Get(ctx, &cr); err != nil {
		return err
	}
	r.rep.Committed += cr.Upserted + cr.Deleted
	r.held += cr.Held
	for _, i := range r.finished {
		r.committed = activities.AddChunk(r.committed, i)
	}
	r.finished = nil
	return nil
}

// finish reads the run's top rejection reasons and drops its tables (the plan, known identifiers).
func (r *run) finish(ctx workflow.Context) {
	if len(r.tables) == 0 {
		return
	}
	var fin activities.FinishResult
	if err := workflow.ExecuteActivity(r.shortCtx, a.Finish, activities.FinishInput{Spec: r.act, RunID: r.runID, Tables: r.tables}).Get(ctx, &fin); err != nil {
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("finish: %v", describe(err)))
	}
	r.rep.TopRejections = fin.TopReasons
	r.tables = nil
}

// setState records the run's state in the report, the search attributes and the details.
func (r *run) setState(ctx workflow.Context, state string) {
	r.rep.State = state
	// Only the id and the state: search attributes are plaintext in visibility.
	if err := workflow.UpsertTypedSearchAttributes(ctx, ActivationIDKey.ValueSet(r.act.ID),
		ActivationStateKey.ValueSet(state)); err != nil {
		r.logger.Warn("upsert search attributes", "error", err)
	}
	r.publish(ctx)
}

func (r *run) warn(s string) { r.rep.Warnings = appendOnce(r.rep.Warnings, s) }

// fail ends the run as failed, carrying the report in the error's details so that the UI and
// `starter run --wait` still show what was done.
func (r *run) fail(ctx workflow.Context, err error) *ending {
	r.paused = nil
	r.ended = true
	r.setState(ctx, StateFailed)
	r.rep.Error = describe(err)
	rep := done(ctx, &r.rep)
	return &ending{rep: rep, err: temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("activation %s run %s failed: %s", rep.ActivationID, rep.RunID, rep.Error), "RunFailed", err, rep)}
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func done(ctx workflow.Context, rep *RunReport) RunReport {
	rep.FinishedAt = workflow.Now(ctx)
	rep.Duration = rep.FinishedAt.Sub(rep.StartedAt)
	return *rep
}

// describe keeps what an operator needs from an error chain: where (the chunk) and the
// activity's own message, without the SDK's event ids and repeated causes.
func describe(err error) string {
	var (
		appErr     *temporal.ApplicationError
		timeoutErr *temporal.TimeoutError
		prefix     string
	)
	var chunkErr *chunkError
	if errors.As(err, &chunkErr) {
		prefix = fmt.Sprintf("chunk %d: ", chunkErr.index)
	}
	switch {
	case errors.As(err, &appErr):
		return prefix + appErr.Message()
	case errors.As(err, &timeoutErr):
		return prefix + "timed out (" + timeoutErr.TimeoutType().String() + ")"
	}
	return prefix + err.Error()
}

// chunkError says which chunk failed.
type chunkError struct {
	index int
	err   error
}

func (e *chunkError) Error() string { return fmt.Sprintf("chunk %d: %v", e.index, e.err) }
func (e *chunkError) Unwrap() error { return e.err }
