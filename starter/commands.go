package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

func taskQueue() string {
	if q := os.Getenv("ACTIVATIONS_TASK_QUEUE"); q != "" {
		return q
	}
	return workflows.TaskQueue
}

func cmdValidate(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("validate")
	file := fs.String("f", "", "activation spec file or folder")
	offline := fs.Bool("offline", false, "skip the models' BigQuery dry runs and DuckDB DESCRIBEs, and the check of lists given by id")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := requireFile(*file); err != nil {
		return err
	}
	acts, err := spec.Load(*file)
	for _, a := range acts {
		fmt.Fprintf(out, "ok  %s (%s)\n", a.ID, a.File)
	}
	if !*offline {
		err = errors.Join(err, dryRunModels(ctx, acts, out), checkLists(ctx, acts, out))
	}
	return err
}

func cmdApply(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("apply")
	file := fs.String("f", "", "activation spec file or folder")
	prune := fs.Bool("prune", false, "delete managed schedules whose activation is no longer declared")
	dry := fs.Bool("dry-run", false, "show what would change, change nothing")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := requireFile(*file); err != nil {
		return err
	}
	acts, err := spec.Load(*file)
	if err != nil {
		// Applying a partial set with --prune would delete the schedules of the broken files.
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := temporalclient.EnsureSearchAttributes(ctx, c, opts.Namespace, workflows.SearchAttributes()); err != nil {
		return err
	}
	changes, err := schedules.Apply(ctx, c, acts, schedules.ApplyOptions{TaskQueue: taskQueue(), Prune: *prune, DryRun: *dry, DataConverter: temporalclient.DataConverter(opts)})
	for _, ch := range changes {
		fmt.Fprintf(out, "%-9s %s\n", ch.Action, ch.ScheduleID)
	}
	return err
}

func cmdRun(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("run")
	file := fs.String("f", "", "activation spec file or folder")
	full := fs.Bool("full-resync", false, "send every row again, ignoring the last synced state")
	dry := fs.Bool("dry-run", false, "plan only: count what would be sent, send nothing")
	wait := fs.Bool("wait", false, "wait for the run, showing its progress")
	retry := fs.Bool("retry-rejected", false, "send again the rows that known rejections hold back (rejected before sending, unchanged since)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: starter run ID -f PATH [--full-resync] [--retry-rejected] [--dry-run] [--wait]")
	}
	if err := requireFile(*file); err != nil {
		return err
	}
	act, err := spec.LoadOne(*file, pos[0])
	if err != nil {
		return err
	}
	c, _, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = startAndWatch(ctx, c, out, workflows.RunInput{Spec: act, FullResync: *full, DryRun: *dry, RetryRejected: *retry}, *wait)
	return err
}

// startAndWatch starts a run directly (not through the schedule) and optionally follows it.
func startAndWatch(ctx context.Context, c client.Client, out io.Writer, in workflows.RunInput, wait bool) (workflows.RunReport, error) {
	id := fmt.Sprintf("%s%s-manual-%s", schedules.Prefix, in.Spec.ID, time.Now().UTC().Format("20060102T150405.000"))
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                    id,
		TaskQueue:             taskQueue(),
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.ActivationIDKey.ValueSet(in.Spec.ID)),
	}, workflows.WorkflowName, in)
	if err != nil {
		return workflows.RunReport{}, fmt.Errorf("start run of %s: %w", in.Spec.ID, err)
	}
	fmt.Fprintf(out, "started %s (workflow %s, run %s)\n", in.Spec.ID, run.GetID(), run.GetRunID())
	if !wait {
		return workflows.RunReport{}, nil
	}
	rep, err := watch(ctx, c, out, run)
	printReport(out, rep)
	return rep, err
}

// watch prints the run's progress every second until it ends, then returns its report. A run
// that pauses waiting for an operator is left open: watch prints why and what to do, and returns
// exit code 3. A transient pause (the run resumes by itself) is only reported.
func watch(ctx context.Context, c client.Client, out io.Writer, run client.WorkflowRun) (workflows.RunReport, error) {
	done := make(chan struct{})
	var (
		rep    workflows.RunReport
		runErr error
	)
	go func() {
		defer close(done)
		runErr = run.Get(ctx, &rep)
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, lastPause := "", ""
	for {
		select {
		case <-done:
			if runErr != nil {
				var appErr *temporal.ApplicationError
				if errors.As(runErr, &appErr) && appErr.HasDetails() && appErr.Details(&rep) == nil && rep.Error != "" {
					// The report says why, once, with the activation and the step (printReport);
					// Temporal's error chain would repeat it twice more.
					return rep, fmt.Errorf("run %s of %s failed (see the report's error above)", run.GetID(), rep.ActivationID)
				}
				return rep, fmt.Errorf("run %s failed: %w", run.GetID(), runErr)
			}
			if rep.State == workflows.StatePaused {
				return rep, &exitError{code: 3, err: fmt.Errorf("run %s is paused, waiting for an operator", run.GetID())}
			}
			return rep, nil
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-t.C:
			// The latest execution: a long run continues as new under the same workflow id.
			v, err := c.QueryWorkflow(ctx, run.GetID(), "", workflows.QueryProgress)
			if err != nil {
				continue
			}
			var p workflows.Progress
			if v.Get(&p) != nil {
				continue
			}
			line := fmt.Sprintf("  %-9s chunks %d/%d  planned %d  succeeded %d  rejected %d  requests %d",
				p.State, p.ChunksDone, p.Chunks, p.Planned.Total(), p.Succeeded.Total(), p.Rejected.Total(), p.Requests)
			if line != last {
				fmt.Fprintln(out, line)
				last = line
			}
			if p.State != workflows.StatePaused || p.Pause == nil {
				continue
			}
			if pa := p.Pause; pa.AutoResume {
				if pa.Reason != lastPause {
					fmt.Fprintf(out, "  paused (%s): %s\n  it resumes by itself once Iterable answers again\n", pa.Cause, pa.Reason)
					lastPause = pa.Reason
				}
				continue
			}
			pa := p.Pause
			fmt.Fprintf(out, "\nrun %s is paused (%s): %s\n  next: %s\n", run.GetID(), pa.Cause, pa.Reason, pa.NextStep)
			return pausedReport(p), &exitError{code: 3, err: fmt.Errorf("run %s is paused, waiting for an operator: %s", run.GetID(), pa.Reason)}
		}
	}
}

// pausedReport is what is known of a run that is paused and still open.
func pausedReport(p workflows.Progress) workflows.RunReport {
	r := workflows.RunReport{ActivationID: p.ActivationID, RunID: p.RunID, State: p.State, Chunks: p.Chunks,
		ChunksDone: p.ChunksDone, PlanCounts: p.Plan, Planned: p.Planned, Attempted: p.Attempted, Succeeded: p.Succeeded,
		Rejected: p.Rejected, KnownRejected: p.KnownRejected, Skipped: p.Skipped, StillRejected: p.StillRejected,
		Unconfirmed: p.Unconfirmed, Committed: p.Committed, Requests: p.Requests}
	if p.Pause != nil {
		r.Pauses = []workflows.PauseInfo{*p.Pause}
		r.TopRejections = p.Pause.TopRejections
	}
	return r
}

func printReport(out io.Writer, r workflows.RunReport) {
	if r.ActivationID == "" {
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "\nrun report: %s  run %s  state %s  took %s\n", r.ActivationID, r.RunID, r.State, r.Duration.Round(time.Millisecond))
	fmt.Fprintf(w, "  model rows\t%d\tunchanged %d, NULL keys %d, duplicate-key rows %d, rows sharing an identifier %d (never sent)\n",
		r.ModelRows, r.Unchanged, r.NullKeys, r.DuplicateKeys, r.DuplicateIdentifiers)
	if r.List != nil {
		fmt.Fprintf(w, "  list\t%s\tid %d (members entering are subscribed, leaving ones unsubscribed)\n", r.List.Name, r.List.ID)
		fmt.Fprintf(w, "  \tsubscribe\tupdate\tunsubscribe\n")
	} else {
		fmt.Fprintf(w, "  \tadded\tchanged\tremoved\n")
	}
	for _, row := range []struct {
		name string
		c    interface{ Total() int64 }
		a    [3]int64
	}{
		{"planned", r.Planned, [3]int64{r.Planned.Added, r.Planned.Changed, r.Planned.Removed}},
		{"attempted", r.Attempted, [3]int64{r.Attempted.Added, r.Attempted.Changed, r.Attempted.Removed}},
		{"succeeded", r.Succeeded, [3]int64{r.Succeeded.Added, r.Succeeded.Changed, r.Succeeded.Removed}},
		{"rejected", r.Rejected, [3]int64{r.Rejected.Added, r.Rejected.Changed, r.Rejected.Removed}},
		{"  of which known", r.KnownRejected, [3]int64{r.KnownRejected.Added, r.KnownRejected.Changed, r.KnownRejected.Removed}},
		{"unconfirmed", r.Unconfirmed, [3]int64{r.Unconfirmed.Added, r.Unconfirmed.Changed, r.Unconfirmed.Removed}},
		{"skipped", r.Skipped, [3]int64{r.Skipped.Added, r.Skipped.Changed, r.Skipped.Removed}},
		{"still rejected", r.StillRejected, [3]int64{r.StillRejected.Added, r.StillRejected.Changed, r.StillRejected.Removed}},
	} {
		fmt.Fprintf(w, "  %s\t%d\t%d\t%d\n", row.name, row.a[0], row.a[1], row.a[2])
	}
	fmt.Fprintf(w, "  committed\t%d\trows entered or left the state\n", r.Committed)
	fmt.Fprintf(w, "  Iterable requests\t%d\t(%d answered 429)\n", r.Requests, r.RateLimited)
	w.Flush()
	for _, tr := range r.TopRejections {
		fmt.Fprintf(out, "  %-8s %6d  %s\n", tr.Outcome, tr.Count, tr.Reason)
	}
	if n := r.StillRejected.Total(); n > 0 {
		fmt.Fprintf(out, "  %d rows still rejected: refused before sending by an earlier run and unchanged since; not sent again until they change (or run --retry-rejected):\n", n)
		for _, tr := range r.KnownReasons {
			fmt.Fprintf(out, "  %-8s %6d  %s\n", "known", tr.Count, tr.Reason)
		}
	}
	if r.Refreshed > 0 {
		fmt.Fprintf(out, "  %d state rows refreshed after a field left the mapping (nothing sent)\n", r.Refreshed)
	}
	for _, wmsg := range r.Warnings {
		fmt.Fprintf(out, "  warning: %s\n", wmsg)
	}
	if r.SkippedByOperator > 0 {
		fmt.Fprintf(out, "  %d rejected rows committed on an operator's request (resume --skip-rejected)\n", r.SkippedByOperator)
	}
	for _, p := range r.Pauses {
		fmt.Fprintf(out, "  paused %s (%s): %s", p.Since.Local().Format(time.RFC3339), p.Cause, p.Reason)
		if p.EndedBy != "" {
			fmt.Fprintf(out, " [%s]", p.EndedBy)
		}
		fmt.Fprintln(out)
	}
	if r.AbortReason != "" {
		fmt.Fprintf(out, "  aborted: %s\n", r.AbortReason)
	}
	if r.Error != "" {
		fmt.Fprintf(out, "  error: activation %s run %s: %s\n", r.ActivationID, r.RunID, r.Error)
	}
}

// activationStatus is one line of `starter status`.
type activationStatus struct {
	ID    string `json:"id"`
	State string `json:"state"` // running | paused | completed | failed | aborted | idle
	// Phase is the ActivationState of the latest run while it is live (Queued, Planning,
	// Running, Paused): a Queued run waits for another run of the activation to end.
	Phase string `json:"phase,omitempty"`
	// PauseReason says why the activation is paused: its run's pause reason, or the note of its
	// paused schedule when no run is paused.
	PauseReason string `json:"pauseReason,omitempty"`
	// Pause is the paused run's pause: cause, counts, deadline, what to do.
	Pause      *workflows.PauseInfo `json:"pause,omitempty"`
	Schedule   *scheduleState       `json:"schedule,omitempty"`
	LastRuns   []runState           `json:"lastRuns"`
	LastReport *workflows.RunReport `json:"lastReport,omitempty"`
}

type scheduleState struct {
	ID       string     `json:"id"`
	Paused   bool       `json:"paused"`
	Note     string     `json:"note,omitempty"`
	NextRun  *time.Time `json:"nextRun,omitempty"`
	Schedule string     `json:"schedule"`
}

type runState struct {
	WorkflowID string     `json:"workflowId"`
	RunID      string     `json:"runId"`
	Status     string     `json:"status"`
	State      string     `json:"activationState,omitempty"`
	Start      time.Time  `json:"start"`
	Close      *time.Time `json:"close,omitempty"`
}

func cmdStatus(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("status")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	ids := pos
	if len(ids) == 0 {
		ids, err = activationIDs(ctx, c)
		if err != nil {
			return err
		}
	}
	var all []activationStatus
	for _, id := range ids {
		st, err := status(ctx, c, temporalclient.DataConverter(opts), opts.Namespace, id)
		if err != nil {
			return err
		}
		all = append(all, st)
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	if len(all) == 0 {
		fmt.Fprintln(out, "no activations (run `starter apply -f PATH`)")
	}
	for _, st := range all {
		sched := "no schedule"
		if s := st.Schedule; s != nil {
			sched = s.Schedule
			if s.Paused {
				sched += " (paused: " + s.Note + ")"
			} else if s.NextRun != nil {
				sched += ", next " + s.NextRun.Local().Format(time.RFC3339)
			}
		}
		state := strings.ToUpper(st.State)
		if st.Phase != "" && !strings.EqualFold(st.Phase, st.State) {
			state += " (" + st.Phase + ")"
		}
		fmt.Fprintf(out, "%s  %s  %s\n", st.ID, state, sched)
		if st.Pause != nil {
			fmt.Fprintf(out, "  paused (%s) since %s: %s\n  next: %s\n", st.Pause.Cause,
				st.Pause.Since.Local().Format(time.RFC3339), st.Pause.Reason, st.Pause.NextStep)
		}
		for _, r := range st.LastRuns {
			status := r.Status
			if r.Status == "running" && r.State != "" {
				status = strings.ToLower(r.State)
			}
			fmt.Fprintf(out, "  %s  %-10s %s\n", r.Start.Local().Format(time.RFC3339), status, r.WorkflowID)
		}
		if r := st.LastReport; r != nil {
			fmt.Fprintf(out, "  last report: planned %d, succeeded %d, rejected %d (%d known), still rejected %d, unconfirmed %d, duplicate keys %d, shared identifiers %d, requests %d\n",
				r.Planned.Total(), r.Succeeded.Total(), r.Rejected.Total(), r.KnownRejected.Total(), r.StillRejected.Total(),
				r.Unconfirmed.Total(), r.DuplicateKeys, r.DuplicateIdentifiers, r.Requests)
		}
	}
	return nil
}

// activationIDs lists activations that have a managed schedule.
func activationIDs(ctx context.Context, c client.Client) ([]string, error) {
	it, err := c.ScheduleClient().List(ctx, client.ScheduleListOptions{PageSize: 100})
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	var ids []string
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("list schedules: %w", err)
		}
		if id, ok := strings.CutPrefix(e.ID, schedules.Prefix); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

func status(ctx context.Context, c client.Client, dc converter.DataConverter, namespace, id string) (activationStatus, error) {
	st := activationStatus{ID: id, State: "idle"}
	desc, err := c.ScheduleClient().GetHandle(ctx, schedules.ID(id)).Describe(ctx)
	switch {
	case err == nil:
		s := &scheduleState{ID: schedules.ID(id), Paused: desc.Schedule.State.Paused, Note: desc.Schedule.State.Note, Schedule: "manual only"}
		if sp := desc.Schedule.Spec; sp != nil {
			switch {
			case len(sp.Calendars) > 0 || len(sp.CronExpressions) > 0:
				s.Schedule = "calendar"
			case len(sp.Intervals) > 0:
				s.Schedule = "every " + sp.Intervals[0].Every.String()
			}
		}
		if len(desc.Info.NextActionTimes) > 0 {
			t := desc.Info.NextActionTimes[0]
			s.NextRun = &t
		}
		st.Schedule = s
	case !schedules.IsNotFound(err):
		return st, fmt.Errorf("describe schedule of %s: %w", id, err)
	}
	// No ORDER BY: SQL visibility (the dev server, self-hosted SQL) refuses it. The default order
	// puts running executions first, then the most recently closed; sort by start time here.
	resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: namespace, PageSize: 20,
		Query: fmt.Sprintf("%s = '%s'", workflows.ActivationIDKey.GetName(), id),
	})
	if err != nil {
		return st, fmt.Errorf("list runs of %s: %w", id, err)
	}
	var execs []*workflowpb.WorkflowExecutionInfo
	for _, e := range resp.GetExecutions() {
		// A run that continued as new goes on in its chain's latest execution, listed too.
		if e.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW {
			execs = append(execs, e)
		}
	}
	sort.SliceStable(execs, func(i, j int) bool { return execs[i].GetStartTime().AsTime().After(execs[j].GetStartTime().AsTime()) })
	if len(execs) > 5 {
		execs = execs[:5]
	}
	// The activation's state is its latest run's, except that a run sending (or paused) wins
	// over a later one that waits for it in the lock's queue.
	primary := 0
	for i, e := range execs {
		if e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING && runStateOf(e) != workflows.StateQueued {
			primary = i
			break
		}
	}
	for i, e := range execs {
		r := runState{WorkflowID: e.GetExecution().GetWorkflowId(), RunID: e.GetExecution().GetRunId(),
			Status: strings.ToLower(strings.TrimPrefix(e.GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_")),
			Start:  e.GetStartTime().AsTime()}
		if e.GetCloseTime() != nil {
			t := e.GetCloseTime().AsTime()
			r.Close = &t
		}
		if p := e.GetSearchAttributes().GetIndexedFields()[workflows.ActivationStateKey.GetName()]; p != nil {
			_ = json.Unmarshal(p.GetData(), &r.State)
		}
		st.LastRuns = append(st.LastRuns, r)
		if i == primary {
			st.State = stateOf(e.GetStatus(), r.State)
			if e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				st.Phase = r.State
			}
			if st.State == "paused" {
				if st.Pause = pauseOf(e, dc); st.Pause != nil {
					st.PauseReason = st.Pause.Reason
				}
			}
			if e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED {
				var rep workflows.RunReport
				if c.GetWorkflow(ctx, r.WorkflowID, r.RunID).Get(ctx, &rep) == nil {
					st.LastReport = &rep
				}
			}
		}
	}
	// No run waits, but the schedule is paused (by an operator, or by a run that was aborted or
	// timed out while paused): nothing runs until someone resumes it.
	if s := st.Schedule; s != nil && s.Paused && st.State != "running" && st.State != "paused" {
		st.State = "paused"
		st.PauseReason = s.Note
	}
	return st, nil
}

func stateOf(s enumspb.WorkflowExecutionStatus, activationState string) string {
	switch s {
	case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
		if activationState == workflows.StatePaused {
			return "paused"
		}
		return "running"
	case enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
		if activationState == workflows.StateAborted {
			return "aborted"
		}
		return "completed"
	default:
		return "failed"
	}
}
