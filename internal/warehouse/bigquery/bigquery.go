// Package bigquery implements warehouse.Planner on Google BigQuery.
//
// The diff runs inside BigQuery, as in the DuckDB planner: one state dataset holds, per activation,
// a state table (what was last synced, clustered by key) and the plan tables of its runs (clustered
// by seq, with an expiration), plus one rejections table and one runs table (the run log, see
// runs.go) for all activations (both partitioned by DATE(at)). Plan dry-runs the model (free: it
// validates the SQL and yields the column types), then runs one multi-statement script that
// snapshots the model into a temporary table, records duplicate keys and shared identifiers, joins
// each key's latest earlier rejection, writes the plan table, refreshes state rows that only lost
// an unmapped field and prunes old rejections. Only counts come back. The plan rows are numbered
// per bucket of their key's fingerprint, never by one global sort (see planScript). ReadChunk reads
// a seq range of the plan (never OFFSET), through the REST API or the Storage Read API;
// RecordRejections appends to the rejections table through the Storage Write API's default stream
// (or with DML jobs, see rejections.go); and Commit applies finished chunks minus the run's
// rejections and the rows known rejections hold back with one MERGE.
//
// Row values travel only in result sets, query parameters and Storage Write API rows: never in
// SQL text, errors or logs.
//
// IAM roles of the worker's credentials: roles/bigquery.dataEditor on the state dataset, which
// also allows the Storage Write API's appends (or, to let Open create it, bigquery.datasets.create on the project through roles/bigquery.user or
// roles/bigquery.dataEditor), roles/bigquery.jobUser on the project that runs the jobs,
// roles/bigquery.readSessionUser for Options.StorageRead, and roles/bigquery.dataViewer on the
// datasets the models read.
//
// Cost of a run, on demand: the model's columns are scanned once by the snapshot; the script then
// reads the snapshot (those values again, plus one hash per field) and the state (one hash per
// field), writes the planned rows to a temporary table and reads them once more to number and
// write them (little in steady state; about the mapped columns again on a first run or a full
// resync), and Commit's MERGE bills the whole state table once more. So bytes ≈ 2 × the model's
// mapped columns + 3 × the state's size (the snapshot's hashes weigh what the state weighs),
// plus BigQuery's 10 MB minimum per query for each chunk read and small statements, plus the
// activation's rejections (read for the known ones and pruned, clustered by activation_id). The
// state costs about 150 bytes per row plus 80 per mapped field. Dry runs, load jobs and DropPlan
// are free.
package bigquery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/cenkalti/backoff/v4"
	"google.golang.org/api/option"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Options configures Open.
type Options struct {
	// Project runs the jobs (and is billed for them) and holds the state dataset.
	Project string
	// Dataset is the state dataset: state_<id>, plan_<id>_<hash>, known-identifier tables and
	// rejections. Open creates it when missing.
	Dataset string
	// Location of the jobs and of the dataset, e.g. "US" or "EU". The model's datasets must live
	// there too. Empty means the existing dataset's location ("US" when Open creates it).
	Location string
	// MaximumBytesBilled caps every query job; a job that would bill more fails without cost.
	// 0 means no cap (the project's default).
	MaximumBytesBilled int64
	// PlanExpiration is how long plan and known-identifier tables live when nobody drops them
	// (default 7 days).
	PlanExpiration time.Duration
	// ClientOptions configure both API clients, e.g. credentials; tests pass
	// option.WithEndpoint(url), option.WithoutAuthentication() or option.WithHTTPClient.
	ClientOptions []option.ClientOption
	// StorageRead reads plan chunks through the BigQuery Storage Read API (gRPC, Arrow) instead of
	// paging the REST API; it needs roles/bigquery.readSessionUser.
	StorageRead bool
	// StorageClientOptions, when set, replace ClientOptions for the Storage Read and Storage
	// Write clients (gRPC), which cannot use an option.WithHTTPClient; tests point them to a
	// local gRPC server.
	StorageClientOptions []option.ClientOption
	// RejectionsDML records rejections with DML INSERT jobs (seconds each, queued with every
	// other DML statement on the shared rejections table) instead of appending them to the
	// table's default stream of the BigQuery Storage Write API (milliseconds, no job). For
	// projects where the Storage Write API is not allowed; the Storage Write API path also falls
	// back to DML when an append fails.
	RejectionsDML bool
	// Logger receives debug and info records; nil discards them.
	Logger *slog.Logger
}

// DefaultPlanExpiration is the lifetime of plan tables when Options.PlanExpiration is zero.
const DefaultPlanExpiration = 7 * 24 * time.Hour

// RejectionsTable is the table of the state dataset that holds every activation's rejections,
// for users to query. It is partitioned by DATE(at) and clustered by activation_id, run_id.
const RejectionsTable = "rejections"

// rejectionsSchema is the rejections table's schema, as Open creates it (and upgrades an older
// one to); the Storage Write API path builds its row message from it.
var rejectionsSchema = bigquery.Schema{
	{Name: "activation_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "run_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "key", Type: bigquery.StringFieldType},
	{Name: "op", Type: bigquery.StringFieldType},
	{Name: "outcome", Type: bigquery.StringFieldType, Required: true},
	{Name: "field", Type: bigquery.StringFieldType},
	{Name: "reason", Type: bigquery.StringFieldType},
	{Name: "at", Type: bigquery.TimestampFieldType, Required: true},
	{Name: "class", Type: bigquery.StringFieldType},
	{Name: "row_hash", Type: bigquery.StringFieldType},
}

// Planner is a warehouse.Planner backed by BigQuery. It is safe for concurrent use.
type Planner struct {
	bq      *bigquery.Client  // REST reads and all jobs
	storage *bigquery.Client  // the same with the Storage Read API enabled; nil without StorageRead
	writer  *rejectionsWriter // Storage Write API appends of rejections; nil with RejectionsDML
	log     *slog.Logger
	// streamedAge is the age under which Plan's DML never deletes rejections, since they may
	// have been appended through the Storage Write API (see rejectionsCutoff).
	streamedAge time.Duration

	project, dataset, location string
	maxBytes                   int64
	expiration                 time.Duration
	newBackOff                 func() backoff.BackOff // tests shorten the waits

	locks warehouse.KeyedMutex // one per activation: serialises its Plan and Commit

	billed *billedRuns // bytes billed per run, for the run log (see RecordRun)
}

var _ warehouse.Planner = (*Planner)(nil)

var (
	datasetPattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,1000}$`)
	// Project ids, optionally domain-scoped ("example.com:project").
	projectPattern = regexp.MustCompile(`^([a-z0-9.-]+:)?[a-z][a-z0-9-]{0,62}$`)
)

// Open connects to BigQuery, creates the state dataset and the rejections and runs tables when
// missing, and checks that the credentials may run jobs, so that a missing IAM role shows at
// startup.
func Open(ctx context.Context, opts Options) (*Planner, error) {
	if !projectPattern.MatchString(opts.Project) {
		return nil, fmt.Errorf("open BigQuery: project %q is not a project id", opts.Project)
	}
	if !datasetPattern.MatchString(opts.Dataset) {
		return nil, fmt.Errorf("open BigQuery: dataset %q must match %s", opts.Dataset, datasetPattern)
	}
	if opts.MaximumBytesBilled < 0 {
		return nil, fmt.Errorf("open BigQuery: MaximumBytesBilled is negative")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	expiration := opts.PlanExpiration
	if expiration <= 0 {
		expiration = DefaultPlanExpiration
	}
	if expiration < time.Hour {
		return nil, fmt.Errorf("open BigQuery: PlanExpiration %s is shorter than an hour: plans must outlive a run", expiration)
	}
	p := &Planner{
		log: log, project: opts.Project, dataset: opts.Dataset, location: opts.Location,
		maxBytes: opts.MaximumBytesBilled, expiration: expiration.Truncate(time.Second),
		newBackOff: defaultBackOff, billed: &billedRuns{},
	}
	sopts := opts.ClientOptions
	if len(opts.StorageClientOptions) > 0 {
		sopts = opts.StorageClientOptions
	}
	where := opts.Project + ":" + opts.Dataset
	client, err := bigquery.NewClient(ctx, opts.Project, opts.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("open BigQuery %s: %w", where, err)
	}
	p.bq = client
	if err := p.init(ctx); err != nil {
		_ = p.Close()
		return nil, fmt.Errorf("open BigQuery %s: %w", where, err)
	}
	if opts.StorageRead {
		// A second client, so that only chunk reads pay for a read session: the library reads
		// every job result through the Storage Read API once it is enabled on a client.
		storage, err := bigquery.NewClient(ctx, opts.Project, opts.ClientOptions...)
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("open BigQuery %s: %w", where, err)
		}
		storage.Location = p.location
		p.storage = storage
		if err := storage.EnableStorageReadClient(ctx, sopts...); err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("open BigQuery %s: Storage Read API: %w", where, err)
		}
	}
	if !opts.RejectionsDML {
		w, err := newRejectionsWriter(ctx, p.project, p.dataset, sopts)
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("open BigQuery %s: Storage Write API: %w", where, err)
		}
		p.writer = w
		p.streamedAge = streamedRowsAge
	}
	log.DebugContext(ctx, "BigQuery state opened", "project", p.project, "dataset", p.dataset,
		"location", p.location, "storage_read", opts.StorageRead, "rejections_dml", opts.RejectionsDML)
	return p, nil
}

// Close releases the clients.
func (p *Planner) Close() error {
	var errs []error
	for _, c := range []*bigquery.Client{p.bq, p.storage} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	if p.writer != nil {
		errs = append(errs, p.writer.client.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close BigQuery: %w", err)
	}
	return nil
}

// lock serialises the state-changing steps (Plan, Commit) of one activation inside this
// process; BigQuery queues concurrent DML on one table across processes.
func (p *Planner) lock(activationID string) func() { return p.locks.Lock(activationID) }

// qualified names a table of the state dataset, quoted.
func (p *Planner) qualified(table string) string {
	return quoteIdent(p.project) + "." + quoteIdent(p.dataset) + "." + quoteIdent(table)
}

// labels are set on every job, for cost attribution in INFORMATION_SCHEMA.JOBS and billing
// exports. A ChunkRequest carries no run id: read jobs are labelled with the plan table's run
// hash (label "plan") instead, which Plan's and Commit's jobs carry too.
func labels(step, activationID, runID, planTable string) map[string]string {
	l := map[string]string{"step": step}
	if activationID != "" {
		l["activation_id"] = labelValue(activationID)
	}
	if runID != "" {
		l["run_id"] = labelValue(runID)
	}
	if planTable != "" {
		l["plan"] = labelValue(planTable[strings.LastIndexByte(planTable, '_')+1:])
	}
	return l
}

// labelValue folds s into BigQuery's label rules: at most 63 characters of [a-z0-9_-].
func labelValue(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() == 63 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// init checks (or creates) the dataset, the rejections and runs tables, and that jobs may run.
func (p *Planner) init(ctx context.Context) error {
	p.bq.Location = p.location
	ds := p.bq.Dataset(p.dataset)
	md, err := ds.Metadata(ctx)
	switch {
	case isNotFound(err):
		loc := p.location
		if loc == "" {
			loc = "US"
		}
		err := ds.Create(ctx, &bigquery.DatasetMetadata{
			Location:    loc,
			Description: "State of warehouse-to-Iterable activations: state, plan and rejections tables.",
		})
		if err != nil && !isConflict(err) {
			if isAccessDenied(err) {
				return fmt.Errorf("creating dataset %s in %s was refused: create it yourself (bq mk --location=%s %s:%s) "+
					"and grant roles/bigquery.dataEditor on it, or grant bigquery.datasets.create on project %s "+
					"(roles/bigquery.user or roles/bigquery.dataEditor); %s: %w",
					p.dataset, loc, loc, p.project, p.dataset, p.project, p.iamRoles(), err)
			}
			return fmt.Errorf("create dataset %s: %w", p.dataset, err)
		}
		p.location = loc
		p.log.InfoContext(ctx, "BigQuery state dataset created", "project", p.project, "dataset", p.dataset, "location", loc)
	case err != nil:
		return fmt.Errorf("read dataset %s: %w", p.dataset, p.explain(err))
	case p.location == "":
		p.location = md.Location
	case !strings.EqualFold(md.Location, p.location):
		return fmt.Errorf("dataset %s is in location %s, not %s: jobs of one location cannot write it",
			p.dataset, md.Location, p.location)
	}
	p.bq.Location = p.location

	err = ds.Table(RejectionsTable).Create(ctx, &bigquery.TableMetadata{
		Description: "Rows of activation runs that were rejected by the destination or skipped; one row per " +
			"recording, so count distinct keys.",
		Schema:           rejectionsSchema,
		TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "at"},
		Clustering:       &bigquery.Clustering{Fields: []string{"activation_id", "run_id"}},
	})
	existed := isConflict(err)
	if err != nil && !existed {
		return fmt.Errorf("create table %s: %w", RejectionsTable, p.explain(err))
	}
	err = ds.Table(RunsTable).Create(ctx, runsTableMetadata())
	runsExisted := isConflict(err)
	if err != nil && !runsExisted {
		return fmt.Errorf("create table %s: %w", RunsTable, p.explain(err))
	}

	// A dry run is free and needs bigquery.jobs.create: a missing roles/bigquery.jobUser shows now.
	if _, err := p.dryRun(ctx, job{step: "open", sql: "SELECT 1"}); err != nil {
		return fmt.Errorf("check that jobs can run: %w", p.explain(err))
	}
	if existed {
		if err := p.upgradeRejections(ctx); err != nil {
			return fmt.Errorf("upgrade table %s: %w", RejectionsTable, err)
		}
	}
	if runsExisted {
		if err := p.upgradeRuns(ctx); err != nil {
			return fmt.Errorf("upgrade table %s: %w", RunsTable, err)
		}
	}
	return nil
}

// upgradeRuns adds the run log's columns that came later (warehouse.RunColumn.Added) to a runs
// table of an earlier version.
func (p *Planner) upgradeRuns(ctx context.Context) error {
	return p.upgradeTable(ctx, RunsTable, func(have map[string]bool) (string, []string) {
		var missing []warehouse.RunColumn
		var names []string
		for _, c := range warehouse.RunColumns() {
			if c.Added && !have[c.Name] {
				missing = append(missing, c)
				names = append(names, c.Name)
			}
		}
		if len(missing) == 0 {
			return "", nil
		}
		return upgradeRunsSQL(p.qualified(RunsTable), missing), names
	})
}

// upgradeRejections adds the columns class and row_hash to a rejections table of an earlier
// version.
func (p *Planner) upgradeRejections(ctx context.Context) error {
	return p.upgradeTable(ctx, RejectionsTable, func(have map[string]bool) (string, []string) {
		if have["class"] && have["row_hash"] {
			return "", nil
		}
		return upgradeRejectionsSQL(p.qualified(RejectionsTable)), []string{"class", "row_hash"}
	})
}

// upgradeTable runs the DDL that ddl returns, given the columns table has (lower-cased names), to
// add the columns it names; "" means none is missing. Reading the schema is a free API call; the
// DDL job runs only when a column is missing.
func (p *Planner) upgradeTable(ctx context.Context, table string, ddl func(have map[string]bool) (string, []string)) error {
	md, err := p.bq.Dataset(p.dataset).Table(table).Metadata(ctx)
	if err != nil {
		return fmt.Errorf("read schema: %w", p.explain(err))
	}
	have := map[string]bool{}
	for _, f := range md.Schema {
		have[strings.ToLower(f.Name)] = true
	}
	sql, cols := ddl(have)
	if sql == "" {
		return nil
	}
	j := job{step: "upgrade", sql: sql}
	if err := p.query(ctx, j, func([]bigquery.Value, bigquery.Schema) error { return nil }); err != nil {
		return fmt.Errorf("add columns %s: %w", strings.Join(cols, ", "), p.explain(err))
	}
	p.log.InfoContext(ctx, "table upgraded", "project", p.project, "dataset", p.dataset, "table", table,
		"columns", strings.Join(cols, ","))
	return nil
}

// DryRunModel dry-runs a model without opening the state dataset (nothing is created): what
// `starter validate` needs. It costs nothing.
func DryRunModel(ctx context.Context, opts Options, query string) (DryRunResult, error) {
	if !projectPattern.MatchString(opts.Project) {
		return DryRunResult{}, fmt.Errorf("dry run: project %q is not a project id", opts.Project)
	}
	client, err := bigquery.NewClient(ctx, opts.Project, opts.ClientOptions...)
	if err != nil {
		return DryRunResult{}, fmt.Errorf("dry run in %s: %w", opts.Project, err)
	}
	defer client.Close()
	client.Location = opts.Location
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Planner{bq: client, log: log, project: opts.Project, dataset: opts.Dataset, location: opts.Location,
		maxBytes: opts.MaximumBytesBilled, newBackOff: defaultBackOff}
	return p.DryRun(ctx, query)
}
