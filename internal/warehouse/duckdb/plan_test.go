package duckdb_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

// A state written by earlier versions keeps working without a migration: the hashes keep their
// format. The state rows are written here with the formula those versions used (per field
// md5 of the value as JSON, '∅' for NULL, in a JSON object in field name order; the row hash the md5
// of the identifier's hash, ':' and that object), so a model that did not change plans nothing
// and a change of one field names that field only.
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
	h := func(e string) string { return `coalesce(md5(CAST(to_json(` + e + `) AS VARCHAR)), '∅')` }
	// in field name order
	obj := `CAST(json_object('age', ` + h("age") + `, 'firstName', ` + h("name") + `, 'pro', ` + h("pro") +
		`, 'score', ` + h("score") + `, 'signupDate', ` + h("signup") + `) AS VARCHAR)`
	state := warehouse.StateTable("earlier")
	writeDB(t, path, `CREATE TABLE `+state+` (key VARCHAR NOT NULL, row_hash VARCHAR NOT NULL,
			field_hashes VARCHAR NOT NULL, ident_hash VARCHAR, synced_at TIMESTAMP NOT NULL, ident VARCHAR)`,
		`INSERT INTO `+state+` SELECT CAST(id AS VARCHAR), md5(`+h("email")+` || ':' || `+obj+`), `+obj+`, `+h("email")+`,
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

	// The rows the new version committed have the same hashes as the formula's.
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	var differ int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+state+` AS s JOIN (`+model("'Other '")+`) AS m
		ON s.key = CAST(m.id AS VARCHAR)
		WHERE s.row_hash <> md5(`+h("m.email")+` || ':' || `+obj+`) OR s.field_hashes <> `+obj+`
		   OR s.ident_hash <> `+h("m.email")).Scan(&differ))
	require.Zero(t, differ)
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
