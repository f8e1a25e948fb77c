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
	sharedTable     = "activation_shared"
	priorTable      = "activation_prior"
	plannedTable    = "activation_planned"
	seqTable        = "activation_seq"
)

// seqBuckets is the number of buckets the plan numbers its rows in (see planScript): enough
// for every bucket to be a small sort of keys even with a billion planned rows, few enough for
// the running sum of their counts to be trivial.
const seqBuckets = 1024

// nul is a NUL character, the separator of warehouse.ConflictPairs (BigQuery's CHR(0) is an
// empty string, not a NUL).
const nul = "CAST(FROM_HEX('00') AS STRING)"

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
	// can be told from an ordinary field change without reserving a field name. ident is the
	// identifier the key was last synced with, as text: a removal needs it once the model
	// no longer has the row.
	return `CREATE TABLE IF NOT EXISTS ` + state + ` (
  key STRING NOT NULL,
  row_hash STRING NOT NULL,
  field_hashes STRING NOT NULL,
  ident_hash STRING,
  synced_at TIMESTAMP NOT NULL,
  ident STRING
)
CLUSTER BY key`
}

// upgradeRejectionsSQL adds the columns that make a rejection known (its class and the row hash
// it was made with) to a rejections table created by an earlier version; new tables have them.
func upgradeRejectionsSQL(rejections string) string {
	return `ALTER TABLE ` + rejections + `
ADD COLUMN IF NOT EXISTS class STRING,
ADD COLUMN IF NOT EXISTS row_hash STRING`
}

// expirationOption keeps forgotten plan tables from accumulating.
func expirationOption(seconds int64) string {
	return fmt.Sprintf("OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL %d SECOND))", seconds)
}

// normIdent is how identifiers are compared: as text, lower-cased for emails (Iterable compares
// emails case-insensitively).
func normIdent(expr string, lowerCase bool) string {
	s := "CAST(" + expr + " AS STRING)"
	if lowerCase {
		return "LOWER(" + s + ")"
	}
	return s
}

// sqlList is a parenthesised list of string literals (configuration, never values).
func sqlList[S ~string](items []S) string {
	quoted := make([]string, len(items))
	for i, it := range items {
		quoted[i] = quoteString(string(it))
	}
	return "(" + strings.Join(quoted, ", ") + ")"
}

// planScript is the one job of Plan. Parameters: @activation_id, @run_id, @duplicate_format,
// @shared_format (warehouse.*ReasonFormat) and @rejections_cutoff (TIMESTAMP: older rejections
// are pruned, except each key's latest; see Planner.rejectionsCutoff). Rows are numbered without
// a global sort (see the comment above activation_seq). Keys that are NULL or duplicated in the model, or whose
// identifier other keys carry too, take no part in the diff: they are never sent, and such a key
// that was synced before is not removed. Every statement can run again, so a failed script is
// retried whole.
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
	// A known rejection holds its row back unless the plan resends everything or the rejected.
	hold := "FALSE"
	if !req.FullResync && !req.RetryRejected {
		hold = "COALESCE(pr.r.outcome = " + quoteString(string(warehouse.OutcomeRejected)) +
			" AND pr.r.class IN " + sqlList(warehouse.HoldClasses) + ", FALSE)"
	}
	valueList, snapValues, planValues := "", "", ""
	if len(values) > 0 {
		valueList = ", " + strings.Join(values, ", ")
		snapValues = ", snap." + strings.Join(values, ", snap.")
		planValues = ",\n  n." + strings.Join(values, ", n.")
	}
	lower := req.IdentifierLowerCase
	nid := normIdent("s.ident", lower)
	at := quoteIdent("at")
	skippedClasses := sqlList([]warehouse.Class{warehouse.ClassDuplicateKey, warehouse.ClassSharedIdentifier})
	retried := `activation_id = @activation_id AND run_id = @run_id AND class IN ` + skippedClasses
	skip := func(table, format string, class warehouse.Class) string {
		return `SELECT @activation_id, @run_id, key, ` + quoteString(string(warehouse.OpAdd)) + `, ` +
			quoteString(string(warehouse.OutcomeSkipped)) + `, CAST(NULL AS STRING), FORMAT(` + format + `, n), CURRENT_TIMESTAMP(), ` +
			quoteString(string(class)) + `, row_hash
FROM ` + table
	}
	// Old rejections go, except each key's latest: it is what makes a rejection known to later runs.
	prune := `r.activation_id = @activation_id AND r.` + at + ` < @rejections_cutoff AND (r.key IS NULL OR EXISTS (
    SELECT 1 FROM ` + rejections + ` AS l
    WHERE l.activation_id = r.activation_id AND l.key = r.key AND l.` + at + ` > r.` + at + `))`
	return createStateSQL(state) + `;

-- State tables of earlier versions lack the identifier a key was last synced with.
ALTER TABLE ` + state + ` ADD COLUMN IF NOT EXISTS ident STRING;

CREATE TEMP TABLE ` + snapshotTable + ` AS
` + snapshotSelect(req, fields) + `;

CREATE TEMP TABLE ` + duplicatesTable + ` AS
SELECT key, COUNT(*) AS n, ANY_VALUE(row_hash) AS row_hash FROM ` + snapshotTable + `
WHERE key IS NOT NULL GROUP BY key HAVING COUNT(*) > 1;

-- An identifier carried by two keys would be sent as two users, the last write winning field
-- by field: every key that shares one is held back, whatever the state held.
CREATE TEMP TABLE ` + sharedTable + ` AS
WITH clean AS (
  SELECT s.key, s.row_hash, ` + nid + ` AS nid FROM ` + snapshotTable + ` AS s
  WHERE s.key IS NOT NULL AND s.ident IS NOT NULL AND ` + nid + ` <> ''
    AND s.key NOT IN (SELECT d.key FROM ` + duplicatesTable + ` AS d)
), shared AS (
  SELECT nid, COUNT(*) AS n FROM clean GROUP BY nid HAVING COUNT(*) > 1
)
SELECT clean.key, clean.row_hash, shared.n FROM clean JOIN shared USING (nid);

-- Each key's latest rejection by an earlier run: it makes a rejection of the same row known.
CREATE TEMP TABLE ` + priorTable + ` AS
SELECT key, ARRAY_AGG(STRUCT(outcome, class, field, reason, row_hash) ORDER BY ` + at + ` DESC LIMIT 1)[OFFSET(0)] AS r
FROM ` + rejections + `
WHERE activation_id = @activation_id AND run_id != @run_id AND key IS NOT NULL
GROUP BY key;

-- A retried Plan of the same run replaces the skipped rows it recorded.
IF EXISTS (SELECT 1 FROM ` + rejections + ` WHERE ` + retried + `) THEN
  DELETE FROM ` + rejections + ` WHERE ` + retried + `;
END IF;
INSERT INTO ` + rejections + ` (activation_id, run_id, key, op, outcome, field, reason, ` + at + `, class, row_hash)
` + skip(duplicatesTable, "@duplicate_format", warehouse.ClassDuplicateKey) + `
UNION ALL
` + skip(sharedTable, "@shared_format", warehouse.ClassSharedIdentifier) + `;

-- Equal row hashes settle most rows at once; only the others parse the old and new
-- field_hashes to list the changed fields. changed_fields is kept for changes only (an add
-- changes every field, a removal none). A row whose hash moved only because a field left the
-- mapping has op 'refresh' and no seq: it is not sent, it refreshes its state row (below).
CREATE TEMP TABLE ` + plannedTable + ` AS
WITH held_out AS (
  SELECT key FROM ` + duplicatesTable + ` UNION ALL SELECT key FROM ` + sharedTable + `
), snap AS (
  SELECT s.* FROM ` + snapshotTable + ` AS s
  WHERE s.key IS NOT NULL AND s.key NOT IN (SELECT h.key FROM held_out AS h)
), st AS (
  SELECT t.* FROM ` + state + ` AS t
  WHERE t.key NOT IN (SELECT h.key FROM held_out AS h)
), joined AS (
  SELECT COALESCE(snap.key, st.key) AS key,
    CASE WHEN snap.key IS NULL THEN 'remove'
         WHEN st.key IS NULL OR ` + full + ` THEN 'add'
         WHEN snap.row_hash = st.row_hash THEN 'same'
         WHEN snap.ident_hash IS DISTINCT FROM st.ident_hash THEN 'ident'
         ELSE 'diff' END AS kind,
    snap.row_hash, snap.field_hashes, snap.ident_hash, snap.ident, st.ident AS old_ident,
    st.field_hashes AS old_hashes` + snapValues + `
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
    row_hash, field_hashes, ident_hash, ident, IF(kind IN ('remove', 'ident'), old_ident, NULL) AS old_ident` + valueList + `
  FROM parsed
)
SELECT * EXCEPT (kind, op),
  IF(kind = 'diff' AND ARRAY_LENGTH(changed_fields) = 0, 'refresh', op) AS op
FROM classified;

-- The planned rows other than refreshes are numbered 1..N in key order within buckets of
-- their key's fingerprint, never with one sort of every row: an analytic function without
-- PARTITION BY runs on a single slot, and tens of millions of rows exceed its resources. Only
-- keys are numbered: each bucket is sorted on its own (in parallel), the buckets' row counts
-- are summed in bucket order (a window over at most ` + fmt.Sprint(seqBuckets) + ` rows) into each bucket's
-- offset, and seq = offset + the row's number in its bucket. Keys are unique here and
-- FARM_FINGERPRINT is stable, so a retried Plan numbers the same rows alike. ABS is taken of
-- the remainder, not of the fingerprint, whose minimum has no absolute value in INT64.
CREATE TEMP TABLE ` + seqTable + ` AS
WITH keyed AS (
  SELECT key, ABS(MOD(FARM_FINGERPRINT(key), ` + fmt.Sprint(seqBuckets) + `)) AS bucket
  FROM ` + plannedTable + ` WHERE op <> 'refresh'
), offsets AS (
  SELECT bucket, SUM(n) OVER (ORDER BY bucket) - n AS base
  FROM (SELECT bucket, COUNT(*) AS n FROM keyed GROUP BY bucket)
)
SELECT keyed.key, offsets.base + ROW_NUMBER() OVER (PARTITION BY keyed.bucket ORDER BY keyed.key) AS seq
FROM keyed JOIN offsets USING (bucket);

-- Each add or change carries its key's latest earlier rejection when it was made with the same
-- row hash (prior_*), and hold when that rejection holds it back. A removal carries the
-- identifier it was last synced with (old_ident), and keep_profile when a current model row
-- carries that identifier (the key changed, the person did not). Clustering by seq makes a
-- chunk's range cheap to read.
CREATE OR REPLACE TABLE ` + plan + `
CLUSTER BY seq
` + expirationOption(expirationSeconds) + `
AS
SELECT q.seq, DIV(q.seq - 1, ` + fmt.Sprint(chunkRows) + `) AS chunk, n.key, n.op, n.changed_fields,
  n.row_hash, n.field_hashes, n.ident_hash, n.ident,
  n.old_ident,
  n.old_ident IS NOT NULL AND ` + normIdent("n.old_ident", lower) + ` IN (
    SELECT ` + normIdent("s.ident", lower) + ` FROM ` + snapshotTable + ` AS s
    WHERE s.key IS NOT NULL AND s.ident IS NOT NULL) AS keep_profile,
  pr.r.outcome AS prior_outcome, pr.r.class AS prior_class, pr.r.field AS prior_field, pr.r.reason AS prior_reason,
  n.op IN ('add', 'change') AND ` + hold + ` AS hold` + planValues + `
FROM ` + plannedTable + ` AS n
LEFT JOIN ` + seqTable + ` AS q ON q.key = n.key
LEFT JOIN ` + priorTable + ` AS pr ON pr.key = n.key AND n.op IN ('add', 'change') AND pr.r.row_hash = n.row_hash;

-- The refreshed rows take their new hashes (and identifier) into the state, so that the next
-- plan settles them on the fast path.
IF EXISTS (SELECT 1 FROM ` + plan + ` WHERE op = 'refresh') THEN
  UPDATE ` + state + ` AS st
  SET row_hash = r.row_hash, field_hashes = r.field_hashes, ident = CAST(r.ident AS STRING)
  FROM (SELECT key, row_hash, field_hashes, ident FROM ` + plan + ` WHERE op = 'refresh') AS r
  WHERE st.key = r.key;
END IF;

-- State rows written before the ident column lack their identifier: the keys whose identifier
-- did not change since get it once. Duplicated keys are left out: UPDATE takes one source row.
IF EXISTS (SELECT 1 FROM ` + state + ` WHERE ident IS NULL AND ident_hash IS DISTINCT FROM ` + quoteString(nullHash) + `) THEN
  UPDATE ` + state + ` AS st SET ident = CAST(s.ident AS STRING)
  FROM (
    SELECT key, ident, ident_hash FROM ` + snapshotTable + `
    WHERE key IS NOT NULL AND ident IS NOT NULL AND key NOT IN (SELECT d.key FROM ` + duplicatesTable + ` AS d)
  ) AS s
  WHERE st.ident IS NULL AND st.key = s.key AND st.ident_hash = s.ident_hash;
END IF;

IF EXISTS (SELECT 1 FROM ` + rejections + ` AS r WHERE ` + prune + `) THEN
  DELETE FROM ` + rejections + ` AS r WHERE ` + prune + `;
END IF;

SELECT s.model_rows, s.null_keys,
  (SELECT IFNULL(SUM(d.n), 0) FROM ` + duplicatesTable + ` AS d) AS duplicate_keys,
  (SELECT COUNT(*) FROM ` + sharedTable + `) AS duplicate_identifiers,
  c.retried, c.known, c.refreshed, c.added, c.changed, c.removed,
  ARRAY(
    SELECT AS STRUCT IFNULL(prior_reason, '') AS reason, COUNT(*) AS n
    FROM ` + plan + ` WHERE hold GROUP BY 1 ORDER BY n DESC, reason LIMIT ` + fmt.Sprint(warehouse.MaxKnownReasons) + `
  ) AS known_reasons,
  ARRAY(
    SELECT AS STRUCT chunk, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
      COUNTIF(op = 'add') AS added, COUNTIF(op = 'change') AS changed, COUNTIF(op = 'remove') AS removed
    FROM ` + plan + ` WHERE chunk IS NOT NULL GROUP BY chunk ORDER BY chunk
  ) AS chunks
FROM (SELECT COUNT(*) AS model_rows, COUNTIF(key IS NULL) AS null_keys FROM ` + snapshotTable + `) AS s,
  (
    SELECT COUNTIF(p.op = 'add' AND pr.key IS NOT NULL) AS retried, COUNTIF(p.hold) AS known,
      COUNTIF(p.op = 'refresh') AS refreshed, COUNTIF(p.op = 'add') AS added,
      COUNTIF(p.op = 'change') AS changed, COUNTIF(p.op = 'remove') AS removed
    FROM ` + plan + ` AS p LEFT JOIN ` + priorTable + ` AS pr ON pr.key = p.key
  ) AS c`
}

// readChunkSQL selects a seq range of the plan (parameters @after and @last), never OFFSET:
// the plan is clustered by seq, so the range reads few blocks. chunkRow decodes its columns.
func readChunkSQL(plan, known string, lowerCase bool, fields []warehouse.Field) string {
	cols := []string{"plan.seq", "plan.key", "plan.op", "plan.changed_fields", "plan.ident", "plan.old_ident",
		"IFNULL(plan.row_hash, '') AS row_hash", "plan.keep_profile", "plan.prior_outcome", "plan.prior_class",
		"plan.prior_field", "plan.prior_reason", "plan.hold"}
	for _, f := range fields {
		cols = append(cols, "plan."+quoteIdent(warehouse.ValueColumn(f.Field)))
	}
	from := plan + " AS plan"
	if known == "" {
		cols = append(cols, "FALSE AS known")
	} else {
		// The known table holds each identifier once (LoadIdentifiers dedups), so the join
		// neither drops nor repeats plan rows. A removal is known by the identifier it was
		// last synced with.
		cols = append(cols, "k.id IS NOT NULL AS known")
		ident := "IF(plan.op = 'remove', plan.old_ident, CAST(plan.ident AS STRING))"
		if lowerCase {
			ident = "LOWER(" + ident + ")"
		}
		from += "\nLEFT JOIN " + known + " AS k ON k.id = " + ident
	}
	return "SELECT " + strings.Join(cols, ", ") + "\nFROM " + from +
		"\nWHERE plan.seq > @after AND plan.seq <= @last\nORDER BY plan.seq"
}

// commitScript merges the finished chunks (@chunks) minus the held rows into the state in one
// MERGE, then counts from the plan, so a repeated commit changes nothing and reports the same
// result. A row is held when the run rejected or skipped its key (a skipped removal is done: the
// profile is not there), or when a known rejection holds it back (warehouse.HeldByPrior: a type
// conflict only while @conflicts, warehouse.ConflictPairs, still has it). Parameters:
// @activation_id, @run_id, @chunks, @conflicts.
func commitScript(plan, state, rejections string) string {
	held := `(plan.key IN (
      SELECT r.key FROM ` + rejections + ` AS r
      WHERE r.activation_id = @activation_id AND r.run_id = @run_id AND r.key IS NOT NULL
        AND NOT COALESCE(r.op IN (` + quoteString(string(warehouse.OpRemove)) + `, ` +
		quoteString(string(warehouse.OpUnsubscribe)) + `) AND r.outcome = ` +
		quoteString(string(warehouse.OutcomeSkipped)) + `, FALSE))
    OR COALESCE(plan.hold AND (plan.prior_class <> ` + quoteString(string(warehouse.ClassType)) + `
      OR CONCAT(plan.prior_field, ` + nul + `, plan.prior_reason) IN UNNEST(@conflicts)), FALSE))`
	return `MERGE ` + state + ` AS state
USING (
  SELECT plan.key, plan.op, plan.row_hash, plan.field_hashes, plan.ident_hash, CAST(plan.ident AS STRING) AS ident
  FROM ` + plan + ` AS plan
  WHERE plan.chunk IN UNNEST(@chunks) AND NOT ` + held + `
) AS src
ON state.key = src.key
WHEN MATCHED AND src.op = 'remove' THEN DELETE
WHEN MATCHED THEN UPDATE SET row_hash = src.row_hash, field_hashes = src.field_hashes,
  ident_hash = src.ident_hash, synced_at = CURRENT_TIMESTAMP(), ident = src.ident
WHEN NOT MATCHED AND src.op <> 'remove' THEN
  INSERT (key, row_hash, field_hashes, ident_hash, synced_at, ident)
  VALUES (src.key, src.row_hash, src.field_hashes, src.ident_hash, CURRENT_TIMESTAMP(), src.ident);

SELECT COUNTIF(NOT held AND op <> 'remove') AS upserted, COUNTIF(NOT held AND op = 'remove') AS deleted,
  COUNTIF(held) AS held
FROM (
  SELECT plan.op, ` + held + ` AS held
  FROM ` + plan + ` AS plan
  WHERE plan.chunk IN UNNEST(@chunks)
)`
}

// insertRejectionsSQL appends a batch (@rows, an array of structs) with DML rather than
// streaming inserts, whose buffer would block the DML of later commits and plans.
func insertRejectionsSQL(rejections string) string {
	return `INSERT INTO ` + rejections + ` (activation_id, run_id, key, op, outcome, field, reason, ` + quoteIdent("at") + `, class, row_hash)
SELECT @activation_id, @run_id, r.key, r.op, r.outcome, r.field, r.reason, CURRENT_TIMESTAMP(), r.class, r.row_hash
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
