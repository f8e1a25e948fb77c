package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// Activities holds the dependencies every activity shares inside one worker process.
type Activities struct {
	Planners PlannerSource
	// Budgets holds one Iterable rate budget per project, shared by every chunk the worker sends.
	Budgets    *iterable.Budgets
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Temporal pauses and unpauses the activation's schedule when a run pauses and resumes
	// (PauseSchedule, UnpauseSchedule) and reads the spec of runs started by activation id
	// (LoadSpec). It may be nil where no schedule is involved (unit tests).
	Temporal client.Client
	// DataConverter reads payloads the client wrote (a schedule's spec); nil is Temporal's default.
	DataConverter converter.DataConverter
	// Tracer starts the spans of Plan, SyncChunk and Commit; nil starts none.
	Tracer trace.Tracer
	// Metrics counts rows and times the steps; nil records nothing.
	Metrics Metrics
	// IterableObserver is given to every Iterable client (request latency, rate-budget waits);
	// nil observes nothing.
	IterableObserver iterable.Observer
}

// Metrics records what the activities did (telemetry.Metrics implements it). Attribute values
// are the activation id and fixed words, never row data.
type Metrics interface {
	// Records counts n rows by operation (added, changed, removed) and outcome (succeeded,
	// rejected, skipped), once per answered window.
	Records(ctx context.Context, activationID, operation, outcome string, n int64)
	// PlanDone, ChunkDone and CommitDone time one attempt of the step; outcome is one of
	// OutcomeSucceeded, OutcomeFailed, OutcomeStopped, OutcomeCanceled.
	PlanDone(ctx context.Context, activationID, outcome string, took time.Duration)
	ChunkDone(ctx context.Context, activationID, outcome string, took time.Duration)
	CommitDone(ctx context.Context, activationID, outcome string, took time.Duration)
}

// Outcomes of a step for Metrics.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"   // Temporal retries it
	OutcomeStopped   = "stopped"  // a non-retryable error: the run pauses or fails
	OutcomeCanceled  = "canceled" // the activity's context ended (timeout, worker shutdown)
)

type noMetrics struct{}

func (noMetrics) Records(context.Context, string, string, string, int64)    {}
func (noMetrics) PlanDone(context.Context, string, string, time.Duration)   {}
func (noMetrics) ChunkDone(context.Context, string, string, time.Duration)  {}
func (noMetrics) CommitDone(context.Context, string, string, time.Duration) {}

func (a *Activities) metrics() Metrics {
	if a.Metrics == nil {
		return noMetrics{}
	}
	return a.Metrics
}

// stepOutcome classifies how a step ended, for Metrics.
func stepOutcome(ctx context.Context, err error) string {
	var appErr *temporal.ApplicationError
	switch {
	case err == nil:
		return OutcomeSucceeded
	case ctx.Err() != nil:
		return OutcomeCanceled
	case errors.As(err, &appErr) && appErr.NonRetryable():
		return OutcomeStopped
	}
	return OutcomeFailed
}

// Span attribute keys: ids and counts only, never row data.
const (
	attrActivationID = attribute.Key("activation.id")
	attrRunID        = attribute.Key("activation.run_id")
	attrChunkIndex   = attribute.Key("activation.chunk.index")
)

// startSpan starts a span of the activation's run; nil Tracer means a no-op span.
func (a *Activities) startSpan(ctx context.Context, name string, act spec.Activation, runID string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	t := a.Tracer
	if t == nil {
		t = noop.NewTracerProvider().Tracer("")
	}
	attrs = append([]attribute.KeyValue{attrActivationID.String(act.ID), attrRunID.String(runID)}, attrs...)
	return t.Start(ctx, name, trace.WithAttributes(attrs...))
}

// endSpan records err (a message without row data, as everything that reaches Temporal) and
// ends the span.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// New wires Activities with a planner pool, fresh budgets and a pooled HTTP client.
func New(logger *slog.Logger) *Activities {
	if logger == nil {
		logger = slog.Default()
	}
	return &Activities{
		Planners:   NewPlannerPool(logger),
		Budgets:    iterable.NewBudgets(),
		HTTPClient: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}},
		Logger:     logger,
	}
}

func (a *Activities) logger(act spec.Activation, runID string) *slog.Logger {
	return a.baseLogger().With("activation_id", act.ID, "run_id", runID)
}

// activityLogger is logger plus the workflow id when ctx is an activity's. Log with its
// *Context methods so that the records carry the trace and span ids.
func (a *Activities) activityLogger(ctx context.Context, act spec.Activation, runID string) *slog.Logger {
	l := a.logger(act, runID)
	if activity.IsActivity(ctx) {
		info := activity.GetInfo(ctx)
		l = l.With("workflow_id", info.WorkflowExecution.ID, "attempt", info.Attempt)
	}
	return l
}

// Plan diffs the model against the activation's state inside the warehouse and returns the plan
// table with its counts and chunk ranges.
func (a *Activities) Plan(ctx context.Context, in PlanInput) (plan warehouse.Plan, err error) {
	act := in.Spec
	start := time.Now()
	ctx, span := a.startSpan(ctx, "activation.plan", act, in.RunID, attribute.Bool("activation.full_resync", in.FullResync))
	defer func() {
		a.metrics().PlanDone(ctx, act.ID, stepOutcome(ctx, err), time.Since(start))
		endSpan(span, err)
	}()
	planner, err := a.Planners.Planner(ctx, act)
	if err != nil {
		return warehouse.Plan{}, err
	}
	stop := heartbeatWhile(ctx, 5*time.Second, func() any { return nil })
	defer stop()
	req := PlanRequest(act, in.RunID, in.FullResync)
	req.RetryRejected = in.RetryRejected
	plan, err = planner.Plan(ctx, req)
	if err != nil {
		if errors.Is(err, warehouse.ErrInvalidModel) {
			return plan, temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("activation %s: plan: %v", act.ID, err), ErrTypeInvalidModel, nil)
		}
		return plan, fmt.Errorf("activation %s: plan: %w", act.ID, err)
	}
	// What travels is the plan's size, not its chunk list: bounded whatever the plan.
	if plan, err = plan.Sized(req.ChunkRows); err != nil {
		return plan, fmt.Errorf("activation %s: %w", act.ID, err)
	}
	c := plan.Counts
	span.SetAttributes(attribute.Int64("plan.model_rows", c.ModelRows), attribute.Int64("plan.added", c.Added),
		attribute.Int64("plan.changed", c.Changed), attribute.Int64("plan.removed", c.Removed),
		attribute.Int64("plan.unchanged", c.Unchanged), attribute.Int64("plan.null_keys", c.NullKeys),
		attribute.Int64("plan.duplicate_keys", c.DuplicateKeys), attribute.Int("plan.chunks", len(plan.Chunks)))
	a.activityLogger(ctx, act, in.RunID).InfoContext(ctx, "planned", "table", plan.Table, "model_rows", c.ModelRows, "added", c.Added,
		"changed", c.Changed, "removed", c.Removed, "unchanged", c.Unchanged, "null_keys", c.NullKeys,
		"duplicate_keys", c.DuplicateKeys, "chunks", len(plan.Chunks), "took", time.Since(start).Round(time.Millisecond))
	return plan, nil
}

// PlanRequest turns a spec into the warehouse's plan request.
func PlanRequest(act spec.Activation, runID string, fullResync bool) warehouse.PlanRequest {
	fields := make([]warehouse.Field, len(act.Destination.Fields))
	for i, f := range act.Destination.Fields {
		fields[i] = warehouse.Field{Column: f.Column, Field: f.Field}
	}
	return warehouse.PlanRequest{
		ActivationID:        act.ID,
		RunID:               runID,
		Query:               act.Source.Query,
		BaseDir:             act.BaseDir,
		PrimaryKey:          act.Source.PrimaryKey,
		Identifier:          act.Destination.Identifier.Column,
		IdentifierLowerCase: act.Destination.Identifier.Field == "email",
		Fields:              fields,
		FullResync:          fullResync,
		ChunkRows:           act.Sync.WithDefaults().ChunkRows,
		RejectionsRetention: time.Duration(act.State.RejectionsRetention),
	}
}

// SyncChunk sends one chunk of the plan to Iterable, records every rejected row in the warehouse
// and heartbeats a cursor, so that a retried attempt (another worker, after a crash) resumes
// after the last answered row instead of starting over.
func (a *Activities) SyncChunk(ctx context.Context, in SyncChunkInput) (_ ChunkResult, err error) {
	act := in.Spec
	start := time.Now()
	ctx, span := a.startSpan(ctx, "activation.sync_chunk", act, in.RunID, attrChunkIndex.Int(in.Chunk.Index),
		attribute.Int64("activation.chunk.first_seq", in.Chunk.FirstSeq), attribute.Int64("activation.chunk.last_seq", in.Chunk.LastSeq),
		attribute.String("activation.existence", in.Existence))
	var s *chunkSender
	defer func() {
		if s != nil {
			r := s.progress().(ChunkProgress).Result
			span.SetAttributes(attribute.Int64("chunk.attempted", r.Attempted.Total()),
				attribute.Int64("chunk.succeeded", r.Succeeded.Total()), attribute.Int64("chunk.rejected", r.Rejected.Total()),
				attribute.Int64("chunk.skipped", r.Skipped.Total()), attribute.Int64("chunk.requests", r.Requests),
				attribute.Int64("chunk.rate_limited", r.RateLimited), attribute.Bool("chunk.resumed", r.Resumed))
		}
		a.metrics().ChunkDone(ctx, act.ID, stepOutcome(ctx, err), time.Since(start))
		endSpan(span, err)
	}()
	log := a.activityLogger(ctx, act, in.RunID).With("chunk", in.Chunk.Index)
	prog := ChunkProgress{AfterSeq: in.Chunk.FirstSeq - 1, Result: ChunkResult{Chunk: in.Chunk.Index}}
	if r := in.Resume; r != nil && r.Result.Chunk == in.Chunk.Index && r.AfterSeq >= prog.AfterSeq && r.AfterSeq <= in.Chunk.LastSeq {
		prog = *r
		prog.Result.Resumed = true
		log.InfoContext(ctx, "resuming chunk after an earlier failure", "after_seq", r.AfterSeq)
	}
	if activity.HasHeartbeatDetails(ctx) {
		var p ChunkProgress
		if err := activity.GetHeartbeatDetails(ctx, &p); err == nil && p.AfterSeq >= prog.AfterSeq && p.Result.Chunk == in.Chunk.Index {
			prog = p
			prog.Result.Resumed = true
			log.InfoContext(ctx, "resuming chunk", "after_seq", p.AfterSeq)
		}
	}
	// The chunk gives up after thresholds.maxConsecutiveFailedRequests failed requests in a row.
	client, err := a.iterableClient(act, in.RunID, failureLimit(act, a.HTTPClient), withLogger(log))
	if err != nil {
		return prog.Result, err
	}
	planner, err := a.Planners.Planner(ctx, act)
	if err != nil {
		return prog.Result, err
	}
	s = &chunkSender{
		act: act, runID: in.RunID, chunk: in.Chunk.Index, client: client, planner: planner,
		window: act.Sync.WithDefaults().UsersPerRequest, prog: prog, metrics: a.metrics(),
	}
	stop := heartbeatWhile(ctx, time.Duration(act.Sync.WithDefaults().HeartbeatTimeout)/4, s.progress)
	defer stop()

	rate := sendBudget(act, client)
	if err := rememberSendRate(ctx, rate, planner, time.Now()); err != nil {
		log.WarnContext(ctx, "the project's last good rate could not be read: this run starts slowly", "err", err)
	}
	s.existence, s.conflicts, s.removalExistence = in.Existence, in.Conflicts, in.RemovalExistence
	s.listID, s.listExistence = in.ListID, in.ListExistence
	if act.Destination.List != nil && in.ListID == 0 {
		return prog.Result, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("activation %s run %s chunk %d: a list activation's chunk needs its list id", act.ID, in.RunID, in.Chunk.Index),
			ErrTypeInvalidSpec, nil)
	}
	err = planner.ReadChunk(ctx, warehouse.ChunkRequest{
		ActivationID: act.ID, Table: in.Table, Fields: PlanRequest(act, in.RunID, false).Fields,
		Chunk: in.Chunk, AfterSeq: prog.AfterSeq,
		KnownTable: in.KnownTable, KnownLowerCase: act.Destination.Identifier.Field == "email",
		Lead: chunkLead(in.Chunk, prog, s.window),
	}, func(r warehouse.Row) error { return s.add(ctx, r) })
	if err == nil {
		err = s.flush(ctx)
	}
	cur := s.progress().(ChunkProgress)
	res := cur.Result
	res.SendRate = rate.GoodRate()
	if err != nil {
		return res, withCursor(ctx, iterableError(err, fmt.Sprintf("activation %s run %s chunk %d", act.ID, in.RunID, in.Chunk.Index)), cur)
	}
	log.InfoContext(ctx, "chunk synced", "attempted", res.Attempted.Total(), "succeeded", res.Succeeded.Total(),
		"rejected", res.Rejected.Total(), "requests", res.Requests, "rate_limited", res.RateLimited)
	return res, nil
}

// chunkLead is the rows a chunk's reader hands over before reading the rest: one request's worth
// for the run's first chunk, whose first request starts the sync (it would otherwise wait for the
// whole chunk to be read, while the other first chunks are read too), none for the others, whose
// reads overlap with the requests of the chunks in flight.
func chunkLead(ch warehouse.Chunk, prog ChunkProgress, window int) int {
	if ch.Index != 0 || prog.Result.Resumed {
		return 0
	}
	return window
}

// sendRateMaxAge bounds how old a recorded good rate may be for a new process to start there:
// the project's other clients may have changed since. Older, a run starts slowly.
const sendRateMaxAge = 7 * 24 * time.Hour

// sendEndpoint is the endpoint that carries most of the activation's records: bulkUpdate, or
// subscribe for a list's members. Its budget's good rate is what the run log remembers.
func sendEndpoint(act spec.Activation) string {
	if act.Destination.List != nil {
		return iterable.EndpointSubscribe
	}
	return iterable.EndpointBulkUpdate
}

// sendBudget is the client's budget of sendEndpoint.
func sendBudget(act spec.Activation, c *iterable.Client) *iterable.Budget {
	if sendEndpoint(act) == iterable.EndpointSubscribe {
		return c.SubscribeBudget()
	}
	return c.BulkBudget()
}

// rememberSendRate gives a budget this process has not used yet the project's good rate that the
// run log last recorded for it, by any activation (at most sendRateMaxAge old), so that a
// restarted worker knows the rate another client's burst interrupts (iterable's rate control,
// step 7) from its first request. It reads the run log once per budget and process.
func rememberSendRate(ctx context.Context, b *iterable.Budget, planner warehouse.Planner, now time.Time) error {
	runLog, ok := planner.(warehouse.RunLog)
	if !ok || b.Name() == "" {
		return nil
	}
	return b.Remember(func() (float64, error) {
		return runLog.LastSendRate(ctx, b.Name(), now.Add(-sendRateMaxAge))
	})
}

// sendBudgetName is the name of the budget sendBudget picks for act: what the run log records
// next to the run's send rate.
func sendBudgetName(act spec.Activation) (string, error) {
	key, err := act.Destination.Iterable.APIKey.Resolve()
	if err != nil {
		return "", err
	}
	return iterable.BudgetName(key, sendEndpoint(act)), nil
}

// withCursor attaches the chunk's cursor to its error (as the details of an application error
// of the same type and retryability), so that the workflow can hand it to the chunk's next
// activity after a pause: rows already answered are not sent again. A cancelled attempt's
// error is left alone.
func withCursor(ctx context.Context, err error, cur ChunkProgress) error {
	if ctx.Err() != nil || cur.Result.Attempted.Total() == 0 && cur.Result.Skipped.Total() == 0 {
		return err
	}
	msg, typ, nonRetryable := err.Error(), "", false
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		msg, typ, nonRetryable = appErr.Message(), appErr.Type(), appErr.NonRetryable()
	}
	return temporal.NewApplicationErrorWithOptions(msg, typ, temporal.ApplicationErrorOptions{
		NonRetryable: nonRetryable, Details: []any{cur}})
}

// iterableError makes fatal Iterable errors, and a chunk that gave up after too many failed
// requests in a row (IterableUnavailable), non-retryable, and adds where it happened.
func iterableError(err error, where string) error {
	if unavailable := asUnavailable(err, where); unavailable != nil {
		return unavailable
	}
	var apiErr *iterable.APIError
	if errors.As(err, &apiErr) && apiErr.Fatal() {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: Iterable refused the project: %v", where, apiErr), ErrTypeIterableFatal, nil)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// iterableClient builds the activation's Iterable client; options adjust its config (the chunk's
// failure limit, the probe's single attempt).
func (a *Activities) iterableClient(act spec.Activation, runID string, options ...func(*iterable.Config)) (*iterable.Client, error) {
	it := act.Destination.Iterable
	key, err := it.APIKey.Resolve()
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("activation %s: Iterable API key (%s): %v", act.ID, it.APIKey, err), ErrTypeInvalidSpec, nil)
	}
	base, err := iterable.BaseURL(it.Region, it.BaseURL)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("activation %s: %v", act.ID, err), ErrTypeInvalidSpec, nil)
	}
	s := act.Sync.WithDefaults()
	cfg := iterable.Config{
		BaseURL: base, APIKey: key, HTTPClient: a.HTTPClient, Budgets: a.Budgets,
		UsersPerRequest: s.UsersPerRequest, RequestsPerSecond: s.RequestsPerSecond,
		Logger: a.logger(act, runID), Observer: a.IterableObserver,
	}
	if l := act.Destination.List; l != nil {
		rps := l.RequestsPerSecond
		if rps <= 0 {
			rps = spec.DefaultListRequestsPerSecond
		}
		cfg.SubscribeRPS, cfg.UnsubscribeRPS = rps, rps
	}
	for _, o := range options {
		o(&cfg)
	}
	c, err := iterable.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("activation %s: Iterable client: %w", act.ID, err)
	}
	return c, nil
}

// withLogger makes the Iterable client log with l (ids of the activation, run and workflow).
func withLogger(l *slog.Logger) func(*iterable.Config) {
	return func(cfg *iterable.Config) { cfg.Logger = l }
}

// Commit moves the finished chunks' accepted rows into the state, in one transaction.
func (a *Activities) Commit(ctx context.Context, in CommitInput) (res warehouse.CommitResult, err error) {
	start := time.Now()
	ctx, span := a.startSpan(ctx, "activation.commit", in.Spec, in.RunID, attribute.Int("commit.chunks", len(in.Chunks)))
	defer func() {
		a.metrics().CommitDone(ctx, in.Spec.ID, stepOutcome(ctx, err), time.Since(start))
		endSpan(span, err)
	}()
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return warehouse.CommitResult{}, err
	}
	res, err = planner.Commit(ctx, warehouse.CommitRequest{
		ActivationID: in.Spec.ID, RunID: in.RunID, Table: in.Table, Chunks: in.Chunks, Conflicts: in.Conflicts,
	})
	if err != nil {
		return res, fmt.Errorf("activation %s run %s: commit: %w", in.Spec.ID, in.RunID, err)
	}
	span.SetAttributes(attribute.Int64("commit.upserted", res.Upserted), attribute.Int64("commit.deleted", res.Deleted),
		attribute.Int64("commit.held", res.Held))
	a.activityLogger(ctx, in.Spec, in.RunID).InfoContext(ctx, "committed", "chunks", len(in.Chunks), "upserted", res.Upserted,
		"deleted", res.Deleted, "held", res.Held)
	return res, nil
}

// Finish reads the run's top rejection reasons and drops the plan table.
func (a *Activities) Finish(ctx context.Context, in FinishInput) (FinishResult, error) {
	planner, err := a.Planners.Planner(ctx, in.Spec)
	if err != nil {
		return FinishResult{}, err
	}
	top, err := planner.TopReasons(ctx, in.Spec.ID, in.RunID, 10)
	if err != nil {
		return FinishResult{}, fmt.Errorf("activation %s run %s: top reasons: %w", in.Spec.ID, in.RunID, err)
	}
	for _, t := range in.Tables {
		if t == "" {
			continue
		}
		if err := planner.DropPlan(ctx, t); err != nil {
			return FinishResult{}, fmt.Errorf("activation %s run %s: drop %s: %w", in.Spec.ID, in.RunID, t, err)
		}
	}
	return FinishResult{TopReasons: top}, nil
}

// heartbeatWhile heartbeats the value of details every interval until stop is called, so a
// long warehouse query or a rate-limit wait does not look like a dead worker.
func heartbeatWhile(ctx context.Context, interval time.Duration, details func() any) (stop func()) {
	if !activity.IsActivity(ctx) {
		return func() {}
	}
	if interval < time.Second {
		interval = time.Second
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if d := details(); d != nil {
					activity.RecordHeartbeat(ctx, d)
				} else {
					activity.RecordHeartbeat(ctx)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// Close releases the planners (and with them the DuckDB files); the worker calls it on shutdown.
func (a *Activities) Close() error {
	if c, ok := a.Planners.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
