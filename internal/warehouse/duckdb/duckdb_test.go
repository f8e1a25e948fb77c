package duckdb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	duckdbdriver "github.com/duckdb/duckdb-go/v2"
	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

// parquetFixture writes each model as a new Parquet file (through a separate in-memory DuckDB)
// and reads it with a path relative to the model's base folder, as specs do.
type parquetFixture struct {
	dir string
	db  *sql.DB
	n   int
}

func newParquetFixture(t *testing.T) *parquetFixture {
	db, err := sql.Open("duckdb", "")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return &parquetFixture{dir: t.TempDir(), db: db}
}

var duckTypes = map[warehousetest.ColumnType]string{
	warehousetest.String: "VARCHAR", warehousetest.Int: "BIGINT", warehousetest.Float: "DOUBLE",
	warehousetest.Bool: "BOOLEAN", warehousetest.Timestamp: "TIMESTAMP",
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func (f *parquetFixture) SetModel(t *testing.T, tb warehousetest.Table) warehousetest.Model {
	t.Helper()
	f.n++
	var cols, marks []string
	for _, c := range tb.Columns {
		typ, ok := duckTypes[c.Type]
		require.True(t, ok, "column type %q", c.Type)
		cols = append(cols, quote(c.Name)+" "+typ)
		marks = append(marks, "?")
	}
	ctx := context.Background()
	_, err := f.db.ExecContext(ctx, "CREATE OR REPLACE TABLE model ("+strings.Join(cols, ", ")+")")
	require.NoError(t, err)
	for _, r := range tb.Rows {
		_, err := f.db.ExecContext(ctx, "INSERT INTO model VALUES ("+strings.Join(marks, ", ")+")", r...)
		require.NoError(t, err)
	}
	name := fmt.Sprintf("model_%d.parquet", f.n)
	_, err = f.db.ExecContext(ctx, fmt.Sprintf("COPY model TO '%s' (FORMAT parquet)", filepath.Join(f.dir, name)))
	require.NoError(t, err)
	return warehousetest.Model{Query: fmt.Sprintf("SELECT * FROM read_parquet('%s')", name), BaseDir: f.dir}
}

func open(t testing.TB, opts duckdb.Options) *duckdb.Planner {
	t.Helper()
	p, err := duckdb.Open(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		warehousetest.Run(t, func(t *testing.T) (warehouse.Planner, warehousetest.Fixture) {
			return open(t, duckdb.Options{}), newParquetFixture(t)
		})
	})
	t.Run("file", func(t *testing.T) {
		warehousetest.Run(t, func(t *testing.T) (warehouse.Planner, warehousetest.Fixture) {
			return open(t, duckdb.Options{Path: filepath.Join(t.TempDir(), "state", "state.duckdb")}), newParquetFixture(t)
		})
	})
}

func baseRequest(id, query string) warehouse.PlanRequest {
	return warehouse.PlanRequest{
		ActivationID: id, RunID: "run-1", Query: query, PrimaryKey: "id", Identifier: "email",
		Fields: []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}},
	}
}

func readAll(t *testing.T, p warehouse.Planner, req warehouse.PlanRequest, plan warehouse.Plan) []warehouse.Row {
	t.Helper()
	var rows []warehouse.Row
	for _, c := range plan.Chunks {
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: req.ActivationID,
			Table: plan.Table, Fields: req.Fields, Chunk: c, AfterSeq: c.FirstSeq - 1},
			func(r warehouse.Row) error { rows = append(rows, r); return nil })
		require.NoError(t, err)
	}
	return rows
}

func commitAll(t *testing.T, p warehouse.Planner, req warehouse.PlanRequest, plan warehouse.Plan) warehouse.CommitResult {
	t.Helper()
	var chunks []int
	for _, c := range plan.Chunks {
		chunks = append(chunks, c.Index)
	}
	res, err := p.Commit(context.Background(), warehouse.CommitRequest{ActivationID: req.ActivationID,
		RunID: req.RunID, Table: plan.Table, Chunks: chunks})
	require.NoError(t, err)
	return res
}

func TestRelativeReadCSV(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data", "users.csv"),
		[]byte("id,email,name,age\n1,a@example.com,Ann,31\n2,b@example.com,Bob,42\n"), 0o644))
	p := open(t, duckdb.Options{})
	req := baseRequest("csv", "SELECT * FROM read_csv('data/users.csv')")

	tests := []struct {
		name    string
		baseDir string
		wantErr bool
	}{
		{"resolved against the base folder", dir, false},
		{"missing without it", "", true},
		{"missing in another folder", t.TempDir(), true},
		{"folder with a comma", filepath.Join(dir, "a,b"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := req
			r.BaseDir = tc.baseDir
			plan, err := p.Plan(context.Background(), r)
			if tc.wantErr {
				require.ErrorIs(t, err, warehouse.ErrInvalidModel)
				return
			}
			require.NoError(t, err)
			require.Equal(t, int64(2), plan.Counts.Added)
			rows := readAll(t, p, r, plan)
			require.Equal(t, map[string]any{"firstName": "Ann", "age": int64(31)}, rows[0].Values.Map())
		})
	}
}

// writeDB creates a database file with one table, then releases it.
// committedState plans and commits req on a new state file, closes the planner and returns the
// file, opened.
func committedState(t *testing.T, req warehouse.PlanRequest) *sql.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	p := open(t, duckdb.Options{Path: path})
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	commitAll(t, p, req, plan)
	require.NoError(t, p.Close())
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func writeDB(t *testing.T, path string, stmts ...string) {
	t.Helper()
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	for _, s := range stmts {
		_, err := db.Exec(s)
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())
}

func TestSourcePath(t *testing.T) {
	dir := t.TempDir()
	src1, src2 := filepath.Join(dir, "crm.duckdb"), filepath.Join(dir, "shop.duckdb")
	writeDB(t, src1, `CREATE TABLE customers AS SELECT range AS id, 'c' || range || '@example.com' AS email,
		'Name' || range AS name, 30 AS age FROM range(3)`)
	writeDB(t, src2, `CREATE TABLE customers AS SELECT range AS id, 's' || range || '@example.com' AS email,
		'Shop' || range AS name, 40 AS age FROM range(5)`)
	state := filepath.Join(dir, "state.duckdb")

	// Two planners on one state file with different sources, as a worker opens them for two
	// activations: each model reads its own source.
	p1 := open(t, duckdb.Options{Path: state, SourcePath: src1})
	p2 := open(t, duckdb.Options{Path: state, SourcePath: src2})
	tests := []struct {
		p    *duckdb.Planner
		id   string
		want int64
	}{{p1, "crm", 3}, {p2, "shop", 5}, {p1, "crm-again", 3}}
	for _, tc := range tests {
		req := baseRequest(tc.id, "SELECT * FROM customers")
		plan, err := tc.p.Plan(context.Background(), req)
		require.NoError(t, err, tc.id)
		require.Equal(t, tc.want, plan.Counts.Added, tc.id)
		require.Equal(t, warehouse.CommitResult{Upserted: tc.want}, commitAll(t, tc.p, req, plan))
	}

	// The source stays read-only and the state tables live in the state file.
	_, err := p1.Plan(context.Background(), baseRequest("writer", "INSERT INTO customers VALUES (9, 'x', 'y', 1) RETURNING *"))
	require.ErrorIs(t, err, warehouse.ErrInvalidModel)
	require.NoError(t, p1.Close())
	require.NoError(t, p2.Close())
	db, err := sql.Open("duckdb", state)
	require.NoError(t, err)
	defer db.Close()
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM state_crm`).Scan(&n))
	require.Equal(t, 3, n)
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM state_shop`).Scan(&n))
	require.Equal(t, 5, n)
}

func TestReopenKeepsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nested", "dir", "state.duckdb")
	req := baseRequest("reopen", "SELECT range AS id, 'u' || range AS email, 'N' || range AS name, range AS age FROM range(100)")
	p, err := duckdb.Open(context.Background(), duckdb.Options{Path: path})
	require.NoError(t, err)
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	commitAll(t, p, req, plan)
	require.NoError(t, p.RecordRejections(context.Background(), req.ActivationID, req.RunID,
		[]warehouse.Rejection{{Key: "1", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Reason: "r"}}))
	require.NoError(t, p.Close())

	p = open(t, duckdb.Options{Path: path})
	req.RunID = "run-2"
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 100, Unchanged: 100}, plan.Counts)
	top, err := p.TopReasons(context.Background(), req.ActivationID, "run-1", 5)
	require.NoError(t, err)
	require.Equal(t, []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "r", Count: 1}}, top)
}

func TestConcurrentReadChunk(t *testing.T) {
	p := open(t, duckdb.Options{Path: filepath.Join(t.TempDir(), "state.duckdb")})
	const rows = 20000
	ctx := context.Background()

	// Several activations plan at once, then every chunk of one plan is read concurrently.
	var wg sync.WaitGroup
	plans := make([]warehouse.Plan, 4)
	reqs := make([]warehouse.PlanRequest, 4)
	errs := make([]error, 4)
	for i := range plans {
		reqs[i] = baseRequest(fmt.Sprintf("concurrent-%d", i), fmt.Sprintf(
			"SELECT range AS id, 'u' || range AS email, 'N' || range AS name, range %% 90 AS age FROM range(%d)", rows))
		reqs[i].ChunkRows = 1000
		wg.Go(func() { plans[i], errs[i] = p.Plan(ctx, reqs[i]) })
	}
	wg.Wait()
	for i := range plans {
		require.NoError(t, errs[i])
		require.Equal(t, int64(rows), plans[i].Counts.Added)
		require.Len(t, plans[i].Chunks, rows/1000)
	}

	plan, req := plans[0], reqs[0]
	seen := make([][]int64, len(plan.Chunks))
	readErrs := make([]error, len(plan.Chunks))
	for i, c := range plan.Chunks {
		wg.Go(func() {
			readErrs[i] = p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: req.ActivationID, Table: plan.Table,
				Fields: req.Fields, Chunk: c}, func(r warehouse.Row) error {
				seen[i] = append(seen[i], r.Seq)
				if len(seen[i])%250 == 0 { // rejections are recorded while other chunks read
					return p.RecordRejections(ctx, req.ActivationID, req.RunID,
						[]warehouse.Rejection{{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeRejected, Reason: "sampled"}})
				}
				return nil
			})
		})
	}
	wg.Wait()
	var all []int64
	for i := range seen {
		require.NoError(t, readErrs[i])
		all = append(all, seen[i]...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	require.Len(t, all, rows)
	for i, s := range all {
		require.Equal(t, int64(i+1), s)
	}
	res := commitAll(t, p, req, plan)
	require.Equal(t, warehouse.CommitResult{Upserted: rows - rows/250, Held: rows / 250}, res)
}

// TestManyActivationsPlanAndCommitAtOnce: eight activations of one state database plan and
// commit at the same time under the default memory limit. Each plan writes a table of every
// row and takes what the limit allows; running together they failed with DuckDB's "could not
// allocate block" (four plans of 20,000 rows under 96MB), so they take turns (Planner.writers).
func TestManyActivationsPlanAndCommitAtOnce(t *testing.T) {
	p := open(t, duckdb.Options{Path: filepath.Join(t.TempDir(), "state.duckdb")})
	const n, rows = 8, 50000
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			req := baseRequest(fmt.Sprintf("together-%d", i), fmt.Sprintf(
				"SELECT range AS id, 'u' || range AS email, 'N' || range AS name, range %% 90 AS age FROM range(%d)", rows))
			plan, err := p.Plan(context.Background(), req)
			if err != nil {
				errs[i] = err
				return
			}
			chunks := make([]int, len(plan.Chunks))
			for j, c := range plan.Chunks {
				chunks[j] = c.Index
			}
			res, err := p.Commit(context.Background(), warehouse.CommitRequest{ActivationID: req.ActivationID,
				RunID: req.RunID, Table: plan.Table, Chunks: chunks})
			if err == nil && res.Upserted != rows {
				err = fmt.Errorf("%s committed %d rows, want %d", req.ActivationID, res.Upserted, rows)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "activation %d", i)
	}
}

func TestDriverTypesPassThrough(t *testing.T) {
	p := open(t, duckdb.Options{})
	query := `SELECT 1 AS id, 'a@example.com' AS email,
		CAST(7 AS INTEGER) AS i, CAST(8 AS BIGINT) AS b, CAST(1.5 AS DOUBLE) AS d, CAST(12.34 AS DECIMAL(10,2)) AS dec,
		true AS bo, 'text' AS s, DATE '2024-02-03' AS da, TIMESTAMP '2024-02-03 04:05:06' AS ts,
		TIMESTAMPTZ '2024-02-03 04:05:06+02' AS tz, [1, 2] AS li, {'k': 'v', 'n': 1} AS st,
		CAST('{"x": [1, true]}' AS JSON) AS js`
	cols := []string{"i", "b", "d", "dec", "bo", "s", "da", "ts", "tz", "li", "st", "js"}
	req := baseRequest("types", query)
	req.Fields = nil
	for _, c := range cols {
		req.Fields = append(req.Fields, warehouse.Field{Column: c, Field: c})
	}
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	rows := readAll(t, p, req, plan)
	require.Len(t, rows, 1)
	v := rows[0].Values.Map()
	require.Equal(t, int32(7), v["i"])
	require.Equal(t, int64(8), v["b"])
	require.Equal(t, 1.5, v["d"])
	require.IsType(t, duckdbdriver.Decimal{}, v["dec"])
	require.Equal(t, 12.34, v["dec"].(duckdbdriver.Decimal).Float64())
	require.Equal(t, true, v["bo"])
	require.Equal(t, "text", v["s"])
	require.Equal(t, time.Date(2024, 2, 3, 0, 0, 0, 0, time.UTC), v["da"])
	require.Equal(t, time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC), v["ts"])
	require.True(t, time.Date(2024, 2, 3, 2, 5, 6, 0, time.UTC).Equal(v["tz"].(time.Time)))
	require.Equal(t, []any{int32(1), int32(2)}, v["li"])
	require.Equal(t, map[string]any{"k": "v", "n": int32(1)}, v["st"])
	require.Equal(t, map[string]any{"x": []any{float64(1), true}}, v["js"])
	commitAll(t, p, req, plan)

	// Every type hashes stably: the same model plans nothing.
	req.RunID = "run-2"
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Zero(t, plan.Counts.Planned())
}

func TestIdentifierOnly(t *testing.T) {
	p := open(t, duckdb.Options{})
	req := baseRequest("no-fields", "SELECT 1 AS id, 'a@example.com' AS email")
	req.Fields = nil
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	rows := readAll(t, p, req, plan)
	require.Len(t, rows, 1)
	require.Equal(t, "a@example.com", rows[0].Identifier)
	require.Zero(t, rows[0].Values.Len())
	commitAll(t, p, req, plan)

	// With no field to compare, a new identifier is still another profile to write.
	req.RunID, req.Query = "run-2", "SELECT 1 AS id, 'b@example.com' AS email"
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 1, Changed: 1}, plan.Counts)
}

func TestAwkwardNames(t *testing.T) {
	p := open(t, duckdb.Options{})
	// Column and field names with quotes, JSON pointer characters and field names that differ
	// only in case (DuckDB matches identifiers case-insensitively).
	col1, col2 := `we"ird col`, `it's; DROP TABLE x --`
	query := func(v string) string {
		return fmt.Sprintf(`SELECT 1 AS "k""ey", 'x' AS "E-mail", '%s' AS %s, 2 AS %s, 3 AS "Amount", 4 AS "total"`,
			v, quote(col1), quote(col2))
	}
	req := warehouse.PlanRequest{ActivationID: "names", RunID: "run-1", Query: query("a"), PrimaryKey: `k"ey`,
		Identifier: "E-mail", Fields: []warehouse.Field{
			{Column: col1, Field: `a/b~c"d'e`}, {Column: col2, Field: "ünï cödé"},
			{Column: "Amount", Field: "Amount"}, {Column: "total", Field: "amount"},
		}}
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	rows := readAll(t, p, req, plan)
	require.Equal(t, map[string]any{`a/b~c"d'e`: "a", "ünï cödé": int32(2), "Amount": int32(3), "amount": int32(4)}, rows[0].Values.Map())
	commitAll(t, p, req, plan)

	req.RunID, req.Query = "run-2", query("b")
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	rows = readAll(t, p, req, plan)
	require.Len(t, rows, 1)
	require.Equal(t, []string{`a/b~c"d'e`}, rows[0].Changed)
}

func TestModelErrorsWithholdValues(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.csv"),
		[]byte("id,email,name,age\n1,a@example.com,Ann,31\n2,b@example.com,top-secret-value,not-a-number,extra\n"), 0o644))
	p := open(t, duckdb.Options{})
	tests := []struct {
		name, query string
	}{
		{"cast of a row value", `SELECT CAST(s AS INTEGER) AS id, s AS email, s AS name, 1 AS age
			FROM (SELECT 'top-secret-value' || range AS s FROM range(3))`},
		{"malformed CSV row", `SELECT * FROM read_csv('bad.csv', columns = {'id': 'INTEGER', 'email': 'VARCHAR', 'name': 'VARCHAR', 'age': 'INTEGER'})`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := baseRequest("secrets", tc.query)
			req.BaseDir = dir
			_, err := p.Plan(context.Background(), req)
			require.ErrorIs(t, err, warehouse.ErrInvalidModel)
			require.NotContains(t, err.Error(), "top-secret-value")
			require.Contains(t, err.Error(), "secrets")
		})
	}
}

func TestModelQueryForms(t *testing.T) {
	p := open(t, duckdb.Options{})
	tests := []struct{ name, query string }{
		{"trailing semicolon", "SELECT 1 AS id, 'e' AS email, 'n' AS name, 2 AS age;\n"},
		{"trailing comment", "SELECT 1 AS id, 'e' AS email, 'n' AS name, 2 AS age -- the model"},
		{"CTE", "WITH u AS (SELECT 1 AS id) SELECT id, 'e' AS email, 'n' AS name, 2 AS age FROM u"},
		{"FROM first", "FROM (SELECT 1 AS id, 'e' AS email, 'n' AS name, 2 AS age)"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := p.Plan(context.Background(), baseRequest(fmt.Sprintf("forms-%d", i), tc.query))
			require.NoError(t, err)
			require.Equal(t, int64(1), plan.Counts.Added)
		})
	}
}

func TestCancelledPlanIsNotInvalidModel(t *testing.T) {
	p := open(t, duckdb.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req := baseRequest("cancel", `SELECT a.range AS id, 'e' AS email, md5(a.range::VARCHAR || b.range) AS name, 1 AS age
		FROM range(100000) a, range(100000) b`)
	start := time.Now()
	_, err := p.Plan(ctx, req)
	require.Error(t, err)
	require.NotErrorIs(t, err, warehouse.ErrInvalidModel)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	require.Less(t, time.Since(start), 20*time.Second)

	// The planner is still usable.
	req.Query = "SELECT 1 AS id, 'e' AS email, 'n' AS name, 2 AS age"
	_, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
}

func TestRejectsForeignNames(t *testing.T) {
	p := open(t, duckdb.Options{})
	ctx := context.Background()
	req := baseRequest("owner", "SELECT 1 AS id, 'e' AS email, 'n' AS name, 2 AS age")
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	require.Equal(t, warehouse.PlanTable("owner", "run-1"), plan.Table)

	tests := []struct {
		name string
		err  error
	}{
		{"bad activation id", func() error { r := req; r.ActivationID = "Bad_ID"; _, err := p.Plan(ctx, r); return err }()},
		{"plan of another activation", p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "other", Table: plan.Table,
			Fields: req.Fields, Chunk: plan.Chunks[0]}, func(warehouse.Row) error { return nil })},
		{"commit into another activation", func() error {
			_, err := p.Commit(ctx, warehouse.CommitRequest{ActivationID: "other", RunID: "run-1", Table: plan.Table, Chunks: []int{0}})
			return err
		}()},
		{"drop a non-plan table", p.DropPlan(ctx, "rejections")},
		{"drop an injected name", p.DropPlan(ctx, `plan_x_000000000000"; DROP TABLE rejections; --`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { require.Error(t, tc.err) })
	}
	_, err = p.TopReasons(ctx, "owner", "run-1", 1)
	require.NoError(t, err, "the rejections table survived")
}

func TestPlanReportsColumnTypesAndKnownIdentifiers(t *testing.T) {
	ctx := context.Background()
	p, err := duckdb.Open(ctx, duckdb.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	req := warehouse.PlanRequest{
		ActivationID: "known", RunID: "r1", PrimaryKey: "id", Identifier: "email",
		Query: `SELECT * FROM (VALUES (1, 'A@example.com', 10, 1.5, true, TIMESTAMP '2023-01-01 00:00:00'),
			(2, 'b@example.com', 20, 2.5, false, NULL), (3, 'c@example.com', 30, 3.5, NULL, NULL)) t(id, email, n, x, flag, ts)`,
		Fields: []warehouse.Field{{Column: "n", Field: "n"}, {Column: "x", Field: "x"}, {Column: "flag", Field: "flag"}, {Column: "ts", Field: "ts"}},
	}
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	types := map[string]string{}
	for _, c := range plan.Columns {
		types[c.Field] = c.Type
	}
	require.Equal(t, map[string]string{"n": "INTEGER", "x": "DECIMAL(2,1)", "flag": "BOOLEAN", "ts": "TIMESTAMP"}, types)

	known, n, err := p.LoadIdentifiers(ctx, "known", "r1", true, func(add func(string) error) error {
		for _, id := range []string{"a@EXAMPLE.com", "c@example.com", "c@example.com", "zz@example.com"} {
			if err := add(id); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, int64(3), n, "deduplicated")
	got := map[string]bool{}
	require.NoError(t, p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "known", Table: plan.Table, Fields: req.Fields,
		Chunk: plan.Chunks[0], KnownTable: known, KnownLowerCase: true}, func(r warehouse.Row) error {
		got[r.Key] = r.Known
		return nil
	}))
	require.Equal(t, map[string]bool{"1": true, "2": false, "3": true}, got, "every plan row once, emails compared case-insensitively")
	require.NoError(t, p.DropPlan(ctx, known))
}

// A UUID identifier reaches the sender as its canonical text (it scans as 16 raw bytes), the
// same text the state keeps for removals.
func TestUUIDIdentifierIsText(t *testing.T) {
	p := open(t, duckdb.Options{})
	req := baseRequest("uuid-ident", `SELECT 1 AS id, '0189d5b6-3f7a-7c3e-9a6b-1234567890ab'::UUID AS email, 'A' AS name, 2 AS age`)
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	rows := readAll(t, p, req, plan)
	require.Len(t, rows, 1)
	require.Equal(t, "0189d5b6-3f7a-7c3e-9a6b-1234567890ab", rows[0].Identifier)
	commitAll(t, p, req, plan)

	req.RunID, req.Query = "run-2", `SELECT 2 AS id, 'x@example.com' AS email, 'A' AS name, 2 AS age`
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	got := map[string]any{}
	for _, r := range readAll(t, p, req, plan) {
		got[r.Key] = r.Identifier
	}
	require.Equal(t, "0189d5b6-3f7a-7c3e-9a6b-1234567890ab", got["1"], "the removal names the same profile")
}

// TestFirstPlanHashesLikeLaterPlans: a first plan and a full resync compute row hashes in the
// plan table, not in the snapshot; the hashes they commit, and those their skipped duplicate
// keys and shared identifiers are recorded with, are the ones a plan against a state with rows
// computes, so the next plan finds every row unchanged and prior rejections still match.
func TestFirstPlanHashesLikeLaterPlans(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	p := open(t, duckdb.Options{Path: path})
	req := baseRequest("hashes", `SELECT * FROM (VALUES
		(1, 'a@example.com', 'Ann', 31), (2, 'b@example.com', 'Bob', 42), (2, 'b2@example.com', 'Bob', 43),
		(3, 'shared@example.com', 'Cy', 50), (4, 'SHARED@example.com', 'Di', NULL), (5, NULL, NULL, 7),
		(6, 'f@example.com', 'Fé "x"', 0)) AS t(id, email, name, age)`)
	req.IdentifierLowerCase = true
	for i, tc := range []struct {
		name       string
		fullResync bool
		want       warehouse.Counts
	}{
		{"first plan", false, warehouse.Counts{ModelRows: 7, Added: 3, DuplicateKeys: 2, DuplicateIdentifiers: 2}},
		{"against the state", false, warehouse.Counts{ModelRows: 7, Unchanged: 3, DuplicateKeys: 2, DuplicateIdentifiers: 2}},
		{"full resync", true, warehouse.Counts{ModelRows: 7, Added: 3, DuplicateKeys: 2, DuplicateIdentifiers: 2}},
		{"against the resynced state", false, warehouse.Counts{ModelRows: 7, Unchanged: 3, DuplicateKeys: 2, DuplicateIdentifiers: 2}},
	} {
		req.RunID, req.FullResync = fmt.Sprintf("run-%d", i+1), tc.fullResync
		plan, err := p.Plan(ctx, req)
		require.NoError(t, err, tc.name)
		got := plan.Counts
		got.Retried, got.Known = 0, 0
		require.Equal(t, tc.want, got, tc.name)
		commitAll(t, p, req, plan)
	}
	require.NoError(t, p.Close())

	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	rows, err := db.Query(`SELECT key || ' ' || class, list(DISTINCT row_hash), count(DISTINCT run_id)
		FROM rejections WHERE activation_id = 'hashes' GROUP BY 1 ORDER BY 1`)
	require.NoError(t, err)
	defer rows.Close()
	var keys []string
	for rows.Next() {
		var key string
		var hashes []any
		var runs int
		require.NoError(t, rows.Scan(&key, &hashes, &runs))
		keys = append(keys, key)
		require.Equal(t, 4, runs, key)
		require.Len(t, hashes, 1, "%s: one row hash in every run, whichever way it was computed", key)
		_, err := strconv.ParseUint(hashes[0].(string), 10, 64)
		require.NoError(t, err, "%s: a row hash of format 2", key)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"2 duplicate-key", "3 shared-identifier", "4 shared-identifier"}, keys)
}

// TestStateColumnsCompression: a state's strings are stored with FSST, the method its DDL names
// (naming it spares DuckDB the analysis of the others, which make bench-planner measures; DuckDB
// picks FSST for them anyway). The hashes are numbers since hash format 2.
func TestStateColumnsCompression(t *testing.T) {
	db := committedState(t, baseRequest("storage",
		"SELECT range AS id, 'u' || range || '@example.com' AS email, 'N' || range AS name, range AS age FROM range(200000)"))
	rows, err := db.Query(`SELECT column_name, string_agg(DISTINCT compression, ',' ORDER BY compression)
		FROM pragma_storage_info('state_storage') WHERE segment_type = 'VARCHAR' GROUP BY column_name`)
	require.NoError(t, err)
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var col, comp string
		require.NoError(t, rows.Scan(&col, &comp))
		got[col] = comp
	}
	require.NoError(t, rows.Err())
	require.Equal(t, map[string]string{"key": "FSST", "ident": "FSST"}, got)
}

// TestReadChunkLead: with a lead, a chunk's first rows are handed over before the rest is read
// (the run's first request leaves while the rest of its chunk is read), and the chunk is read
// exactly as without: every row once, in seq order. The rows past the lead are deleted when the
// first row arrives: a reader that read them already (the whole chunk at once) still hands
// them over.
func TestReadChunkLead(t *testing.T) {
	const rows = 3000
	tests := []struct {
		name            string
		lead            int
		after           int64 // the resume cursor: rows up to it were sent
		want, wantCut   int   // rows handed over; rows handed over when the rest is deleted at the first row
		wantFirst, last int64 // first and last seq handed over (without the cut)
	}{
		{name: "no lead", lead: 0, want: rows, wantCut: rows, wantFirst: 1, last: rows},
		{name: "lead", lead: 500, want: rows, wantCut: 500, wantFirst: 1, last: rows},
		{name: "lead of a resumed chunk", lead: 500, after: 1200, want: rows - 1200, wantCut: 500, wantFirst: 1201, last: rows},
		{name: "lead past the chunk's end", lead: 5000, want: rows, wantCut: rows, wantFirst: 1, last: rows},
		{name: "lead of exactly what is left", lead: 1000, after: 2000, want: 1000, wantCut: 1000, wantFirst: 2001, last: rows},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			p := open(t, duckdb.Options{})
			req := baseRequest("lead", fmt.Sprintf(
				"SELECT range AS id, 'u' || range || '@example.com' AS email, 'N' || range AS name, range %% 90 AS age FROM range(%d)", rows))
			plan, err := p.Plan(ctx, req)
			require.NoError(t, err)
			require.Len(t, plan.Chunks, 1)
			chunk := plan.Chunks[0]
			read := func(cut bool) []int64 {
				var seqs []int64
				err := p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: req.ActivationID, Table: plan.Table,
					Fields: req.Fields, Chunk: chunk, AfterSeq: tt.after, Lead: tt.lead}, func(r warehouse.Row) error {
					if len(seqs) == 0 && cut {
						if err := duckdb.DeletePlanRowsAfter(ctx, p, plan.Table, r.Seq+int64(tt.lead)-1); err != nil {
							return err
						}
					}
					name, _ := r.Values.Get("firstName")
					require.NotEmpty(t, name, "row %d", r.Seq)
					seqs = append(seqs, r.Seq)
					return nil
				})
				require.NoError(t, err)
				return seqs
			}
			seqs := read(false)
			require.Equal(t, tt.want, len(seqs))
			require.Equal(t, tt.wantFirst, seqs[0])
			require.Equal(t, tt.last, seqs[len(seqs)-1])
			require.True(t, slices.IsSorted(seqs), "in seq order")
			require.Equal(t, tt.wantCut, len(read(true)), "rows handed over when those past the lead are deleted at the first row")
		})
	}
}
