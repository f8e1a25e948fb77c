package bqfake_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
)

// The synthetic plan answers a whole run of the real planner: plan, chunk reads through the
// Storage Read API, commit, top reasons.
func TestSyntheticPlan(t *testing.T) {
	fake := bqfake.New(t)
	addr := fake.StartStorage(t)
	fields := []bqfake.SyntheticField{{Field: "name", Type: "STRING"}, {Field: "score", Type: "INTEGER"},
		{Field: "ltv", Type: "FLOAT"}, {Field: "active", Type: "BOOLEAN"}, {Field: "signedUpAt", Type: "TIMESTAMP"}}
	fake.ServeSyntheticPlan(bqfake.SyntheticPlan{Rows: 2500, Fields: fields, BatchRows: 300})
	ctx := context.Background()
	p, err := bigquery.Open(ctx, bigquery.Options{Project: "bench-proj", Dataset: "state", StorageRead: true,
		ClientOptions: []option.ClientOption{option.WithEndpoint(fake.URL() + "/"), option.WithoutAuthentication()},
		StorageClientOptions: []option.ClientOption{option.WithEndpoint(addr), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}})
	require.NoError(t, err)
	defer p.Close()

	var mapped []warehouse.Field
	for _, f := range fields {
		mapped = append(mapped, warehouse.Field{Column: "c_" + f.Field, Field: f.Field})
	}
	plan, err := p.Plan(ctx, warehouse.PlanRequest{ActivationID: "bench", RunID: "run-1", Query: "SELECT * FROM `bench.users`",
		PrimaryKey: "user_id", Identifier: "email", IdentifierLowerCase: true, Fields: mapped, ChunkRows: 1000})
	require.NoError(t, err)
	require.Equal(t, int64(2500), plan.Counts.ModelRows)
	require.Equal(t, int64(2500), plan.Counts.Added)
	require.Equal(t, []warehouse.Chunk{{Index: 0, FirstSeq: 1, LastSeq: 1000, Added: 1000},
		{Index: 1, FirstSeq: 1001, LastSeq: 2000, Added: 1000}, {Index: 2, FirstSeq: 2001, LastSeq: 2500, Added: 500}}, plan.Chunks)
	plan, err = plan.Sized(1000)
	require.NoError(t, err)
	kinds := map[string]warehouse.Kind{}
	for _, c := range plan.Columns {
		kinds[c.Field] = c.Kind
	}
	require.Equal(t, map[string]warehouse.Kind{"name": warehouse.KindString, "score": warehouse.KindInteger,
		"ltv": warehouse.KindFloat, "active": warehouse.KindBoolean, "signedUpAt": warehouse.KindTimestamp}, kinds)

	// The last chunk, resumed after seq 2100.
	var rows []warehouse.Row
	err = p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "bench", Table: plan.Table, Fields: mapped,
		Chunk: plan.Chunks[2], AfterSeq: 2100}, func(r warehouse.Row) error { rows = append(rows, r); return nil })
	require.NoError(t, err)
	require.Len(t, rows, 400)
	for k, r := range rows {
		i := int64(2101 + k)
		want := map[string]any{}
		for _, f := range fields {
			want[f.Field] = bqfake.SyntheticValue(f, i)
		}
		require.Equal(t, want, r.Values.Map())
		r.Values = warehouse.Values{}
		require.Equal(t, warehouse.Row{Seq: i, Key: bqfake.SyntheticKey(i), Op: warehouse.OpAdd, Identifier: bqfake.SyntheticEmail(i),
			Changed: []string{"active", "ltv", "name", "score", "signedUpAt"}, RowHash: r.RowHash}, r)
		require.Len(t, r.RowHash, 64)
	}
	require.Equal(t, 1, fake.ReadSessions(), "read through the Storage Read API")
	require.Equal(t, int64(400), fake.SyntheticRowsRead())

	res, err := p.Commit(ctx, warehouse.CommitRequest{ActivationID: "bench", RunID: "run-1", Table: plan.Table, Chunks: []int{0, 2}})
	require.NoError(t, err)
	require.Equal(t, warehouse.CommitResult{Upserted: 1500}, res)
	top, err := p.TopReasons(ctx, "bench", "run-1", 10)
	require.NoError(t, err)
	require.Empty(t, top)
	require.NoError(t, p.DropPlan(ctx, plan.Table))
}
