package telemetry

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names (OpenTelemetry). The Prometheus exporter writes dots as underscores and adds the
// unit and _total: activations.records → activations_records_total,
// activations.plan.duration → activations_plan_duration_seconds. docs/telemetry.md lists them.
const (
	MetricRecords               = "activations.records"
	MetricChunks                = "activations.chunks"
	MetricPlanDuration          = "activations.plan.duration"
	MetricChunkDuration         = "activations.chunk.duration"
	MetricCommitDuration        = "activations.commit.duration"
	MetricIterableRequest       = "activations.iterable.request.duration"
	MetricIterableRateLimitWait = "activations.iterable.ratelimit.wait"
	MetricNotifications         = "activations.notifications"
)

// Attribute keys of the metrics. Values are an activation id (validated: [a-z0-9-]), a fixed
// word, an Iterable route or a status code: never a user's email, userId, field value or a key.
const (
	AttrActivation = "activation"
	AttrOperation  = "operation" // added | changed | removed
	AttrOutcome    = "outcome"   // records: succeeded | rejected | skipped; steps: succeeded | failed | stopped | canceled
	AttrEndpoint   = "endpoint"  // "POST /api/users/bulkUpdate", "GET /api/users/byUserId", …
	AttrStatusCode = "status_code"
	AttrEvent      = "event" // notifications: paused | failed | resumed | completed-with-rejections | test
)

// secondsBuckets are the histogram bounds of durations in seconds, from 5 ms to an hour.
func secondsBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}
}

// Metrics are the engine's instruments. Its methods implement activities.Metrics and
// iterable.Observer; a nil *Metrics records nothing.
type Metrics struct {
	records, chunks, notifications    metric.Int64Counter
	plan, chunk, commit               metric.Float64Histogram
	iterableRequest, iterableRateWait metric.Float64Histogram
}

// NewMetrics creates the instruments on mp.
func NewMetrics(mp metric.MeterProvider) (*Metrics, error) {
	m := mp.Meter(InstrumentationName)
	var (
		out Metrics
		err error
	)
	counter := func(dst *metric.Int64Counter, name, unit, desc string) {
		if err == nil {
			*dst, err = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		}
	}
	histogram := func(dst *metric.Float64Histogram, name, desc string, bounds []float64) {
		if err == nil {
			*dst, err = m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
				metric.WithExplicitBucketBoundaries(bounds...))
		}
	}
	counter(&out.records, MetricRecords, "{record}",
		"Plan rows answered, by activation, operation (added, changed, removed) and outcome (succeeded, rejected, skipped).")
	counter(&out.chunks, MetricChunks, "{chunk}",
		"SyncChunk attempts that ended, by activation and outcome (succeeded, failed, stopped, canceled).")
	counter(&out.notifications, MetricNotifications, "{notification}",
		"Webhook notifications of run events, by activation, event and outcome (sent, failed: every retry failed).")
	histogram(&out.plan, MetricPlanDuration, "Duration of Plan (the diff in the warehouse), by activation and outcome.", secondsBuckets())
	histogram(&out.chunk, MetricChunkDuration, "Duration of one SyncChunk attempt, by activation and outcome.", secondsBuckets())
	histogram(&out.commit, MetricCommitDuration, "Duration of Commit, by activation and outcome.", secondsBuckets())
	histogram(&out.iterableRequest, MetricIterableRequest,
		"Duration of one HTTP request to Iterable, by endpoint and status code (0: no complete answer).",
		[]float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300})
	histogram(&out.iterableRateWait, MetricIterableRateLimitWait,
		"Time one request waited for the project's rate budget before it was sent, by endpoint.",
		[]float64{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60})
	if err != nil {
		return nil, fmt.Errorf("telemetry: create instruments: %w", err)
	}
	return &out, nil
}

// Records counts n rows of an activation by operation and outcome.
func (m *Metrics) Records(ctx context.Context, activationID, operation, outcome string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.records.Add(ctx, n, metric.WithAttributes(attribute.String(AttrActivation, activationID),
		attribute.String(AttrOperation, operation), attribute.String(AttrOutcome, outcome)))
}

// Notification counts one webhook notification of an event and how it ended (sent, failed).
func (m *Metrics) Notification(ctx context.Context, activationID, event, outcome string) {
	if m == nil {
		return
	}
	m.notifications.Add(ctx, 1, metric.WithAttributes(attribute.String(AttrActivation, activationID),
		attribute.String(AttrEvent, event), attribute.String(AttrOutcome, outcome)))
}

// PlanDone records how long a Plan took and how it ended.
func (m *Metrics) PlanDone(ctx context.Context, activationID, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.plan.Record(ctx, took.Seconds(), stepAttrs(activationID, outcome))
}

// ChunkDone counts a SyncChunk attempt and records how long it took.
func (m *Metrics) ChunkDone(ctx context.Context, activationID, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	attrs := stepAttrs(activationID, outcome)
	m.chunks.Add(ctx, 1, attrs)
	m.chunk.Record(ctx, took.Seconds(), attrs)
}

// CommitDone records how long a Commit took and how it ended.
func (m *Metrics) CommitDone(ctx context.Context, activationID, outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.commit.Record(ctx, took.Seconds(), stepAttrs(activationID, outcome))
}

// IterableRequest records one HTTP request to Iterable.
func (m *Metrics) IterableRequest(ctx context.Context, endpoint string, status int, took time.Duration) {
	if m == nil {
		return
	}
	m.iterableRequest.Record(ctx, took.Seconds(), metric.WithAttributes(
		attribute.String(AttrEndpoint, endpoint), attribute.Int(AttrStatusCode, status)))
}

// IterableBudgetWait records the time a request waited for its rate budget.
func (m *Metrics) IterableBudgetWait(ctx context.Context, endpoint string, waited time.Duration) {
	if m == nil {
		return
	}
	m.iterableRateWait.Record(ctx, waited.Seconds(), metric.WithAttributes(attribute.String(AttrEndpoint, endpoint)))
}

func stepAttrs(activationID, outcome string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String(AttrActivation, activationID), attribute.String(AttrOutcome, outcome))
}
