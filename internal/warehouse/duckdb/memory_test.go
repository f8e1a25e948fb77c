package duckdb

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

// TestParseBytesReadsDuckDB: every size DuckDB renders is read back within its rounding.
func TestParseBytesReadsDuckDB(t *testing.T) {
	db, err := sql.Open("duckdb", "")
	require.NoError(t, err)
	defer db.Close()
	for _, set := range []string{"96MB", "128MB", "1GB", "123456KiB", "3GiB"} {
		_, err := db.Exec(`SET memory_limit = '` + set + `'`)
		require.NoError(t, err)
		var shown string
		require.NoError(t, db.QueryRow(`SELECT current_setting('memory_limit')`).Scan(&shown))
		want, _ := warehouse.ParseMemorySize(set)
		got, ok := warehouse.ParseMemorySize(shown)
		require.True(t, ok, shown)
		require.InEpsilon(t, float64(want), float64(got), 0.001, "%s shown as %s", set, shown)
	}
}

func TestDeleteMemory(t *testing.T) {
	tests := []struct {
		name       string
		rows, keys int64
		atLeast    int64 // what the measurements needed
		atMost     int64
	}{
		// 200,000 changed keys spread over 10,000,000 rows failed at 96MB, passed at 128MB.
		{"10M rows, 2% changed", 10_000_000, 200_000, 96_000_000, 160 << 20},
		// 80,000 keys over 4,000,000 rows failed at 32MB and passed at 48MB.
		{"4M rows, 2% changed", 4_000_000, 80_000, 32_000_000, 80 << 20},
		// A few keys touch a few vectors whatever the state's size.
		{"10M rows, 10 keys", 10_000_000, 10, deleteMargin, deleteMargin + 1<<20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := deleteMemory(tt.rows, tt.keys)
			require.GreaterOrEqual(t, got, tt.atLeast)
			require.LessOrEqual(t, got, tt.atMost)
		})
	}
}

// TestCommitRaisesMemoryForWideDeletes commits a change of every 50th key of a 2,000,000-row
// state under a memory_limit of 12MB: the DELETE pins 16 KiB per 2,048-row vector of the state
// (15.3 MiB here, more than the limit whatever else runs) until a checkpoint, which DuckDB cannot
// spill. Commit raises the limit to what the DELETE needs; without that (the control) the same
// commit fails in its DELETE with DuckDB's out of memory. (8MB on 1,000,000 rows left too little
// for the commit's first query, now and then.)
func TestCommitRaisesMemoryForWideDeletes(t *testing.T) {
	if testing.Short() {
		t.Skip("plans 2,000,000 rows")
	}
	for _, manage := range []bool{true, false} {
		name := "raised"
		if !manage {
			name = "control, not raised"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			p, err := Open(ctx, Options{Path: filepath.Join(t.TempDir(), "state.duckdb"), Resources: Resources{MemoryLimit: "512MB"}})
			require.NoError(t, err)
			defer p.Close()
			const rows = 2_000_000
			req := warehouse.PlanRequest{ActivationID: "wide", RunID: "run-1", PrimaryKey: "id", Identifier: "email",
				Fields: []warehouse.Field{{Column: "name", Field: "name"}},
				Query:  fmt.Sprintf(`SELECT range AS id, 'u' || range || '@example.com' AS email, 'Name ' || range AS name FROM range(%d)`, rows)}
			commitAll := func(plan warehouse.Plan) (warehouse.CommitResult, error) {
				chunks := make([]int, len(plan.Chunks))
				for i, c := range plan.Chunks {
					chunks[i] = c.Index
				}
				return p.Commit(ctx, warehouse.CommitRequest{ActivationID: req.ActivationID, RunID: req.RunID, Table: plan.Table, Chunks: chunks})
			}
			plan, err := p.Plan(ctx, req)
			require.NoError(t, err)
			_, err = commitAll(plan)
			require.NoError(t, err)
			req.RunID = "run-2"
			req.Query = fmt.Sprintf(`SELECT range AS id, 'u' || range || '@example.com' AS email,
				CASE WHEN range %% 50 = 0 THEN 'Renamed ' ELSE 'Name ' END || range AS name FROM range(%d)`, rows)
			plan, err = p.Plan(ctx, req)
			require.NoError(t, err)
			require.Equal(t, int64(rows/50), plan.Counts.Changed)

			_, err = p.db.ExecContext(ctx, `SET GLOBAL memory_limit = '12MB'`)
			require.NoError(t, err)
			p.manageMemory = manage
			res, err := commitAll(plan)
			if !manage {
				require.ErrorContains(t, err, "delete old rows from state")
				require.ErrorContains(t, err, "Out of Memory")
				return
			}
			require.NoError(t, err)
			require.Equal(t, warehouse.CommitResult{Upserted: rows / 50}, res)
			var limit string
			require.NoError(t, p.db.QueryRowContext(ctx, `SELECT current_setting('memory_limit')`).Scan(&limit))
			got, ok := warehouse.ParseMemorySize(limit)
			require.True(t, ok, limit)
			require.GreaterOrEqual(t, got, deleteMemory(rows, rows/50)-128<<10, limit) // shown to 0.1 MiB
			req.RunID = "run-3"
			plan, err = p.Plan(ctx, req)
			require.NoError(t, err)
			require.Zero(t, plan.Counts.Planned())
		})
	}
}
