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

// Control of a run by an operator. Updates answer with a message or the validator's refusal;
// signals of the same names (for the UI's signal form) do the same without an answer.
const (
	// UpdateResume takes a ResumeInput: a paused run goes on with the remaining chunks.
	UpdateResume = "resume"
	// UpdateAbort takes an AbortInput: the run stops after its in-flight chunks, commits what
	// succeeded and ends in state Aborted.
	UpdateAbort = "abort"
	// SignalPause takes a PauseInput: the run stops starting chunks, lets the in-flight ones
	// finish, commits them and waits for an operator.
	SignalPause  = "pause"
	SignalResume = UpdateResume
	SignalAbort  = UpdateAbort
)

// MemoPause is the memo key that holds the PauseInfo of a paused run (null otherwise), so that
// `starter status` and the UI show why a run waits without querying it.
const MemoPause = "pause"

// ScheduleIDPrefix starts the id of every activation's schedule: the schedule of activation X
// is "activation-X" (internal/schedules uses the same prefix).
const ScheduleIDPrefix = "activation-"

// ScheduleID is the id of the schedule of an activation.
func ScheduleID(activationID string) string { return ScheduleIDPrefix + activationID }

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
	// StateQueued: the run waits for another run of the activation to end (Progress.WaitingFor).
	StateQueued    = "Queued"
	StatePlanning  = "Planning"
	StateRunning   = "Running"
	StatePaused    = "Paused"
	StateCompleted = "Completed"
	StateFailed    = "Failed"
	StateAborted   = "Aborted"
	StateDryRun    = "DryRun"
)

// Why a run paused (PauseInfo.Cause).
const (
	// CauseRejections: more than thresholds.maxRejectedPercent of the attempted rows were rejected.
	CauseRejections = "rejections"
	// CauseVolume: the plan changes or removes more rows than the volume guard allows.
	CauseVolume = "volume"
	// CauseFatal: Iterable refused the project (bad API key, forbidden, field limit).
	CauseFatal = "fatal"
	// CauseTransient: Iterable did not answer (IterableUnavailable, or a step's retries ran
	// out). The run probes Iterable and resumes by itself.
	CauseTransient = "transient"
	// CauseOperator: an operator asked for the pause.
	CauseOperator = "operator"
	// CauseWarehouse: a warehouse step (plan, commit) ran out of retries. The run probes the
	// warehouse and runs the step again by itself once it answers.
	CauseWarehouse = "warehouse"
)

// ResumeInput is the input of the `resume` update and signal.
type ResumeInput struct {
	// Reason is required: it says why the run may go on (kept in the report and the schedule's note).
	Reason string `json:"reason"`
	// SkipRejected commits the rows this run rejected so far (in its finished chunks) as if
	// they had been accepted, so that later runs do not send them again until they change.
	SkipRejected bool `json:"skipRejected,omitempty"`
}

// AbortInput is the input of the `abort` update and signal.
type AbortInput struct {
	Reason string `json:"reason"`
}

// PauseInput is the input of the `pause` signal.
type PauseInput struct {
	Reason string `json:"reason"`
}

// PauseInfo describes a pause of a run: why, since when, until when it waits, and what to do.
// It holds counts and reason categories only, never row data.
type PauseInfo struct {
	Cause  string    `json:"cause"`
	Reason string    `json:"reason"`
	RunID  string    `json:"runId"`
	Since  time.Time `json:"since"`
	// Deadline is when the run fails if nobody resumed or aborted it (thresholds.pauseTimeout).
	Deadline time.Time `json:"deadline"`
	// AutoResume is true when the run probes Iterable and resumes by itself (transient causes).
	AutoResume bool   `json:"autoResume"`
	NextStep   string `json:"nextStep"`
	// SchedulePaused says whether the activation's schedule is paused (false when it has none).
	SchedulePaused bool `json:"schedulePaused"`

	ChunksDone    int                     `json:"chunksDone"`
	Chunks        int                     `json:"chunks"`
	Attempted     int64                   `json:"attempted"`
	Rejected      int64                   `json:"rejected"`
	Committed     int64                   `json:"committed"`
	TopRejections []warehouse.ReasonCount `json:"topRejections,omitempty"`

	// EndedAt and EndedBy say how the pause ended ("operator resume: …", "automatic resume: …",
	// "abort: …", "timeout").
	EndedAt *time.Time `json:"endedAt,omitempty"`
	EndedBy string     `json:"endedBy,omitempty"`
}

// RunInput is the single input of ActivationWorkflow (the UI's "Start workflow" form takes one
// JSON payload). The spec carries secret references, never secret values.
type RunInput struct {
	// Spec is the activation to run. It may be left out when ActivationID is set: the run then
	// takes the spec `starter apply` wrote into the activation's schedule (for the UI's Start
	// Workflow form: {"activationId": "crm-users", "fullResync": true}).
	Spec         spec.Activation `json:"spec"`
	ActivationID string          `json:"activationId,omitempty"`
	FullResync   bool            `json:"fullResync,omitempty"`
	DryRun       bool            `json:"dryRun,omitempty"`
	// RetryRejected sends again the rows that known rejections hold back (rejected before
	// sending for a reason that has not changed): `starter run ID --retry-rejected`.
	RetryRejected bool `json:"retryRejected,omitempty"`
	// ChunksPerExecution, when above 0, continues the run as new after that many chunks in one
	// execution. By default a run continues as new only when Temporal suggests it (about 4,096
	// history events, some 1,000 chunks), which keeps any plan far below history limits.
	ChunksPerExecution int `json:"chunksPerExecution,omitempty"`
	// Continued is set by a run that continues as new, never by operators: where it stopped.
	Continued *Continuation `json:"continued,omitempty"`
}

// Continuation carries a run across continue-as-new: the plan's remaining chunk ranges, the
// counts so far and the lock it holds. It holds table names, counts and cursors, never rows.
type Continuation struct {
	// RunID is the id of the run's first execution: the plan table, the rejections and the
	// report keep it, so that the whole chain is one run to the warehouse and to operators.
	RunID string `json:"runId"`
	// Executions counts the executions of the run so far (1 for the first).
	Executions int `json:"executions"`
	// Plan is the run's plan; Next the first chunk never started and Redo the chunks to send
	// again first (they failed). Sizes, not lists: bounded whatever the plan.
	Plan   warehouse.Plan                     `json:"plan"`
	Next   int                                `json:"next"`
	Redo   []int                              `json:"redo,omitempty"`
	Tables []string                           `json:"tables"`
	Fields activities.CheckFieldsResult       `json:"fields"`
	Known  activities.ExportIdentifiersResult `json:"known"`
	List   activities.ListInfo                `json:"list"`
	Report RunReport                          `json:"report"`
	// Committed lists the chunks committed so far (for resume --skip-rejected); Held the rows
	// their commits kept out of the state.
	Committed []activities.ChunkRange `json:"committed,omitempty"`
	Held      int64                   `json:"held,omitempty"`
	// Window is the rejection threshold's window (attempted, rejected) at the hand-over.
	WindowAttempted int64         `json:"windowAttempted,omitempty"`
	WindowRejected  int64         `json:"windowRejected,omitempty"`
	SyncActive      time.Duration `json:"syncActive"`
	TransientSince  time.Time     `json:"transientSince,omitempty"`
	SchedulePaused  bool          `json:"schedulePaused,omitempty"`
	// Cursors are how far failed chunks still to send had got (their next activity resumes).
	Cursors []activities.ChunkProgress `json:"cursors,omitempty"`
	// Lock is the request that holds the activation's lock (the first execution's): the lock
	// workflow follows the chain by workflow id, so the lock stays held across executions.
	Lock activities.LockRequest `json:"lock"`
}

// RunReport is the result of a run. It holds counts and reason categories only, no row data.
type RunReport struct {
	ActivationID string `json:"activationId"`
	RunID        string `json:"runId"`
	State        string `json:"state"`
	DryRun       bool   `json:"dryRun,omitempty"`
	FullResync   bool   `json:"fullResync,omitempty"`
	// RetryRejected: known rejections did not hold rows back in this run.
	RetryRejected bool `json:"retryRejected,omitempty"`

	PlanCounts
	Planned   activities.OpCounts `json:"planned"`
	Attempted activities.OpCounts `json:"attempted"`
	Succeeded activities.OpCounts `json:"succeeded"`
	Rejected  activities.OpCounts `json:"rejected"`
	// KnownRejected are the rejected rows whose key the previous run rejected with the same row
	// and reason: reported, not counted by thresholds.maxRejectedPercent nor minAttempted.
	KnownRejected activities.OpCounts `json:"knownRejected"`
	Skipped       activities.OpCounts `json:"skipped"`
	// StillRejected are rows held back by a known rejection (rejected before sending, unchanged
	// since): neither attempted nor committed; KnownReasons says why.
	StillRejected activities.OpCounts `json:"stillRejected"`
	// Unconfirmed were sent but Iterable's answer did not account for them: not committed, sent
	// again next run.
	Unconfirmed activities.OpCounts `json:"unconfirmed"`
	Committed   int64               `json:"committed"`

	// Existence is how update mode kept from creating profiles (native, lookup, export; "" in upsert).
	Existence string `json:"existence,omitempty"`
	// RemovalExistence is how removals that clear fields kept from creating profiles.
	RemovalExistence string `json:"removalExistence,omitempty"`
	// List is a list activation's list; in its report, added rows were subscribed, removed rows
	// unsubscribed and changed rows updated (bulkUpdate). ListExistence is how subscribing kept
	// from creating profiles in update mode (flag: Iterable's updateExistingUsersOnly; lookup;
	// export).
	List          *activities.ListInfo `json:"list,omitempty"`
	ListExistence string               `json:"listExistence,omitempty"`

	Requests    int64 `json:"requests"`
	RateLimited int64 `json:"rateLimited"`
	// SendRate is the project's good rate (requests/s) the worker knew after the last chunk:
	// recorded in the run log, where a new worker process starts the next run.
	SendRate   float64 `json:"sendRate,omitempty"`
	Chunks     int     `json:"chunks"`
	ChunksDone int     `json:"chunksDone"`
	// ResumedChunks were taken over from a cursor after an attempt died (worker crash, timeout).
	ResumedChunks int `json:"resumedChunks,omitempty"`

	StartedAt  time.Time     `json:"startedAt"`
	FinishedAt time.Time     `json:"finishedAt"`
	Duration   time.Duration `json:"duration"`
	// PlanDuration is the diff in the warehouse; SyncDuration the sending of every chunk.
	PlanDuration time.Duration `json:"planDuration"`
	SyncDuration time.Duration `json:"syncDuration"`

	TopRejections []warehouse.ReasonCount `json:"topRejections,omitempty"`
	// KnownReasons are the reasons of the rows known rejections held back (the plan's count).
	KnownReasons []warehouse.ReasonCount `json:"knownReasons,omitempty"`
	Warnings     []string                `json:"warnings,omitempty"`
	Error        string                  `json:"error,omitempty"`

	// Executions is the number of Temporal executions the run took (it continues as new when
	// Temporal suggests it; all of them share RunID, the first execution's id).
	Executions int `json:"executions,omitempty"`

	// Pauses lists the run's pauses, oldest first (the last MaxPausesReported).
	Pauses []PauseInfo `json:"pauses,omitempty"`
	// SkippedByOperator counts rejected rows committed by `resume --skip-rejected`.
	SkippedByOperator int64 `json:"skippedByOperator,omitempty"`
	// AbortReason is the operator's reason when State is Aborted.
	AbortReason string `json:"abortReason,omitempty"`
}

// PlanCounts are what the plan found in the model, before anything was sent.
type PlanCounts struct {
	ModelRows     int64 `json:"modelRows"`
	Unchanged     int64 `json:"unchanged"`
	NullKeys      int64 `json:"nullKeys"`
	DuplicateKeys int64 `json:"duplicateKeys"`
	// DuplicateIdentifiers are rows whose identifier other primary keys carry too: never sent.
	DuplicateIdentifiers int64 `json:"duplicateIdentifiers"`
	// Retried are planned adds that an earlier run held back.
	Retried int64 `json:"retried"`
	// Refreshed are state rows refreshed because a field left the mapping (nothing sent).
	Refreshed int64 `json:"refreshed,omitempty"`
}

// MaxPausesReported bounds RunReport.Pauses.
const MaxPausesReported = 20

// Progress is what the `progress` query returns while a run goes on.
type Progress struct {
	ActivationID string              `json:"activationId"`
	RunID        string              `json:"runId"`
	State        string              `json:"state"`
	Chunks       int                 `json:"chunks"`
	ChunksDone   int                 `json:"chunksDone"`
	Planned      activities.OpCounts `json:"planned"`
	Attempted    activities.OpCounts `json:"attempted"`
	Succeeded    activities.OpCounts `json:"succeeded"`
	Rejected     activities.OpCounts `json:"rejected"`
	Skipped      activities.OpCounts `json:"skipped"`
	Committed    int64               `json:"committed"`
	Requests     int64               `json:"requests"`
	// Plan, KnownRejected, StillRejected and Unconfirmed are as in RunReport, so that a paused
	// run shows what its plan found.
	Plan          PlanCounts          `json:"plan"`
	KnownRejected activities.OpCounts `json:"knownRejected"`
	StillRejected activities.OpCounts `json:"stillRejected"`
	Unconfirmed   activities.OpCounts `json:"unconfirmed"`
	// Pause is set while the run is paused.
	Pause *PauseInfo `json:"pause,omitempty"`
	// WaitingFor is, while the run is Queued, the workflow id of the run of the same activation
	// that holds the activation's lock.
	WaitingFor string `json:"waitingFor,omitempty"`
	// Ignored lists control signals the run ignored, and why (e.g. a resume without a reason).
	Ignored []string `json:"ignored,omitempty"`
}
