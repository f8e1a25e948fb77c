package warehouse

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// The run log: one row per run when it ends and one per pause when it starts, in a `runs` table
// of the state (next to `rejections`), so that a team charts its activations with the
// warehouse's own SQL. A record holds counts, durations, states and reason categories: never a
// key, an identifier or a value.

// RunEvent is what a run record reports.
type RunEvent string

// Events of the run log.
const (
	RunEventPaused RunEvent = "paused" // a pause of the run starts: the counts so far
	RunEventEnded  RunEvent = "ended"  // the run ended, in any state: its final counts
)

// How a run was started (RunRecord.Trigger).
const (
	TriggerSchedule = "schedule" // the activation's Temporal Schedule (its cron, interval or the UI's Trigger button)
	TriggerManual   = "manual"   // `starter run`
	TriggerUI       = "ui"       // the UI's Start Workflow form (workflow id activation-<id>-ui-…)
)

// Run states a record may carry (RunRecord.State): the workflow's run states that end a run, and
// Paused for a pause event.
const (
	RunStateCompleted = "Completed"
	RunStateFailed    = "Failed"
	RunStateAborted   = "Aborted"
	RunStatePaused    = "Paused"
	RunStateDryRun    = "DryRun"
)

// OpCounts counts rows per plan operation (for a list activation: subscribed, updated,
// unsubscribed).
type OpCounts struct {
	Added   int64 `json:"added"`
	Changed int64 `json:"changed"`
	Removed int64 `json:"removed"`
}

// Total sums the three operations.
func (c OpCounts) Total() int64 { return c.Added + c.Changed + c.Removed }

// RunRecord is one row of the run log. Counts are those of the whole run so far (a run that
// continued as new is one run: RunID is its first execution's id).
type RunRecord struct {
	ActivationID string `json:"activationId"`
	// RunID is the id of the run's first execution, as in the rejections table and plan tables.
	RunID string `json:"runId"`
	// WorkflowID is the run's Temporal workflow id ("" when unknown).
	WorkflowID string `json:"workflowId,omitempty"`
	// Event says what the record reports; At is when it happened. (ActivationID, RunID, Event,
	// At) identify a record: writing it again changes nothing.
	Event RunEvent  `json:"event"`
	At    time.Time `json:"at"`
	// Trigger is how the run was started: TriggerSchedule, TriggerManual or TriggerUI.
	Trigger string `json:"trigger"`
	// StartedAt is when the run started; EndedAt when it ended (zero for a pause).
	StartedAt time.Time `json:"startedAt"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	// State is the run's state: RunStatePaused for a pause; Completed, Failed, Aborted or
	// DryRun when it ended.
	State string `json:"state"`

	// What the plan found in the model.
	ModelRows            int64 `json:"modelRows"`
	Unchanged            int64 `json:"unchanged"`
	NullKeys             int64 `json:"nullKeys"`
	DuplicateKeys        int64 `json:"duplicateKeys"`
	DuplicateIdentifiers int64 `json:"duplicateIdentifiers"`

	// Rows per operation, as in the run report.
	Planned       OpCounts `json:"planned"`
	Attempted     OpCounts `json:"attempted"`
	Succeeded     OpCounts `json:"succeeded"`
	Rejected      OpCounts `json:"rejected"`
	KnownRejected OpCounts `json:"knownRejected"`
	Skipped       OpCounts `json:"skipped"`
	StillRejected OpCounts `json:"stillRejected"`
	Unconfirmed   OpCounts `json:"unconfirmed"`
	Committed     int64    `json:"committed"`

	// PauseCauses are the causes of the run's pauses so far, oldest first ("rejections",
	// "transient", ...: lower-case words); a pause event includes its own.
	PauseCauses []string `json:"pauseCauses,omitempty"`
	// PauseReason is, for a pause event, why the run paused, as the run states it: text without
	// row values (counts and categories), at most MaxPauseReasonBytes.
	PauseReason string `json:"pauseReason,omitempty"`

	// Requests sent to the destination, and how many were answered 429.
	Requests    int64 `json:"requests"`
	RateLimited int64 `json:"rateLimited"`
	// PlanSeconds is the diff in the warehouse; SyncSeconds the sending of every chunk.
	PlanSeconds float64 `json:"planSeconds"`
	SyncSeconds float64 `json:"syncSeconds"`
	// BytesBilled is what the warehouse billed for the run's jobs (BigQuery; 0 on DuckDB).
	BytesBilled int64 `json:"bytesBilled"`
	// ListID is a list activation's Iterable list id (0 for attribute activations).
	ListID int64 `json:"listId,omitempty"`
	// SendRate is the project's good rate, in requests/s, of the endpoint the activation sends
	// with (bulkUpdate; subscribe for a list), as the worker that sent the run's last chunk
	// knew it (0 when unknown: nothing was sent, or no rate was learnt). A new worker process
	// knows it from its first request: another client's burst is then told from its own
	// overshoot (iterable's rate control, steps 6 and 7).
	SendRate float64 `json:"sendRate,omitempty"`
	// SendBudget names the rate budget SendRate belongs to: the SHA-256 of the project's API
	// key, "/" and the endpoint (iterable.BudgetName). It is not a secret, and it lets every
	// activation of the project start from the project's latest rate (LastSendRate). The
	// worker sets it when it writes the record, so it never travels through Temporal.
	SendBudget string `json:"sendBudget,omitempty"`
}

// RunLog writes and reads the run log of the state. Both planners implement it; callers
// type-assert a warehouse.Planner to it.
type RunLog interface {
	// RecordRun writes one record. It is idempotent: writing a record whose (ActivationID,
	// RunID, Event, At) is already there changes nothing (the first write wins), so a retried
	// activity does not add a row. Times are stored in UTC, truncated to RunTimePrecision.
	RecordRun(ctx context.Context, r RunRecord) error
	// Runs returns the activation's latest records, newest first (by At); limit <= 0 means
	// DefaultRunsLimit, and it is capped at MaxRunsLimit.
	Runs(ctx context.Context, activationID string, limit int) ([]RunRecord, error)
	// LastSendRate is the SendRate of the newest record of any activation whose SendBudget is
	// budget, written at or after since; 0 when there is none.
	LastSendRate(ctx context.Context, budget string, since time.Time) (float64, error)
}

// MaxSendBudgetBytes bounds RunRecord.SendBudget (a 64-character digest, "/" and an endpoint).
const MaxSendBudgetBytes = 200

// RunsTable is the table of the state that holds every activation's run log.
const RunsTable = "runs"

// DefaultRunsLimit is the number of records Runs returns when asked for limit <= 0.
const DefaultRunsLimit = 20

// MaxRunsLimit bounds the records one Runs call returns.
const MaxRunsLimit = 10000

// MaxPauseReasonBytes bounds RunRecord.PauseReason: a longer reason is cut (at a character
// boundary, ending with "…").
const MaxPauseReasonBytes = 2000

// ErrInvalidRunRecord marks the errors of a record that cannot be written as it is (a missing
// field, an unknown event, trigger or state): writing it again will not help.
var ErrInvalidRunRecord = errors.New("invalid run record")

// maxPauseCauses bounds RunRecord.PauseCauses.
const maxPauseCauses = 1000

// RunTimePrecision is the precision of the run log's times in every warehouse (TIMESTAMP).
const RunTimePrecision = time.Microsecond

var (
	pauseCausePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	runEvents         = []RunEvent{RunEventPaused, RunEventEnded}
	runTriggers       = []string{TriggerSchedule, TriggerManual, TriggerUI}
	endStates         = []string{RunStateCompleted, RunStateFailed, RunStateAborted, RunStateDryRun}
)

// RunsLimit is the number of records a Runs call with limit returns at most.
func RunsLimit(limit int) int {
	if limit <= 0 {
		return DefaultRunsLimit
	}
	return min(limit, MaxRunsLimit)
}

// CheckRunRecord validates a record and returns it as the warehouses store it: times in UTC
// truncated to RunTimePrecision (zero times stay zero), a pause reason cut to
// MaxPauseReasonBytes. Its errors wrap ErrInvalidRunRecord.
func CheckRunRecord(r RunRecord) (RunRecord, error) {
	if err := CheckActivationID(r.ActivationID); err != nil {
		return r, fmt.Errorf("%w: %w", ErrInvalidRunRecord, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: run %s of %s: %s", ErrInvalidRunRecord, r.RunID, r.ActivationID, fmt.Sprintf(format, args...))
	}
	switch {
	case r.RunID == "":
		return r, fmt.Errorf("%w of %s: run id is empty", ErrInvalidRunRecord, r.ActivationID)
	case !utf8.ValidString(r.RunID) || !utf8.ValidString(r.WorkflowID) || !utf8.ValidString(r.PauseReason):
		return r, bad("run id, workflow id and pause reason must be valid UTF-8")
	case !slices.Contains(runEvents, r.Event):
		return r, bad("event %q is not one of %v", r.Event, runEvents)
	case r.At.IsZero():
		return r, bad("the time of the %s event is not set", r.Event)
	case !slices.Contains(runTriggers, r.Trigger):
		return r, bad("trigger %q is not one of %v", r.Trigger, runTriggers)
	case r.Event == RunEventPaused && r.State != RunStatePaused:
		return r, bad("a pause has state %q, want %s", r.State, RunStatePaused)
	case r.Event == RunEventPaused && !r.EndedAt.IsZero():
		return r, bad("a pause has no end time")
	case r.Event == RunEventEnded && !slices.Contains(endStates, r.State):
		return r, bad("an ended run has state %q, want one of %v", r.State, endStates)
	case len(r.PauseCauses) > maxPauseCauses:
		return r, bad("%d pause causes, more than %d", len(r.PauseCauses), maxPauseCauses)
	case r.PlanSeconds < 0 || r.SyncSeconds < 0 || r.BytesBilled < 0:
		return r, bad("durations and bytes billed cannot be negative")
	case r.SendRate < 0 || math.IsNaN(r.SendRate) || math.IsInf(r.SendRate, 0):
		return r, bad("send rate %v is not a rate", r.SendRate)
	case len(r.SendBudget) > MaxSendBudgetBytes || !utf8.ValidString(r.SendBudget):
		return r, bad("a send budget name is valid UTF-8 of at most %d bytes", MaxSendBudgetBytes)
	}
	for _, c := range r.PauseCauses {
		if !pauseCausePattern.MatchString(c) {
			return r, bad("pause cause %q must match %s", c, pauseCausePattern)
		}
	}
	r.At = RunTime(r.At)
	r.StartedAt = RunTime(r.StartedAt)
	r.EndedAt = RunTime(r.EndedAt)
	r.PauseCauses = slices.Clone(r.PauseCauses)
	r.PauseReason = cutText(r.PauseReason, MaxPauseReasonBytes)
	return r, nil
}

// cutText cuts s to at most n bytes at a character boundary, ending with "…" when cut.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	end := n - len(ellipsis)
	for end > 0 && !utf8.RuneStart(s[end]) {
		end--
	}
	return s[:end] + ellipsis
}

// RunTime is t as the run log stores it: UTC, truncated to RunTimePrecision; zero stays zero.
func RunTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(RunTimePrecision)
}

// RunColumnType is the portable type of a column of the runs table.
type RunColumnType string

// Types of the runs table's columns, and the Go values RunRecord.Values gives them.
const (
	RunString    RunColumnType = "string"    // VARCHAR / STRING: string, or nil for "" in a nullable column
	RunTimestamp RunColumnType = "timestamp" // TIMESTAMP (UTC): time.Time, or nil for the zero time
	RunInt       RunColumnType = "int"       // BIGINT / INT64: int64 (nil for ListID 0)
	RunFloat     RunColumnType = "float"     // DOUBLE / FLOAT64: float64
	RunStrings   RunColumnType = "strings"   // VARCHAR[] / ARRAY<STRING>: []string, never nil
)

// RunColumn is one column of the runs table.
type RunColumn struct {
	Name     string
	Type     RunColumnType
	Required bool // NOT NULL (REQUIRED in BigQuery)
	// Added says the column came after the table's first version: opening a state gives an
	// earlier table the column (ADD COLUMN IF NOT EXISTS; NULL in its old rows).
	Added bool
}

// runColumn binds a column to its field of RunRecord.
type runColumn struct {
	RunColumn
	get func(r *RunRecord) any
	set func(r *RunRecord, v any) error
}

func strCol(name string, required bool, f func(r *RunRecord) *string) runColumn {
	return runColumn{RunColumn{Name: name, Type: RunString, Required: required},
		func(r *RunRecord) any {
			if s := *f(r); s != "" || required {
				return s
			}
			return nil
		},
		func(r *RunRecord, v any) error {
			switch x := v.(type) {
			case nil:
				*f(r) = ""
			case string:
				*f(r) = x
			default:
				return fmt.Errorf("got a %T, want a string", v)
			}
			return nil
		}}
}

func timeCol(name string, required bool, f func(r *RunRecord) *time.Time) runColumn {
	return runColumn{RunColumn{Name: name, Type: RunTimestamp, Required: required},
		func(r *RunRecord) any {
			if t := *f(r); !t.IsZero() {
				return t
			}
			return nil
		},
		func(r *RunRecord, v any) error {
			switch x := v.(type) {
			case nil:
				*f(r) = time.Time{}
			case time.Time:
				*f(r) = RunTime(x)
			default:
				return fmt.Errorf("got a %T, want a time", v)
			}
			return nil
		}}
}

func intCol(name string, nullZero bool, f func(r *RunRecord) *int64) runColumn {
	return runColumn{RunColumn{Name: name, Type: RunInt},
		func(r *RunRecord) any {
			if n := *f(r); n != 0 || !nullZero {
				return n
			}
			return nil
		},
		func(r *RunRecord, v any) error {
			switch x := v.(type) {
			case nil:
				*f(r) = 0
			case int64:
				*f(r) = x
			case int32:
				*f(r) = int64(x)
			case int:
				*f(r) = int64(x)
			default:
				return fmt.Errorf("got a %T, want an integer", v)
			}
			return nil
		}}
}

func floatCol(name string, f func(r *RunRecord) *float64) runColumn {
	return runColumn{RunColumn{Name: name, Type: RunFloat},
		func(r *RunRecord) any { return *f(r) },
		func(r *RunRecord, v any) error {
			switch x := v.(type) {
			case nil:
				*f(r) = 0
			case float64:
				*f(r) = x
			case float32:
				*f(r) = float64(x)
			default:
				return fmt.Errorf("got a %T, want a float", v)
			}
			return nil
		}}
}

// added marks a column that came after the runs table's first version.
func added(c runColumn) runColumn {
	c.Added = true
	return c
}

// nullFloatCol is a float column that came later, whose 0 is stored as NULL (unknown).
func nullFloatCol(name string, f func(r *RunRecord) *float64) runColumn {
	c := added(floatCol(name, f))
	c.get = func(r *RunRecord) any {
		if x := *f(r); x != 0 {
			return x
		}
		return nil
	}
	return c
}

func opCols(prefix string, f func(r *RunRecord) *OpCounts) []runColumn {
	return []runColumn{
		intCol(prefix+"_added", false, func(r *RunRecord) *int64 { return &f(r).Added }),
		intCol(prefix+"_changed", false, func(r *RunRecord) *int64 { return &f(r).Changed }),
		intCol(prefix+"_removed", false, func(r *RunRecord) *int64 { return &f(r).Removed }),
	}
}

var pauseCausesCol = runColumn{RunColumn{Name: "pause_causes", Type: RunStrings},
	func(r *RunRecord) any {
		if r.PauseCauses == nil {
			return []string{}
		}
		return slices.Clone(r.PauseCauses)
	},
	func(r *RunRecord, v any) error {
		r.PauseCauses = nil
		switch x := v.(type) {
		case nil:
		case []string:
			if len(x) > 0 {
				r.PauseCauses = slices.Clone(x)
			}
		case []any:
			for _, item := range x {
				s, ok := item.(string)
				if !ok {
					return fmt.Errorf("got an item of %T, want a string", item)
				}
				r.PauseCauses = append(r.PauseCauses, s)
			}
		default:
			return fmt.Errorf("got a %T, want a list of strings", v)
		}
		return nil
	}}

// runColumns are the columns of the runs table, in order. Every warehouse creates them, writes
// them and reads them back from this one list.
var runColumns = slices.Concat(
	[]runColumn{
		strCol("activation_id", true, func(r *RunRecord) *string { return &r.ActivationID }),
		strCol("run_id", true, func(r *RunRecord) *string { return &r.RunID }),
		strCol("workflow_id", false, func(r *RunRecord) *string { return &r.WorkflowID }),
		strCol("event", true, func(r *RunRecord) *string { return (*string)(&r.Event) }),
		timeCol("at", true, func(r *RunRecord) *time.Time { return &r.At }),
		strCol("trigger", true, func(r *RunRecord) *string { return &r.Trigger }),
		timeCol("started_at", false, func(r *RunRecord) *time.Time { return &r.StartedAt }),
		timeCol("ended_at", false, func(r *RunRecord) *time.Time { return &r.EndedAt }),
		strCol("state", true, func(r *RunRecord) *string { return &r.State }),
		intCol("model_rows", false, func(r *RunRecord) *int64 { return &r.ModelRows }),
		intCol("unchanged", false, func(r *RunRecord) *int64 { return &r.Unchanged }),
		intCol("null_keys", false, func(r *RunRecord) *int64 { return &r.NullKeys }),
		intCol("duplicate_keys", false, func(r *RunRecord) *int64 { return &r.DuplicateKeys }),
		intCol("duplicate_identifiers", false, func(r *RunRecord) *int64 { return &r.DuplicateIdentifiers }),
	},
	opCols("planned", func(r *RunRecord) *OpCounts { return &r.Planned }),
	opCols("attempted", func(r *RunRecord) *OpCounts { return &r.Attempted }),
	opCols("succeeded", func(r *RunRecord) *OpCounts { return &r.Succeeded }),
	opCols("rejected", func(r *RunRecord) *OpCounts { return &r.Rejected }),
	opCols("known_rejected", func(r *RunRecord) *OpCounts { return &r.KnownRejected }),
	opCols("skipped", func(r *RunRecord) *OpCounts { return &r.Skipped }),
	opCols("still_rejected", func(r *RunRecord) *OpCounts { return &r.StillRejected }),
	opCols("unconfirmed", func(r *RunRecord) *OpCounts { return &r.Unconfirmed }),
	[]runColumn{
		intCol("committed", false, func(r *RunRecord) *int64 { return &r.Committed }),
		pauseCausesCol,
		strCol("pause_reason", false, func(r *RunRecord) *string { return &r.PauseReason }),
		intCol("requests", false, func(r *RunRecord) *int64 { return &r.Requests }),
		intCol("rate_limited", false, func(r *RunRecord) *int64 { return &r.RateLimited }),
		floatCol("plan_seconds", func(r *RunRecord) *float64 { return &r.PlanSeconds }),
		floatCol("sync_seconds", func(r *RunRecord) *float64 { return &r.SyncSeconds }),
		intCol("bytes_billed", false, func(r *RunRecord) *int64 { return &r.BytesBilled }),
		intCol("list_id", true, func(r *RunRecord) *int64 { return &r.ListID }),
		// Columns added later come last: an earlier version's table gets them with ADD COLUMN.
		nullFloatCol("send_rate", func(r *RunRecord) *float64 { return &r.SendRate }),
		added(strCol("send_budget", false, func(r *RunRecord) *string { return &r.SendBudget })),
	},
)

// RunColumns lists the columns of the runs table, in order: each warehouse creates the table
// with them (in its own type names) and reads and writes RunRecord.Values in this order.
func RunColumns() []RunColumn {
	out := make([]RunColumn, len(runColumns))
	for i, c := range runColumns {
		out[i] = c.RunColumn
	}
	return out
}

// Values are the record's cells in RunColumns order: see RunColumnType for their Go types.
func (r RunRecord) Values() []any {
	out := make([]any, len(runColumns))
	for i, c := range runColumns {
		out[i] = c.get(&r)
	}
	return out
}

// RunRecordFrom reads a record from cells in RunColumns order, as a warehouse driver returns
// them (nil for NULL; an integer of any width; a list as []string or []any).
func RunRecordFrom(cells []any) (RunRecord, error) {
	var r RunRecord
	if len(cells) != len(runColumns) {
		return r, fmt.Errorf("run record: got %d columns, want %d", len(cells), len(runColumns))
	}
	for i, c := range runColumns {
		if err := c.set(&r, cells[i]); err != nil {
			return r, fmt.Errorf("run record: column %s: %w", c.Name, err)
		}
	}
	return r, nil
}

// PauseCausesText joins pause causes for display ("rejections,transient"; "" for none).
func PauseCausesText(causes []string) string { return strings.Join(causes, ",") }
