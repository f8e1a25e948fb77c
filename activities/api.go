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
	switch op.Base() {
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
	// RetryRejected sends again the rows known rejections would hold back.
	RetryRejected bool `json:"retryRejected,omitempty"`
}

// SyncChunkInput asks to send one chunk of a plan.
type SyncChunkInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
	Table string          `json:"table"`
	Chunk warehouse.Chunk `json:"chunk"`
	// Existence is how update mode avoids creating profiles (see ExistenceStrategy); KnownTable
	// holds the exported identifiers for ExistenceExport.
	Existence  string `json:"existence,omitempty"`
	KnownTable string `json:"knownTable,omitempty"`
	// RemovalExistence is how removals (onRemoved clear or delete) avoid creating profiles,
	// in any mode: RemovalExistenceStrategy.
	RemovalExistence string `json:"removalExistence,omitempty"`
	// ListID is a list activation's list (ResolveList); ListExistence how its subscribes avoid
	// creating profiles in update mode (ListExistenceStrategy).
	ListID        int64  `json:"listId,omitempty"`
	ListExistence string `json:"listExistence,omitempty"`
	// Conflicts maps a field whose Iterable type differs from the model's to the reason; rows
	// that would send it are rejected with that reason.
	Conflicts map[string]string `json:"conflicts,omitempty"`
	// Resume, when set, is the cursor an earlier activity of this chunk reached before it failed
	// (carried in its error's details): the chunk goes on after it instead of starting over.
	Resume *ChunkProgress `json:"resume,omitempty"`
}

// How update mode (never create a profile) is enforced.
const (
	// ExistenceNone: upsert mode, nothing to check.
	ExistenceNone = ""
	// ExistenceNative: an email-based project identified by userId with preferUserId=false:
	// Iterable itself refuses to create the profile and answers notFoundUserIds.
	ExistenceNative = "native"
	// ExistenceLookup: each user is looked up (getByEmail / byUserId, 100 requests/s) before it is sent.
	ExistenceLookup = "lookup"
	// ExistenceExport: the project's identifiers are exported once per run (4 requests/minute)
	// into the warehouse and joined with the plan.
	ExistenceExport = "export"
)

// ExistenceStrategy picks how a run in update mode avoids creating profiles: Iterable's own
// refusal where the project type offers one, else lookups for small plans and one export of
// the project's identifiers for large ones (lookups cost rows/100 seconds; an export costs about
// the same whatever the plan size).
func ExistenceStrategy(act spec.Activation, rowsToSend int64) string {
	d := act.Destination
	switch {
	case d.Mode != spec.ModeUpdate:
		return ExistenceNone
	case d.Iterable.ProjectType == "email" && d.Identifier.Field == "userId":
		return ExistenceNative
	case rowsToSend <= act.Sync.WithDefaults().LookupMaxRows:
		return ExistenceLookup
	default:
		return ExistenceExport
	}
}

// RemovalExistenceStrategy picks how removals that clear fields avoid creating a profile for a
// user Iterable no longer has: the run's own strategy in update mode; otherwise as update mode
// would for the removals alone. Removals that are kept or deleted need none.
func RemovalExistenceStrategy(act spec.Activation, existence string, removals int64) string {
	switch {
	case act.Destination.OnRemoved != "clear" || removals == 0:
		return ExistenceNone
	case act.Destination.Mode == spec.ModeUpdate:
		return existence
	}
	update := act
	update.Destination.Mode = spec.ModeUpdate
	return ExistenceStrategy(update, removals)
}

// CheckFieldsInput compares the model's column types with the project's fields.
type CheckFieldsInput struct {
	Spec    spec.Activation        `json:"spec"`
	RunID   string                 `json:"runId"`
	Columns []warehouse.ColumnType `json:"columns"`
}

// CheckFieldsResult lists type conflicts (reported once, at activation level) and warnings.
type CheckFieldsResult struct {
	Conflicts map[string]string `json:"conflicts,omitempty"`
	Warnings  []string          `json:"warnings,omitempty"`
}

// ExportIdentifiersInput asks for the project's identifiers in the warehouse.
type ExportIdentifiersInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
}

// ExportIdentifiersResult names the table of identifiers and counts them.
type ExportIdentifiersResult struct {
	Table string `json:"table"`
	Count int64  `json:"count"`
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
	// Known are the rejected rows whose rejection equals their prior one (same row, same
	// reason): reported, not counted by the rejection threshold.
	Known   OpCounts `json:"known,omitempty"`
	Skipped OpCounts `json:"skipped"`
	// StillRejected are rows a known rejection held back (warehouse.HeldByPrior): neither
	// attempted nor committed.
	StillRejected OpCounts `json:"stillRejected,omitempty"`
	// Unconfirmed were sent, but Iterable's answer did not account for them: attempted, not
	// committed, sent again next run.
	Unconfirmed OpCounts `json:"unconfirmed,omitempty"`
	Requests    int64    `json:"requests"`
	// RateLimited counts 429 answers; Resumed tells that an earlier attempt had sent part of the chunk.
	RateLimited       int64    `json:"rateLimited"`
	Resumed           bool     `json:"resumed,omitempty"`
	CreatedFields     []string `json:"createdFields,omitempty"`
	FilteredOutFields []string `json:"filteredOutFields,omitempty"`
	// SendRate is the project's good rate (requests/s) of the endpoint the activation sends
	// with, as this worker knew it when the chunk ended (0: none yet). The run log records the
	// last one, and a new worker process starts the project's next run there.
	SendRate float64 `json:"sendRate,omitempty"`
}

// Merge adds another result into r.
func (r *ChunkResult) Merge(o ChunkResult) {
	r.Attempted = r.Attempted.Add(o.Attempted)
	r.Succeeded = r.Succeeded.Add(o.Succeeded)
	r.Rejected = r.Rejected.Add(o.Rejected)
	r.Known = r.Known.Add(o.Known)
	r.Skipped = r.Skipped.Add(o.Skipped)
	r.StillRejected = r.StillRejected.Add(o.StillRejected)
	r.Unconfirmed = r.Unconfirmed.Add(o.Unconfirmed)
	r.Requests += o.Requests
	r.RateLimited += o.RateLimited
	r.CreatedFields = mergeNames(r.CreatedFields, o.CreatedFields)
	r.FilteredOutFields = mergeNames(r.FilteredOutFields, o.FilteredOutFields)
	if o.SendRate > 0 {
		r.SendRate = o.SendRate
	}
}

// ChunkRange is the chunks First..Last, inclusive: runs keep the chunks they committed as
// ranges, so that what travels stays small whatever the plan's size.
type ChunkRange struct {
	First int `json:"first"`
	Last  int `json:"last"`
}

// AddChunk adds chunk i to sorted, disjoint ranges, merging neighbours.
func AddChunk(rs []ChunkRange, i int) []ChunkRange {
	k := 0
	for k < len(rs) && rs[k].Last < i-1 {
		k++
	}
	switch {
	case k == len(rs) || rs[k].First > i+1:
		rs = append(rs, ChunkRange{})
		copy(rs[k+1:], rs[k:])
		rs[k] = ChunkRange{First: i, Last: i}
	case rs[k].First <= i && i <= rs[k].Last:
	case rs[k].Last == i-1:
		rs[k].Last = i
		if k+1 < len(rs) && rs[k+1].First == i+1 {
			rs[k].Last = rs[k+1].Last
			rs = append(rs[:k+1], rs[k+2:]...)
		}
	default: // rs[k].First == i+1
		rs[k].First = i
	}
	return rs
}

// ChunksOf lists the chunks of ranges, in order.
func ChunksOf(rs []ChunkRange) []int {
	var out []int
	for _, r := range rs {
		for i := r.First; i <= r.Last; i++ {
			out = append(out, i)
		}
	}
	return out
}

// CommitInput commits the finished chunks of a plan.
type CommitInput struct {
	Spec   spec.Activation `json:"spec"`
	RunID  string          `json:"runId"`
	Table  string          `json:"table"`
	Chunks []int           `json:"chunks"`
	// Ranges are more chunks, as ranges (SkipRejected commits every chunk the run committed).
	Ranges []ChunkRange `json:"ranges,omitempty"`
	// Conflicts are the run's type conflicts (CheckFieldsResult.Conflicts): rows a known type
	// conflict holds back stay out of the state while it lasts.
	Conflicts map[string]string `json:"conflicts,omitempty"`
}

// FinishInput closes a run: it reads the top rejection reasons and drops the run's tables.
type FinishInput struct {
	Spec   spec.Activation `json:"spec"`
	RunID  string          `json:"runId"`
	Tables []string        `json:"tables"`
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
