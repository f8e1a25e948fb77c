package duckdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/activation-engine/activations/internal/warehouse"
)

// RunsTable is the table of the state database that holds every activation's run log (one row
// per run when it ends, one per pause when it starts), for users to query.
const RunsTable = warehouse.RunsTable

var _ warehouse.RunLog = (*Planner)(nil)

// duckRunTypes are the DuckDB types of the runs table's columns.
var duckRunTypes = map[warehouse.RunColumnType]string{
	warehouse.RunString: "VARCHAR", warehouse.RunTimestamp: "TIMESTAMP", warehouse.RunInt: "BIGINT",
	warehouse.RunFloat: "DOUBLE", warehouse.RunStrings: "VARCHAR[]",
}

// runLocks serialises the run-log writes of one activation within the process (every planner of
// a state file is in this process: DuckDB lets one process open it), so that the check for an
// existing record and the insert of two concurrent writes of one record do not interleave.
var runLocks warehouse.KeyedMutex

// createRunsTableSQL creates the runs table. It has no key constraint: DuckDB keeps such an
// index in memory (see createStateSQL); RecordRun keeps records unique itself (the table holds a
// few rows per run: its end and its pauses).
func (p *Planner) createRunsTableSQL() string {
	cols := warehouse.RunColumns()
	defs := make([]string, len(cols))
	for i, c := range cols {
		defs[i] = quoteIdent(c.Name) + " " + duckRunTypes[c.Type]
		if c.Required {
			defs[i] += " NOT NULL"
		}
	}
	return `CREATE TABLE IF NOT EXISTS ` + p.qualified(RunsTable) + " (\n\t" + strings.Join(defs, ",\n\t") + "\n)"
}

// insertRunSQL inserts one record (its values as parameters, in warehouse.RunColumns order, then
// the four key values again) unless a record with the same key is there.
func (p *Planner) insertRunSQL() string {
	cols := warehouse.RunColumns()
	names := make([]string, len(cols))
	vals := make([]string, len(cols))
	for i, c := range cols {
		names[i] = quoteIdent(c.Name)
		vals[i] = "CAST(? AS " + duckRunTypes[c.Type] + ")"
	}
	return `INSERT INTO ` + p.qualified(RunsTable) + ` (` + strings.Join(names, ", ") + `)
SELECT ` + strings.Join(vals, ", ") + `
WHERE NOT EXISTS (SELECT 1 FROM ` + p.qualified(RunsTable) + `
	WHERE activation_id = ? AND run_id = ? AND event = ? AND "at" = CAST(? AS TIMESTAMP))`
}

// selectRunsSQL reads an activation's latest records, newest first.
func (p *Planner) selectRunsSQL() string {
	cols := warehouse.RunColumns()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = quoteIdent(c.Name)
	}
	return `SELECT ` + strings.Join(names, ", ") + ` FROM ` + p.qualified(RunsTable) + `
WHERE activation_id = ? ORDER BY "at" DESC, run_id, event LIMIT ?`
}

// RecordRun writes one record of the run log, unless the same record (activation, run, event
// and time) is already there: a retried write adds nothing.
func (p *Planner) RecordRun(ctx context.Context, r warehouse.RunRecord) error {
	r, err := warehouse.CheckRunRecord(r)
	if err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	defer runLocks.Lock(p.catName + "\x00" + r.ActivationID)()
	args := append(r.Values(), r.ActivationID, r.RunID, string(r.Event), r.At)
	if _, err := p.db.ExecContext(ctx, p.insertRunSQL(), args...); err != nil {
		return fmt.Errorf("record %s of %s run %s at %s: %w", r.Event, r.ActivationID, r.RunID,
			r.At.Format("2006-01-02T15:04:05.000000Z"), err)
	}
	return nil
}

// Runs returns the activation's latest records, newest first.
func (p *Planner) Runs(ctx context.Context, activationID string, limit int) ([]warehouse.RunRecord, error) {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	rows, err := p.db.QueryContext(ctx, p.selectRunsSQL(), activationID, warehouse.RunsLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("runs of %s: %w", activationID, err)
	}
	defer rows.Close()
	n := len(warehouse.RunColumns())
	var out []warehouse.RunRecord
	for rows.Next() {
		cells := make([]any, n)
		dest := make([]any, n)
		for i := range cells {
			dest[i] = &cells[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("runs of %s: record %d: %w", activationID, len(out), err)
		}
		rec, err := warehouse.RunRecordFrom(cells)
		if err != nil {
			return nil, fmt.Errorf("runs of %s: record %d: %w", activationID, len(out), err)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("runs of %s after %d records: %w", activationID, len(out), err)
	}
	return out, nil
}

// LastSendRate is the send rate of budget's newest record at or after since (0 when none).
func (p *Planner) LastSendRate(ctx context.Context, budget string, since time.Time) (float64, error) {
	var rate sql.NullFloat64
	err := p.db.QueryRowContext(ctx, `SELECT send_rate FROM `+p.qualified(RunsTable)+`
WHERE send_budget = ? AND send_rate > 0 AND "at" >= CAST(? AS TIMESTAMP)
ORDER BY "at" DESC LIMIT 1`, budget, warehouse.RunTime(since)).Scan(&rate)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("last send rate: %w", err)
	}
	return rate.Float64, nil
}
