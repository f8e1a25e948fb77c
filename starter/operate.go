package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"

	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

// The operator verbs: pause, resume and abort an activation (its schedule and its live run),
// and trigger a run through its schedule.

// activationID matches the ids the spec validator allows, so an id can go into a visibility
// query as is.
var activationID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// operatorArgs parses `VERB ID [--reason TEXT]` and, for verbs that need one, requires a reason.
// extra adds the verb's own flags.
func operatorArgs(verb string, args []string, needReason bool, extra func(*flag.FlagSet)) (string, string, error) {
	fs := newFlags(verb)
	reason := fs.String("reason", "", "why (kept in the run's report and the schedule's note)")
	if extra != nil {
		extra(fs)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return "", "", err
	}
	usage := fmt.Sprintf("usage: starter %s ID", verb)
	if needReason {
		usage += " --reason TEXT"
	}
	if len(pos) != 1 {
		return "", "", errors.New(usage)
	}
	if !activationID.MatchString(pos[0]) {
		return "", "", fmt.Errorf("%q is not an activation id", pos[0])
	}
	if needReason && strings.TrimSpace(*reason) == "" {
		return "", "", fmt.Errorf("--reason is required: say why (%s)", usage)
	}
	return pos[0], strings.TrimSpace(*reason), nil
}

// liveRuns finds the open runs of an activation through visibility (eventually consistent: a
// run started a second ago may be missing).
func liveRuns(ctx context.Context, c client.Client, namespace, id string) ([]*workflowpb.WorkflowExecutionInfo, error) {
	resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: namespace, PageSize: 20,
		Query: fmt.Sprintf("%s = '%s' AND ExecutionStatus = 'Running'", workflows.ActivationIDKey.GetName(), id),
	})
	if err != nil {
		return nil, fmt.Errorf("list the live runs of %s: %w", id, err)
	}
	return resp.GetExecutions(), nil
}

// cmdPause pauses the activation's schedule and asks its live run to pause after its in-flight
// chunks (signal `pause`).
func cmdPause(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	id, reason, err := operatorArgs("pause", args, true, nil)
	if err != nil {
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	h := c.ScheduleClient().GetHandle(ctx, schedules.ID(id))
	switch err := h.Pause(ctx, client.SchedulePauseOptions{Note: "paused by an operator: " + reason}); {
	case err == nil:
		fmt.Fprintf(out, "schedule %s paused\n", schedules.ID(id))
	case schedules.IsNotFound(err):
		fmt.Fprintf(out, "no schedule %s (not applied yet?)\n", schedules.ID(id))
	default:
		return fmt.Errorf("pause schedule %s: %w", schedules.ID(id), err)
	}
	runs, err := liveRuns(ctx, c, opts.Namespace, id)
	if err != nil {
		return err
	}
	for _, r := range runs {
		e := r.GetExecution()
		if err := c.SignalWorkflow(ctx, e.GetWorkflowId(), e.GetRunId(), workflows.SignalPause, workflows.PauseInput{Reason: reason}); err != nil {
			return fmt.Errorf("signal run %s to pause: %w", e.GetWorkflowId(), err)
		}
		if runStateOf(r) == workflows.StateQueued {
			fmt.Fprintf(out, "run %s is queued behind another run: it pauses before planning once it may go\n", e.GetWorkflowId())
			continue
		}
		fmt.Fprintf(out, "run %s asked to pause after its in-flight chunks\n", e.GetWorkflowId())
	}
	if len(runs) == 0 {
		fmt.Fprintln(out, "no live run")
	}
	return nil
}

// cmdResume sends the `resume` update to the activation's paused run, if any, printing the
// run's refusal if it refuses, and unpauses the schedule.
func cmdResume(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	var skip *bool
	id, reason, err := operatorArgs("resume", args, true, func(fs *flag.FlagSet) {
		skip = fs.Bool("skip-rejected", false, "commit the rows the paused run rejected so far as if accepted (they are not sent again until they change)")
	})
	if err != nil {
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := updateLiveRuns(ctx, c, opts.Namespace, id, workflows.UpdateResume,
		workflows.ResumeInput{Reason: reason, SkipRejected: *skip}, "resume", out); err != nil {
		return err
	}
	h := c.ScheduleClient().GetHandle(ctx, schedules.ID(id))
	switch err := h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: "unpaused by an operator: " + reason}); {
	case err == nil:
		fmt.Fprintf(out, "schedule %s unpaused\n", schedules.ID(id))
	case schedules.IsNotFound(err):
		fmt.Fprintf(out, "no schedule %s\n", schedules.ID(id))
	default:
		return fmt.Errorf("unpause schedule %s: %w", schedules.ID(id), err)
	}
	return nil
}

// cmdAbort sends the `abort` update to the activation's live runs: a sending run stops after its
// in-flight chunks, commits what succeeded and ends as Aborted; a paused or queued one ends at
// once. The schedule is left as it is.
func cmdAbort(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	id, reason, err := operatorArgs("abort", args, true, nil)
	if err != nil {
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	refused, err := updateLiveRuns(ctx, c, opts.Namespace, id, workflows.UpdateAbort, workflows.AbortInput{Reason: reason}, "abort", out)
	if err != nil {
		return err
	}
	if refused {
		return errors.New("a run refused to abort")
	}
	return nil
}

// updateLiveRuns sends an update to every live run of the activation and prints each answer or
// refusal; it reports whether any run refused.
func updateLiveRuns(ctx context.Context, c client.Client, namespace, id, name string, arg any, verb string, out io.Writer) (refused bool, err error) {
	runs, err := liveRuns(ctx, c, namespace, id)
	if err != nil {
		return false, err
	}
	if len(runs) == 0 {
		fmt.Fprintln(out, "no live run")
	}
	for _, r := range runs {
		e := r.GetExecution()
		// A queued run waits for the activation's lock and cannot be paused: resume leaves it be.
		if name == workflows.UpdateResume && runStateOf(r) == workflows.StateQueued {
			fmt.Fprintf(out, "run %s is queued behind another run of %s: nothing to resume\n", e.GetWorkflowId(), id)
			continue
		}
		msg, refusal, err := update(ctx, c, e.GetWorkflowId(), e.GetRunId(), name, arg)
		switch {
		case err != nil:
			return refused, err
		case refusal != "":
			refused = true
			fmt.Fprintf(out, "run %s refused to %s: %s\n", e.GetWorkflowId(), verb, refusal)
		default:
			fmt.Fprintf(out, "%s\n", msg)
		}
	}
	return refused, nil
}

// cmdTrigger runs the activation now through its schedule (the schedule's overlap policy,
// skip, applies: nothing starts while a run is still open, paused ones included).
func cmdTrigger(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	id, _, err := operatorArgs("trigger", args, false, nil)
	if err != nil {
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.ScheduleClient().GetHandle(ctx, schedules.ID(id)).Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		if schedules.IsNotFound(err) {
			return fmt.Errorf("no schedule %s: run `starter apply -f PATH` first, or `starter run %s -f PATH`", schedules.ID(id), id)
		}
		return fmt.Errorf("trigger schedule %s: %w", schedules.ID(id), err)
	}
	fmt.Fprintf(out, "schedule %s triggered\n", schedules.ID(id))
	if runs, err := liveRuns(ctx, c, opts.Namespace, id); err == nil && len(runs) > 0 {
		fmt.Fprintf(out, "note: run %s is still open (%s); the schedule's overlap policy skips the new run while it is\n",
			runs[0].GetExecution().GetWorkflowId(), strings.ToLower(runStateOf(runs[0])))
	}
	return nil
}

// update sends an update and waits for its answer. A refusal by the run's validator is not an
// error of UpdateWorkflow: it comes from the handle's Get, and is returned as refusal.
func update(ctx context.Context, c client.Client, workflowID, runID, name string, arg any) (msg, refusal string, err error) {
	h, err := c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: workflowID, RunID: runID, UpdateName: name, Args: []any{arg},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err != nil {
		return "", "", fmt.Errorf("%s run %s: %w", name, workflowID, err)
	}
	if err := h.Get(ctx, &msg); err != nil {
		var appErr *temporal.ApplicationError
		if errors.As(err, &appErr) {
			return "", appErr.Message(), nil
		}
		return "", err.Error(), nil
	}
	return msg, "", nil
}

// runStateOf reads the ActivationState search attribute of a listed run (search attributes
// are never encrypted).
func runStateOf(e *workflowpb.WorkflowExecutionInfo) string {
	var s string
	if p := e.GetSearchAttributes().GetIndexedFields()[workflows.ActivationStateKey.GetName()]; p != nil {
		_ = converter.GetDefaultDataConverter().FromPayload(p, &s)
	}
	return s
}

// pauseOf reads the PauseInfo a paused run keeps in its memo (nil when it is not paused). Memo
// values go through the client's data converter: dc decrypts them when encryption is on.
func pauseOf(e *workflowpb.WorkflowExecutionInfo, dc converter.DataConverter) *workflows.PauseInfo {
	p := e.GetMemo().GetFields()[workflows.MemoPause]
	if p == nil {
		return nil
	}
	var info *workflows.PauseInfo
	if dc.FromPayload(p, &info) != nil {
		return nil
	}
	return info
}
