package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// The activities a paused run needs: pause and unpause the activation's schedule, probe
// Iterable before resuming by itself, read the run's top rejection reasons for the pause
// details, and commit rejected rows on an operator's request.

// ErrTypeIterableUnavailable is the error type of a chunk that stopped after
// thresholds.maxConsecutiveFailedRequests consecutive failed requests: Iterable does not
// answer (timeouts, dropped connections, 408, 429, 5xx). It is not retried by Temporal; the
// workflow pauses the run as transient and resumes it when Probe succeeds.
const ErrTypeIterableUnavailable = "IterableUnavailable"

// ErrTypeNoTemporalClient says the worker was started without Activities.Temporal.
const ErrTypeNoTemporalClient = "NoTemporalClient"

// ScheduleInput names the schedule to pause or unpause and the note to leave on it.
type ScheduleInput struct {
	ActivationID string `json:"activationId"`
	ScheduleID   string `json:"scheduleId"`
	RunID        string `json:"runId"`
	Note         string `json:"note"`
}

// ScheduleResult tells what the schedule was like. Found is false for activations without a
// schedule (runs started by hand before `starter apply`), which is fine.
type ScheduleResult struct {
	Found     bool `json:"found"`
	WasPaused bool `json:"wasPaused"`
}

// schedule finds the activation's schedule and whether it is paused; a nil handle (and Found
// false) when the activation has none.
func (a *Activities) schedule(ctx context.Context, in ScheduleInput) (client.ScheduleHandle, ScheduleResult, error) {
	if a.Temporal == nil {
		return nil, ScheduleResult{}, temporal.NewNonRetryableApplicationError(
			"the worker has no Temporal client (Activities.Temporal) to pause or unpause schedules", ErrTypeNoTemporalClient, nil)
	}
	h := a.Temporal.ScheduleClient().GetHandle(ctx, in.ScheduleID)
	desc, err := h.Describe(ctx)
	if isNotFound(err) {
		return nil, ScheduleResult{}, nil
	}
	if err != nil {
		return nil, ScheduleResult{}, fmt.Errorf("activation %s run %s: describe schedule %s: %w", in.ActivationID, in.RunID, in.ScheduleID, err)
	}
	return h, ScheduleResult{Found: true, WasPaused: desc.Schedule.State.Paused}, nil
}

// PauseSchedule pauses the activation's schedule so that no new run starts while this one is
// paused. A schedule that is already paused (an operator's pause) keeps its note.
func (a *Activities) PauseSchedule(ctx context.Context, in ScheduleInput) (ScheduleResult, error) {
	h, res, err := a.schedule(ctx, in)
	if err != nil || !res.Found || res.WasPaused {
		return res, err
	}
	if err := h.Pause(ctx, client.SchedulePauseOptions{Note: in.Note}); err != nil {
		if isNotFound(err) {
			return ScheduleResult{}, nil
		}
		return res, fmt.Errorf("activation %s run %s: pause schedule %s: %w", in.ActivationID, in.RunID, in.ScheduleID, err)
	}
	a.baseLogger().Info("schedule paused", "activation_id", in.ActivationID, "run_id", in.RunID, "schedule", in.ScheduleID)
	return res, nil
}

// UnpauseSchedule unpauses the activation's schedule (a no-op when it is not paused).
func (a *Activities) UnpauseSchedule(ctx context.Context, in ScheduleInput) (ScheduleResult, error) {
	h, res, err := a.schedule(ctx, in)
	if err != nil || !res.Found || !res.WasPaused {
		return res, err
	}
	if err := h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: in.Note}); err != nil {
		if isNotFound(err) {
			return ScheduleResult{}, nil
		}
		return res, fmt.Errorf("activation %s run %s: unpause schedule %s: %w", in.ActivationID, in.RunID, in.ScheduleID, err)
	}
	a.baseLogger().Info("schedule unpaused", "activation_id", in.ActivationID, "run_id", in.RunID, "schedule", in.ScheduleID)
	return res, nil
}

func (a *Activities) baseLogger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

// LoadSpec returns the spec that `starter apply` wrote into the activation's schedule, for runs
// started by activation id (the UI's Start Workflow form takes a small JSON input, not a whole
// spec). The schedule's action carries the run input; it is decoded with the worker's data
// converter, since it is encrypted when payloads are.
func (a *Activities) LoadSpec(ctx context.Context, in ScheduleInput) (spec.Activation, error) {
	if a.Temporal == nil {
		return spec.Activation{}, temporal.NewNonRetryableApplicationError(
			"the worker has no Temporal client (Activities.Temporal) to read the activation's schedule", ErrTypeNoTemporalClient, nil)
	}
	desc, err := a.Temporal.ScheduleClient().GetHandle(ctx, in.ScheduleID).Describe(ctx)
	if isNotFound(err) {
		return spec.Activation{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"activation %s is not applied: there is no schedule %s to take its spec from; run `starter apply -f PATH` first, or start the run with the whole spec",
			in.ActivationID, in.ScheduleID), ErrTypeInvalidSpec, nil)
	}
	if err != nil {
		return spec.Activation{}, fmt.Errorf("activation %s: describe schedule %s: %w", in.ActivationID, in.ScheduleID, err)
	}
	action, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	var payload *commonpb.Payload
	if ok && len(action.Args) == 1 {
		payload, _ = action.Args[0].(*commonpb.Payload)
	}
	if payload == nil {
		return spec.Activation{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"activation %s: schedule %s does not start an activation run; apply the activation again", in.ActivationID, in.ScheduleID),
			ErrTypeInvalidSpec, nil)
	}
	dc := a.DataConverter
	if dc == nil {
		dc = converter.GetDefaultDataConverter()
	}
	// The action's input is a workflows.RunInput; only its spec is needed here.
	var runInput struct {
		Spec spec.Activation `json:"spec"`
	}
	if err := dc.FromPayload(payload, &runInput); err != nil {
		return spec.Activation{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"activation %s: the spec in schedule %s cannot be read by this worker (is it the same codec key?): %v",
			in.ActivationID, in.ScheduleID, err), ErrTypeInvalidSpec, nil)
	}
	if runInput.Spec.ID != in.ActivationID {
		return spec.Activation{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"activation %s: schedule %s holds the spec of activation %q", in.ActivationID, in.ScheduleID, runInput.Spec.ID),
			ErrTypeInvalidSpec, nil)
	}
	return runInput.Spec, nil
}

func isNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}

// ProbeInput asks whether the activation's Iterable project answers.
type ProbeInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
}

// Probe makes one cheap call to Iterable (GET /api/users/getFields, through the run's client and
// rate budget) and returns an error when the project does not answer. It makes a single request:
// the workflow's retry policy spaces the probes (30s doubling to 10m). A fatal answer (bad key,
// forbidden) is an IterableFatal error, which Temporal does not retry: the pause then waits for
// a person.
func (a *Activities) Probe(ctx context.Context, in ProbeInput) error {
	c, err := a.iterableClient(in.Spec, in.RunID, func(cfg *iterable.Config) {
		// One request per probe; the activity's retry policy is the backoff.
		cfg.MaxElapsed = time.Nanosecond
	})
	if err != nil {
		return err
	}
	if _, err := c.GetFields(ctx); err != nil {
		return iterableError(err, fmt.Sprintf("activation %s run %s: probe (getFields)", in.Spec.ID, in.RunID))
	}
	a.logger(in.Spec, in.RunID).Info("Iterable answers again")
	return nil
}

// ProbeWarehouse checks that the activation's warehouse answers, with one cheap read (the run's
// top rejection reason), for a run paused because a warehouse step ran out of retries. A
// planner that has a cheaper check (Ping) is asked that instead.
func (a *Activities) ProbeWarehouse(ctx context.Context, in ProbeInput) error {
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return fmt.Errorf("activation %s run %s: probe the warehouse: %w", in.Spec.ID, in.RunID, err)
	}
	if p, ok := planner.(interface{ Ping(context.Context) error }); ok {
		err = p.Ping(ctx)
	} else {
		_, err = planner.TopReasons(ctx, in.Spec.ID, in.RunID, 1)
	}
	if err != nil {
		return fmt.Errorf("activation %s run %s: probe the warehouse: %w", in.Spec.ID, in.RunID, err)
	}
	a.logger(in.Spec, in.RunID).Info("the warehouse answers again")
	return nil
}

// TopRejectionsInput asks for a run's most frequent rejection reasons.
type TopRejectionsInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
	Limit int             `json:"limit"`
}

// TopRejections reads the run's most frequent rejection reasons (categories, never values) so
// that the details of a paused run say what to look at.
func (a *Activities) TopRejections(ctx context.Context, in TopRejectionsInput) ([]warehouse.ReasonCount, error) {
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return nil, err
	}
	top, err := planner.TopReasons(ctx, in.Spec.ID, in.RunID, in.Limit)
	if err != nil {
		return nil, fmt.Errorf("activation %s run %s: top reasons: %w", in.Spec.ID, in.RunID, err)
	}
	return top, nil
}

// operatorSkipRunSuffix names the pseudo-run under which SkipRejected commits. It has no
// rejections, so the planner's Commit ("finished chunks minus the run's rejections") keeps
// nothing back.
const operatorSkipRunSuffix = "/skipped-by-operator"

// SkipRejected commits the given (finished) chunks as if no row had been rejected: the rows
// this run held back (rejected, and in update mode skipped as not in Iterable) enter the state,
// so the next runs do not send them again until they change. It is what `resume
// --skip-rejected` does. The rejections stay in the rejections table under the run's id, for
// the record. It relies only on the planner contract: Commit subtracts the rejections of
// CommitRequest.RunID, and the pseudo-run id has none.
func (a *Activities) SkipRejected(ctx context.Context, in CommitInput) (warehouse.CommitResult, error) {
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return warehouse.CommitResult{}, err
	}
	chunks := append(append([]int(nil), in.Chunks...), ChunksOf(in.Ranges)...)
	res, err := planner.Commit(ctx, warehouse.CommitRequest{
		ActivationID: in.Spec.ID, RunID: in.RunID + operatorSkipRunSuffix, Table: in.Table, Chunks: chunks,
	})
	if err != nil {
		return res, fmt.Errorf("activation %s run %s: commit skipping rejections: %w", in.Spec.ID, in.RunID, err)
	}
	a.logger(in.Spec, in.RunID).Warn("rejected rows committed on an operator's request", "chunks", len(chunks),
		"upserted", res.Upserted, "deleted", res.Deleted)
	return res, nil
}

// RecordRunInput writes one record of the run log (a pause starting, a run ending).
type RecordRunInput struct {
	Spec   spec.Activation     `json:"spec"`
	Record warehouse.RunRecord `json:"record"`
}

// RecordRun writes a record of the run log into the activation's state (the `runs` table). It is
// idempotent, so a retried activity does not add a row.
func (a *Activities) RecordRun(ctx context.Context, in RecordRunInput) error {
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return err
	}
	log, ok := planner.(warehouse.RunLog)
	if !ok {
		return nil // a planner without a run log (test doubles)
	}
	// The budget's name holds a digest of the API key: set here, it never travels through
	// Temporal. Without a key (a dry run's spec, a test double), the rate stays unnamed.
	if in.Record.SendRate > 0 && in.Record.SendBudget == "" {
		if name, err := sendBudgetName(in.Spec); err == nil {
			in.Record.SendBudget = name
		}
	}
	if err := log.RecordRun(ctx, in.Record); err != nil {
		if errors.Is(err, warehouse.ErrInvalidRunRecord) {
			return temporal.NewNonRetryableApplicationError(fmt.Sprintf("activation %s run %s: record the run (%s): %v",
				in.Spec.ID, in.Record.RunID, in.Record.Event, err), ErrTypeInvalidSpec, nil)
		}
		return fmt.Errorf("activation %s run %s: record the run (%s): %w", in.Spec.ID, in.Record.RunID, in.Record.Event, err)
	}
	return nil
}
