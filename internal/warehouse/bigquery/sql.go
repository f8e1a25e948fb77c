package bigquery

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/activation-engine/activations/internal/warehouse"
)

// The SQL of every step is built here, from names that Open and the requests validated or that
// are quoted below. Row values never appear in it: they travel as query parameters.

// nullHash stands for a NULL value: TO_HEX never produces it, so NULL differs from every value,
// including the string 'null' (whose JSON is "\"null\"").
const nullHash = "∅"

// Temporary tables of the plan script; they live in the script's session only.
const (
	snapshotTable   = "activation_snapshot"
	duplicatesTable = "activation_duplicates"
)

// duplicateReasonPrefix finds the duplicate-key rejections of a run that a retried Plan replaces.
var duplicateReasonPrefix, _, _ = strings.Cut(warehouse.DuplicateKeyReasonFormat, "%d")

// quoteIdent quotes an identifier (or one part of a path) with backticks.
func quoteIdent(s string) string { return "`" + escape(s) + "`" }

// quoteString quotes a string literal. It is used for configuration only (field names, op and
// outcome names); values always travel as parameters.
func quoteString(s string) string { return "'" + escape(s) + "'" }

// escape writes printable ASCII as is and everything else as \u escapes, which BigQuery reads
// alike in string literals and quoted identifiers: no character can end the quoting.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\' || r == '\'' || r == '"' || r == '`':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	return b.String()
}

// hashExpr hashes one value: TO_JSON_STRING keeps the type visible (1 vs "1", true vs "true").
// TO_JSON_STRING(NULL) is 'null', so NULL is tested first and gets the sentinel.
func hashExpr(expr string) string {
	return "IF(" + expr + " IS NULL, " + quoteString(nullHash) + ", TO_HEX(SHA256(TO_JSON_STRING(" + expr + "))))"
}

// trimQuery drops what would swallow the closing parenthesis around the model: trailing ";".
// A trailing "--" or "#" comment is harmless since the parenthesis follows on a new line.
func trimQuery(q string) string { return strings.TrimRight(strings.TrimSpace(q), "; \t\r\n") }

// snapshotSelect reads the model once: key, identifier and its hash, the mapped values in their
// original types, the field_hashes JSON object and the row hash. fields are sorted by name.
func snapshotSelect(req warehouse.PlanRequest, fields []warehouse.Field) string {
	col := func(c string) string { return "model." + quoteIdent(c) }
	ident := "CAST(NULL AS STRING)"
	if req.Identifier != "" {
		ident = col(req.Identifier)
	}
	sel := []string{
		"CAST(" + col(req.PrimaryKey) + " AS STRING) AS key",
		ident + " AS ident",
		hashExpr(ident) + " AS ident_hash",
	}
	obj := make([]string, 0, len(fields))
	for _, f := range fields {
		sel = append(sel, col(f.Column)+" AS "+quoteIdent(warehouse.ValueColumn(f.Field)))
		obj = append(obj, quoteString(f.Field)+", "+hashExpr(col(f.Column)))
	}
	// The field hashes live only in the JSON object (keys are field names, in sorted order): the
	// few changed rows parse it again rather than every row carrying one more column per field.
	sel = append(sel, "TO_JSON_STRING(JSON_OBJECT("+strings.Join(obj, ",\n      ")+")) AS field_hashes")
	// The row hash covers the identifier's hash and the field hashes (names included).
	return `SELECT *, TO_HEX(SHA256(CONCAT(ident_hash, ':', field_hashes))) AS row_hash FROM (
  SELECT ` + strings.Join(sel, ",\n    ") + `
  FROM (
` + trimQuery(req.Query) + `
  ) AS model
)`
}

func createStateSQL(state string) string {
	// ident_hash is kept apart from field_hashes so that an identifier change (another profile)
	// can be told from an ordinary field change without reserving a field name.
	return `CREATE TABLE IF NOT EXISTS ` + state + ` (
  key STRING NOT NULL,
  row_hash STRING NOT NULL,
  field_hashes STRING NOT NULL,
  ident_hash STRING,
  synced_at TIMESTAMP NOT NULL
)
CLUSTER BY key`
}

// expirationOption keeps forgotten plan tables from accumulating.
func expirationOption(seconds int64) string {
	return fmt.Sprintf("OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL %d SECOND))", seconds)
}

// planScript is the one job of Plan. Parameters: @activation_id, @run_id, @duplicate_prefix,
// @duplicate_format. Keys that are NULL or duplicated in the model take no part in the diff:
// they are never sent, and a duplicated key that was synced before is not removed. Every
// statement can run again, so a failed script is retried whole.
func planScript(req warehouse.PlanRequest, fields []warehouse.Field, plan, state, rejections string,
	chunkRows int, expirationSeconds int64) string {
	var names, values []string
	for _, f := range fields {
		names = append(names, quoteString(f.Field))
		values = append(values, quoteIdent(warehouse.ValueColumn(f.Field)))
	}
	allList := "CAST([] AS ARRAY<STRING>)"
	if len(names) > 0 {
		allList = "[" + strings.Join(names, ", ") + "]"
	}
	diffList := "CAST([] AS ARRAY<STRING>)"
	if len(fields) > 0 {
		// Field name, new hash, old hash: a field missing from the old object (newly mapped)
		// counts as changed. The JSON subscript takes any key, whatever characters it holds.
		var cells []string
		for _, f := range fields {
			k := quoteString(f.Field)
			cells = append(cells, "STRUCT("+k+" AS name, JSON_VALUE(new_j["+k+"]) AS new_hash, JSON_VALUE(old_j["+k+"]) AS old_hash)")
		}
		diffList = "ARRAY(SELECT f.name FROM UNNEST([\n        " + strings.Join(cells, ",\n        ") +
			"\n      ]) AS f WITH OFFSET AS i WHERE f.new_hash IS DISTINCT FROM f.old_hash ORDER BY i)"
	}
	full := "FALSE"
	if req.FullResync {
		full = "TRUE"
	}
	valueList, snapValues := "", ""
	if len(values) > 0 {
		valueList = ", " + strings.Join(values, ", ")
		snapValues = ", snap." + strings.Join(values, ", snap.")
	}
	skipped := `activation_id = @activation_id AND run_id = @run_id AND outcome = ` +
		quoteString(string(warehouse.OutcomeSkipped)) + ` AND STARTS_WITH(reason, @duplicate_prefix)`
	return createStateSQL(state) + `;

CREATE TEMP TABLE ` + snapshotTable + ` AS
` + snapshotSelect(req, fields) + `;

CREATE TEMP TABLE ` + duplicatesTable + ` AS
SELECT key, COUNT(*) AS n FROM ` + snapshotTable + `
WHERE key IS NOT NULL GROUP BY key HAVING COUNT(*) > 1;

-- A retried Plan of the same run replaces the duplicate-key rejections it recorded.
IF EXISTS (SELECT 1 FROM ` + rejections + ` WHERE ` + skipped + `) THEN
  DELETE FROM ` + rejections + ` WHERE ` + skipped + `;
END IF;
INSERT INTO ` + rejections + ` (activation_id, run_id, key, op, outcome, field, reason, ` + quoteIdent("at") + `)
SELECT @activation_id, @run_id, key, ` + quoteString(string(warehouse.OpAdd)) + `, ` +
		quoteString(string(warehouse.OutcomeSkipped)) + `, CAST(NULL AS STRING), FORMAT(@duplicate_format, n), CURRENT_TIMESTAMP()
FROM ` + duplicatesTable + `;

-- Equal row hashes settle most rows at once; only the others parse the old and new
-- field_hashes to list the changed fields. changed_fields is kept for changes only (an add
-- changes every field, a removal none). Clustering by seq makes a chunk's range cheap to read.
CREATE OR REPLACE TABLE ` + plan + `
CLUSTER BY seq
` + expirationOption(expirationSeconds) + `
AS
WITH snap AS (
  SELECT s.* FROM ` + snapshotTable + ` AS s
  WHERE s.key IS NOT NULL AND s.key NOT IN (SELECT d.key FROM ` + duplicatesTable + ` AS d)
), st AS (
  SELECT t.* FROM ` + state + ` AS t
  WHERE t.key NOT IN (SELECT d.key FROM ` + duplicatesTable + ` AS d)
), joined AS (
  SELECT COALESCE(snap.key, st.key) AS key,
    CASE WHEN snap.key IS NULL THEN 'remove'
         WHEN st.key IS NULL OR ` + full + ` THEN 'add'
         WHEN snap.row_hash = st.row_hash THEN 'same'
         WHEN snap.ident_hash IS DISTINCT FROM st.ident_hash THEN 'ident'
         ELSE 'diff' END AS kind,
    snap.row_hash, snap.field_hashes, snap.ident_hash, snap.ident, st.field_hashes AS old_hashes` + snapValues + `
  FROM snap FULL OUTER JOIN st ON snap.key = st.key
), parsed AS (
  SELECT *,
    IF(kind = 'diff', PARSE_JSON(field_hashes), NULL) AS new_j,
    IF(kind = 'diff', PARSE_JSON(old_hashes), NULL) AS old_j
  FROM joined WHERE kind <> 'same'
), classified AS (
  SELECT key, kind,
    CASE kind WHEN 'remove' THEN 'remove' WHEN 'add' THEN 'add' ELSE 'change' END AS op,
    CASE kind
      WHEN 'diff' THEN ` + diffList + `
      WHEN 'ident' THEN ` + allList + `
      ELSE CAST([] AS ARRAY<STRING>) END AS changed_fields,
    row_hash, field_hashes, ident_hash, ident` + valueList + `
  FROM parsed
), planned AS (
  -- a row whose hash moved only because a field left the mapping has nothing to send
  SELECT * EXCEPT (kind) FROM classified WHERE kind <> 'diff' OR ARRAY_LENGTH(changed_fields) > 0
)
SELECT seq, DIV(seq - 1, ` + fmt.Sprint(chunkRows) + `) AS chunk, * EXCEPT (seq)
FROM (SELECT ROW_NUMBER() OVER (ORDER BY key) AS seq, * FROM planned);

SELECT s.model_rows, s.null_keys,
  (SELECT IFNULL(SUM(d.n), 0) FROM ` + duplicatesTable + ` AS d) AS duplicate_keys,
  (SELECT COUNT(*) FROM ` + plan + ` AS p WHERE p.op = 'add' AND p.key IN
    (SELECT r.key FROM ` + rejections + ` AS r WHERE r.activation_id = @activation_id AND r.run_id != @run_id)) AS retried,
  ARRAY(
    SELECT AS STRUCT chunk, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
      COUNTIF(op = 'add') AS added, COUNTIF(op = 'change') AS changed, COUNTIF(op = 'remove') AS removed
    FROM ` + plan + ` GROUP BY chunk ORDER BY chunk
  ) AS chunks
FROM (SELECT COUNT(*) AS model_rows, COUNTIF(key IS NULL) AS null_keys FROM ` + snapshotTable + `) AS s`
}

// readChunkSQL selects a seq range of the plan (parameters @after and @last), never OFFSET:
// the plan is clustered by seq, so the range reads few blocks.
func readChunkSQL(plan, known string, lowerCase bool, fields []warehouse.Field) string {
	cols := []string{"plan.seq", "plan.key", "plan.op", "plan.changed_fields", "plan.ident"}
	for _, f := range fields {
		cols = append(cols, "plan."+quoteIdent(warehouse.ValueColumn(f.Field)))
	}
	from := plan + " AS plan"
	if known == "" {
		cols = append(cols, "FALSE AS known")
	} else {
		// The known table holds each identifier once (LoadIdentifiers dedups), so the join
		// neither drops nor repeats plan rows.
		cols = append(cols, "k.id IS NOT NULL AS known")
		ident := "CAST(plan.ident AS STRING)"
		if lowerCase {
			ident = "LOWER(" + ident + ")"
		}
		from += "\nLEFT JOIN " + known + " AS k ON k.id = " + ident
	}
	return "SELECT " + strings.Join(cols, ", ") + "\nFROM " + from +
		"\nWHERE plan.seq > @after AND plan.seq <= @last\nORDER BY plan.seq"
}

// commitScript merges the finished chunks (@chunks) minus the run's rejections into the state
// in one MERGE, then counts from the plan, so a repeated commit changes nothing and reports the
// same result. Parameters: @activation_id, @run_id, @chunks.
func commitScript(plan, state, rejections string) string {
	rejected := `SELECT r.key FROM ` + rejections + ` AS r
    WHERE r.activation_id = @activation_id AND r.run_id = @run_id AND r.key IS NOT NULL`
	return `MERGE ` + state + ` AS state
USING (
  SELECT plan.key, plan.op, plan.row_hash, plan.field_hashes, plan.ident_hash
  FROM ` + plan + ` AS plan
  WHERE plan.chunk IN UNNEST(@chunks) AND plan.key NOT IN (
    ` + rejected + `)
) AS src
ON state.key = src.key
WHEN MATCHED AND src.op = 'remove' THEN DELETE
WHEN MATCHED THEN UPDATE SET row_hash = src.row_hash, field_hashes = src.field_hashes,
  ident_hash = src.ident_hash, synced_at = CURRENT_TIMESTAMP()
WHEN NOT MATCHED AND src.op <> 'remove' THEN
  INSERT (key, row_hash, field_hashes, ident_hash, synced_at)
  VALUES (src.key, src.row_hash, src.field_hashes, src.ident_hash, CURRENT_TIMESTAMP());

SELECT COUNTIF(NOT held AND op <> 'remove') AS upserted, COUNTIF(NOT held AND op = 'remove') AS deleted,
  COUNTIF(held) AS held
FROM (
  SELECT plan.op, plan.key IN (
    ` + rejected + `) AS held
  FROM ` + plan + ` AS plan
  WHERE plan.chunk IN UNNEST(@chunks)
)`
}

// insertRejectionsSQL appends a batch (@rows, an array of structs) with DML rather than
// streaming inserts, whose buffer would block the DML of later commits and plans.
func insertRejectionsSQL(rejections string) string {
	return `INSERT INTO ` + rejections + ` (activation_id, run_id, key, op, outcome, field, reason, ` + quoteIdent("at") + `)
SELECT @activation_id, @run_id, r.key, r.op, r.outcome, r.field, r.reason, CURRENT_TIMESTAMP()
FROM UNNEST(@rows) AS r`
}

// topReasonsSQL counts distinct keys per outcome and reason, so rejections recorded again by a
// retried chunk are counted once.
func topReasonsSQL(rejections string, limit bool) string {
	q := `SELECT outcome, IFNULL(reason, '') AS reason, COUNT(DISTINCT key) AS n
FROM ` + rejections + `
WHERE activation_id = @activation_id AND run_id = @run_id
GROUP BY 1, 2
ORDER BY n DESC, 1, 2`
	if limit {
		q += "\nLIMIT @limit"
	}
	return q
}

// knownScript deduplicates the loaded identifiers into the run's known table and counts them.
func knownScript(known, staging string, lowerCase bool, expirationSeconds int64) string {
	norm := "id"
	if lowerCase {
		norm = "LOWER(id)"
	}
	return `CREATE OR REPLACE TABLE ` + known + `
CLUSTER BY id
` + expirationOption(expirationSeconds) + `
AS SELECT DISTINCT ` + norm + ` AS id FROM ` + staging + ` WHERE id IS NOT NULL AND id <> '';

SELECT COUNT(*) AS n FROM ` + known
}

// validUTF8 reports whether every configured name can be written into SQL unchanged.
func validUTF8(names ...string) bool {
	for _, n := range names {
		if !utf8.ValidString(n) {
			return false
		}
	}
	return true
}
