package duckdb_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// BenchmarkPlan1M plans 1,000,000 generated rows into an empty state (all adds), commits them,
// then plans a run where 2% of the rows changed one field, reads those rows back and commits.
// Run it with: go test -run '^$' -bench Plan1M -benchtime 1x ./internal/warehouse/duckdb/
func BenchmarkPlan1M(b *testing.B) {
	const rows = 1_000_000
	model := func(changeEvery int) string {
		name := "'Name' || range"
		if changeEvery > 0 {
			name = fmt.Sprintf("CASE WHEN range %% %d = 0 THEN 'Renamed' || range ELSE 'Name' || range END", changeEvery)
		}
		return fmt.Sprintf(`SELECT range AS id, 'user' || range || '@example.com' AS email, %s AS name,
			CAST(range %% 90 AS INTEGER) AS age, CASE WHEN range %% 3 = 0 THEN 'pro' ELSE 'free' END AS plan,
			range * 1.5 AS score, DATE '2020-01-01' + CAST(range %% 1000 AS INTEGER) AS signup
			FROM range(%d)`, name, rows)
	}
	fields := []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"},
		{Column: "plan", Field: "plan"}, {Column: "score", Field: "score"}, {Column: "signup", Field: "signupDate"}}
	ctx := context.Background()
	var first, commit, second, read time.Duration
	for i := 0; i < b.N; i++ {
		p, err := duckdb.Open(ctx, duckdb.Options{Path: filepath.Join(b.TempDir(), "state.duckdb")})
		require.NoError(b, err)
		req := warehouse.PlanRequest{ActivationID: "bench", RunID: "run-1", Query: model(0), PrimaryKey: "id",
			Identifier: "email", Fields: fields}

		start := time.Now()
		plan, err := p.Plan(ctx, req)
		require.NoError(b, err)
		first += time.Since(start)
		require.Equal(b, int64(rows), plan.Counts.Added)

		start = time.Now()
		commitPlan(b, p, req, plan)
		commit += time.Since(start)
		require.NoError(b, p.DropPlan(ctx, plan.Table))

		req.RunID, req.Query = "run-2", model(50)
		start = time.Now()
		plan, err = p.Plan(ctx, req)
		require.NoError(b, err)
		second += time.Since(start)
		require.Equal(b, warehouse.Counts{ModelRows: rows, Changed: rows / 50, Unchanged: rows - rows/50}, plan.Counts)

		start = time.Now()
		n := 0
		for _, c := range plan.Chunks {
			require.NoError(b, p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: req.ActivationID,
				Table: plan.Table, Fields: fields, Chunk: c}, func(warehouse.Row) error { n++; return nil }))
		}
		read += time.Since(start)
		require.Equal(b, rows/50, n)
		commitPlan(b, p, req, plan)
		require.NoError(b, p.Close())
	}
	perOp := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	b.ReportMetric(perOp(first), "first-plan-ms")
	b.ReportMetric(float64(rows)*float64(b.N)/first.Seconds(), "first-plan-rows/s")
	b.ReportMetric(perOp(commit), "commit-1M-ms")
	b.ReportMetric(perOp(second), "change-plan-ms")
	b.ReportMetric(float64(rows)*float64(b.N)/second.Seconds(), "change-plan-rows/s")
	b.ReportMetric(perOp(read), "read-20k-ms")
}

func commitPlan(b *testing.B, p *duckdb.Planner, req warehouse.PlanRequest, plan warehouse.Plan) {
	chunks := make([]int, len(plan.Chunks))
	for i, c := range plan.Chunks {
		chunks[i] = c.Index
	}
	_, err := p.Commit(context.Background(), warehouse.CommitRequest{ActivationID: req.ActivationID,
		RunID: req.RunID, Table: plan.Table, Chunks: chunks})
	require.NoError(b, err)
}
