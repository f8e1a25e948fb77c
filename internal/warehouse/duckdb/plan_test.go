package duckdb_test

import (
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

// Hash format 1 in SQL, as the releases before format 2 computed it, for the states they wrote:
// v1h is a value's hash, v1Obj the field_hashes object of name and expression pairs (in field name
// order), v1Row the row hash of an identifier and such an object.
func v1h(e string) string { return `coalesce(md5(CAST(to_json(` + e + `) AS VARCHAR)), '∅')` }

func v1Obj(pairs ...string) string {
	var args []string
	for i := 0; i+1 < len(pairs); i += 2 {
		args = append(args, "'"+pairs[i]+"'", v1h(pairs[i+1]))
	}
	return `CAST(json_object(` + strings.Join(args, ", ") + `) AS VARCHAR)`
}

func v1Row(ident, obj string) string { return `md5(` + v1h(ident) + ` || ':' || ` + obj + `)` }

// format1State is the DDL of a format-1 state table (key is its PRIMARY KEY with pk, as the
// earliest releases made it; they had no ident column either).
func format1State(table string, pk bool) string {
	if pk {
		return `CREATE TABLE ` + table + ` (key VARCHAR PRIMARY KEY, row_hash VARCHAR NOT NULL,
			field_hashes VARCHAR NOT NULL, ident_hash VARCHAR, synced_at TIMESTAMP NOT NULL)`
	}
	return `CREATE TABLE ` + table + ` (key VARCHAR NOT NULL, row_hash VARCHAR NOT NULL,
			field_hashes VARCHAR NOT NULL, ident_hash VARCHAR, synced_at TIMESTAMP NOT NULL, ident VARCHAR)`
}

// A state written by earlier versions (hash format 1) keeps working: the first plan rewrites it
// in format 2. The state rows are written here with the formula those versions used (per field
// md5 of the value as JSON, '∅' for NULL, in a JSON object in field name order; the row hash the
// md5 of the identifier's hash, ':' and that object), so a model that did not change plans
// nothing and a change of one field names that field only.
func TestStateOfEarlierVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.duckdb")
	model := func(name string) string {
		return fmt.Sprintf(`SELECT range AS id, 'u' || range || '@example.com' AS email,
			CASE WHEN range %% 7 = 0 THEN NULL ELSE %s || range END AS name,
			CAST(range %% 90 AS INTEGER) AS age, range * 1.5 AS score, DATE '2020-01-01' + CAST(range AS INTEGER) AS signup,
			range %% 2 = 0 AS pro FROM range(1000)`, name)
	}
	fields := []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"},
		{Column: "score", Field: "score"}, {Column: "signup", Field: "signupDate"}, {Column: "pro", Field: "pro"}}
	obj := v1Obj("age", "age", "firstName", "name", "pro", "pro", "score", "score", "signupDate", "signup")
	state := warehouse.StateTable("earlier")
	writeDB(t, path, format1State(state, false),
		`INSERT INTO `+state+` SELECT CAST(id AS VARCHAR), `+v1Row("email", obj)+`, `+obj+`, `+v1h("email")+`,
			TIMESTAMP '2026-01-01', email FROM (`+model("'Name '")+`)`)

	p := open(t, duckdb.Options{Path: path})
	req := warehouse.PlanRequest{ActivationID: "earlier", RunID: "run-1", Query: model("'Name '"),
		PrimaryKey: "id", Identifier: "email", Fields: fields}
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 1000, Unchanged: 1000}, plan.Counts)
	require.NoError(t, p.DropPlan(context.Background(), plan.Table))

	req.RunID, req.Query = "run-2", model("'Other '")
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 1000, Changed: 857, Unchanged: 143}, plan.Counts)
	for _, r := range readAll(t, p, req, plan) {
		require.Equal(t, []string{"firstName"}, r.Changed, "key %s", r.Key)
	}
	commitAll(t, p, req, plan)
	require.NoError(t, p.DropPlan(context.Background(), plan.Table))

	// The state is in format 2, with the hashes of the model's values.
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	var differ, rows int
	require.NoError(t, db.QueryRow(`SELECT count(*) FILTER (WHERE s.row_hash <> `+h2Row+` OR s.field_hashes <> `+h2Fields+`
		   OR s.ident_hash <> `+h2("'='", "m.email")+`), count(*)
		FROM `+state+` AS s JOIN (`+model("'Other '")+`) AS m ON s.key = CAST(m.id AS VARCHAR)`).Scan(&differ, &rows))
	require.Equal(t, []int{0, 1000}, []int{differ, rows})
}

// Hash format 2 in SQL, as a test writes it: 64 bits (the last 8 bytes of the md5, little
// endian: DuckDB's md5_number_lower) of a prefix and a value, '∅' for NULL.
func h2(prefix, value string) string {
	return `md5_number_lower(` + prefix + ` || coalesce(CAST(` + value + ` AS VARCHAR), '∅'))`
}

// The format-2 hashes of TestStateOfEarlierVersions' model row m (fields in name order).
var (
	h2Fields = `[` + h2(`'"age":'`, "to_json(m.age)") + `, ` + h2(`'"firstName":'`, "to_json(m.name)") + `, ` +
		h2(`'"pro":'`, "to_json(m.pro)") + `, ` + h2(`'"score":'`, "to_json(m.score)") + `, ` +
		h2(`'"signupDate":'`, "to_json(m.signup)") + `]`
	h2Row = `xor(` + h2("'='", "m.email") + `, list_bit_xor(` + h2Fields + `))`
)

// fieldHash2 is hash format 2 computed in Go: the last 8 bytes, little endian, of the md5 of
// text.
func fieldHash2(text string) uint64 {
	sum := md5.Sum([]byte(text))
	return binary.LittleEndian.Uint64(sum[8:])
}

// TestHashFormat pins hash format 2 to values computed without DuckDB: a DuckDB version that
// computed them otherwise would make every state row look changed.
func TestHashFormat(t *testing.T) {
	db := committedState(t, baseRequest("format", `SELECT * FROM (VALUES (1, 'a@example.com', 'Ann "A"', 31),
		(2, NULL, NULL, NULL)) AS t(id, email, name, age)`))
	rows, err := db.Query(`SELECT key, row_hash, CAST(field_hashes AS VARCHAR), ident_hash FROM state_format ORDER BY key`)
	require.NoError(t, err)
	defer rows.Close()
	type stateRow struct {
		row, ident uint64
		fields     string
	}
	got := map[string]stateRow{}
	for rows.Next() {
		var key string
		var r stateRow
		require.NoError(t, rows.Scan(&key, &r.row, &r.fields, &r.ident))
		got[key] = r
	}
	require.NoError(t, rows.Err())
	want := func(ident string, fields ...string) stateRow {
		r := stateRow{ident: fieldHash2(ident)}
		r.row = r.ident
		var hs []string
		for _, f := range fields {
			h := fieldHash2(f)
			r.row ^= h
			hs = append(hs, fmt.Sprint(h))
		}
		r.fields = "[" + strings.Join(hs, ", ") + "]"
		return r
	}
	require.Equal(t, map[string]stateRow{
		"1": want("=a@example.com", `"age":31`, `"firstName":"Ann \"A\""`),
		"2": want("∅", `"age":∅`, `"firstName":∅`),
	}, got)
}

// The first plan against a format-1 state plans what format 1 planned: only the fields that
// changed (a newly mapped field among them), a change of identifier, a removal with the
// identifier last synced, a refresh of a row that only lost a field, duplicates left alone,
// and a rejection made with a format-1 row hash still holding its row back. The next plan,
// against the migrated and committed state, has nothing left to do.
func TestStateMigrationPlansWhatFormat1Planned(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	require.NoError(t, open(t, duckdb.Options{Path: path}).Close()) // creates the rejections table
	obj := v1Obj("age", "age", "firstName", "name")
	state := warehouse.StateTable("mig")
	old := `SELECT * FROM (VALUES (1, 'a@x.com', 'A', 1), (2, 'b@x.com', 'B', 2), (3, 'c@x.com', 'C', 3),
		(4, 'd@x.com', 'D', 4), (5, 'e@x.com', 'E', 5), (6, 'f@x.com', 'F', 6), (9, 'i@x.com', 'I', 9))
		AS t(id, email, name, age)`
	model := `SELECT * FROM (VALUES (1, 'a@x.com', 'A', 1), (2, 'b@x.com', 'B2', 2), (3, 'c@x.com', 'C3', 33),
		(4, 'd2@x.com', 'D', 4), (6, 'f@x.com', 'F', 6), (6, 'f@x.com', 'F', 6), (7, 'g@x.com', 'G', 7),
		(8, 'h@x.com', 'H', 8), (9, 'i@x.com', 'I', 9), (10, 'j@x.com', 'J', 10), (11, 'k@x.com', 'K', 11))
		AS t(id, email, name, age)`
	// Key 10 was synced before age was mapped; key 11 when city was mapped too.
	onlyName := v1Obj("firstName", "name")
	withCity := v1Obj("age", "age", "city", "'Paris'", "firstName", "name")
	insert := func(obj, from, where string) string {
		return `INSERT INTO ` + state + ` SELECT CAST(id AS VARCHAR), ` + v1Row("email", obj) + `, ` + obj + `, ` +
			v1h("email") + `, TIMESTAMP '2026-01-01', email FROM (` + from + `) WHERE ` + where
	}
	writeDB(t, path, format1State(state, false),
		insert(obj, old, "true"), insert(onlyName, model, "id = 10"), insert(withCity, model, "id = 11"),
		// Key 8 was rejected before sending, for a value that cannot change while the row does not.
		`INSERT INTO rejections (activation_id, run_id, key, op, outcome, field, reason, "at", class, row_hash)
			SELECT 'mig', 'run-0', '8', 'add', 'rejected', 'age', 'not a number', TIMESTAMP '2026-01-01', 'value',
			`+v1Row("email", obj)+` FROM (`+model+`) WHERE id = 8`)

	p := open(t, duckdb.Options{Path: path})
	req := baseRequest("mig", model)
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 11, Added: 2, Changed: 4, Removed: 1, Unchanged: 3, DuplicateKeys: 2,
		Retried: 1, Known: 1, Refreshed: 1}, plan.Counts)
	type planned struct {
		op      warehouse.Op
		changed []string
		ident   any
		prev    any
		hold    bool
	}
	got := map[string]planned{}
	for _, r := range readAll(t, p, req, plan) {
		got[r.Key] = planned{op: r.Op, changed: r.Changed, ident: r.Identifier, prev: r.PreviousIdentifier,
			hold: r.Prior != nil && r.Prior.Hold}
	}
	both := []string{"age", "firstName"}
	require.Equal(t, map[string]planned{
		"2":  {op: warehouse.OpChange, changed: []string{"firstName"}, ident: "b@x.com"},
		"3":  {op: warehouse.OpChange, changed: both, ident: "c@x.com"},
		"4":  {op: warehouse.OpChange, changed: both, ident: "d2@x.com", prev: "d@x.com"},
		"5":  {op: warehouse.OpRemove, ident: "e@x.com"},
		"7":  {op: warehouse.OpAdd, changed: both, ident: "g@x.com"},
		"8":  {op: warehouse.OpAdd, changed: both, ident: "h@x.com", hold: true},
		"10": {op: warehouse.OpChange, changed: []string{"age"}, ident: "j@x.com"},
	}, got)
	commitAll(t, p, req, plan)
	require.NoError(t, p.DropPlan(ctx, plan.Table))

	req.RunID = "run-2"
	plan, err = p.Plan(ctx, req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 11, Added: 1, Unchanged: 8, DuplicateKeys: 2, Retried: 1, Known: 1},
		plan.Counts, "only the held row is planned again")
	require.NoError(t, p.DropPlan(ctx, plan.Table))

	// Key 6 was duplicated when the state was migrated: once the model holds it once, it is sent
	// whole (its format-1 hashes were not compared), and its identifier has not changed.
	req.RunID, req.Query = "run-3", strings.Replace(model, "(6, 'f@x.com', 'F', 6), (6,", "(6,", 1)
	plan, err = p.Plan(ctx, req)
	require.NoError(t, err)
	require.Equal(t, int64(1), plan.Counts.Changed)
	for _, r := range readAll(t, p, req, plan) {
		if r.Key == "6" {
			require.Equal(t, planned{op: warehouse.OpChange, changed: both, ident: "f@x.com"},
				planned{op: r.Op, changed: r.Changed, ident: r.Identifier, prev: r.PreviousIdentifier})
		}
	}
}

// A run planned by a release of hash format 1 finishes on this one: its plan table and the state
// keep format 1 through its reads and commits, and the next plan migrates the state and finds
// every committed row unchanged.
func TestPlanOfFormat1Commits(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	p := open(t, duckdb.Options{Path: path})
	req := baseRequest("midrun", `SELECT range AS id, 'u' || range || '@example.com' AS email, 'N' || range AS name,
		CAST(range AS INTEGER) AS age FROM range(50)`)
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	// The plan table and the state as format 1 wrote them: the same rows, hashes as md5 hex.
	obj := v1Obj("age", warehouse.ValueColumn("age"), "firstName", warehouse.ValueColumn("firstName"))
	state := warehouse.StateTable("midrun")
	writeDB(t, path, `DROP TABLE IF EXISTS `+state, format1State(state, false),
		`ALTER TABLE `+plan.Table+` ALTER field_hashes SET DATA TYPE VARCHAR USING `+obj,
		`ALTER TABLE `+plan.Table+` ALTER ident_hash SET DATA TYPE VARCHAR USING `+v1h("ident"),
		`ALTER TABLE `+plan.Table+` ALTER row_hash SET DATA TYPE VARCHAR USING `+v1Row("ident", obj))

	p = open(t, duckdb.Options{Path: path})
	rows := readAll(t, p, req, plan)
	require.Len(t, rows, 50)
	require.Len(t, rows[0].RowHash, 32, "the plan's format-1 row hash, as recorded with rejections")
	require.Equal(t, warehouse.CommitResult{Upserted: 50}, commitAll(t, p, req, plan))
	require.NoError(t, p.DropPlan(ctx, plan.Table))

	req.RunID = "run-2"
	plan, err = p.Plan(ctx, req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 50, Unchanged: 50}, plan.Counts)
}

// A plan of several row groups, written by two threads, numbers its rows in key order, and
// each row group of the plan table holds a narrow range of seq (which ReadChunk's seq range
// reads through zone maps).
func TestLargePlanIsInKeyOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("plans 300,000 rows")
	}
	path := filepath.Join(t.TempDir(), "state.duckdb")
	p := open(t, duckdb.Options{Path: path, Resources: duckdb.Resources{Threads: 2}})
	req := baseRequest("large", `SELECT range AS id, 'u' || range AS email, 'N' || range AS name, range AS age FROM range(300000)`)
	start := time.Now()
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	t.Logf("planned 300,000 rows in %s", time.Since(start))
	require.Equal(t, int64(300000), plan.Counts.Added)
	_, err = plan.Sized(warehouse.DefaultChunkRows)
	require.NoError(t, err)

	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	var sorted bool
	var n, lo, hi int64
	require.NoError(t, db.QueryRow(`SELECT bool_and(key < next), count(*) + 1 FROM (
		SELECT key, lead(key) OVER (ORDER BY seq) AS next FROM `+plan.Table+`) WHERE next IS NOT NULL`).Scan(&sorted, &n))
	require.True(t, sorted)
	require.Equal(t, int64(300000), n)
	require.NoError(t, db.QueryRow(`SELECT min(seq), max(seq) FROM `+plan.Table).Scan(&lo, &hi))
	require.Equal(t, []int64{1, 300000}, []int64{lo, hi})
	var wide int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM (SELECT rowid // 122880 AS g, max(seq) - min(seq) AS span
		FROM `+plan.Table+` GROUP BY g) WHERE span > 3 * 122880`).Scan(&wide))
	require.Zero(t, wide, "row groups spanning a wide seq range")
}

// The fallback that numbers the plan rows with a window, should row ids not be dense, plans the
// same as the row ids do.
func TestConformanceNumberedWithWindow(t *testing.T) {
	warehousetest.Run(t, func(t *testing.T) (warehouse.Planner, warehousetest.Fixture) {
		p := open(t, duckdb.Options{})
		duckdb.NumberWithWindow(p)
		return p, newParquetFixture(t)
	})
}
