package workflows

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// Notifications (spec `notify`): an activity tells the activation's webhooks about a pause when
// it starts, a resume, a failure and a completion with rejections. Pauses and resumes are told
// without waiting (a webhook must never hold a run); the run waits for them only when it ends,
// to list the failures among its warnings. Activations without webhooks schedule nothing.

// notify tells the webhooks about an event of the run; it returns at once.
func (r *run) notify(ctx workflow.Context, event string, p *PauseInfo) {
	if !r.wantsNotification(event) {
		return
	}
	ev := r.event(ctx, event, p)
	r.notifying++
	workflow.Go(ctx, func(ctx workflow.Context) {
		defer func() { r.notifying-- }()
		r.deliver(ctx, ev)
	})
}

// notifyNow tells the webhooks about an event and waits (the run's end).
func (r *run) notifyNow(ctx workflow.Context, event string) {
	if r.wantsNotification(event) {
		r.deliver(ctx, r.event(ctx, event, nil))
	}
}

func (r *run) wantsNotification(event string) bool {
	for _, n := range r.act.Notify {
		if n.Wants(event) {
			return true
		}
	}
	return false
}

func (r *run) deliver(ctx workflow.Context, ev activities.NotifyEvent) {
	// The activity retries each webhook itself (about 15 s); Temporal retries only a lost worker.
	nctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Minute,
		HeartbeatTimeout:    30 * time.Second,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: 5 * time.Second, MaximumAttempts: 3},
	})
	var res activities.NotifyResult
	if err := workflow.ExecuteActivity(nctx, a.Notify, activities.NotifyInput{Spec: r.act, Event: ev}).Get(ctx, &res); err != nil {
		r.warn(fmt.Sprintf("notify (%s): %s", ev.Event, describe(err)))
		return
	}
	for _, w := range res.Warnings {
		r.warn(w)
	}
}

// event is the run's state as a notification tells it: counts, causes, commands. No row data.
func (r *run) event(ctx workflow.Context, event string, p *PauseInfo) activities.NotifyEvent {
	rep := r.rep
	ev := activities.NotifyEvent{Event: event, ActivationID: r.act.ID, RunID: r.runID,
		WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID, State: rep.State, At: workflow.Now(ctx),
		Planned: rep.Planned.Total(), Attempted: rep.Attempted.Total(), Succeeded: rep.Succeeded.Total(),
		Rejected: rep.Rejected.Total(), KnownRejected: rep.KnownRejected.Total(), Skipped: rep.Skipped.Total(),
		StillRejected: rep.StillRejected.Total(), Unconfirmed: rep.Unconfirmed.Total(), TopRejections: rep.TopRejections}
	switch {
	case p != nil:
		deadline := p.Deadline
		ev.Cause, ev.Reason, ev.Deadline, ev.AutoResume = p.Cause, p.Reason, &deadline, p.AutoResume
		if len(p.TopRejections) > 0 {
			ev.TopRejections = p.TopRejections
		}
		ev.Commands = []string{
			fmt.Sprintf("starter resume %s --reason TEXT", r.act.ID),
			fmt.Sprintf("starter abort %s --reason TEXT", r.act.ID),
		}
	case event == spec.EventFailed:
		ev.Reason = rep.Error
	}
	return ev
}

// notifyEnd tells the webhooks how the run ended, then waits for the notifications still under
// way, and puts their warnings in the report it returns.
func (r *run) notifyEnd(ctx workflow.Context, end *ending) *ending {
	if !r.continuing {
		recordRunMetrics(ctx, end.rep)
	}
	if !r.continuing && end.rep.State != StateQueued {
		r.recordRun(ctx, warehouse.RunEventEnded, nil)
		end.rep.Warnings = r.rep.Warnings
	}
	if len(r.act.Notify) == 0 {
		return end
	}
	switch {
	case r.continuing:
	case end.rep.State == StateFailed:
		r.notifyNow(ctx, spec.EventFailed)
	case end.rep.State == StateCompleted && end.rep.Rejected.Total() > 0:
		r.notifyNow(ctx, spec.EventCompletedWithRejections)
	}
	_ = workflow.Await(ctx, func() bool { return r.notifying == 0 })
	end.rep.Warnings = r.rep.Warnings
	return end
}

// Run metrics (docs/telemetry.md): recorded once per run, when it ends (not when an execution
// continues as new), on the workflow's metrics handler. That handler is the worker's Temporal
// client's (the SDK's OpenTelemetry handler, meter temporal-sdk-go) with the SDK's tags
// (namespace, task_queue, workflow_type), and it records nothing while a workflow task replays
// history, so a run is counted by the worker that ends it, and not again by one that replays it.
// Metrics are no commands: the run's history is the same with or without them.
const (
	// metricRuns counts runs by how they ended (Prometheus: activations_runs_total).
	metricRuns = "activations_runs"
	// metricRunDuration is a run's duration, from its start to its end, across its executions
	// (Prometheus: activations_run_duration_seconds).
	metricRunDuration = "activations_run_duration"
	// Their tags: the activation's id and the run's end state (Completed, Failed, Aborted,
	// DryRun).
	metricTagActivation = "activation"
	metricTagState      = "state"
)

func recordRunMetrics(ctx workflow.Context, rep RunReport) {
	h := workflow.GetMetricsHandler(ctx).WithTags(map[string]string{
		metricTagActivation: rep.ActivationID, metricTagState: rep.State})
	h.Counter(metricRuns).Inc(1)
	h.Timer(metricRunDuration).Record(rep.Duration)
}

// scheduledByKey is the search attribute Temporal sets on runs a schedule started.
var scheduledByKey = temporal.NewSearchAttributeKeyKeyword("TemporalScheduledById")

// recordRun writes the run log's record of a pause starting or of the run ending (the `runs`
// table of the state). It is best effort: a failure is a warning, never the run's end.
func (r *run) recordRun(ctx workflow.Context, event warehouse.RunEvent, p *PauseInfo) {
	if r.in.DryRun || r.act.ID == "" || r.act.Source.Type == "" {
		return // a dry run changes nothing; a run whose spec never loaded has no warehouse
	}
	rep := r.rep
	info := workflow.GetInfo(ctx)
	trigger := warehouse.TriggerManual
	if _, ok := workflow.GetTypedSearchAttributes(ctx).GetKeyword(scheduledByKey); ok {
		trigger = warehouse.TriggerSchedule
	} else if strings.Contains(info.WorkflowExecution.ID, "-ui-") {
		trigger = warehouse.TriggerUI
	}
	ops := func(c activities.OpCounts) warehouse.OpCounts {
		return warehouse.OpCounts{Added: c.Added, Changed: c.Changed, Removed: c.Removed}
	}
	rec := warehouse.RunRecord{ActivationID: r.act.ID, RunID: r.runID, WorkflowID: info.WorkflowExecution.ID,
		Event: event, At: workflow.Now(ctx), Trigger: trigger, StartedAt: rep.StartedAt, State: rep.State,
		ModelRows: rep.ModelRows, Unchanged: rep.Unchanged, NullKeys: rep.NullKeys, DuplicateKeys: rep.DuplicateKeys,
		DuplicateIdentifiers: rep.DuplicateIdentifiers, Planned: ops(rep.Planned), Attempted: ops(rep.Attempted),
		Succeeded: ops(rep.Succeeded), Rejected: ops(rep.Rejected), KnownRejected: ops(rep.KnownRejected),
		Skipped: ops(rep.Skipped), StillRejected: ops(rep.StillRejected), Unconfirmed: ops(rep.Unconfirmed),
		Committed: rep.Committed, Requests: rep.Requests, RateLimited: rep.RateLimited,
		PlanSeconds: rep.PlanDuration.Seconds(), SyncSeconds: rep.SyncDuration.Seconds(), SendRate: rep.SendRate}
	if rep.List != nil {
		rec.ListID = rep.List.ID
	}
	for _, pa := range rep.Pauses {
		rec.PauseCauses = append(rec.PauseCauses, pa.Cause)
	}
	if p != nil {
		rec.State, rec.PauseReason = StatePaused, p.Reason
	} else {
		rec.EndedAt = rep.FinishedAt
	}
	// A few quick tries: the log must not hold the run's end (nor a pause) for minutes.
	rctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 2 * time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: 2 * time.Second, MaximumAttempts: 3},
	})
	if err := workflow.ExecuteActivity(rctx, a.RecordRun, activities.RecordRunInput{Spec: r.act, Record: rec}).Get(ctx, nil); err != nil {
		r.warn(fmt.Sprintf("run log (%s): %s", event, describe(err)))
	}
}
