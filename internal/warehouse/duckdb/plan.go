package duckdb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Temporary tables of one Plan call. They live on the plan's own connection, which is discarded
// afterwards, so concurrent plans never see each other's.
const (
	snapshotTable   = "temp.main.activation_snapshot"
	duplicatesTable = "temp.main.activation_duplicates"
	sharedTable     = "temp.main.activation_shared"
	priorTable      = "temp.main.activation_prior"
	sortedTable     = "temp.main.activation_sorted"
)

// nullHash stands for a NULL value where a value's JSON or text is hashed: to_json never
// produces it, and an identifier's text is hashed after '=', so NULL differs from every value,
// including the string 'null'.
const nullHash = "∅"

// Plan snapshots the model, diffs it against the state and writes the plan table. Everything
// runs inside DuckDB; only counts come back.
func (p *Planner) Plan(ctx context.Context, req warehouse.PlanRequest) (warehouse.Plan, error) {
	id := req.ActivationID
	fields, err := checkPlanRequest(req)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}
	chunkRows := req.ChunkRows
	if chunkRows <= 0 {
		chunkRows = warehouse.DefaultChunkRows
	}
	defer p.lock(id)()
	release, err := p.write(ctx)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}
	defer release()
	start := time.Now()

	conn, err := p.db.Conn(ctx)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: connect: %w", id, err)
	}
	// The connection's session settings (search path, USE) and temp tables must not outlive
	// this plan: discard it instead of returning it to the pool.
	defer func() { _ = conn.Raw(func(any) error { return driver.ErrBadConn }) }()

	// A first plan (the state holds no row) or a full resync plans every model row as an add:
	// its row hash is then computed once, with the field hashes, by the plan table, instead of
	// by the snapshot as well (two fifths of a first plan's hashing), and no row hash can settle
	// a row early (planSQL joins the whole snapshot with the state).
	hashInPlan := req.FullResync
	if !hashInPlan {
		if hashInPlan, err = p.stateEmpty(ctx, conn, id); err != nil {
			return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
		}
	}
	if err := p.snapshot(ctx, conn, req, fields, !hashInPlan); err != nil {
		return warehouse.Plan{}, err
	}
	snapTook := time.Since(start)
	columns, err := describeColumns(ctx, conn, fields)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}

	state := p.qualified(warehouse.StateTable(id))
	if err := p.prepareState(ctx, conn, id, state, fields); err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}
	if err := p.findHeldBack(ctx, conn, req, fields, hashInPlan); err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}

	table := warehouse.PlanTable(id, req.RunID)
	refreshed, err := p.writePlan(ctx, conn, req, fields, table, state, chunkRows, hashInPlan)
	if err != nil {
		return warehouse.Plan{}, err
	}

	plan := warehouse.Plan{Table: table, Columns: columns}
	plan.Counts.Refreshed = refreshed
	err = conn.QueryRowContext(ctx, `SELECT count(*), count(*) FILTER (WHERE key IS NULL),
		(SELECT CAST(coalesce(sum(n), 0) AS BIGINT) FROM `+duplicatesTable+`),
		(SELECT count(*) FROM `+sharedTable+`) FROM `+snapshotTable).
		Scan(&plan.Counts.ModelRows, &plan.Counts.NullKeys, &plan.Counts.DuplicateKeys, &plan.Counts.DuplicateIdentifiers)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: count model rows: %w", id, err)
	}
	qt := p.qualified(table)
	err = conn.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE op = 'add' AND key IN (SELECT key FROM `+priorTable+`)),
		count(*) FILTER (WHERE hold) FROM `+qt).Scan(&plan.Counts.Retried, &plan.Counts.Known)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: count retried rows: %w", id, err)
	}
	if plan.Counts.Known > 0 {
		if plan.KnownReasons, err = knownReasons(ctx, conn, qt); err != nil {
			return warehouse.Plan{}, fmt.Errorf("plan %s: reasons of known rejections: %w", id, err)
		}
	}
	plan.Chunks, err = readChunks(ctx, conn, qt)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: read chunks of %s: %w", id, table, err)
	}
	for _, c := range plan.Chunks {
		plan.Counts.Added += c.Added
		plan.Counts.Changed += c.Changed
		plan.Counts.Removed += c.Removed
	}
	clean := plan.Counts.ModelRows - plan.Counts.NullKeys - plan.Counts.DuplicateKeys - plan.Counts.DuplicateIdentifiers
	plan.Counts.Unchanged = clean - plan.Counts.Added - plan.Counts.Changed

	c := plan.Counts
	p.log.DebugContext(ctx, "plan written", "activation", id, "run", req.RunID, "table", table,
		"model_rows", c.ModelRows, "added", c.Added, "changed", c.Changed, "removed", c.Removed,
		"unchanged", c.Unchanged, "null_keys", c.NullKeys, "duplicate_keys", c.DuplicateKeys,
		"duplicate_identifiers", c.DuplicateIdentifiers, "known", c.Known, "refreshed", c.Refreshed,
		"chunks", len(plan.Chunks), "snapshot_took", snapTook, "took", time.Since(start))
	return plan, nil
}

// checkPlanRequest adds DuckDB's own limit to the shared checks.
func checkPlanRequest(req warehouse.PlanRequest) ([]warehouse.Field, error) {
	fields, err := warehouse.CheckPlanRequest(req)
	if err != nil {
		return nil, err
	}
	// DuckDB splits file_search_path on commas and has no escape for them.
	if strings.Contains(req.BaseDir, ",") {
		return nil, fmt.Errorf("%w: the model's folder %q contains a comma, which DuckDB's file_search_path cannot hold",
			warehouse.ErrInvalidModel, req.BaseDir)
	}
	return fields, nil
}

func createStateSQL(state string) string {
	// ident_hash is kept apart from field_hashes so that an identifier change (another profile)
	// can be told from an ordinary field change without reserving a field name. key has no
	// PRIMARY KEY constraint: DuckDB keeps such an index in memory, growing with the state past
	// any memory limit. Keys stay unique without it: the plan never holds a key twice
	// (duplicates are never committed) and Commit deletes a key's old row before inserting its
	// new one. The hashes are 64-bit numbers (format 2, see md5Bits); key and ident are unique
	// strings, where a dictionary never wins: naming FSST spares DuckDB the analysis of the other
	// methods (committing 1,000,000 adds: 2.4 – 2.8 → 2.1 – 2.3 CPU-s, the same state file).
	return `CREATE TABLE IF NOT EXISTS ` + state + ` (
		key VARCHAR NOT NULL USING COMPRESSION fsst,
		row_hash UBIGINT NOT NULL,
		field_hashes UBIGINT[] NOT NULL,
		ident_hash UBIGINT,
		synced_at TIMESTAMP NOT NULL,
		ident VARCHAR USING COMPRESSION fsst
	)`
}

// prepareState creates the state table, or brings one of an earlier version up to date: it
// adds the ident column (the identifier a key was last synced with, which removals need),
// rewrites format-1 hashes in format 2 (migrateState, with the snapshot) and drops a key index.
func (p *Planner) prepareState(ctx context.Context, conn *sql.Conn, id, state string, fields []warehouse.Field) error {
	if _, err := conn.ExecContext(ctx, createStateSQL(state)); err != nil {
		return fmt.Errorf("create state table: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `ALTER TABLE `+state+` ADD COLUMN IF NOT EXISTS ident VARCHAR`); err != nil {
		return fmt.Errorf("add ident to state table: %w", err)
	}
	format1, err := p.stateFormat1(ctx, conn, id)
	if err != nil {
		return err
	}
	if format1 {
		if err := p.migrateState(ctx, conn, id, state, fields); err != nil {
			return err
		}
	}
	return p.dropStateIndex(ctx, conn, id)
}

// stateEmpty tells whether the activation's state table is missing or holds no row.
func (p *Planner) stateEmpty(ctx context.Context, conn *sql.Conn, id string) (bool, error) {
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM duckdb_tables()
		WHERE database_name = ? AND schema_name = 'main' AND table_name = ?`, p.catName, warehouse.StateTable(id)).Scan(&n); err != nil {
		return false, fmt.Errorf("look for the state table: %w", err)
	}
	if n == 0 {
		return true, nil
	}
	var rows bool
	if err := conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM `+p.qualified(warehouse.StateTable(id))+`)`).Scan(&rows); err != nil {
		return false, fmt.Errorf("read state: %w", err)
	}
	return !rows, nil
}

// stateColumns are the state table's columns, in order.
const stateColumns = "key, row_hash, field_hashes, ident_hash, synced_at, ident"

// normIdent is how identifiers are compared: as text, lower-cased for emails (Iterable
// compares emails case-insensitively).
func normIdent(expr string, lowerCase bool) string {
	s := "CAST(" + expr + " AS VARCHAR)"
	if lowerCase {
		return "lower(" + s + ")"
	}
	return s
}

// findHeldBack writes the temp tables of the rows that take no part in the diff (duplicate keys,
// identifiers shared by several keys), with the row hash their skip is recorded with, and of the
// keys' latest rejections by earlier runs. When the snapshot holds no row hash (hashInPlan),
// the hash of those few rows is computed here.
func (p *Planner) findHeldBack(ctx context.Context, conn *sql.Conn, req warehouse.PlanRequest, fields []warehouse.Field, hashInPlan bool) error {
	hashOf := func(alias string) string {
		if !hashInPlan {
			return alias + ".row_hash"
		}
		return rowHash(fields, alias+".ident", func(f warehouse.Field) string {
			return alias + "." + quoteIdent(warehouse.ValueColumn(f.Field))
		})
	}
	var values string // the snapshot's value columns, which the shared rows' hash needs
	if hashInPlan {
		values = ", s.ident"
		for _, f := range fields {
			values += ", s." + quoteIdent(warehouse.ValueColumn(f.Field))
		}
	}
	// Both searches group by a 64-bit hash first: grouping millions of distinct strings is what
	// cost (a hash table of every key, spilled past the memory limit), and the few candidate
	// hashes that repeat are then grouped by their strings, which settles collisions exactly.
	if _, err := conn.ExecContext(ctx, `CREATE OR REPLACE TEMP TABLE activation_duplicates AS
		WITH cand AS (
		  SELECT hash(key) AS h FROM `+snapshotTable+` WHERE key IS NOT NULL GROUP BY h HAVING count(*) > 1
		)
		SELECT key, count(*) AS n, any_value(`+hashOf("s")+`) AS row_hash FROM `+snapshotTable+` AS s
		SEMI JOIN cand ON hash(s.key) = cand.h
		WHERE key IS NOT NULL GROUP BY key HAVING count(*) > 1`); err != nil {
		return fmt.Errorf("find duplicate keys: %w", err)
	}
	// An identifier carried by two keys would be sent as two users, the last write winning
	// field by field: every key that shares one is held back, whatever the state held.
	nid := normIdent("s.ident", req.IdentifierLowerCase)
	clean := `SELECT s.key, s.row_hash` + values + `, ` + nid + ` AS nid FROM ` + snapshotTable + ` AS s
		  ANTI JOIN ` + duplicatesTable + ` AS d ON s.key = d.key
		  WHERE s.key IS NOT NULL AND s.ident IS NOT NULL AND ` + nid + ` <> ''`
	if _, err := conn.ExecContext(ctx, `CREATE OR REPLACE TEMP TABLE activation_shared AS
		WITH cand AS (
		  SELECT hash(nid) AS h FROM (`+clean+`) GROUP BY h HAVING count(*) > 1
		), maybe AS (
		  SELECT c.* FROM (`+clean+`) AS c SEMI JOIN cand ON hash(c.nid) = cand.h
		), shared AS (SELECT nid, count(*) AS n FROM maybe GROUP BY nid HAVING count(*) > 1)
		SELECT maybe.key, `+hashOf("maybe")+` AS row_hash, shared.n FROM maybe JOIN shared USING (nid)`); err != nil {
		return fmt.Errorf("find shared identifiers: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE OR REPLACE TEMP TABLE activation_prior AS
		SELECT key, arg_max(struct_pack(outcome := outcome, class := class, field := field,
		  reason := reason, row_hash := TRY_CAST(row_hash AS UBIGINT)), "at") AS r
		FROM `+p.qualified(RejectionsTable)+`
		WHERE activation_id = ? AND run_id <> ? AND key IS NOT NULL GROUP BY key`,
		req.ActivationID, req.RunID); err != nil {
		return fmt.Errorf("read earlier rejections: %w", err)
	}
	return nil
}

// knownReasons counts the held-back rows of a plan by reason, most frequent first.
func knownReasons(ctx context.Context, conn *sql.Conn, plan string) ([]warehouse.ReasonCount, error) {
	rows, err := conn.QueryContext(ctx, `SELECT coalesce(prior_reason, ''), count(*) AS n FROM `+plan+`
		WHERE hold GROUP BY 1 ORDER BY n DESC, 1 LIMIT `+fmt.Sprint(warehouse.MaxKnownReasons))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []warehouse.ReasonCount
	for rows.Next() {
		rc := warehouse.ReasonCount{Outcome: warehouse.OutcomeRejected}
		if err := rows.Scan(&rc.Reason, &rc.Count); err != nil {
			return nil, err
		}
		out = append(out, rc)
	}
	return out, rows.Err()
}

// dropStateIndex rebuilds, once, a state table created with a PRIMARY KEY on key (by earlier
// versions) without it: DuckDB keeps such an index in memory whatever its memory limit, and
// Commit's upserts of millions of keys through it ran out of memory.
func (p *Planner) dropStateIndex(ctx context.Context, conn *sql.Conn, id string) error {
	name := warehouse.StateTable(id)
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM duckdb_constraints()
		WHERE database_name = ? AND schema_name = 'main' AND table_name = ?
		AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')`, p.catName, name).Scan(&n); err != nil {
		return fmt.Errorf("read state table constraints: %w", err)
	}
	if n == 0 {
		return nil
	}
	start := time.Now()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("rebuild state table: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	state, rebuilt := p.qualified(name), name+"_rebuilt"
	for _, stmt := range []string{
		`DROP TABLE IF EXISTS ` + p.qualified(rebuilt),
		createStateSQL(p.qualified(rebuilt)),
		`INSERT INTO ` + p.qualified(rebuilt) + ` (` + stateColumns + `) SELECT ` + stateColumns + ` FROM ` + state,
		`DROP TABLE ` + state,
		`ALTER TABLE ` + p.qualified(rebuilt) + ` RENAME TO ` + quoteIdent(name),
	} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("rebuild state table without its key index: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("rebuild state table: %w", err)
	}
	p.log.InfoContext(ctx, "state table rebuilt without its key index", "activation", id, "took", time.Since(start))
	return nil
}

// snapshot runs the model once into a temp table: key, identifier, the mapped values in their
// original types and, with hashRows, the row hash (a first plan or a full resync leaves it to
// the plan table). The per-field hashes and the identifier's hash are not kept: they are
// functions of the stored values, and planSQL computes them again for the rows it plans.
func (p *Planner) snapshot(ctx context.Context, conn *sql.Conn, req warehouse.PlanRequest, fields []warehouse.Field, hashRows bool) error {
	id := req.ActivationID
	// SET and USE take no parameters; both are session-scoped, and the connection is discarded.
	if _, err := conn.ExecContext(ctx, `SET SESSION file_search_path = `+quoteLiteral(req.BaseDir)); err != nil {
		return fmt.Errorf("plan %s: set file_search_path: %w", id, err)
	}
	if p.source != "" {
		if _, err := conn.ExecContext(ctx, `USE `+p.source); err != nil {
			return fmt.Errorf("plan %s: use source database: %w", id, err)
		}
	}
	if _, err := conn.ExecContext(ctx, snapshotSQL(req, fields, hashRows)); err != nil {
		return modelError(ctx, id, err)
	}
	if p.source != "" {
		if _, err := conn.ExecContext(ctx, `USE `+p.catalog); err != nil {
			return fmt.Errorf("plan %s: use state database: %w", id, err)
		}
	}
	return nil
}

// The state's hashes (format 2) are 64 bits of an md5: one md5 block per field and none per
// row. Format 1 (migrate.go) stored md5 hex strings, a JSON object of them per row and an md5 of
// that object as the row hash: twice the hashing, and four times the bytes to write, compress
// and read back (docs/benchmarks.md). md5_number, cut to 64 bits, costs a third of
// md5_number_lower, which gives the same bits (DuckDB 1.5). TestHashFormat pins the values: a
// DuckDB that computed them otherwise would see every row as changed.
func md5Bits(text string) string {
	return `CAST(md5_number(` + text + `) >> 64 AS UBIGINT)`
}

// fieldHash is the hash of one mapped field: of its name as JSON, ':' and its value as JSON, '∅'
// for NULL (to_json keeps the type visible, 1 vs "1", and never yields '∅'). The name is part of
// it, so a field's hash never stands for another field's, and the row hash can combine them in
// any order.
func fieldHash(name, expr string) string {
	return md5Bits(quoteLiteral(jsonString(name)+":") + ` || coalesce(CAST(to_json(` + expr + `) AS VARCHAR), '` + nullHash + `')`)
}

// jsonString is s as a JSON string.
func jsonString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}

// identHash is the hash of an identifier, compared as text (what Iterable compares): '=' and
// the text, '∅' for NULL.
func identHash(expr string) string {
	return md5Bits(`coalesce('=' || CAST(` + expr + ` AS VARCHAR), '` + nullHash + `')`)
}

// rowHash is the row hash of a row whose identifier is ident and whose mapped values are
// value(f): the XOR of the identifier's hash and every field's hash (each holds its field's
// name, so XOR loses nothing but order, which the names make irrelevant).
func rowHash(fields []warehouse.Field, ident string, value func(warehouse.Field) string) string {
	return rowHashOf(identHash(ident), fieldHashes(fields, value))
}

// rowHashOf is rowHash from the identifier's hash and the field_hashes list.
func rowHashOf(identHash, fieldHashes string) string {
	return "xor(" + identHash + ", coalesce(list_bit_xor(" + fieldHashes + "), CAST(0 AS UBIGINT)))"
}

// fieldHashes is the field_hashes list of a row: its fields' hashes, in field order.
func fieldHashes(fields []warehouse.Field, value func(warehouse.Field) string) string {
	var hs []string
	for _, f := range fields {
		hs = append(hs, fieldHash(f.Field, value(f)))
	}
	return "CAST([" + strings.Join(hs, ", ") + "] AS UBIGINT[])"
}

// snapshotSQL runs the model into the snapshot: key, identifier, the mapped values and, with
// hashRows, the row hash (NULL without: the plan table computes it).
func snapshotSQL(req warehouse.PlanRequest, fields []warehouse.Field, hashRows bool) string {
	col := func(c string) string { return "model." + quoteIdent(c) }
	ident := "NULL"
	if req.Identifier != "" {
		ident = col(req.Identifier)
	}
	sel := []string{
		"CAST(" + col(req.PrimaryKey) + " AS VARCHAR) AS key",
		ident + " AS ident",
	}
	for _, f := range fields {
		sel = append(sel, col(f.Column)+" AS "+quoteIdent(warehouse.ValueColumn(f.Field)))
	}
	// The row hash covers every field's hash (its name and value) and the identifier's hash.
	// Neither the field_hashes list nor the identifier's hash is stored: at 10,000,000 rows they
	// would be a large part of the snapshot, spilled and read back by every step of the plan;
	// the plan hashes again the few rows whose row hash moved.
	hash := "CAST(NULL AS UBIGINT)"
	if hashRows {
		hash = rowHash(fields, ident, func(f warehouse.Field) string { return col(f.Column) })
	}
	sel = append(sel, hash+" AS row_hash")
	// A trailing ";" or "-- comment" in the model must not swallow the closing parenthesis.
	query := strings.TrimRight(strings.TrimSpace(req.Query), "; \t\r\n")
	return `CREATE OR REPLACE TEMP TABLE activation_snapshot AS
SELECT ` + strings.Join(sel, ",\n    ") + `
FROM (
` + query + `
) AS model`
}

// writePlan records the duplicate keys and shared identifiers as skipped, materialises the
// plan table, refreshes the state rows that only lost an unmapped field, and prunes the
// activation's old rejections, in one transaction so a retried Plan replaces all of it. It
// returns the number of state rows refreshed.
func (p *Planner) writePlan(ctx context.Context, conn *sql.Conn, req warehouse.PlanRequest,
	fields []warehouse.Field, table, state string, chunkRows int, hashInPlan bool) (int64, error) {
	id := req.ActivationID
	hold := !req.FullResync && !req.RetryRejected
	sortedSQL, tableSQL := planSQL(state, fields, req, hold, hashInPlan, rowidSeq, chunkRows)
	// The diff is a temp table of this connection, written before the transaction: row ids of
	// rows inserted by an open transaction are not yet their final ones.
	if _, err := conn.ExecContext(ctx, sortedSQL); err != nil {
		return 0, fmt.Errorf("plan %s: diff the model with the state: %w", id, err)
	}
	dense, err := checkDense(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("plan %s: %w", id, err)
	}
	if !dense || p.numberWithWindow {
		// Should a DuckDB version number them otherwise, a window numbers them (a second sort).
		p.log.WarnContext(ctx, "row ids of the sorted diff are not dense: numbering with a window", "activation", id)
		_, tableSQL = planSQL(state, fields, req, hold, hashInPlan, windowSeq, chunkRows)
	}
	ddl := planTableDDL(ctx, conn, p.qualified(table), tableSQL)
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("plan %s: begin: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	rejections := p.qualified(RejectionsTable)
	now := time.Now().UTC()
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+rejections+`
		WHERE activation_id = ? AND run_id = ? AND class IN (?, ?)`, id, req.RunID,
		string(warehouse.ClassDuplicateKey), string(warehouse.ClassSharedIdentifier)); err != nil {
		return 0, fmt.Errorf("plan %s: clear skipped keys of an earlier attempt: %w", id, err)
	}
	for _, skip := range []struct {
		table, format string
		class         warehouse.Class
	}{
		{duplicatesTable, warehouse.DuplicateKeyReasonFormat, warehouse.ClassDuplicateKey},
		{sharedTable, warehouse.SharedIdentifierReasonFormat, warehouse.ClassSharedIdentifier},
	} {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+rejections+`
			(activation_id, run_id, key, op, outcome, field, reason, "at", class, row_hash)
			SELECT ?, ?, key, ?, ?, NULL, printf(?, n), ?, ?, CAST(row_hash AS VARCHAR) FROM `+skip.table,
			id, req.RunID, string(warehouse.OpAdd), string(warehouse.OutcomeSkipped), skip.format,
			now, string(skip.class)); err != nil {
			return 0, fmt.Errorf("plan %s: record %s rows: %w", id, skip.class, err)
		}
	}
	if err := createPlanTable(ctx, tx, p.qualified(table), ddl, tableSQL); err != nil {
		return 0, fmt.Errorf("plan %s: write plan table %s: %w", id, table, err)
	}
	if err := p.markPlan(ctx, tx, table, !req.FullResync, now); err != nil {
		return 0, fmt.Errorf("plan %s: %w", id, err)
	}
	refreshed, err := p.refresh(ctx, tx, id, p.qualified(table), state, req)
	if err != nil {
		return 0, fmt.Errorf("plan %s: %w", id, err)
	}
	retention := req.RejectionsRetention
	if retention <= 0 {
		retention = warehouse.DefaultRejectionsRetention
	}
	// Rejections older than the retention go, except each key's latest: it is what makes a
	// rejection known to later runs.
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+rejections+` AS r
		WHERE r.activation_id = ? AND r."at" < ? AND (r.key IS NULL OR EXISTS (
		  SELECT 1 FROM `+rejections+` AS n
		  WHERE n.activation_id = r.activation_id AND n.key = r.key AND n."at" > r."at"))`,
		id, now.Add(-retention)); err != nil {
		return 0, fmt.Errorf("plan %s: prune rejections older than %s: %w", id, retention, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("plan %s: commit plan table %s: %w", id, table, err)
	}
	return refreshed, nil
}

// markPlan starts the bookkeeping of a new plan table: no chunk of it committed yet, and,
// when newAdds, the mark that its adds have no row in the state (the diff said so: an add is a
// key the state lacks, except in a full resync; and only this plan's commits change the state
// until it is dropped, the activation's lock and its runs being one at a time). It touches its
// own rows only: plans of other activations write theirs at the same time, and two deletes of
// the same row would conflict (Open prunes the rows of plan tables that are gone).
func (p *Planner) markPlan(ctx context.Context, tx *sql.Tx, table string, newAdds bool, now time.Time) error {
	chunks := p.qualified(planChunksTable)
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+chunks+` WHERE plan = ?`, table); err != nil {
		return fmt.Errorf("reset the commits of %s: %w", table, err)
	}
	if !newAdds {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+chunks+` (plan, chunk, run, "at") VALUES (?, ?, '', ?)`,
		table, newAddsMark, now); err != nil {
		return fmt.Errorf("mark the adds of %s as new: %w", table, err)
	}
	return nil
}

// refresh applies the plan's 'refresh' rows to the state and drops them from the plan. Their
// hash moved only because a field left the mapping: nothing is sent, and without a refresh
// they would take the slow path of every later plan. It also fills in, once, the identifier
// of state rows written before the state kept it, for keys whose identifier did not change.
func (p *Planner) refresh(ctx context.Context, tx *sql.Tx, id, plan, state string, req warehouse.PlanRequest) (int64, error) {
	res, err := tx.ExecContext(ctx, `UPDATE `+state+` AS st SET row_hash = r.row_hash,
		field_hashes = r.field_hashes, ident = CAST(r.ident AS VARCHAR)
		FROM (SELECT key, row_hash, field_hashes, ident FROM `+plan+` WHERE op = 'refresh') AS r
		WHERE st.key = r.key`)
	if err != nil {
		return 0, fmt.Errorf("refresh state rows: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("refresh state rows: %w", err)
	}
	if n > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+plan+` WHERE op = 'refresh'`); err != nil {
			return 0, fmt.Errorf("drop refreshed rows from the plan: %w", err)
		}
	}
	var legacy bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM `+state+`
		WHERE ident IS NULL AND ident_hash IS DISTINCT FROM `+identHash("CAST(NULL AS VARCHAR)")+`)`).Scan(&legacy); err != nil {
		return 0, fmt.Errorf("look for state rows without identifier: %w", err)
	}
	if legacy {
		if _, err := tx.ExecContext(ctx, `UPDATE `+state+` AS st SET ident = CAST(s.ident AS VARCHAR)
			FROM `+snapshotTable+` AS s
			WHERE st.ident IS NULL AND s.key = st.key AND s.ident IS NOT NULL AND `+identHash("s.ident")+` = st.ident_hash`); err != nil {
			return 0, fmt.Errorf("fill in identifiers of state rows: %w", err)
		}
		p.log.InfoContext(ctx, "state rows given their identifier", "activation", id)
	}
	return n, nil
}

// planSQL returns the two statements of the diff. The first joins the snapshot with the state
// into the temp table activation_sorted. Keys that are NULL or duplicated in the model, or whose
// identifier other keys carry too, take no part: they are never sent, and such a key that was
// synced before is not removed. Equal row hashes settle most rows at once (against a state with
// rows, unless a full resync, keys and row hashes are joined first, and only the rows whose
// hash moved are joined with their values and the state's field hashes); only the others hash
// their values again, field by field, and compare them with the state's field_hashes to list
// the changed fields. changed_fields is stored for changes only (an add changes every field, a
// removal none).
// A row whose hash moved only because a field left the mapping gets op 'refresh' and no seq (see
// refresh). The rows are written sorted by key, refreshes last, which is the one sort of the
// plan: the table's row ids, 0 to n-1 in that order (checkDense), number the rows to send.
//
// The second is the query of the plan table: seq from seqExpr, the chunk, the new field_hashes
// object and identifier hash (built for the planned rows only), the key's latest earlier
// rejection when it was made with the same row hash (prior_*), and hold when that rejection
// holds it back. A removal, and a change of identifier, carries the identifier the key was last
// synced with (old_ident), and keep_profile when a current model row carries that identifier
// (the key changed, the person did not). It reads activation_sorted in row id order, so the plan
// table's row groups hold narrow seq ranges, which a chunk's seq range reads through zone maps.
//
// hashInPlan (a first plan or a full resync: every model row is an add, and the snapshot has no
// row hash) joins the whole snapshot with the state and computes the row hashes in the plan
// table.
func planSQL(state string, fields []warehouse.Field, req warehouse.PlanRequest, hold, hashInPlan bool, seqExpr string,
	chunkRows int) (sorted, plan string) {
	var names, values []string
	for _, f := range fields {
		names = append(names, quoteLiteral(f.Field))
		values = append(values, quoteIdent(warehouse.ValueColumn(f.Field)))
	}
	allList := "CAST([" + strings.Join(names, ", ") + "] AS VARCHAR[])"
	newHashes := fieldHashes(fields, func(f warehouse.Field) string { return quoteIdent(warehouse.ValueColumn(f.Field)) })
	diffList := "CAST([] AS VARCHAR[])"
	if len(fields) > 0 {
		// A field whose hash (its name and value) is not among the old ones changed, or is
		// newly mapped.
		diffList = "[f[1] FOR f IN list_zip(" + allList + ", " + newHashes + ") IF NOT list_contains(old_hashes, f[2])]"
	}
	full := "false"
	if req.FullResync {
		full = "true"
	}
	var holdClasses []string
	for _, c := range warehouse.HoldClasses {
		holdClasses = append(holdClasses, quoteLiteral(string(c)))
	}
	holdExpr := "false"
	if hold {
		holdExpr = "coalesce(pr.r.outcome = '" + string(warehouse.OutcomeRejected) + "' AND pr.r.class IN (" +
			strings.Join(holdClasses, ", ") + "), false)"
	}
	valueList, snapValues := "", ""
	if len(values) > 0 {
		valueList = ", " + strings.Join(values, ", ")
		snapValues = ", snap." + strings.Join(values, ", snap.")
	}
	lower := req.IdentifierLowerCase
	sides := `snap AS (
  SELECT s.* FROM ` + snapshotTable + ` AS s ANTI JOIN out AS d ON s.key = d.key
  WHERE s.key IS NOT NULL
), st AS (
  SELECT t.* FROM ` + state + ` AS t ANTI JOIN out AS d ON t.key = d.key
)`
	if !hashInPlan {
		// Most rows are usually unchanged: join keys and row hashes first, so that only the
		// rows whose hash moved bring their values and the state's field hashes into the wide
		// join.
		sides = `moved AS (
  SELECT coalesce(a.key, b.key) AS key
  FROM (SELECT s.key, s.row_hash FROM ` + snapshotTable + ` AS s ANTI JOIN out AS d ON s.key = d.key
        WHERE s.key IS NOT NULL) AS a
  FULL OUTER JOIN (SELECT t.key, t.row_hash FROM ` + state + ` AS t ANTI JOIN out AS d ON t.key = d.key) AS b
    ON a.key = b.key
  WHERE a.key IS NULL OR b.key IS NULL OR a.row_hash <> b.row_hash
), snap AS (
  SELECT s.* FROM ` + snapshotTable + ` AS s SEMI JOIN moved ON s.key = moved.key
), st AS (
  SELECT t.* FROM ` + state + ` AS t SEMI JOIN moved ON t.key = moved.key
)`
	}
	sorted = `CREATE OR REPLACE TEMP TABLE activation_sorted AS
WITH out AS (
  SELECT key FROM ` + duplicatesTable + ` UNION ALL SELECT key FROM ` + sharedTable + `
), ` + sides + `, joined AS (
  SELECT coalesce(snap.key, st.key) AS key,
    CASE WHEN snap.key IS NULL THEN 'remove'
         WHEN st.key IS NULL OR ` + full + ` THEN 'add'
         WHEN snap.row_hash = st.row_hash THEN 'same'
         WHEN ` + identHash("snap.ident") + ` IS DISTINCT FROM st.ident_hash THEN 'ident'
         ELSE 'diff' END AS kind,
    snap.row_hash, snap.ident, st.ident AS old_ident, st.field_hashes AS old_hashes` + snapValues + `
  FROM snap FULL OUTER JOIN st ON snap.key = st.key
), classified AS (
  SELECT key, kind,
    CASE kind WHEN 'remove' THEN 'remove' WHEN 'add' THEN 'add' ELSE 'change' END AS op,
    CASE kind WHEN 'diff' THEN ` + diffList + `
              WHEN 'ident' THEN ` + allList + ` END AS changed_fields,
    row_hash, ident, CASE WHEN kind IN ('remove', 'ident') THEN old_ident END AS old_ident` + valueList + `
  FROM joined WHERE kind <> 'same'
)
-- a row whose hash moved only because a field left the mapping has nothing to send: it only
-- refreshes its state row
SELECT * EXCLUDE (kind, op), CASE WHEN kind = 'diff' AND len(changed_fields) = 0 THEN 'refresh' ELSE op END AS op
FROM classified
ORDER BY op = 'refresh', key`
	// The new hashes of the planned rows; with hashInPlan (every row an add, or a removal of a
	// full resync), the row hash too, from the same two expressions.
	rowsFrom, fieldHashesOf, identHashOf := "numbered", newHashes, identHash("ident")
	hashed := ""
	if hashInPlan {
		rowsFrom, fieldHashesOf, identHashOf = "hashed", "new_field_hashes", "new_ident_hash"
		hashed = `, hashes AS (
  SELECT * EXCLUDE (row_hash), ` + newHashes + ` AS new_field_hashes, ` + identHash("ident") + ` AS new_ident_hash
  FROM numbered
), hashed AS (
  SELECT *, CASE WHEN op <> 'remove' THEN ` + rowHashOf("new_ident_hash", "new_field_hashes") + ` END AS row_hash FROM hashes
)`
	}
	plan = `WITH numbered AS (
  SELECT CASE WHEN op <> 'refresh' THEN ` + seqExpr + ` END AS seq, * FROM ` + sortedTable + `
)` + hashed + `, kept AS (
  -- the current identifiers that a removal or a change of identifier names (usually few)
  SELECT DISTINCT ` + normIdent("s.ident", lower) + ` AS nid FROM ` + snapshotTable + ` AS s
  SEMI JOIN (SELECT ` + normIdent("old_ident", lower) + ` AS nid FROM ` + sortedTable + ` WHERE old_ident IS NOT NULL) AS o
    ON ` + normIdent("s.ident", lower) + ` = o.nid
  WHERE s.key IS NOT NULL AND s.ident IS NOT NULL
)
SELECT seq, CAST((seq - 1) // ` + fmt.Sprint(chunkRows) + ` AS INTEGER) AS chunk, n.key, op, changed_fields, n.row_hash,
  CASE WHEN op <> 'remove' THEN ` + fieldHashesOf + ` END AS field_hashes,
  CASE WHEN op <> 'remove' THEN ` + identHashOf + ` END AS ident_hash, ident, old_ident,
  old_ident IS NOT NULL AND ` + normIdent("old_ident", lower) + ` IN (SELECT nid FROM kept) AS keep_profile,
  CASE WHEN op IN ('add', 'change') THEN pr.r.outcome END AS prior_outcome,
  CASE WHEN op IN ('add', 'change') THEN pr.r.class END AS prior_class,
  CASE WHEN op IN ('add', 'change') THEN pr.r.field END AS prior_field,
  CASE WHEN op IN ('add', 'change') THEN pr.r.reason END AS prior_reason,
  op IN ('add', 'change') AND ` + holdExpr + ` AS hold` + valueList + `
FROM ` + rowsFrom + ` AS n
-- an equi-join (the rejection counts for adds and changes only, above): a condition on op here
-- made DuckDB run it as a nested loop join, every plan row against every rejection
LEFT JOIN ` + priorTable + ` AS pr ON pr.key = n.key AND pr.r.row_hash = n.row_hash`
	return sorted, plan
}

// planTableDDL is the CREATE TABLE statement of a plan table that query fills, its columns
// stored uncompressed, with the query's types (read from an empty result into a temp table). It
// is tried on that temp table first: should DuckDB not take back one of its type names, it
// returns "" and the plan is written with CREATE TABLE AS, compressed. It runs outside the plan's
// transaction, where a failed statement would abort it. The plan table lives for one run, and
// compressing it cost a third of writing it (analysing the random hex of its hashes for
// compression most of all); uncompressed, it takes about a third more disk while it lives.
func planTableDDL(ctx context.Context, conn *sql.Conn, table, query string) string {
	if _, err := conn.ExecContext(ctx, `CREATE OR REPLACE TEMP TABLE activation_plan_shape AS `+query+` LIMIT 0`); err != nil {
		return ""
	}
	rows, err := conn.QueryContext(ctx, `SELECT column_name, data_type FROM duckdb_columns()
		WHERE database_name = 'temp' AND schema_name = 'main' AND table_name = 'activation_plan_shape'
		ORDER BY column_index`)
	if err != nil {
		return ""
	}
	var cols []string
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			rows.Close()
			return ""
		}
		cols = append(cols, quoteIdent(name)+" "+typ+" USING COMPRESSION uncompressed")
	}
	rows.Close()
	if rows.Err() != nil || len(cols) == 0 {
		return ""
	}
	body := ` (` + strings.Join(cols, ", ") + `)`
	if _, err := conn.ExecContext(ctx, `CREATE OR REPLACE TEMP TABLE activation_plan_shape`+body); err != nil {
		return ""
	}
	return `CREATE OR REPLACE TABLE ` + table + body
}

// createPlanTable writes the plan table: ddl then an INSERT of query, or CREATE TABLE AS when
// ddl is "".
func createPlanTable(ctx context.Context, tx *sql.Tx, table, ddl, query string) error {
	if ddl == "" {
		_, err := tx.ExecContext(ctx, `CREATE OR REPLACE TABLE `+table+` AS `+query)
		return err
	}
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO `+table+` `+query)
	return err
}

// The seq of a plan row: its row id in activation_sorted, or, should those not be dense, its
// rank by key (a window, which sorts the rows again).
const (
	rowidSeq  = "rowid + 1"
	windowSeq = "row_number() OVER (PARTITION BY op = 'refresh' ORDER BY key)"
)

// checkDense tells whether the row ids of activation_sorted number its rows to send densely from
// 0, which rowidSeq relies on: DuckDB gives a table written by one statement consecutive row ids,
// in the order of its ORDER BY.
func checkDense(ctx context.Context, conn *sql.Conn) (bool, error) {
	var n, lo, hi int64
	if err := conn.QueryRowContext(ctx, `SELECT count(*), coalesce(min(rowid), 0), coalesce(max(rowid), -1)
		FROM `+sortedTable+` WHERE op <> 'refresh'`).Scan(&n, &lo, &hi); err != nil {
		return false, fmt.Errorf("number planned rows: %w", err)
	}
	return lo == 0 && hi == n-1, nil
}

func readChunks(ctx context.Context, conn *sql.Conn, plan string) ([]warehouse.Chunk, error) {
	rows, err := conn.QueryContext(ctx, `SELECT chunk, min(seq), max(seq),
		count(*) FILTER (WHERE op = 'add'), count(*) FILTER (WHERE op = 'change'),
		count(*) FILTER (WHERE op = 'remove')
		FROM `+plan+` WHERE chunk IS NOT NULL GROUP BY chunk ORDER BY chunk`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var chunks []warehouse.Chunk
	for rows.Next() {
		var c warehouse.Chunk
		if err := rows.Scan(&c.Index, &c.FirstSeq, &c.LastSeq, &c.Added, &c.Changed, &c.Removed); err != nil {
			return nil, err
		}
		chunks = append(chunks, c)
	}
	return chunks, rows.Err()
}

// describeColumns reads the snapshot's types of the mapped columns, in field order.
func describeColumns(ctx context.Context, conn *sql.Conn, fields []warehouse.Field) ([]warehouse.ColumnType, error) {
	rows, err := conn.QueryContext(ctx, `SELECT column_name, data_type FROM duckdb_columns()
		WHERE database_name = 'temp' AND table_name = 'activation_snapshot'`)
	if err != nil {
		return nil, fmt.Errorf("describe model columns: %w", err)
	}
	defer rows.Close()
	types := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("describe model columns: %w", err)
		}
		types[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe model columns: %w", err)
	}
	out := make([]warehouse.ColumnType, len(fields))
	for i, f := range fields {
		t := types[warehouse.ValueColumn(f.Field)]
		out[i] = warehouse.ColumnType{Field: f.Field, Column: f.Column, Type: t, Kind: kindOf(t)}
	}
	return out, nil
}

// kindOf classifies a DuckDB type name.
func kindOf(t string) warehouse.Kind {
	u := strings.ToUpper(t)
	switch {
	case strings.HasSuffix(u, "[]") || strings.HasPrefix(u, "LIST") || strings.Contains(u, "[") && strings.HasSuffix(u, "]"):
		return warehouse.KindArray
	case strings.HasPrefix(u, "STRUCT") || strings.HasPrefix(u, "MAP") || strings.HasPrefix(u, "UNION"):
		return warehouse.KindObject
	case strings.HasPrefix(u, "DECIMAL") || u == "DOUBLE" || u == "FLOAT" || u == "REAL":
		return warehouse.KindFloat
	case strings.HasPrefix(u, "TIMESTAMP") || u == "DATE":
		return warehouse.KindTimestamp
	}
	switch u {
	case "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT":
		return warehouse.KindInteger
	case "BOOLEAN":
		return warehouse.KindBoolean
	case "VARCHAR", "UUID", "TIME", "TIME WITH TIME ZONE", "INTERVAL", "ENUM":
		return warehouse.KindString
	}
	if strings.HasPrefix(u, "ENUM") {
		return warehouse.KindString
	}
	return warehouse.KindOther
}
