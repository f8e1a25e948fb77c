// Package activities holds every piece of I/O a run does: planning in the warehouse, sending chunks
// to Iterable, committing, and reporting. Inputs and results carry table names, counts and
// cursors only; model rows stay in the warehouse and in the worker's memory.
package activities

import (
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// Error types that Temporal must not retry: the cause needs a person.
const (
	ErrTypeInvalidSpec   = "InvalidSpec"   // the spec or a secret reference is wrong
	ErrTypeInvalidModel  = "InvalidModel"  // the model's SQL fails
	ErrTypeIterableFatal = "IterableFatal" // Iterable refused the project: bad API key, forbidden, field limit
)

// OpCounts splits a count by what happened to the row since the last sync.
type OpCounts struct {
	Added   int64 `json:"added"`
	Changed int64 `json:"changed"`
	Removed int64 `json:"removed"`
}

// Total sums the three operations.
func (c OpCounts) Total() int64 { return c.Added + c.Changed + c.Removed }

// Add returns the sum of two counts.
func (c OpCounts) Add(o OpCounts) OpCounts {
	return OpCounts{Added: c.Added + o.Added, Changed: c.Changed + o.Changed, Removed: c.Removed + o.Removed}
}

func (c *OpCounts) inc(op warehouse.Op, n int64) {
	switch op {
	case warehouse.OpAdd:
		c.Added += n
	case warehouse.OpChange:
		c.Changed += n
	case warehouse.OpRemove:
		c.Removed += n
	}
}

// PlanInput asks for a plan of one run.
type PlanInput struct {
	Spec       spec.Activation `json:"spec"`
	RunID      string          `json:"runId"`
	FullResync bool            `json:"fullResync,omitempty"`
}

// SyncChunkInput asks to send one chunk of a plan.
type SyncChunkInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
	Table string          `json:"table"`
	Chunk warehouse.Chunk `json:"chunk"`
}

// ChunkProgress is the heartbeat cursor of a chunk: every row with Seq <= AfterSeq was answered
// (accepted, or rejected and recorded). A retried attempt resumes after it.
type ChunkProgress struct {
	AfterSeq int64       `json:"afterSeq"`
	Result   ChunkResult `json:"result"`
}

// ChunkResult counts what happened to a chunk's rows.
type ChunkResult struct {
	Chunk     int      `json:"chunk"`
	Attempted OpCounts `json:"attempted"` // sent to Iterable (or applied without a request)
	Succeeded OpCounts `json:"succeeded"`
	Rejected  OpCounts `json:"rejected"` // by Iterable or by local checks, each recorded with its reason
	Skipped   OpCounts `json:"skipped"`
	Requests  int64    `json:"requests"`
	// RateLimited counts 429 answers; Resumed tells that an earlier attempt had sent part of the chunk.
	RateLimited       int64    `json:"rateLimited"`
	Resumed           bool     `json:"resumed,omitempty"`
	CreatedFields     []string `json:"createdFields,omitempty"`
	FilteredOutFields []string `json:"filteredOutFields,omitempty"`
}

// Merge adds another result into r.
func (r *ChunkResult) Merge(o ChunkResult) {
	r.Attempted = r.Attempted.Add(o.Attempted)
	r.Succeeded = r.Succeeded.Add(o.Succeeded)
	r.Rejected = r.Rejected.Add(o.Rejected)
	r.Skipped = r.Skipped.Add(o.Skipped)
	r.Requests += o.Requests
	r.RateLimited += o.RateLimited
	r.CreatedFields = mergeNames(r.CreatedFields, o.CreatedFields)
	r.FilteredOutFields = mergeNames(r.FilteredOutFields, o.FilteredOutFields)
}

// CommitInput commits the finished chunks of a plan.
type CommitInput struct {
	Spec   spec.Activation `json:"spec"`
	RunID  string          `json:"runId"`
	Table  string          `json:"table"`
	Chunks []int           `json:"chunks"`
}

// FinishInput closes a run: it reads the top rejection reasons and drops the plan table.
type FinishInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
	Table string          `json:"table"`
}

// FinishResult carries the run's top rejection reasons (categories, never values).
type FinishResult struct {
	TopReasons []warehouse.ReasonCount `json:"topReasons"`
}

func mergeNames(a, b []string) []string {
	for _, n := range b {
		found := false
		for _, m := range a {
			if m == n {
				found = true
				break
			}
		}
		if !found {
			a = append(a, n)
		}
	}
	return a
}
