package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// Automatic resume after a transient pause: the first probe comes after probeFirstDelay, the
// next ones double the wait up to probeMaxInterval (Temporal's retry policy of the Probe
// activity, so waiting adds no history events).
const (
	probeFirstDelay  = 30 * time.Second
	probeMaxInterval = 10 * time.Minute
	// maxIgnored bounds Progress.Ignored.
	maxIgnored = 10
	// maxNote bounds the reason quoted in a schedule's note.
	maxNote = 300
	// maxAutoResumes bounds the automatic resumes in a row that made no progress.
	maxAutoResumes = 3
)

// register installs the progress query, the resume and abort updates, and the receiver of the
// pause, resume and abort signals.
func (r *run) register(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (Progress, error) {
		return r.progress(), nil
	}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateResume,
		func(_ workflow.Context, in ResumeInput) (string, error) {
			r.resumeReq, r.resumeVia = &in, "update"
			return fmt.Sprintf("run %s of %s resumes; %d chunk(s) left to send", r.runID, r.act.ID, r.left()), nil
		},
		workflow.UpdateHandlerOptions{Validator: func(_ workflow.Context, in ResumeInput) error { return r.checkResume(in) }},
	); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateAbort,
		func(_ workflow.Context, in AbortInput) (string, error) {
			r.abortReq = &in
			return fmt.Sprintf("run %s of %s aborts after its in-flight chunks; what succeeded is committed", r.runID, r.act.ID), nil
		},
		workflow.UpdateHandlerOptions{Validator: func(_ workflow.Context, in AbortInput) error { return r.checkAbort(in) }},
	); err != nil {
		return err
	}
	workflow.Go(ctx, r.receiveSignals)
	return nil
}

// receiveSignals applies the pause, resume and abort signals, which the UI's signal form sends.
// Signals cannot be refused: an invalid one is ignored and listed in Progress.Ignored.
func (r *run) receiveSignals(ctx workflow.Context) {
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPause), func(c workflow.ReceiveChannel, _ bool) {
		var in PauseInput
		if !c.ReceiveAsync(&in) {
			return
		}
		switch {
		case r.ended:
			r.ignore("pause signal: the run has ended")
		case r.paused != nil:
			r.ignore("pause signal: the run is already paused")
		case r.pauseReq != nil:
			r.ignore("pause signal: a pause is already requested")
		default:
			if strings.TrimSpace(in.Reason) == "" {
				in.Reason = "(no reason given)"
			}
			r.pauseReq = &in
			r.logger.Info("pause requested by an operator")
		}
	})
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalResume), func(c workflow.ReceiveChannel, _ bool) {
		var in ResumeInput
		if !c.ReceiveAsync(&in) {
			return
		}
		if err := r.checkResume(in); err != nil {
			r.ignore("resume signal: " + err.Error())
			return
		}
		r.resumeReq, r.resumeVia = &in, "signal"
	})
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalAbort), func(c workflow.ReceiveChannel, _ bool) {
		var in AbortInput
		if !c.ReceiveAsync(&in) {
			return
		}
		if err := r.checkAbort(in); err != nil {
			r.ignore("abort signal: " + err.Error())
			return
		}
		r.abortReq = &in
	})
	for {
		sel.Select(ctx)
	}
}

// checkResume validates a resume (the update's validator; signals are checked the same way).
func (r *run) checkResume(in ResumeInput) error {
	switch {
	case strings.TrimSpace(in.Reason) == "":
		return errors.New("a reason is required: say why the run may go on (starter resume ID --reason TEXT)")
	case r.ended:
		return fmt.Errorf("the run has ended (state %s)", r.rep.State)
	case r.abortReq != nil:
		return errors.New("the run is being aborted")
	case r.resumeReq != nil:
		return errors.New("the run is already resuming")
	case r.paused == nil:
		return fmt.Errorf("the run is not paused (state %s)", r.rep.State)
	}
	return nil
}

// checkAbort validates an abort: a running run aborts after its in-flight chunks, a paused one at once.
func (r *run) checkAbort(in AbortInput) error {
	switch {
	case strings.TrimSpace(in.Reason) == "":
		return errors.New("a reason is required: say why the run stops (starter abort ID --reason TEXT)")
	case r.ended:
		return fmt.Errorf("the run has ended (state %s)", r.rep.State)
	case r.abortReq != nil:
		return errors.New("the run is already being aborted")
	}
	return nil
}

func (r *run) ignore(why string) {
	r.logger.Warn("control signal ignored", "why", why)
	if len(r.ignored) >= maxIgnored {
		r.ignored = r.ignored[1:]
	}
	r.ignored = append(r.ignored, why)
}

// pauseFor pauses the run: it pauses the activation's schedule, publishes why (state Paused,
// details, memo, progress) and waits. It returns nil when the run resumes, or how it ended
// (aborted, or failed when nobody came within thresholds.pauseTimeout). Finished chunks were
// committed before.
func (r *run) pauseFor(ctx workflow.Context, cause, reason string) *ending {
	now := workflow.Now(ctx)
	r.pauseReq = nil
	deadline := now.Add(r.limits.PauseTimeout)
	auto := cause == CauseTransient || cause == CauseWarehouse
	if auto {
		if r.transientSince.IsZero() {
			r.transientSince = now
		}
		deadline = r.transientSince.Add(r.limits.PauseTimeout)
		// A step that fails again right after each automatic resume is not transient after all:
		// after maxAutoResumes without progress, a person decides.
		if r.autoResumes >= maxAutoResumes {
			auto = false
			reason = fmt.Sprintf("%s (resumed automatically %d times without progress; waiting for an operator)", reason, r.autoResumes)
		}
	}
	p := &PauseInfo{Cause: cause, Reason: reason, RunID: r.runID, Since: now, Deadline: deadline,
		AutoResume: auto, ChunksDone: r.rep.ChunksDone, Chunks: r.rep.Chunks,
		Attempted: r.rep.Attempted.Total(), Rejected: r.rep.Rejected.Total(), Committed: r.rep.Committed}
	if p.Rejected > 0 {
		var top []warehouse.ReasonCount
		if err := workflow.ExecuteActivity(r.shortCtx, a.TopRejections, activities.TopRejectionsInput{
			Spec: r.act, RunID: r.runID, Limit: 3}).Get(ctx, &top); err == nil {
			p.TopRejections = top
		}
	}
	var sr activities.ScheduleResult
	note := truncate(fmt.Sprintf("paused by run %s (%s): %s", r.runID, cause, reason), maxNote)
	if err := workflow.ExecuteActivity(r.shortCtx, a.PauseSchedule, r.scheduleInput(note)).Get(ctx, &sr); err != nil {
		r.warn(fmt.Sprintf("could not pause schedule %s: %s", ScheduleID(r.act.ID), describe(err)))
	} else {
		p.SchedulePaused = sr.Found
		if sr.Found && !sr.WasPaused {
			r.schedulePaused = true
		}
	}
	p.NextStep = r.nextStep(p)
	r.paused = p
	r.addPause(*p)
	r.setState(ctx, StatePaused)
	r.logger.Warn("run paused", "cause", cause, "reason", reason, "deadline", deadline)
	r.recordRun(ctx, warehouse.RunEventPaused, p)
	r.notify(ctx, spec.EventPaused, p)
	return r.waitWhilePaused(ctx, p)
}

func (r *run) scheduleInput(note string) activities.ScheduleInput {
	return activities.ScheduleInput{ActivationID: r.act.ID, ScheduleID: ScheduleID(r.act.ID), RunID: r.runID, Note: note}
}

// probe is the background check of Iterable during a transient pause.
type probe struct {
	done   bool
	err    error
	cancel workflow.CancelFunc
}

// startProbe probes Iterable in a workflow goroutine: after probeFirstDelay, then with Temporal's
// retries (doubling to probeMaxInterval) until it answers or the pause's deadline. It returns nil
// when the deadline is too close to probe at all.
func (r *run) startProbe(ctx workflow.Context, cause string, deadline time.Time) *probe {
	budget := deadline.Sub(workflow.Now(ctx)) - probeFirstDelay
	if budget <= 0 {
		return nil
	}
	pctx, cancel := workflow.WithCancel(ctx)
	pr := &probe{cancel: cancel}
	workflow.Go(pctx, func(gctx workflow.Context) {
		if err := workflow.Sleep(gctx, probeFirstDelay); err != nil {
			return
		}
		actx := workflow.WithActivityOptions(gctx, workflow.ActivityOptions{
			ScheduleToCloseTimeout: budget,
			StartToCloseTimeout:    2 * time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: probeFirstDelay, BackoffCoefficient: 2,
				MaximumInterval: probeMaxInterval,
				NonRetryableErrorTypes: []string{activities.ErrTypeIterableFatal, activities.ErrTypeInvalidSpec,
					activities.ErrTypeInvalidModel}},
		})
		probeFn := a.Probe // Iterable
		if cause == CauseWarehouse {
			probeFn = a.ProbeWarehouse
		}
		err := workflow.ExecuteActivity(actx, probeFn, activities.ProbeInput{Spec: r.act, RunID: r.runID}).Get(gctx, nil)
		pr.err, pr.done = err, true
	})
	return pr
}

// waitWhilePaused waits durably for a resume, an abort, a successful probe (transient pauses)
// or the pause's deadline.
func (r *run) waitWhilePaused(ctx workflow.Context, p *PauseInfo) *ending {
	var pr *probe
	if p.AutoResume {
		pr = r.startProbe(ctx, p.Cause, p.Deadline)
	}
	defer func() {
		if pr != nil {
			pr.cancel()
		}
	}()
	for {
		remaining := p.Deadline.Sub(workflow.Now(ctx))
		ok := true
		if remaining > 0 {
			var err error
			ok, err = workflow.AwaitWithTimeout(ctx, remaining, func() bool {
				return r.resumeReq != nil || r.abortReq != nil || (pr != nil && pr.done)
			})
			if err != nil {
				return r.fail(ctx, err)
			}
		}
		switch {
		case r.abortReq != nil:
			r.endPause(ctx, p, "abort: "+r.abortReq.Reason)
			return r.abort(ctx)
		case r.resumeReq != nil:
			r.resume(ctx, p, r.resumeReq)
			return nil
		case pr != nil && pr.done:
			err := pr.err
			pr = nil
			if err == nil {
				r.autoResumes++
				r.resume(ctx, p, nil)
				return nil
			}
			if pauseCause(err) == CauseFatal || pauseCause(err) == "" {
				// The cause is no longer transient: from now on a person decides.
				target := "Iterable"
				if p.Cause == CauseWarehouse {
					target = "the warehouse"
				} else {
					p.Cause = CauseFatal
				}
				p.AutoResume = false
				p.Reason = fmt.Sprintf("%s refused the probe: %s (the run first paused because: %s)", target, describe(err), p.Reason)
				p.NextStep = r.nextStep(p)
				r.paused = p
				r.updatePause(*p)
				r.publish(ctx)
				r.logger.Warn("probe refused; waiting for an operator", "reason", p.Reason)
				continue
			}
			// The probes ran out of time: the deadline is here.
			r.logger.Warn("Iterable did not answer before the pause's deadline", "error", describe(err))
		case !ok || remaining <= 0:
			return r.pauseTimedOut(ctx, p)
		}
	}
}

// resume ends a pause: by an operator (req set) or automatically (req nil, the probe succeeded).
func (r *run) resume(ctx workflow.Context, p *PauseInfo, req *ResumeInput) {
	how := "automatic resume: Iterable answers again"
	if p.Cause == CauseWarehouse {
		how = "automatic resume: the warehouse answers again"
	}
	if req != nil {
		how = fmt.Sprintf("operator resume (%s): %s", r.resumeVia, req.Reason)
		if req.SkipRejected {
			how += " (skipping the rows rejected so far)"
		}
	}
	r.endPause(ctx, p, how)
	r.resumeReq = nil
	if req != nil && req.SkipRejected {
		r.skipRejected(ctx)
	}
	// An operator's resume unpauses the schedule whoever paused it; an automatic one only
	// unpauses what this run paused.
	if req != nil || r.schedulePaused {
		note := truncate(fmt.Sprintf("unpaused by run %s: %s", r.runID, how), maxNote)
		var sr activities.ScheduleResult
		if err := workflow.ExecuteActivity(r.shortCtx, a.UnpauseSchedule, r.scheduleInput(note)).Get(ctx, &sr); err != nil {
			r.warn(fmt.Sprintf("could not unpause schedule %s: %s", ScheduleID(r.act.ID), describe(err)))
		} else {
			r.schedulePaused = false
		}
	}
	if req != nil {
		r.transientSince = time.Time{}
	}
	r.window.attempted, r.window.rejected = 0, 0 // fresh threshold window
	r.setState(ctx, StateRunning)
	r.logger.Info("run resumed", "how", how, "chunks_left", r.left())
	r.notify(ctx, spec.EventResumed, nil)
}

// skipRejected commits the rows the run held back in its committed chunks as if they had been
// accepted (see activities.SkipRejected).
func (r *run) skipRejected(ctx workflow.Context) {
	if len(r.committed) == 0 || r.held == 0 {
		return
	}
	var cr warehouse.CommitResult
	if err := workflow.ExecuteActivity(r.shortCtx, a.SkipRejected, activities.CommitInput{
		Spec: r.act, RunID: r.runID, Table: r.plan.Table, Ranges: r.committed}).Get(ctx, &cr); err != nil {
		r.warn(fmt.Sprintf("skip rejected: could not commit the rejected rows: %s", describe(err)))
		return
	}
	r.rep.SkippedByOperator += r.held
	r.rep.Committed += r.held
	r.held = 0
}

// abort ends the run cleanly in state Aborted; the chunks that finished were committed.
func (r *run) abort(ctx workflow.Context) *ending {
	r.rep.AbortReason = r.abortReq.Reason
	r.paused = nil
	r.finish(ctx)
	if r.schedulePaused {
		r.warn(fmt.Sprintf("schedule %s stays paused: `starter resume %s --reason TEXT` unpauses it", ScheduleID(r.act.ID), r.act.ID))
	}
	r.ended = true
	r.setState(ctx, StateAborted)
	r.logger.Warn("run aborted by an operator", "reason", r.rep.AbortReason)
	return &ending{rep: done(ctx, &r.rep)}
}

// pauseTimedOut fails a run that nobody resumed within thresholds.pauseTimeout.
func (r *run) pauseTimedOut(ctx workflow.Context, p *PauseInfo) *ending {
	r.endPause(ctx, p, "timeout")
	msg := fmt.Sprintf("paused for %s (thresholds.pauseTimeout) and not resumed; it paused because: %s", r.limits.PauseTimeout, p.Reason)
	if p.SchedulePaused {
		msg += fmt.Sprintf(". Schedule %s stays paused: fix the cause, then `starter resume %s --reason TEXT` unpauses it",
			ScheduleID(r.act.ID), r.act.ID)
	}
	r.finish(ctx)
	return r.fail(ctx, temporal.NewNonRetryableApplicationError(msg, "PauseTimeout", nil))
}

func (r *run) endPause(ctx workflow.Context, p *PauseInfo, how string) {
	now := workflow.Now(ctx)
	p.EndedAt, p.EndedBy = &now, truncate(how, maxNote)
	r.updatePause(*p)
	r.paused = nil
}

func (r *run) addPause(p PauseInfo) {
	if len(r.rep.Pauses) >= MaxPausesReported {
		r.rep.Pauses = r.rep.Pauses[1:]
	}
	r.rep.Pauses = append(r.rep.Pauses, p)
}

func (r *run) updatePause(p PauseInfo) {
	if n := len(r.rep.Pauses); n > 0 {
		r.rep.Pauses[n-1] = p
	}
}

// nextStep tells the operator what to do about a pause.
func (r *run) nextStep(p *PauseInfo) string {
	id := r.act.ID
	resume := fmt.Sprintf("resume with `starter resume %s --reason TEXT` (add --skip-rejected to commit the rows this run rejected so far) "+
		"or the UI's update `resume` with {\"reason\": \"...\"}; stop with `starter abort %s --reason TEXT` or the update `abort`", id, id)
	var what string
	switch p.Cause {
	case CauseTransient, CauseWarehouse:
		target := "Iterable"
		if p.Cause == CauseWarehouse {
			target = "the warehouse"
		}
		if p.AutoResume {
			what = fmt.Sprintf("the run probes %s (after %s, then doubling to %s) and resumes by itself once it answers; to decide sooner, %s",
				target, probeFirstDelay, probeMaxInterval, resume)
		} else {
			what = fmt.Sprintf("check %s (the reason above says what failed), then %s", target, resume)
		}
	case CauseRejections:
		what = fmt.Sprintf("look at the rejections (the report's top reasons, or the rejections table: activation_id = '%s' AND run_id = '%s'), "+
			"fix the model or accept them, then %s", id, r.runID, resume)
	case CauseVolume:
		what = "check that the model is right (nothing was sent), then " + resume
	case CauseFatal:
		what = "fix the Iterable project or the API key the worker reads, then " + resume
	default:
		what = resume
	}
	return fmt.Sprintf("%s. Unless resumed, the run fails at %s (thresholds.pauseTimeout).", what, p.Deadline.UTC().Format(time.RFC3339))
}

// progress is the answer of the `progress` query.
func (r *run) progress() Progress {
	rep := r.rep
	p := Progress{ActivationID: rep.ActivationID, RunID: rep.RunID, State: rep.State, Chunks: rep.Chunks,
		ChunksDone: rep.ChunksDone, Planned: rep.Planned, Attempted: rep.Attempted, Succeeded: rep.Succeeded,
		Rejected: rep.Rejected, Skipped: rep.Skipped, Committed: rep.Committed, Requests: rep.Requests,
		Plan: rep.PlanCounts, KnownRejected: rep.KnownRejected, StillRejected: rep.StillRejected, Unconfirmed: rep.Unconfirmed,
		Ignored: append([]string(nil), r.ignored...), WaitingFor: r.waitingFor}
	if r.paused != nil {
		pi := *r.paused
		p.Pause = &pi
	}
	return p
}

// publish shows the run's state in the UI (current details, markdown) and its pause in the memo.
// Neither holds row data.
func (r *run) publish(ctx workflow.Context) {
	workflow.SetCurrentDetails(ctx, r.details(workflow.Now(ctx)))
	if r.paused == nil && !r.memoSet {
		return
	}
	var memo any
	if r.paused != nil {
		memo = *r.paused
	}
	if err := workflow.UpsertMemo(ctx, map[string]any{MemoPause: memo}); err != nil {
		r.logger.Warn("upsert memo", "error", err)
		return
	}
	r.memoSet = r.paused != nil
}

func (r *run) details(now time.Time) string {
	rep := r.rep
	var b strings.Builder
	fmt.Fprintf(&b, "**%s** run of activation `%s`: **%s**", modeOf(rep), rep.ActivationID, rep.State)
	if p := r.paused; p != nil {
		fmt.Fprintf(&b, " (%s) since %s\n\n> %s\n\n", p.Cause, p.Since.UTC().Format(time.RFC3339), p.Reason)
	} else if r.waitingFor != "" {
		fmt.Fprintf(&b, ": waiting for run `%s` of this activation to end\n\n", r.waitingFor)
	} else {
		b.WriteString("\n\n")
	}
	fmt.Fprintf(&b, "chunks %d/%d · planned %d · attempted %d · succeeded %d · rejected %d · committed %d · requests %d\n",
		rep.ChunksDone, rep.Chunks, rep.Planned.Total(), rep.Attempted.Total(), rep.Succeeded.Total(),
		rep.Rejected.Total(), rep.Committed, rep.Requests)
	if p := r.paused; p != nil {
		for _, t := range p.TopRejections {
			fmt.Fprintf(&b, "\n- %d × %s (%s)", t.Count, t.Reason, t.Outcome)
		}
		fmt.Fprintf(&b, "\n\n**Next:** %s\n", p.NextStep)
		if left := p.Deadline.Sub(now); left > 0 {
			fmt.Fprintf(&b, "\n(%s left before the run fails)\n", left.Round(time.Minute))
		}
	}
	return b.String()
}

func modeOf(rep RunReport) string {
	switch {
	case rep.DryRun:
		return "Dry"
	case rep.FullResync:
		return "Full-resync"
	}
	return "Sync"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}
