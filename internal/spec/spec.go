// Package spec defines an activation: which model to read, which Iterable project to keep in sync,
// and how. Activations are YAML files kept in git; Load reads a file or a folder of them and
// Validate reports every problem at once with the file, line and key path.
package spec

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Activation is one declared sync from a model to Iterable. It travels in workflow inputs and
// schedule actions, so it holds no secret: API keys are references.
type Activation struct {
	ID          string       `yaml:"id" json:"id"`
	Description string       `yaml:"description,omitempty" json:"description,omitempty"`
	Source      Source       `yaml:"source" json:"source"`
	State       State        `yaml:"state" json:"state"`
	Destination Destination  `yaml:"destination" json:"destination"`
	Schedule    *Schedule    `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	Sync        SyncSettings `yaml:"sync,omitempty" json:"sync,omitempty"`
	// Notify lists the webhooks told about run events (a pause at once, a failure, …).
	Notify []Notify `yaml:"notify,omitempty" json:"notify,omitempty"`
	// Thresholds say when a run pauses (nil = every default; see thresholds.go).
	Thresholds *Thresholds `yaml:"thresholds,omitempty" json:"thresholds,omitempty"`

	// File is the spec's path and BaseDir its folder (relative paths resolve against it); both are
	// set by Load, not written by users.
	File    string `yaml:"-" json:"file,omitempty"`
	BaseDir string `yaml:"-" json:"baseDir,omitempty"`
}

// Source is the model: a SQL query with a primary key.
type Source struct {
	Type       string        `yaml:"type" json:"type"`
	Query      string        `yaml:"query" json:"query"`
	PrimaryKey string        `yaml:"primaryKey" json:"primaryKey"`
	DuckDB     *DuckDBSource `yaml:"duckdb,omitempty" json:"duckdb,omitempty"`
}

// DuckDBSource optionally names a database file the model reads from.
type DuckDBSource struct {
	Path string `yaml:"path" json:"path"`
}

// State says where the activation's state, plans and rejections live.
type State struct {
	DuckDB   *DuckDBState   `yaml:"duckdb,omitempty" json:"duckdb,omitempty"`
	BigQuery *BigQueryState `yaml:"bigquery,omitempty" json:"bigquery,omitempty"`
	// RejectionsRetention keeps the rejections of runs younger than this (default 720h, 30
	// days); each key's latest rejection is kept whatever its age, since it tells later runs
	// that the row is known to be refused.
	RejectionsRetention Duration `yaml:"rejectionsRetention,omitempty" json:"rejectionsRetention,omitempty"`
}

// BigQueryState is the dataset that holds state, plan and rejections tables; its project runs
// the jobs (and pays for them).
type BigQueryState struct {
	Project            string `yaml:"project" json:"project"`
	Dataset            string `yaml:"dataset" json:"dataset"`
	Location           string `yaml:"location,omitempty" json:"location,omitempty"`
	MaximumBytesBilled int64  `yaml:"maximumBytesBilled,omitempty" json:"maximumBytesBilled,omitempty"`
	// StorageRead reads plan chunks with the BigQuery Storage Read API (faster for large plans).
	StorageRead bool `yaml:"storageRead,omitempty" json:"storageRead,omitempty"`
	// RejectionsDML writes rejections with DML inserts instead of the Storage Write API.
	RejectionsDML bool `yaml:"rejectionsDML,omitempty" json:"rejectionsDML,omitempty"`
}

// DuckDBState is the state database file ("" = in-memory, lost when the worker stops).
type DuckDBState struct {
	Path string `yaml:"path" json:"path"`
}

// Destination is the Iterable project and the mapping.
type Destination struct {
	Type            string     `yaml:"type" json:"type"`
	Iterable        Iterable   `yaml:"iterable" json:"iterable"`
	Mode            string     `yaml:"mode" json:"mode"`
	Identifier      Identifier `yaml:"identifier" json:"identifier"`
	Fields          []Field    `yaml:"fields" json:"fields"`
	CreateNewFields *bool      `yaml:"createNewFields,omitempty" json:"createNewFields,omitempty"`
	// OnRemoved says what a row that left the model does in Iterable: "keep" (default: the profile
	// keeps its values, the row leaves the state), "clear" (its mapped fields are set to null; a
	// profile is never created for it) or "delete" (the profile is deleted: DELETE
	// /api/users/{email} or /api/users/byUserId/{userId}). Both act on the identifier the row was
	// last synced with, so only profiles this activation synced; maxRemovedPercent guards them.
	OnRemoved string `yaml:"onRemoved,omitempty" json:"onRemoved,omitempty"`
	// List, when set, makes this a list activation: the model's rows are the members of an
	// Iterable static list (entering rows are subscribed, leaving rows unsubscribed), and Fields
	// (optional then) are kept in sync for the members as for an attribute activation.
	List *List `yaml:"list,omitempty" json:"list,omitempty"`
	// Nulls says what a NULL model value does: "clear" (default: the Iterable field is set to
	// null) or "ignore" (the field is left out, Iterable keeps its value).
	Nulls string `yaml:"nulls,omitempty" json:"nulls,omitempty"`
}

// List is the static list of a list activation: exactly one of Name and ID.
type List struct {
	// Name finds the list (GET /api/lists); when no list has it, the run creates it.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// ID names an existing static list.
	ID int64 `yaml:"id,omitempty" json:"id,omitempty"`
	// OnLeave says what a row that left the model does: "unsubscribe" (default: removed from
	// the list, never from a channel) or "keep" (stays a member).
	OnLeave string `yaml:"onLeave,omitempty" json:"onLeave,omitempty"`
	// RequestsPerSecond is the per-project budget of each of subscribe and unsubscribe
	// (Iterable documents no limit for them; default DefaultListRequestsPerSecond).
	RequestsPerSecond float64 `yaml:"requestsPerSecond,omitempty" json:"requestsPerSecond,omitempty"`
}

// DefaultListRequestsPerSecond is the default budget of subscribe and of unsubscribe.
const DefaultListRequestsPerSecond = 5

// Unsubscribes reports whether leaving rows are unsubscribed from the list.
func (l *List) Unsubscribes() bool {
	return l != nil && (l.OnLeave == "" || l.OnLeave == "unsubscribe")
}

// ApplyDefaults fills what a spec may leave out and depends on other keys: a list activation
// is in update mode unless it says otherwise.
func (a *Activation) ApplyDefaults() {
	if a.Destination.List != nil && a.Destination.Mode == "" {
		a.Destination.Mode = ModeUpdate
	}
}

// Notify sends run events to a webhook (Slack's incoming webhooks, or any JSON receiver).
type Notify struct {
	Webhook Webhook `yaml:"webhook" json:"webhook"`
	// Format is "json" (default: the event document) or "slack" (Block Kit text).
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
	// On lists the events sent (default NotifyDefaultEvents).
	On []string `yaml:"on,omitempty" json:"on,omitempty"`
}

// Webhook's URL is a secret reference (a Slack webhook URL is a credential), like an API key.
type Webhook struct {
	URL SecretRef `yaml:"url" json:"url"`
}

// Run events a notification may be sent for.
const (
	EventPaused                  = "paused"
	EventFailed                  = "failed"
	EventResumed                 = "resumed"
	EventCompletedWithRejections = "completed-with-rejections"
)

// NotifyEvents are the events a webhook can ask for; NotifyDefaultEvents those it gets when it
// names none.
var (
	NotifyEvents        = []string{EventPaused, EventFailed, EventResumed, EventCompletedWithRejections}
	NotifyDefaultEvents = []string{EventPaused, EventFailed}
)

// Wants reports whether the webhook asked for the event.
func (n Notify) Wants(event string) bool {
	on := n.On
	if len(on) == 0 {
		on = NotifyDefaultEvents
	}
	for _, e := range on {
		if e == event {
			return true
		}
	}
	return false
}

// Modes of a destination.
const (
	ModeUpsert = "upsert" // insert mode on: create missing profiles, update the others
	ModeUpdate = "update" // update existing profiles only, never create one
)

// IgnoresNulls reports whether NULL values are left out of what is sent.
func (d Destination) IgnoresNulls() bool { return d.Nulls == "ignore" }

// Iterable locates the project.
type Iterable struct {
	Region      string    `yaml:"region" json:"region"`
	BaseURL     string    `yaml:"baseURL,omitempty" json:"baseURL,omitempty"`
	APIKey      SecretRef `yaml:"apiKey" json:"apiKey"`
	ProjectType string    `yaml:"projectType" json:"projectType"`
}

// SecretRef points at a secret; the value itself is never written in a spec.
type SecretRef struct {
	Env  string `yaml:"env,omitempty" json:"env,omitempty"`
	File string `yaml:"file,omitempty" json:"file,omitempty"`
}

// Resolve reads the secret on the machine that needs it (the worker).
func (r SecretRef) Resolve() (string, error) {
	switch {
	case r.Env != "":
		v, ok := os.LookupEnv(r.Env)
		if !ok || strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("secret: environment variable %s is not set", r.Env)
		}
		return strings.TrimSpace(v), nil
	case r.File != "":
		b, err := os.ReadFile(r.File)
		if err != nil {
			return "", fmt.Errorf("secret: read file %s: %w", r.File, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("secret: file %s is empty", r.File)
		}
		return v, nil
	}
	return "", fmt.Errorf("secret: neither env nor file is set")
}

// String never shows a value.
func (r SecretRef) String() string {
	if r.Env != "" {
		return "env:" + r.Env
	}
	return "file:" + r.File
}

// Identifier maps the model column that identifies users to Iterable's email or userId.
type Identifier struct {
	Column string `yaml:"column" json:"column"`
	Field  string `yaml:"field" json:"field"`
}

// Field maps one model column to one Iterable field.
type Field struct {
	Column string `yaml:"column" json:"column"`
	Field  string `yaml:"field" json:"field"`
}

// Schedule is a cron expression or a fixed interval; nil means manual runs only.
type Schedule struct {
	Cron  string `yaml:"cron,omitempty" json:"cron,omitempty"`
	Every string `yaml:"every,omitempty" json:"every,omitempty"`
}

// SyncSettings tune a run; zero values take the defaults below.
type SyncSettings struct {
	ChunkRows       int `yaml:"chunkRows,omitempty" json:"chunkRows,omitempty"`
	Concurrency     int `yaml:"concurrency,omitempty" json:"concurrency,omitempty"`
	UsersPerRequest int `yaml:"usersPerRequest,omitempty" json:"usersPerRequest,omitempty"`
	// RequestsPerSecond is the bulkUpdate budget of the Iterable project (Iterable's limit: 5).
	RequestsPerSecond float64 `yaml:"requestsPerSecond,omitempty" json:"requestsPerSecond,omitempty"`
	// HeartbeatTimeout bounds how long a dead worker holds a chunk before another takes it over.
	HeartbeatTimeout Duration `yaml:"heartbeatTimeout,omitempty" json:"heartbeatTimeout,omitempty"`
	// LookupMaxRows: in update mode, plans with at most this many rows to send check each user
	// with a lookup (100/s); larger plans export the project's identifiers once instead.
	LookupMaxRows int64 `yaml:"lookupMaxRows,omitempty" json:"lookupMaxRows,omitempty"`
}

// Defaults of SyncSettings.
const (
	DefaultChunkRows         = 10000
	DefaultConcurrency       = 4
	DefaultUsersPerRequest   = 1000
	DefaultRequestsPerSecond = 5
	DefaultHeartbeatTimeout  = 30 * time.Second
	DefaultLookupMaxRows     = 10000
)

// WithDefaults fills unset settings.
func (s SyncSettings) WithDefaults() SyncSettings {
	if s.ChunkRows <= 0 {
		s.ChunkRows = DefaultChunkRows
	}
	if s.Concurrency <= 0 {
		s.Concurrency = DefaultConcurrency
	}
	if s.UsersPerRequest <= 0 {
		s.UsersPerRequest = DefaultUsersPerRequest
	}
	if s.RequestsPerSecond <= 0 {
		s.RequestsPerSecond = DefaultRequestsPerSecond
	}
	if s.HeartbeatTimeout <= 0 {
		s.HeartbeatTimeout = Duration(DefaultHeartbeatTimeout)
	}
	if s.LookupMaxRows <= 0 {
		s.LookupMaxRows = DefaultLookupMaxRows
	}
	return s
}

// Duration is a time.Duration written as "30s" in YAML and JSON.
type Duration time.Duration

// UnmarshalText parses Go duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// CreatesNewFields reports the effective createNewFields (default true: the seed says a field
// that does not exist in Iterable yet is created).
func (d Destination) CreatesNewFields() bool { return d.CreateNewFields == nil || *d.CreateNewFields }

// StatePath is the DuckDB state file ("" = in-memory).
func (a Activation) StatePath() string {
	if a.State.DuckDB == nil {
		return ""
	}
	return a.State.DuckDB.Path
}

// SourcePath is the DuckDB database the model reads ("" = the state database).
func (a Activation) SourcePath() string {
	if a.Source.DuckDB == nil {
		return ""
	}
	return a.Source.DuckDB.Path
}
