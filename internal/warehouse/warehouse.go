// Package warehouse holds the planner contract that every warehouse (DuckDB, BigQuery) implements.
//
// The diff runs inside the warehouse: Plan snapshots the model's mapped columns with one hash per
// field, FULL OUTER JOINs the snapshot with the activation's state table and materialises the
// changed rows as a plan table. Workers read the plan chunk by chunk (key ranges on the plan's
// sequence number, never OFFSET), record the few rows Iterable rejected, and Commit moves into the
// state only the rows of finished chunks that were not rejected, in one atomic statement.
package warehouse

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Op says what happened to a row since the last successful sync.
type Op string

const (
	OpAdd    Op = "add"    // in the model, not in the state: send every mapped field
	OpChange Op = "change" // in both, some field hashes differ: send only the changed fields
	OpRemove Op = "remove" // in the state, no longer in the model
	// OpSubscribe and OpUnsubscribe are how a list activation records the rejections of an
	// add (subscribed to the list) and of a removal (unsubscribed): plans never hold them.
	OpSubscribe   Op = "subscribe"
	OpUnsubscribe Op = "unsubscribe"
)

// Base is the plan operation of a recorded operation: add for subscribe, remove for unsubscribe.
func (o Op) Base() Op {
	switch o {
	case OpSubscribe:
		return OpAdd
	case OpUnsubscribe:
		return OpRemove
	}
	return o
}

// Field maps one model column to one destination field.
type Field struct {
	Column string `json:"column"`
	Field  string `json:"field"`
}

// PlanRequest is everything a planner needs to diff one run. It carries no row data.
type PlanRequest struct {
	ActivationID string
	RunID        string
	// Query is the model's SQL; BaseDir resolves relative file paths inside it (DuckDB).
	Query   string
	BaseDir string
	// PrimaryKey is the model column that identifies a row; it is cast to a string.
	PrimaryKey string
	// Identifier is the column whose value identifies the user in the destination. A row whose
	// identifier changed is planned as a change of every field (it is another profile now).
	// Empty means no identifier column (Row.Identifier is then nil).
	Identifier string
	// Fields are the mapped columns, in spec order. The planner sorts them by Field name for hashing.
	// A Field name mapped twice is an ErrInvalidModel.
	Fields []Field
	// IdentifierLowerCase compares identifiers case-insensitively (emails, as Iterable does)
	// when the plan looks for identifiers shared by several keys or reused by a removal.
	IdentifierLowerCase bool
	// FullResync ignores the state for classification: every model row is planned as an add.
	// It also sends again the rows held back by known rejections.
	FullResync bool
	// RetryRejected sends again the rows whose known rejection would hold them back.
	RetryRejected bool
	// RejectionsRetention keeps the rejections of runs younger than this (the latest
	// rejection of every key is kept whatever its age); 0 means DefaultRejectionsRetention.
	RejectionsRetention time.Duration
	// ChunkRows is the number of plan rows per chunk (default DefaultChunkRows).
	ChunkRows int
}

// DefaultChunkRows is the plan rows per chunk when a request leaves it unset.
const DefaultChunkRows = 10000

// DefaultRejectionsRetention is how long the rejections of a run are kept by default.
const DefaultRejectionsRetention = 30 * 24 * time.Hour

// Counts are plan-level statistics; none of them carries a key or a value.
type Counts struct {
	ModelRows     int64 `json:"modelRows"`
	Added         int64 `json:"added"`
	Changed       int64 `json:"changed"`
	Removed       int64 `json:"removed"`
	Unchanged     int64 `json:"unchanged"`
	NullKeys      int64 `json:"nullKeys"`      // model rows whose primary key is NULL: never sent
	DuplicateKeys int64 `json:"duplicateKeys"` // model rows whose key appears more than once: never sent
	// DuplicateIdentifiers are model rows whose identifier (compared as Iterable compares it)
	// is carried by more than one primary key: never sent, skipped with a reason.
	DuplicateIdentifiers int64 `json:"duplicateIdentifiers"`
	// Retried are the adds whose key an earlier run of the activation held back (rejected or
	// skipped): they are planned again, but they are not new to the model.
	Retried int64 `json:"retried"`
	// Known are the planned rows that a known rejection holds back (Row.Prior.Hold): the same
	// row was rejected before sending, for a reason that has not changed. They are in the plan
	// (so a type conflict that Iterable no longer has can release them) but are not sent.
	Known int64 `json:"known"`
	// Refreshed are state rows whose hash moved only because a field left the mapping: the
	// plan refreshed them in the state (nothing to send) so they take the fast path again.
	Refreshed int64 `json:"refreshed"`
}

// Planned is the number of rows the plan will send.
func (c Counts) Planned() int64 { return c.Added + c.Changed + c.Removed }

// Chunk is a contiguous range of the plan's sequence numbers: FirstSeq..LastSeq inclusive.
type Chunk struct {
	Index    int   `json:"index"`
	FirstSeq int64 `json:"firstSeq"`
	LastSeq  int64 `json:"lastSeq"`
	Added    int64 `json:"added"`
	Changed  int64 `json:"changed"`
	Removed  int64 `json:"removed"`
}

// Rows is the number of plan rows in the chunk.
func (c Chunk) Rows() int64 { return c.LastSeq - c.FirstSeq + 1 }

// Plan is the result of planning: a table name, counts and the plan's size. It is safe for
// workflow history, and bounded whatever the plan's size: chunk ranges are not listed but
// derived (ChunkAt), since seq numbers the rows to send densely, 1..Rows, and chunk i holds
// ChunkRows of them.
type Plan struct {
	Table  string `json:"table"`
	Counts Counts `json:"counts"`
	// Rows is the number of plan rows to send; ChunkRows the rows per chunk.
	Rows      int64 `json:"rows"`
	ChunkRows int   `json:"chunkRows"`
	// Chunks lists the chunks with their counts by operation, for the planner's own checks,
	// tests and logs. It never travels (a plan of 50,000 chunks would be 4 MB of history):
	// ChunkAt derives the same ranges from Rows and ChunkRows.
	Chunks []Chunk `json:"-"`
	// Columns are the warehouse types of the mapped fields, to compare with the destination's.
	Columns []ColumnType `json:"columns,omitempty"`
	// KnownReasons are the most frequent reasons of the rows known rejections hold back.
	KnownReasons []ReasonCount `json:"knownReasons,omitempty"`
}

// ChunkCount is the number of chunks of the plan.
func (p Plan) ChunkCount() int {
	if p.Rows <= 0 || p.ChunkRows <= 0 {
		return 0
	}
	return int((p.Rows + int64(p.ChunkRows) - 1) / int64(p.ChunkRows))
}

// ChunkAt is the seq range of chunk i (0 <= i < ChunkCount), without counts by operation.
func (p Plan) ChunkAt(i int) Chunk {
	first := int64(i)*int64(p.ChunkRows) + 1
	return Chunk{Index: i, FirstSeq: first, LastSeq: min(first+int64(p.ChunkRows)-1, p.Rows)}
}

// Sized fills in Rows and ChunkRows from Chunks, checking that the chunks are the dense ranges
// ChunkAt derives (the planners number the rows to send 1..Rows and cut them every chunkRows).
func (p Plan) Sized(chunkRows int) (Plan, error) {
	p.ChunkRows, p.Rows = chunkRows, 0
	for _, c := range p.Chunks {
		p.Rows += c.Rows()
	}
	if len(p.Chunks) != p.ChunkCount() {
		return p, fmt.Errorf("plan %s: %d chunks for %d rows of %d", p.Table, len(p.Chunks), p.Rows, chunkRows)
	}
	for i, c := range p.Chunks {
		if d := p.ChunkAt(i); c.Index != d.Index || c.FirstSeq != d.FirstSeq || c.LastSeq != d.LastSeq {
			return p, fmt.Errorf("plan %s: chunk %d covers seq %d..%d, not %d..%d", p.Table, c.Index, c.FirstSeq, c.LastSeq, d.FirstSeq, d.LastSeq)
		}
	}
	return p, nil
}

// MaxKnownReasons bounds Plan.KnownReasons.
const MaxKnownReasons = 10

// ColumnType is the warehouse type of one mapped field's column.
type ColumnType struct {
	Field  string `json:"field"`
	Column string `json:"column"`
	Type   string `json:"type"` // the warehouse's own type name, e.g. BIGINT, VARCHAR, STRUCT(a INTEGER)
	Kind   Kind   `json:"kind"` // the same, in warehouse-neutral terms
}

// Kind is a warehouse-neutral family of column types.
type Kind string

// Kinds of columns.
const (
	KindInteger   Kind = "integer"
	KindFloat     Kind = "float" // floats and decimals
	KindBoolean   Kind = "boolean"
	KindString    Kind = "string"
	KindTimestamp Kind = "timestamp" // dates and timestamps
	KindObject    Kind = "object"    // structs, maps
	KindArray     Kind = "array"
	KindOther     Kind = "other" // JSON and anything whose values decide their own type
)

// Row is one plan row as read back for sending. It never leaves the worker process.
type Row struct {
	Seq int64
	Key string
	Op  Op
	// Identifier is the identifier column's value (nil when NULL). For OpRemove it is the
	// identifier the key was last synced with, as a string (nil when the state has none).
	Identifier any
	// RowHash is the plan's hash of the row (recorded with its rejections); "" for OpRemove.
	RowHash string
	// PreviousIdentifier is, on an OpChange whose identifier changed, the identifier the key
	// was last synced with (a list activation unsubscribes it); nil otherwise.
	PreviousIdentifier any
	// KeepProfile is set on an OpRemove (or an OpChange with a PreviousIdentifier) whose old
	// identifier a current model row carries (the primary key changed, the person did not): the
	// profile must be neither cleared, deleted nor unsubscribed.
	KeepProfile bool
	// Prior is the key's latest rejection by an earlier run, when it was made with the same
	// row hash (nil otherwise).
	Prior *Prior
	// Values holds the value of every mapped field by destination field name, as the warehouse
	// driver returns it (int64, float64, bool, string, time.Time, []any, map[string]any, ...).
	// For OpRemove it is empty.
	Values Values
	// Changed lists the destination fields whose values changed (all fields for OpAdd), sorted.
	Changed []string
	// Known tells whether the identifier is in ChunkRequest.KnownTable (false when none was given).
	Known bool
}

// Values are a row's mapped values: Names, the destination fields sorted (shared, read-only, by
// the rows of a chunk), and Vals, Vals[i] the value of Names[i]. Slices rather than a map per
// row: a map costs a chunk's reader twice the memory and a third more CPU (issue 14), and the
// encoder writes fields in sorted order anyway.
type Values struct {
	Names []string
	Vals  []any
}

// Len is the number of values.
func (v Values) Len() int { return len(v.Vals) }

// Get returns the value of the field name, and whether the row has that field.
func (v Values) Get(name string) (any, bool) {
	if i, ok := slices.BinarySearch(v.Names, name); ok && i < len(v.Vals) {
		return v.Vals[i], true
	}
	return nil, false
}

// ValuesOf returns m as Values, its names sorted (what a reader gives; for tests and fixtures).
func ValuesOf(m map[string]any) Values {
	if len(m) == 0 {
		return Values{}
	}
	v := Values{Names: slices.Sorted(maps.Keys(m))}
	for _, name := range v.Names {
		v.Vals = append(v.Vals, m[name])
	}
	return v
}

// Map returns the values by field name (a new map; empty, not nil, for no value).
func (v Values) Map() map[string]any {
	m := make(map[string]any, len(v.Vals))
	for i, val := range v.Vals {
		m[v.Names[i]] = val
	}
	return m
}

// Prior is an earlier run's rejection of the same row (same key, same row hash).
type Prior struct {
	Outcome Outcome `json:"outcome"`
	Class   Class   `json:"class"`
	Field   string  `json:"field,omitempty"`
	Reason  string  `json:"reason"`
	// Hold: the rejection was made before sending for a reason that cannot change while the
	// row does not (HoldClasses), and the plan is neither a full resync nor a retry of
	// rejections: the row is not sent again. A ClassType hold lasts only while the field's
	// type conflict is still the same (see HeldByPrior).
	Hold bool `json:"hold"`
}

// HeldByPrior says whether a row with this prior rejection is held back (not sent, not
// committed), given this run's type conflicts (field → reason). The sender and Commit apply
// this same rule.
func HeldByPrior(p *Prior, conflicts map[string]string) bool {
	if p == nil || !p.Hold {
		return false
	}
	if p.Class != ClassType {
		return true
	}
	reason, ok := conflicts[p.Field]
	return ok && reason == p.Reason
}

// ConflictPairs encodes type conflicts for Commit's SQL: field, a NUL, reason.
func ConflictPairs(conflicts map[string]string) []string {
	out := make([]string, 0, len(conflicts))
	for f, r := range conflicts {
		out = append(out, f+"\x00"+r)
	}
	slices.Sort(out)
	return out
}

// ChunkRequest selects the rows of one chunk after a cursor.
type ChunkRequest struct {
	ActivationID string
	Table        string
	Fields       []Field // the fields the plan was made with (any order)
	Chunk        Chunk
	// AfterSeq resumes a chunk: only rows with Seq > AfterSeq are read.
	AfterSeq int64
	// KnownTable, when set, names a table written by LoadIdentifiers: each row's Known then says
	// whether its identifier is in it; KnownLowerCase compares lower-cased (emails), as loaded.
	KnownTable     string
	KnownLowerCase bool
	// Lead, when positive, asks a reader that reads a chunk whole before handing its rows over
	// to read its first Lead rows on their own first, so that their request leaves while the rest
	// is read. A run's first request waits for it (the sync's start, issue 14); a streaming
	// reader ignores it.
	Lead int
}

// After is the last seq of the chunk not to read: AfterSeq, or the seq before the chunk's
// first when AfterSeq is before the chunk.
func (r ChunkRequest) After() int64 { return max(r.AfterSeq, r.Chunk.FirstSeq-1) }

// Outcome is the final state of a row that did not enter the state.
type Outcome string

const (
	OutcomeRejected Outcome = "rejected" // the destination (or our local checks) refused it
	OutcomeSkipped  Outcome = "skipped"  // deliberately not sent (e.g. duplicate key, not in Iterable)
	// OutcomeUnconfirmed: sent, but the destination's answer did not account for it; not
	// committed, sent again next run.
	OutcomeUnconfirmed Outcome = "unconfirmed"
)

// Class is a rejection's reason class: what kind of cause, without values.
type Class string

// Classes of rejections.
const (
	ClassIdentifier       Class = "identifier"        // invalid, NULL or empty identifier (before sending)
	ClassValue            Class = "value"             // a value that cannot be sent (NaN, unsupported type)
	ClassOversize         Class = "oversize"          // the user alone exceeds the request body limit
	ClassType             Class = "type"              // the field's type in Iterable conflicts with the column's
	ClassIterable         Class = "iterable"          // refused by Iterable in its answer
	ClassUnconfirmed      Class = "unconfirmed"       // Iterable's answer did not account for it
	ClassDuplicateKey     Class = "duplicate-key"     // the model returns the key more than once
	ClassSharedIdentifier Class = "shared-identifier" // the identifier is carried by several keys
	ClassNotInIterable    Class = "not-in-iterable"   // update mode, or a removal: no such profile
	ClassNoIdentifier     Class = "no-identifier"     // a removal whose identifier the state lacks
)

// HoldClasses are the classes of rejections made before sending that hold a row back until it
// changes: checking the same row again gives the same verdict.
var HoldClasses = []Class{ClassIdentifier, ClassValue, ClassOversize, ClassType}

// Rejection is one row that must not be committed (except skipped removals, which are: a
// profile that is not there needs no clearing). Reason must not contain the row's values.
type Rejection struct {
	Key     string
	Op      Op
	Outcome Outcome
	Class   Class
	Field   string // the field at fault, when known
	Reason  string
	RowHash string // the row's plan hash ("" for removals and rows not in a plan)
}

// ReasonCount is one line of the run report's top reasons.
type ReasonCount struct {
	Outcome Outcome `json:"outcome"`
	Reason  string  `json:"reason"`
	Count   int64   `json:"count"`
}

// CommitRequest commits the rows of finished chunks minus the run's rejections and the rows
// known rejections held back.
type CommitRequest struct {
	ActivationID string
	RunID        string
	Table        string
	Chunks       []int // indices of chunks whose every row was sent and answered
	// Conflicts are the run's type conflicts (field → reason), for HeldByPrior.
	Conflicts map[string]string
}

// CommitResult counts what entered (or left) the state.
type CommitResult struct {
	Upserted int64 `json:"upserted"`
	Deleted  int64 `json:"deleted"`
	Held     int64 `json:"held"` // plan rows of finished chunks kept out because they were rejected or skipped
}

// Planner is the contract both warehouses implement; warehousetest holds its conformance suite.
type Planner interface {
	// Plan snapshots the model, diffs it against the state and writes the plan table.
	Plan(ctx context.Context, req PlanRequest) (Plan, error)
	// ReadChunk calls fn for every row of the chunk with Seq > AfterSeq, in Seq order. An error
	// returned by fn stops the read and is returned unwrapped.
	ReadChunk(ctx context.Context, req ChunkRequest, fn func(Row) error) error
	// RecordRejections appends rejections of a run to the activation's rejections table.
	// Recording the same key twice in one run is harmless.
	RecordRejections(ctx context.Context, activationID, runID string, rs []Rejection) error
	// TopReasons aggregates a run's rejections, most frequent first. Count is the number of
	// distinct keys, so rejections recorded again by a retried chunk are not counted twice.
	// limit <= 0 means no limit.
	TopReasons(ctx context.Context, activationID, runID string, limit int) ([]ReasonCount, error)
	// Commit atomically applies the finished chunks' accepted rows to the state. Committing the
	// same chunks twice is idempotent.
	Commit(ctx context.Context, req CommitRequest) (CommitResult, error)
	// DropPlan removes a plan table, or a table of known identifiers (after commit, or after a dry run).
	DropPlan(ctx context.Context, table string) error
	// LoadIdentifiers writes the identifiers that load yields into a new table of the run and
	// returns its name and row count. With lowerCase they are stored lower-cased (emails).
	LoadIdentifiers(ctx context.Context, activationID, runID string, lowerCase bool,
		load func(add func(id string) error) error) (table string, n int64, err error)
	Close() error
}

// RejectionRecord is a stored rejection, as users query it in the warehouse.
type RejectionRecord struct {
	ActivationID string
	RunID        string
	Rejection
	At time.Time
}

// ErrInvalidModel marks errors caused by the model itself (bad SQL, a missing column, a missing
// file, a value that fails a cast): retrying will not help, the activation's owner must fix the
// model. The warehouse's message is kept when it describes the query; it is withheld when it
// may quote row values (conversion and parsing errors), since errors reach workflow history.
var ErrInvalidModel = errors.New("invalid model")

// DuplicateKeyReasonFormat is the reason Plan records (outcome skipped, op add) for every key the
// model returns more than once, with the number of rows that share it. It is a printf format
// that Go, DuckDB's printf and BigQuery's FORMAT all read alike.
const DuplicateKeyReasonFormat = "duplicate primary key: %d rows share this key"

// SharedIdentifierReasonFormat is the reason Plan records (outcome skipped) for every key whose
// identifier other keys carry too, with the number of keys that share it.
const SharedIdentifierReasonFormat = "shared identifier: %d primary keys carry this identifier; none of them is sent until only one does"

// Columns of a chunk's query in both planners (ReadChunk), in order, before the value columns
// (one per field, in SortedFields order): seq, key, op, changed_fields, ident, old_ident,
// row_hash, keep_profile, prior_outcome, prior_class, prior_field, prior_reason, hold.
const (
	ChunkColSeq = iota
	ChunkColKey
	ChunkColOp
	ChunkColChanged
	ChunkColIdent
	ChunkColOldIdent
	ChunkColRowHash
	ChunkColKeepProfile
	ChunkColPriorOutcome
	ChunkColPriorClass
	ChunkColPriorField
	ChunkColPriorReason
	ChunkColHold
	ChunkColValues
)
