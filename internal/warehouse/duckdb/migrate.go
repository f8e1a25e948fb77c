package duckdb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Format 1 of the state (every version before hash format 2) stored its hashes as md5 hex
// strings: per field the md5 of the value as JSON ('∅' for NULL), field_hashes the JSON object
// of them by field name, ident_hash the md5 of the identifier as JSON, and row_hash the md5 of
// the identifier's hash, ':' and that object. The formulas stay here for one purpose: rewriting
// such a state in format 2 (migrateState).

func v1Hash(expr string) string {
	return `coalesce(md5(CAST(to_json(` + expr + `) AS VARCHAR)), '` + nullHash + `')`
}

func v1FieldHashes(fields []warehouse.Field, value func(warehouse.Field) string) string {
	var obj []string
	for _, f := range fields {
		obj = append(obj, quoteLiteral(f.Field), v1Hash(value(f)))
	}
	return "CAST(json_object(" + strings.Join(obj, ", ") + ") AS VARCHAR)"
}

func v1RowHash(fields []warehouse.Field, ident string, value func(warehouse.Field) string) string {
	return "md5(" + v1Hash(ident) + " || ':' || " + v1FieldHashes(fields, value) + ")"
}

// jsonPointer addresses one key of a format-1 field_hashes object whatever characters it holds.
func jsonPointer(key string) string {
	return "/" + strings.ReplaceAll(strings.ReplaceAll(key, "~", "~0"), "/", "~1")
}

// stateFormat1 tells whether the activation's state table is in format 1 (its row_hash is text).
func (p *Planner) stateFormat1(ctx context.Context, conn *sql.Conn, id string) (bool, error) {
	var typ sql.NullString
	err := conn.QueryRowContext(ctx, `SELECT any_value(data_type) FROM duckdb_columns()
		WHERE database_name = ? AND schema_name = 'main' AND table_name = ? AND column_name = 'row_hash'`,
		p.catName, warehouse.StateTable(id)).Scan(&typ)
	if err != nil {
		return false, fmt.Errorf("read the state's format: %w", err)
	}
	return typ.String == "VARCHAR", nil
}

// migrateState rewrites a format-1 state in format 2, once, with the snapshot of the model the
// plan is for: format-1 hashes cannot be turned into format-2 ones, but the model's current
// values can be hashed both ways. A state row equal to its model row (by the format-1 row hash)
// gets the format-2 hashes of that row, so it stays unchanged; a row that changed since its last
// sync keeps the format-2 hash of each field its format-1 hashes show unchanged, and a row hash
// no model row has (0), so the plan lists the same changed fields the format-1 plan would have.
// The identifier's hash comes from the model row when it is unchanged, else from the identifier
// the state recorded (ident) when it has one (a change of identifier stays one). The rejections
// of the activation made with a model row's format-1 row hash get its format-2 one, so known
// rejections stay known. One transaction: a failed migration leaves the state in format 1.
func (p *Planner) migrateState(ctx context.Context, conn *sql.Conn, id, state string, fields []warehouse.Field) error {
	start := time.Now()
	val := func(alias string) func(warehouse.Field) string {
		return func(f warehouse.Field) string { return alias + "." + quoteIdent(warehouse.ValueColumn(f.Field)) }
	}
	// The model rows a state row is compared with: keys the model holds once (a duplicated key
	// takes no part in plans; its state row then keeps the hashes of a changed row).
	model := `(SELECT s.* FROM ` + snapshotTable + ` AS s
		ANTI JOIN (SELECT key FROM ` + snapshotTable + ` WHERE key IS NOT NULL GROUP BY key HAVING count(*) > 1) AS d
		  ON s.key = d.key
		WHERE s.key IS NOT NULL)`
	var kept []string // the format-2 hash of each field whose format-1 hash is unchanged
	for _, f := range fields {
		kept = append(kept, `CASE WHEN json_extract_string(st.field_hashes, `+quoteLiteral(jsonPointer(f.Field))+`) = `+
			v1Hash(val("m")(f))+` THEN `+fieldHash(f.Field, val("m")(f))+` END`)
	}
	keptList := "CAST([] AS UBIGINT[])"
	if len(kept) > 0 {
		keptList = "list_filter(CAST([" + strings.Join(kept, ", ") + "] AS UBIGINT[]), h -> h IS NOT NULL)"
	}
	name := warehouse.StateTable(id)
	migrated := p.qualified(name + "_format2")
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, stmt := range []string{
		`DROP TABLE IF EXISTS ` + migrated,
		createStateSQL(migrated),
		`INSERT INTO ` + migrated + ` (` + stateColumns + `)
		SELECT key,
		  CASE WHEN same THEN new_row_hash ELSE CAST(0 AS UBIGINT) END,
		  CASE WHEN same THEN new_field_hashes WHEN matched THEN kept ELSE CAST([] AS UBIGINT[]) END,
		  CASE WHEN same_ident THEN ` + identHash("m_ident") + `
		       WHEN ident IS NOT NULL THEN ` + identHash("ident") + ` ELSE CAST(0 AS UBIGINT) END,
		  synced_at,
		  coalesce(ident, CASE WHEN same_ident THEN CAST(m_ident AS VARCHAR) END)
		FROM (
		  SELECT st.key, st.synced_at, st.ident, m.key IS NOT NULL AS matched,
		    coalesce(m.key IS NOT NULL AND st.row_hash = ` + v1RowHash(fields, "m.ident", val("m")) + `, false) AS same,
		    coalesce(m.key IS NOT NULL AND st.ident_hash = ` + v1Hash("m.ident") + `, false) AS same_ident,
		    m.ident AS m_ident,
		    ` + rowHash(fields, "m.ident", val("m")) + ` AS new_row_hash,
		    ` + fieldHashes(fields, val("m")) + ` AS new_field_hashes,
		    ` + keptList + ` AS kept
		  FROM ` + p.qualified(name) + ` AS st LEFT JOIN ` + model + ` AS m ON m.key = st.key
		)`,
		`DROP TABLE ` + p.qualified(name),
		`ALTER TABLE ` + migrated + ` RENAME TO ` + quoteIdent(name),
	} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrate state to hash format 2: %w", err)
		}
	}
	res, err := tx.ExecContext(ctx, `UPDATE `+p.qualified(RejectionsTable)+` AS r
		SET row_hash = CAST(`+rowHash(fields, "m.ident", val("m"))+` AS VARCHAR)
		FROM `+model+` AS m
		WHERE r.activation_id = ? AND r.key = m.key AND r.row_hash = `+v1RowHash(fields, "m.ident", val("m")), id)
	if err != nil {
		return fmt.Errorf("migrate the row hashes of rejections to hash format 2: %w", err)
	}
	rejections, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("migrate the row hashes of rejections to hash format 2: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate state to hash format 2: %w", err)
	}
	p.log.InfoContext(ctx, "state migrated to hash format 2", "activation", id, "rejections", rejections,
		"took", time.Since(start))
	return nil
}
