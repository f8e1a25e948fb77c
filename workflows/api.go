// Package workflows holds ActivationWorkflow: the deterministic orchestration of one run of an
// activation (plan, sync chunks, commit, report). All I/O lives in the activities package.
package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// TaskQueue is the default task queue of the worker and of every run.
const TaskQueue = "activations"

// WorkflowName is the registered name of ActivationWorkflow (what schedules and the UI start).
const WorkflowName = "ActivationWorkflow"

// QueryProgress returns a Progress.
const QueryProgress = "progress"

// Search attributes the runs set; the dev server and `starter` register them.
var (
	ActivationIDKey    = temporal.NewSearchAttributeKeyKeyword("ActivationId")
	ActivationStateKey = temporal.NewSearchAttributeKeyKeyword("ActivationState")
)

// SearchAttributes lists the search attributes a namespace needs for this worker.
func SearchAttributes() []temporal.SearchAttributeKey {
	return []temporal.SearchAttributeKey{ActivationIDKey, ActivationStateKey}
}

// Run states, as set in ActivationState and in reports.
const (
	StatePlanning  = "Planning"
	StateRunning   = "Running"
	StateCompleted = "Completed"
	StateFailed    = "Failed"
	StateDryRun    = "DryRun"
)

// RunInput is the single input of ActivationWorkflow (the UI's "Start workflow" form takes one
// JSON payload). The spec carries secret references, never secret values.
type RunInput struct {
	Spec       spec.Activation `json:"spec"`
	FullResync bool            `json:"fullResync,omitempty"`
	DryRun     bool            `json:"dryRun,omitempty"`
}

// RunReport is the result of a run. It holds counts and reason categories only, no row data.
type RunReport struct {
	ActivationID string `json:"activationId"`
	RunID        string `json:"runId"`
	State        string `json:"state"`
	DryRun       bool   `json:"dryRun,omitempty"`
	FullResync   bool   `json:"fullResync,omitempty"`

	ModelRows     int64               `json:"modelRows"`
	Unchanged     int64               `json:"unchanged"`
	NullKeys      int64               `json:"nullKeys"`
	DuplicateKeys int64               `json:"duplicateKeys"`
	Planned       activities.OpCounts `json:"planned"`
	Attempted     activities.OpCounts `json:"attempted"`
	Succeeded     activities.OpCounts `json:"succeeded"`
	Rejected      activities.OpCounts `json:"rejected"`
	Skipped       activities.OpCounts `json:"skipped"`
	Committed     int64               `json:"committed"`

	// Existence is how update mode kept from creating profiles (native, lookup, export; "" in upsert).
	Existence string `json:"existence,omitempty"`

	Requests    int64 `json:"requests"`
	RateLimited int64 `json:"rateLimited"`
	Chunks      int   `json:"chunks"`
	ChunksDone  int   `json:"chunksDone"`
	// ResumedChunks were taken over from a cursor after an attempt died (worker crash, timeout).
	ResumedChunks int `json:"resumedChunks,omitempty"`

	StartedAt  time.Time     `json:"startedAt"`
	FinishedAt time.Time     `json:"finishedAt"`
	Duration   time.Duration `json:"duration"`
	// PlanDuration is the diff in the warehouse; SyncDuration the sending of every chunk.
	PlanDuration time.Duration `json:"planDuration"`
	SyncDuration time.Duration `json:"syncDuration"`

	TopRejections []warehouse.ReasonCount `json:"topRejections,omitempty"`
	Warnings      []string                `json:"warnings,omitempty"`
	Error         string                  `json:"error,omitempty"`
}

// Progress is what the `progress` query returns while a run goes on.
type Progress struct {
	State      string              `json:"state"`
	Chunks     int                 `json:"chunks"`
	ChunksDone int                 `json:"chunksDone"`
	Planned    activities.OpCounts `json:"planned"`
	Succeeded  activities.OpCounts `json:"succeeded"`
	Rejected   activities.OpCounts `json:"rejected"`
	Requests   int64               `json:"requests"`
}
