package duckdb_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// BenchmarkReadChunk reads a plan of 200,000 added users (the fields of the worker benchmark:
// string, long, boolean, timestamp; an email identifier) chunk by chunk as SyncChunk does, and
// reports the process's CPU per 1,000,000 rows read.
//
//	go test -run '^$' -bench ReadChunk -benchtime 5x ./internal/warehouse/duckdb/
func BenchmarkReadChunk(b *testing.B) {
	const rows = 200_000
	ctx := context.Background()
	p, err := duckdb.Open(ctx, duckdb.Options{Path: filepath.Join(b.TempDir(), "state.duckdb")})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	req := warehouse.PlanRequest{ActivationID: "bench", RunID: "run-1", PrimaryKey: "user_id", Identifier: "email",
		Fields: []warehouse.Field{{Column: "name", Field: "name"}, {Column: "score", Field: "score"},
			{Column: "active", Field: "active"}, {Column: "signed_up_at", Field: "signedUpAt"}},
		Query: fmt.Sprintf(`SELECT i AS user_id, 'user' || i || '@example.com' AS email, 'Name ' || i AS name,
			i %% 1000 AS score, i %% 3 = 0 AS active, TIMESTAMP '2024-01-01 00:00:00' + to_seconds(i) AS signed_up_at
			FROM range(1, %d) t(i)`, rows+1)}
	plan, err := p.Plan(ctx, req)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0 := cpuSeconds()
	for range b.N {
		n := 0
		for _, c := range plan.Chunks {
			err := p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: req.ActivationID, Table: plan.Table,
				Fields: req.Fields, Chunk: c}, func(r warehouse.Row) error {
				if r.Identifier == nil || r.Values.Len() != 4 || len(r.Changed) != 4 {
					return fmt.Errorf("row %s: %+v", r.Key, r)
				}
				n++
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		if n != rows {
			b.Fatalf("read %d rows, want %d", n, rows)
		}
	}
	b.ReportMetric((cpuSeconds()-cpu0)/float64(b.N)*1e6/rows, "cpu-s/1M")
}
