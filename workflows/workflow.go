package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/warehouse"
)

// a is only used to name activity methods type-safely; the worker registers the real instance.
var a *activities.Activities

var nonRetryable = []string{activities.ErrTypeInvalidSpec, activities.ErrTypeInvalidModel, activities.ErrTypeIterableFatal}

// ActivationWorkflow runs one sync of an activation: plan in the warehouse, send the changed rows
// chunk by chunk (several at once), commit what Iterable accepted, and report.
func ActivationWorkflow(ctx workflow.Context, in RunInput) (RunReport, error) {
	info := workflow.GetInfo(ctx)
	runID := info.WorkflowExecution.RunID
	act := in.Spec
	settings := act.Sync.WithDefaults()
	rep := RunReport{ActivationID: act.ID, RunID: runID, State: StatePlanning, DryRun: in.DryRun,
		FullResync: in.FullResync, StartedAt: workflow.Now(ctx)}
	logger := workflow.GetLogger(ctx)

	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (Progress, error) {
		return Progress{State: rep.State, Chunks: rep.Chunks, ChunksDone: rep.ChunksDone, Planned: rep.Planned,
			Succeeded: rep.Succeeded, Rejected: rep.Rejected, Requests: rep.Requests}, nil
	}); err != nil {
		return rep, err
	}
	setState := func(state string) {
		rep.State = state
		// Only the id and the state: search attributes are plaintext in visibility.
		if err := workflow.UpsertTypedSearchAttributes(ctx, ActivationIDKey.ValueSet(act.ID),
			ActivationStateKey.ValueSet(state)); err != nil {
			logger.Warn("upsert search attributes", "error", err)
		}
	}
	setState(StatePlanning)

	if err := act.Validate(); err != nil {
		return failRun(ctx, &rep, temporal.NewNonRetryableApplicationError(err.Error(), activities.ErrTypeInvalidSpec, nil), setState)
	}

	planCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Hour,
		HeartbeatTimeout:    time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: 2 * time.Minute, MaximumAttempts: 5, NonRetryableErrorTypes: nonRetryable},
	})
	var plan warehouse.Plan
	if err := workflow.ExecuteActivity(planCtx, a.Plan, activities.PlanInput{Spec: act, RunID: runID, FullResync: in.FullResync}).Get(ctx, &plan); err != nil {
		return failRun(ctx, &rep, err, setState)
	}
	rep.PlanDuration = workflow.Now(ctx).Sub(rep.StartedAt)
	c := plan.Counts
	rep.ModelRows, rep.Unchanged, rep.NullKeys, rep.DuplicateKeys = c.ModelRows, c.Unchanged, c.NullKeys, c.DuplicateKeys
	rep.Planned = activities.OpCounts{Added: c.Added, Changed: c.Changed, Removed: c.Removed}
	rep.Chunks = len(plan.Chunks)

	shortCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: time.Minute, MaximumAttempts: 10, NonRetryableErrorTypes: nonRetryable},
	})
	tables := []string{plan.Table}
	finish := func() {
		var fin activities.FinishResult
		if err := workflow.ExecuteActivity(shortCtx, a.Finish, activities.FinishInput{Spec: act, RunID: runID, Tables: tables}).Get(ctx, &fin); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("finish: %v", describe(err)))
		}
		rep.TopRejections = fin.TopReasons
	}

	// Field types are compared once per run, before anything is sent.
	var fields activities.CheckFieldsResult
	if rep.Planned.Total() > 0 {
		if err := workflow.ExecuteActivity(shortCtx, a.CheckFields, activities.CheckFieldsInput{Spec: act, RunID: runID, Columns: plan.Columns}).Get(ctx, &fields); err != nil {
			finish()
			return failRun(ctx, &rep, err, setState)
		}
		rep.Warnings = append(rep.Warnings, fields.Warnings...)
	}
	rep.Existence = activities.ExistenceStrategy(act, rep.Planned.Total())

	if in.DryRun {
		finish()
		setState(StateCompleted)
		rep.State = StateDryRun
		return done(ctx, &rep), nil
	}

	setState(StateRunning)
	var known activities.ExportIdentifiersResult
	if rep.Existence == activities.ExistenceExport {
		exportCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: 2 * time.Hour,
			HeartbeatTimeout:    time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: 15 * time.Second, BackoffCoefficient: 2,
				MaximumInterval: 5 * time.Minute, MaximumAttempts: 5, NonRetryableErrorTypes: nonRetryable},
		})
		if err := workflow.ExecuteActivity(exportCtx, a.ExportIdentifiers, activities.ExportIdentifiersInput{Spec: act, RunID: runID}).Get(ctx, &known); err != nil {
			finish()
			return failRun(ctx, &rep, err, setState)
		}
		tables = append(tables, known.Table)
	}
	syncStart := workflow.Now(ctx)
	finished, syncErr := syncChunks(ctx, settings.Concurrency, time.Duration(settings.HeartbeatTimeout), plan, &rep,
		func(ch warehouse.Chunk) activities.SyncChunkInput {
			return activities.SyncChunkInput{Spec: act, RunID: runID, Table: plan.Table, Chunk: ch,
				Existence: rep.Existence, KnownTable: known.Table, Conflicts: fields.Conflicts}
		})

	rep.SyncDuration = workflow.Now(ctx).Sub(syncStart)
	if len(finished) > 0 {
		var cr warehouse.CommitResult
		if err := workflow.ExecuteActivity(shortCtx, a.Commit, activities.CommitInput{Spec: act, RunID: runID, Table: plan.Table, Chunks: finished}).Get(ctx, &cr); err != nil {
			return failRun(ctx, &rep, err, setState)
		}
		rep.Committed = cr.Upserted + cr.Deleted
	}
	finish()
	if syncErr != nil {
		return failRun(ctx, &rep, syncErr, setState)
	}
	setState(StateCompleted)
	return done(ctx, &rep), nil
}

// syncChunks runs at most concurrency SyncChunk activities at once and returns the indices of
// the chunks that finished. After the first failure it starts no new chunk and lets the running
// ones finish, so their rows can still be committed.
func syncChunks(ctx workflow.Context, concurrency int, heartbeat time.Duration, plan warehouse.Plan, rep *RunReport,
	input func(warehouse.Chunk) activities.SyncChunkInput) ([]int, error) {
	chunkCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Hour,
		HeartbeatTimeout:    heartbeat,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: time.Minute, MaximumAttempts: 10, NonRetryableErrorTypes: nonRetryable},
	})
	var (
		finished []int
		firstErr error
		inflight int
		next     int
		sel      = workflow.NewSelector(ctx)
	)
	for next < len(plan.Chunks) || inflight > 0 {
		for firstErr == nil && inflight < concurrency && next < len(plan.Chunks) {
			ch := plan.Chunks[next]
			next++
			inflight++
			f := workflow.ExecuteActivity(chunkCtx, a.SyncChunk, input(ch))
			sel.AddFuture(f, func(f workflow.Future) {
				inflight--
				var res activities.ChunkResult
				if err := f.Get(ctx, &res); err != nil {
					if firstErr == nil {
						firstErr = &chunkError{index: ch.Index, err: err}
					}
					return
				}
				finished = append(finished, ch.Index)
				rep.ChunksDone++
				if res.Resumed {
					rep.ResumedChunks++
				}
				rep.Attempted = rep.Attempted.Add(res.Attempted)
				rep.Succeeded = rep.Succeeded.Add(res.Succeeded)
				rep.Rejected = rep.Rejected.Add(res.Rejected)
				rep.Skipped = rep.Skipped.Add(res.Skipped)
				rep.Requests += res.Requests
				rep.RateLimited += res.RateLimited
				for _, f := range res.CreatedFields {
					rep.Warnings = appendOnce(rep.Warnings, fmt.Sprintf("Iterable created field %s", f))
				}
				for _, f := range res.FilteredOutFields {
					rep.Warnings = appendOnce(rep.Warnings, fmt.Sprintf("Iterable dropped field %s (createNewFields is false and the field does not exist)", f))
				}
			})
		}
		if inflight == 0 {
			break
		}
		sel.Select(ctx)
	}
	return finished, firstErr
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

// failRun ends the run as failed, carrying the report in the error's details so that the UI and
// `starter run --wait` still show what was done.
func failRun(ctx workflow.Context, rep *RunReport, err error, setState func(string)) (RunReport, error) {
	setState(StateFailed)
	rep.Error = describe(err)
	r := done(ctx, rep)
	return r, temporal.NewNonRetryableApplicationError(fmt.Sprintf("activation %s run %s failed: %s", rep.ActivationID, rep.RunID, rep.Error), "RunFailed", err, r)
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
