package duckdb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"time"

	duckdb "github.com/duckdb/duckdb-go/v2"

	"github.com/activation-engine/activations/internal/warehouse"
)

// ReadChunk hands fn the rows of one chunk with Seq > AfterSeq, in Seq order. It selects a seq
// range (never OFFSET), which the plan's seq-ordered storage answers from a few row groups.
// An error returned by fn stops the read and is returned as is. See readChunk (read.go).
func (p *Planner) ReadChunk(ctx context.Context, req warehouse.ChunkRequest, fn func(warehouse.Row) error) error {
	// A chunk is read whole before its first row is handed over (read.go): 10,000 rows take
	// 20 - 40 ms, which the run's first request would wait. With a lead, its first rows come
	// from a query of their own (seq numbers rows densely: Lead seqs are Lead rows).
	if after := req.After(); req.Lead > 0 && req.Chunk.LastSeq-after > int64(req.Lead) {
		lead := req
		lead.Chunk.LastSeq = after + int64(req.Lead)
		if err := p.readChunk(ctx, lead, fn); err != nil {
			return err
		}
		req.AfterSeq = lead.Chunk.LastSeq
	}
	return p.readChunk(ctx, req, fn) // read.go
}

// RecordRejections appends the rows with DuckDB's Appender: one bulk write however many rows.
func (p *Planner) RecordRejections(ctx context.Context, activationID, runID string, rs []warehouse.Rejection) error {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return fmt.Errorf("record rejections: %w", err)
	}
	if len(rs) == 0 {
		return nil
	}
	conn, err := p.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("record %d rejections of %s: %w", len(rs), activationID, err)
	}
	defer conn.Close()
	at := time.Now().UTC()
	err = conn.Raw(func(dc any) error {
		dconn, ok := dc.(driver.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		a, err := duckdb.NewAppender(dconn, p.catName, "main", RejectionsTable)
		if err != nil {
			return err
		}
		for _, r := range rs {
			var field any
			if r.Field != "" {
				field = r.Field
			}
			var class, rowHash any
			if r.Class != "" {
				class = string(r.Class)
			}
			if r.RowHash != "" {
				rowHash = r.RowHash
			}
			if err := a.AppendRow(activationID, runID, r.Key, string(r.Op), string(r.Outcome), field, r.Reason, at,
				class, rowHash); err != nil {
				_ = a.Close()
				return err
			}
		}
		return a.CloseWithCancel(ctx)
	})
	if err != nil {
		return fmt.Errorf("record %d rejections of %s run %s: %w", len(rs), activationID, runID, err)
	}
	return nil
}

// TopReasons counts distinct keys per outcome and reason, so a chunk retried after recording
// its rejections does not count them twice.
func (p *Planner) TopReasons(ctx context.Context, activationID, runID string, limit int) ([]warehouse.ReasonCount, error) {
	q := `SELECT outcome, coalesce(reason, ''), count(DISTINCT key) AS n FROM ` + p.qualified(RejectionsTable) + `
		WHERE activation_id = ? AND run_id = ? GROUP BY ALL ORDER BY n DESC, outcome, 2`
	args := []any{activationID, runID}
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := p.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("top reasons of %s run %s: %w", activationID, runID, err)
	}
	defer rows.Close()
	var out []warehouse.ReasonCount
	for rows.Next() {
		var rc warehouse.ReasonCount
		var outcome string
		if err := rows.Scan(&outcome, &rc.Reason, &rc.Count); err != nil {
			return nil, fmt.Errorf("top reasons of %s run %s: %w", activationID, runID, err)
		}
		rc.Outcome = warehouse.Outcome(outcome)
		out = append(out, rc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("top reasons of %s run %s: %w", activationID, runID, err)
	}
	return out, nil
}

// Commit applies the finished chunks' rows that the run did not reject to the state, in one
// transaction. The counts come from the plan, not from rows affected, so a repeated Commit
// reports the same result; the chunks it already applied (planChunksTable) are not applied
// again.
func (p *Planner) Commit(ctx context.Context, req warehouse.CommitRequest) (warehouse.CommitResult, error) {
	id := req.ActivationID
	var res warehouse.CommitResult
	if err := warehouse.CheckActivationID(id); err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	if err := warehouse.CheckPlanTable(req.Table, id); err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	if len(req.Chunks) == 0 {
		return res, nil
	}
	defer p.lock(id)()
	release, err := p.write(ctx)
	if err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	defer release()
	start := time.Now()

	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("commit %s: begin: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	plan, state, book := p.qualified(req.Table), p.qualified(warehouse.StateTable(id)), p.qualified(planChunksTable)
	if _, err := tx.ExecContext(ctx, createStateSQL(state)); err != nil {
		return res, fmt.Errorf("commit %s: create state table: %w", id, err)
	}
	applied, newAdds, err := appliedChunks(ctx, tx, book, req.Table, req.RunID)
	if err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	seen := make(map[int]bool, len(req.Chunks))
	var all, todo, again []int64
	for _, c := range req.Chunks {
		if seen[c] {
			continue
		}
		seen[c] = true
		all = append(all, int64(c))
		switch applied[c] {
		case appliedByThisRun:
		case appliedByAnother:
			todo, again = append(todo, int64(c)), append(again, int64(c))
		default:
			todo = append(todo, int64(c))
		}
	}
	// Plan rows of the chunks, each with whether it is held out of the state: the run rejected
	// or skipped its key (a skipped removal is done: the profile is not there), or a known
	// rejection held it back (warehouse.HeldByPrior).
	finished := func(chunks []int64) (string, []any) {
		return `SELECT p.*, r.key IS NOT NULL OR coalesce(p.hold AND (p.prior_class <> '` + string(warehouse.ClassType) + `'
		  OR p.prior_field || chr(0) || p.prior_reason IN (SELECT unnest(CAST(? AS VARCHAR[])))), false) AS held
		FROM ` + plan + ` AS p
		LEFT JOIN (SELECT DISTINCT key FROM ` + p.qualified(RejectionsTable) + `
		           WHERE activation_id = ? AND run_id = ? AND NOT (op IN ('remove', 'unsubscribe') AND outcome = 'skipped')) AS r
		  ON p.key = r.key
		WHERE p.chunk IN (SELECT unnest(CAST(? AS BIGINT[])))`, []any{warehouse.ConflictPairs(req.Conflicts), id, req.RunID, chunks}
	}
	// The keys whose old row must go: removals and changes, and adds unless the plan says they
	// have none (a full resync's adds have one) and no earlier commit inserted them.
	stale := "true"
	if newAdds {
		stale = "(op <> 'add' OR chunk IN (SELECT unnest(CAST(" + int64List(again) + " AS BIGINT[]))))"
	}
	q, args := finished(all)
	var toDelete int64
	err = tx.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE NOT held AND op <> 'remove'),
		count(*) FILTER (WHERE NOT held AND op = 'remove'), count(*) FILTER (WHERE held),
		count(*) FILTER (WHERE NOT held AND `+stale+` AND chunk IN (SELECT unnest(CAST(? AS BIGINT[]))))
		FROM (`+q+`)`, append([]any{todo}, args...)...).Scan(&res.Upserted, &res.Deleted, &res.Held, &toDelete)
	if err != nil {
		return res, fmt.Errorf("commit %s: count rows of %s: %w", id, req.Table, err)
	}
	if len(todo) > 0 {
		q, args := finished(todo)
		// Delete, then insert: the state has no index on key (an index of every synced key would
		// have to stay in memory), so an upsert is the removal of the key's old row followed by
		// the insertion of its new one.
		if toDelete > 0 {
			var rows int64
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM `+state).Scan(&rows); err != nil {
				return res, fmt.Errorf("commit %s: count state rows: %w", id, err)
			}
			if err := p.ensureMemory(ctx, deleteMemory(rows, toDelete), "commit deletes from a large state"); err != nil {
				return res, fmt.Errorf("commit %s: %w", id, err)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+state+` WHERE key IN (
				SELECT key FROM (`+q+`) WHERE NOT held AND `+stale+`)`, args...); err != nil {
				return res, fmt.Errorf("commit %s: delete old rows from state: %w", id, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+state+`
			(`+stateColumns+`)
			SELECT key, row_hash, field_hashes, ident_hash, ?, CAST(ident AS VARCHAR) FROM (`+q+`)
			WHERE NOT held AND op <> 'remove'`, append([]any{time.Now().UTC()}, args...)...); err != nil {
			return res, fmt.Errorf("commit %s: insert rows into state: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+book+` (plan, chunk, run, "at")
			SELECT ?, unnest(CAST(? AS BIGINT[])), ?, ?`, req.Table, todo, req.RunID, time.Now().UTC()); err != nil {
			return res, fmt.Errorf("commit %s: record committed chunks: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	p.log.DebugContext(ctx, "plan committed", "activation", id, "run", req.RunID, "table", req.Table,
		"chunks", len(req.Chunks), "applied", len(todo), "replaced", toDelete, "upserted", res.Upserted,
		"deleted", res.Deleted, "held", res.Held, "took", time.Since(start))
	return res, nil
}

// How a chunk of a plan was applied to the state before (appliedChunks).
const (
	appliedByThisRun = 1 + iota // by a commit of the same run id: nothing to do
	appliedByAnother            // by another run id: applied again, its adds deleted first
)

// appliedChunks reads the bookkeeping of a plan table: how its chunks were committed so far, as
// seen by a commit of runID, and whether its adds are new keys (newAddsMark).
func appliedChunks(ctx context.Context, tx *sql.Tx, book, table, runID string) (map[int]int, bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT chunk, bool_or(run = ?) FROM `+book+` WHERE plan = ? GROUP BY chunk`,
		runID, table)
	if err != nil {
		return nil, false, fmt.Errorf("read committed chunks of %s: %w", table, err)
	}
	defer rows.Close()
	applied, newAdds := map[int]int{}, false
	for rows.Next() {
		var (
			c    int
			same bool
		)
		if err := rows.Scan(&c, &same); err != nil {
			return nil, false, fmt.Errorf("read committed chunks of %s: %w", table, err)
		}
		switch {
		case c == newAddsMark:
			newAdds = true
		case same:
			applied[c] = appliedByThisRun
		default:
			applied[c] = appliedByAnother
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read committed chunks of %s: %w", table, err)
	}
	return applied, newAdds, nil
}

// DropPlan drops a plan table; dropping it twice is harmless.
func (p *Planner) DropPlan(ctx context.Context, table string) error {
	if err := warehouse.CheckPlanTable(table, ""); err != nil {
		return fmt.Errorf("drop plan: %w", err)
	}
	if _, err := p.db.ExecContext(ctx, `DROP TABLE IF EXISTS `+p.qualified(table)); err != nil {
		return fmt.Errorf("drop plan %s: %w", table, err)
	}
	if _, err := p.db.ExecContext(ctx, `DELETE FROM `+p.qualified(planChunksTable)+` WHERE plan = ?`, table); err != nil {
		return fmt.Errorf("drop plan %s: forget its commits: %w", table, err)
	}
	return nil
}

// LoadIdentifiers bulk-appends the destination's identifiers into a run's table, deduplicated,
// so ReadChunk can tell which plan rows name an existing profile.
func (p *Planner) LoadIdentifiers(ctx context.Context, activationID, runID string, lowerCase bool,
	load func(add func(id string) error) error) (string, int64, error) {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return "", 0, fmt.Errorf("load identifiers: %w", err)
	}
	table := warehouse.KnownTable(activationID, runID)
	staging := table + "_staging"
	q, qs := p.qualified(table), p.qualified(staging)
	if _, err := p.db.ExecContext(ctx, `CREATE OR REPLACE TABLE `+qs+` (id VARCHAR)`); err != nil {
		return "", 0, fmt.Errorf("load identifiers of %s: %w", activationID, err)
	}
	defer func() { _, _ = p.db.ExecContext(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS `+qs) }()
	conn, err := p.db.Conn(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("load identifiers of %s: %w", activationID, err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		dconn, ok := dc.(driver.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		a, err := duckdb.NewAppender(dconn, p.catName, "main", staging)
		if err != nil {
			return err
		}
		if err := load(func(id string) error { return a.AppendRow(id) }); err != nil {
			_ = a.Close()
			return err
		}
		return a.Close()
	})
	if err != nil {
		return "", 0, fmt.Errorf("load identifiers of %s: %w", activationID, err)
	}
	norm := "id"
	if lowerCase {
		norm = "lower(id)"
	}
	if _, err := p.db.ExecContext(ctx, `CREATE OR REPLACE TABLE `+q+` AS SELECT DISTINCT `+norm+` AS id FROM `+qs+
		` WHERE id IS NOT NULL AND id <> ''`); err != nil {
		return "", 0, fmt.Errorf("load identifiers of %s: %w", activationID, err)
	}
	var n int64
	if err := p.db.QueryRowContext(ctx, `SELECT count(*) FROM `+q).Scan(&n); err != nil {
		return "", 0, fmt.Errorf("load identifiers of %s: %w", activationID, err)
	}
	return table, n, nil
}

// int64List writes ns as a DuckDB list literal ("[]" when empty): integers only.
func int64List(ns []int64) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = strconv.FormatInt(n, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
