package bigquery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/activation-engine/activations/internal/warehouse"
)

// RunsTable is the table of the state dataset that holds every activation's run log (one row
// per run when it ends, one per pause when it starts), for users to query. It is partitioned by
// DATE(at) and clustered by activation_id.
const RunsTable = warehouse.RunsTable

var _ warehouse.RunLog = (*Planner)(nil)

// Steps of the run log's own jobs. Their bytes are not added to the runs' bytes billed: the
// ended record could not count the job that writes it.
const (
	stepRecordRun = "record-run"
	stepRuns      = "runs"
	stepSendRate  = "send-rate"
)

// runsSchema is the runs table's schema, as Open creates it: warehouse.RunColumns in BigQuery's
// types.
var runsSchema = func() bigquery.Schema {
	types := map[warehouse.RunColumnType]bigquery.FieldType{
		warehouse.RunString: bigquery.StringFieldType, warehouse.RunTimestamp: bigquery.TimestampFieldType,
		warehouse.RunInt: bigquery.IntegerFieldType, warehouse.RunFloat: bigquery.FloatFieldType,
		warehouse.RunStrings: bigquery.StringFieldType,
	}
	var s bigquery.Schema
	for _, c := range warehouse.RunColumns() {
		s = append(s, &bigquery.FieldSchema{Name: c.Name, Type: types[c.Type], Required: c.Required,
			Repeated: c.Type == warehouse.RunStrings})
	}
	return s
}()

// bqRunTypes are the run log's column types in BigQuery's DDL.
var bqRunTypes = map[warehouse.RunColumnType]string{
	warehouse.RunString: "STRING", warehouse.RunTimestamp: "TIMESTAMP", warehouse.RunInt: "INT64",
	warehouse.RunFloat: "FLOAT64", warehouse.RunStrings: "ARRAY<STRING>",
}

// upgradeRunsSQL adds cols (nullable columns that came later) to a runs table of an earlier
// version; new tables have them.
func upgradeRunsSQL(runs string, cols []warehouse.RunColumn) string {
	adds := make([]string, len(cols))
	for i, c := range cols {
		adds[i] = "ADD COLUMN IF NOT EXISTS " + quoteIdent(c.Name) + " " + bqRunTypes[c.Type]
	}
	return `ALTER TABLE ` + runs + "\n" + strings.Join(adds, ",\n")
}

// runsTableMetadata is how Open creates the runs table.
func runsTableMetadata() *bigquery.TableMetadata {
	return &bigquery.TableMetadata{
		Description: "Run log of activations: one row per run when it ends and one per pause when it starts; " +
			"counts only, no row data.",
		Schema:           runsSchema,
		TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "at"},
		Clustering:       &bigquery.Clustering{Fields: []string{"activation_id"}},
	}
}

// recordRunSQL inserts one record, its values as parameters named like the columns, unless the
// table has a record with the same activation_id, run_id, event and at. The MERGE has only an
// INSERT clause, so BigQuery runs it as an insert (no queue behind other mutating DML on the
// shared table), and the filter on at prunes all partitions but the record's day.
func recordRunSQL(runs string) string {
	cols := warehouse.RunColumns()
	names := make([]string, len(cols))
	params := make([]string, len(cols))
	for i, c := range cols {
		names[i] = quoteIdent(c.Name)
		params[i] = "@" + c.Name
	}
	return `MERGE ` + runs + ` AS runs
USING (SELECT 1 AS one) AS src
ON runs.activation_id = @activation_id AND runs.run_id = @run_id AND runs.event = @event
  AND runs.` + quoteIdent("at") + ` = @at
WHEN NOT MATCHED THEN
  INSERT (` + wrapList(names, "    ") + `)
  VALUES (` + wrapList(params, "    ") + `)`
}

// wrapList joins items with commas, starting a new line (with indent) before 100 characters.
func wrapList(items []string, indent string) string {
	var b strings.Builder
	line := 0
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
			if line+len(it) > 90 {
				b.WriteString("\n" + indent)
				line = len(indent)
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString(it)
		line += len(it) + 2
	}
	return b.String()
}

// runsSQL reads an activation's latest records, newest first (parameters @activation_id, @limit).
func runsSQL(runs string) string {
	cols := warehouse.RunColumns()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = quoteIdent(c.Name)
	}
	return `SELECT ` + wrapList(names, "  ") + `
FROM ` + runs + `
WHERE activation_id = @activation_id
ORDER BY ` + quoteIdent("at") + ` DESC, run_id, event
LIMIT @limit`
}

// lastSendRateSQL reads the send rate of a budget's newest record (parameters @send_budget,
// @since). The filter on at prunes the partitions older than since.
func lastSendRateSQL(runs string) string {
	return `SELECT send_rate
FROM ` + runs + `
WHERE send_budget = @send_budget AND send_rate > 0 AND ` + quoteIdent("at") + ` >= @since
ORDER BY ` + quoteIdent("at") + ` DESC
LIMIT 1`
}

// runParams are the query parameters of recordRunSQL: one per column, typed even when NULL.
func runParams(r warehouse.RunRecord) []bigquery.QueryParameter {
	cols := warehouse.RunColumns()
	values := r.Values()
	out := make([]bigquery.QueryParameter, len(cols))
	for i, c := range cols {
		var v any
		switch x := values[i]; c.Type {
		case warehouse.RunString:
			s, _ := x.(string)
			v = bigquery.NullString{StringVal: s, Valid: x != nil}
		case warehouse.RunTimestamp:
			t, _ := x.(time.Time)
			v = bigquery.NullTimestamp{Timestamp: t, Valid: x != nil}
		case warehouse.RunInt:
			n, _ := x.(int64)
			v = bigquery.NullInt64{Int64: n, Valid: x != nil}
		case warehouse.RunFloat:
			f, _ := x.(float64)
			v = bigquery.NullFloat64{Float64: f, Valid: x != nil}
		default:
			v = x // []string
		}
		out[i] = bigquery.QueryParameter{Name: c.Name, Value: v}
	}
	return out
}

// RecordRun writes one record of the run log with one MERGE job, unless the same record
// (activation, run, event and time) is already there: a retried write adds nothing. A record
// whose BytesBilled is 0 gets the bytes billed so far by the jobs this planner ran for the run
// (see billedRuns); writing the ended record forgets them.
func (p *Planner) RecordRun(ctx context.Context, r warehouse.RunRecord) error {
	r, err := warehouse.CheckRunRecord(r)
	if err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	key := warehouse.PlanTable(r.ActivationID, r.RunID)
	if r.BytesBilled == 0 {
		r.BytesBilled = p.billed.get(key)
	}
	j := job{step: stepRecordRun, activationID: r.ActivationID, runID: r.RunID,
		sql: recordRunSQL(p.qualified(RunsTable)), params: runParams(r)}
	if err := p.query(ctx, j, func([]bigquery.Value, bigquery.Schema) error { return nil }); err != nil {
		return fmt.Errorf("record %s of %s run %s at %s: %w", r.Event, r.ActivationID, r.RunID,
			r.At.Format("2006-01-02T15:04:05.000000Z"), p.explain(err))
	}
	if r.Event == warehouse.RunEventEnded {
		p.billed.forget(key)
	}
	return nil
}

// Runs returns the activation's latest records, newest first.
func (p *Planner) Runs(ctx context.Context, activationID string, limit int) ([]warehouse.RunRecord, error) {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	j := job{step: stepRuns, activationID: activationID, sql: runsSQL(p.qualified(RunsTable)),
		params: []bigquery.QueryParameter{{Name: "activation_id", Value: activationID},
			{Name: "limit", Value: int64(warehouse.RunsLimit(limit))}}}
	var out []warehouse.RunRecord
	err := p.query(ctx, j, func(row []bigquery.Value, _ bigquery.Schema) error {
		cells := make([]any, len(row))
		for i, v := range row {
			if list, ok := v.([]bigquery.Value); ok {
				items := make([]any, len(list))
				for k, item := range list {
					items[k] = item
				}
				cells[i] = items
				continue
			}
			cells[i] = v
		}
		r, err := warehouse.RunRecordFrom(cells)
		if err != nil {
			return fmt.Errorf("record %d: %w", len(out), err)
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("runs of %s: %w", activationID, p.explain(err))
	}
	return out, nil
}

// maxBilledRuns bounds billedRuns: the runs whose ended record was never written (a worker
// that stopped, a dry run nobody records) are forgotten, least recently billed first.
const maxBilledRuns = 1024

// billedRuns sums, per run, the bytes billed of the query jobs this planner ran for it (keyed by
// the run's plan table name, which read jobs carry instead of a run id). It sees this process's
// jobs only: with several workers, each counts the chunks it read.
type billedRuns struct {
	mu   sync.Mutex
	runs map[string]*billedRun
	tick uint64
}

type billedRun struct {
	bytes   int64
	touched uint64
}

func (b *billedRuns) add(key string, bytes int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick++
	if b.runs == nil {
		b.runs = map[string]*billedRun{}
	}
	r, ok := b.runs[key]
	if !ok {
		if len(b.runs) >= maxBilledRuns {
			oldest := ""
			for k, o := range b.runs {
				if oldest == "" || o.touched < b.runs[oldest].touched {
					oldest = k
				}
			}
			delete(b.runs, oldest)
		}
		r = &billedRun{}
		b.runs[key] = r
	}
	r.bytes += bytes
	r.touched = b.tick
}

func (b *billedRuns) get(key string) int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if r, ok := b.runs[key]; ok {
		return r.bytes
	}
	return 0
}

func (b *billedRuns) forget(key string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.runs, key)
}

// billingKey is the run a job bills: its run's plan table name, or "" for jobs of no run (and
// for the run log's own jobs).
func billingKey(j job) string {
	if j.activationID == "" || j.step == stepRecordRun || j.step == stepRuns {
		return ""
	}
	if j.runID != "" {
		run := warehouse.PlanTable(j.activationID, j.runID)
		if j.table == "" || j.table == run || j.table == warehouse.KnownTable(j.activationID, j.runID) {
			return run
		}
	}
	// A job on the run's plan table under no run id (a chunk read) or another one (the commit
	// of resume --skip-rejected, under a pseudo-run id).
	if j.table != "" && warehouse.CheckPlanTable(j.table, j.activationID) == nil {
		return j.table
	}
	return ""
}

// tally adds a finished job's bytes billed to its run. status is the job's final status when
// the caller has it (jobs.insert); otherwise it is read with jobs.get (free), since jobs.query's
// answer reaches the client library without it. A failure only loses the job's bytes.
func (p *Planner) tally(ctx context.Context, j job, src *bigquery.Job, status *bigquery.JobStatus) {
	key := billingKey(j)
	if key == "" || p.billed == nil {
		return
	}
	if status == nil {
		if src == nil {
			return
		}
		st, err := src.Status(ctx)
		if err != nil {
			p.log.DebugContext(ctx, "could not read the bytes billed of a job", "step", j.step,
				"activation", j.activationID, "run", j.runID, "job", src.ID(), "error", err)
			return
		}
		status = st
	}
	if status.Statistics == nil {
		return
	}
	if qs, ok := status.Statistics.Details.(*bigquery.QueryStatistics); ok {
		p.billed.add(key, qs.TotalBytesBilled)
	}
}

// LastSendRate is the send rate of budget's newest record at or after since (0 when none).
func (p *Planner) LastSendRate(ctx context.Context, budget string, since time.Time) (float64, error) {
	j := job{step: stepSendRate, sql: lastSendRateSQL(p.qualified(RunsTable)),
		params: []bigquery.QueryParameter{{Name: "send_budget", Value: budget},
			{Name: "since", Value: warehouse.RunTime(since)}}}
	var rate float64
	err := p.query(ctx, j, func(row []bigquery.Value, _ bigquery.Schema) error {
		if len(row) == 1 {
			rate, _ = row[0].(float64)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("last send rate: %w", p.explain(err))
	}
	return rate, nil
}
