package bigquery_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	bq "cloud.google.com/go/bigquery"
	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

// The tests in this file run against real BigQuery, with Application Default Credentials, when
// BIGQUERY_TEST_PROJECT is set. They create datasets named activations_test_<random>_… in
// BIGQUERY_TEST_LOCATION (default US) and delete them at cleanup. They cost a few cents and
// take several minutes: BigQuery scripts take seconds each.

type realEnv struct {
	project, location, suffix string
	client                    *bq.Client
}

func realBigQuery(t *testing.T) *realEnv {
	t.Helper()
	project := os.Getenv("BIGQUERY_TEST_PROJECT")
	if project == "" {
		t.Skip("set BIGQUERY_TEST_PROJECT (with Application Default Credentials holding roles/bigquery.user, " +
			"roles/bigquery.dataEditor and roles/bigquery.readSessionUser on it) to run against real BigQuery; " +
			"BIGQUERY_TEST_LOCATION defaults to US")
	}
	location := os.Getenv("BIGQUERY_TEST_LOCATION")
	if location == "" {
		location = "US"
	}
	client, err := bq.NewClient(context.Background(), project)
	require.NoError(t, err)
	client.Location = location
	t.Cleanup(func() { _ = client.Close() })
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return &realEnv{project: project, location: location, suffix: hex.EncodeToString(b), client: client}
}

// dataset creates a dataset that is deleted with its tables at the end of the test.
func (e *realEnv) dataset(t *testing.T, name string) string {
	t.Helper()
	id := "activations_test_" + e.suffix + "_" + name
	ctx := context.Background()
	require.NoError(t, e.client.Dataset(id).Create(ctx, &bq.DatasetMetadata{Location: e.location,
		DefaultTableExpiration: 24 * time.Hour}))
	t.Cleanup(func() { _ = e.client.Dataset(id).DeleteWithContents(context.WithoutCancel(ctx)) })
	return id
}

// open opens a planner on a new state dataset; storage reads chunks and writes rejections
// through the Storage Read and Write APIs, else through jobs (REST pages and DML).
func (e *realEnv) open(t *testing.T, dataset string, storage bool) *bigquery.Planner {
	t.Helper()
	ctx := context.Background()
	p, err := bigquery.Open(ctx, bigquery.Options{Project: e.project, Dataset: dataset, Location: e.location,
		MaximumBytesBilled: 10 << 30, StorageRead: storage, RejectionsDML: !storage,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = p.Close()
		_ = e.client.Dataset(dataset).DeleteWithContents(context.WithoutCancel(ctx))
	})
	return p
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// modelFixture loads every model into a new table of the model dataset (load jobs are free).
type modelFixture struct {
	env     *realEnv
	dataset string
	prefix  string
	n       int
}

var bqTypes = map[warehousetest.ColumnType]bq.FieldType{
	warehousetest.String: bq.StringFieldType, warehousetest.Int: bq.IntegerFieldType,
	warehousetest.Float: bq.FloatFieldType, warehousetest.Bool: bq.BooleanFieldType,
	warehousetest.Timestamp: bq.TimestampFieldType,
}

func (f *modelFixture) SetModel(t *testing.T, tb warehousetest.Table) warehousetest.Model {
	t.Helper()
	f.n++
	table := fmt.Sprintf("%s_%d", f.prefix, f.n)
	var schema bq.Schema
	for _, c := range tb.Columns {
		typ, ok := bqTypes[c.Type]
		require.True(t, ok, "column type %q", c.Type)
		schema = append(schema, &bq.FieldSchema{Name: c.Name, Type: typ})
	}
	var data bytes.Buffer
	enc := json.NewEncoder(&data)
	for _, r := range tb.Rows {
		row := map[string]any{}
		for i, c := range tb.Columns {
			if v, ok := r[i].(time.Time); ok {
				row[c.Name] = v.UTC().Format(time.RFC3339Nano)
			} else if r[i] != nil {
				row[c.Name] = r[i]
			}
		}
		require.NoError(t, enc.Encode(row))
	}
	src := bq.NewReaderSource(&data)
	src.SourceFormat = bq.JSON
	src.Schema = schema
	loader := f.env.client.Dataset(f.dataset).Table(table).LoaderFrom(src)
	loader.WriteDisposition = bq.WriteTruncate
	ctx := context.Background()
	job, err := loader.Run(ctx)
	require.NoError(t, err)
	status, err := job.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, status.Err())
	return warehousetest.Model{Query: fmt.Sprintf("SELECT * FROM `%s.%s.%s`", f.env.project, f.dataset, table)}
}

func TestRealConformance(t *testing.T) {
	env := realBigQuery(t)
	models := env.dataset(t, "models")
	for _, mode := range []struct {
		name    string
		storage bool
	}{{"rest_dml", false}, {"storage_read_write", true}} {
		t.Run(mode.name, func(t *testing.T) {
			n := 0
			warehousetest.Run(t, func(t *testing.T) (warehouse.Planner, warehousetest.Fixture) {
				n++
				name := fmt.Sprintf("%s_%d", mode.name, n)
				state := "activations_test_" + env.suffix + "_state_" + name
				p := env.open(t, state, mode.storage)
				// The suite prunes rejections with a retention of a nanosecond, right after
				// appending them: this also checks that BigQuery allows DML on rows just appended
				// through the Storage Write API, which Plan otherwise never relies on.
				bigquery.DeleteStreamedRows(p)
				return p, &modelFixture{env: env, dataset: models, prefix: name}
			})
		})
	}
	t.Run("run_log", func(t *testing.T) {
		n := 0
		warehousetest.RunLogSuite(t, func(t *testing.T) warehouse.RunLog {
			n++
			return env.open(t, fmt.Sprintf("activations_test_%s_state_runs_%d", env.suffix, n), false)
		})
	})
}

// TestRealTypes plans a model of every BigQuery type: the values reach the Row as plain Go
// values, Plan reports the types, and the same model plans nothing the second time.
func TestRealTypes(t *testing.T) {
	env := realBigQuery(t)
	p := env.open(t, "activations_test_"+env.suffix+"_types", false)
	ctx := context.Background()
	query := `SELECT 1 AS id, 'a@example.com' AS email, 42 AS i, 1.5 AS f, NUMERIC '12.34' AS n,
		BIGNUMERIC '1.25' AS bn, TRUE AS b, 'text' AS s, b'\x00\x01' AS by, DATE '2024-02-03' AS d,
		DATETIME '2024-02-03 04:05:06' AS dt, TIMESTAMP '2024-02-03 04:05:06+02' AS ts, TIME '15:04:05' AS t,
		[1, 2] AS a, STRUCT(1 AS x, 'y' AS z) AS st, JSON '{"x": [1, true]}' AS j, ST_GEOGPOINT(1, 2) AS g,
		INTERVAL 3 DAY AS iv, RANGE(DATE '2024-01-01', NULL) AS r`
	cols := []string{"i", "f", "n", "bn", "b", "s", "by", "d", "dt", "ts", "t", "a", "st", "j", "g", "iv", "r"}
	req := warehouse.PlanRequest{ActivationID: "types", RunID: "run-1", Query: query, PrimaryKey: "id", Identifier: "email"}
	for _, c := range cols {
		req.Fields = append(req.Fields, warehouse.Field{Column: c, Field: c})
	}
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	kinds := map[string]warehouse.Kind{}
	for _, c := range plan.Columns {
		kinds[c.Field+" "+c.Type] = c.Kind
	}
	require.Equal(t, map[string]warehouse.Kind{
		"i INT64": warehouse.KindInteger, "f FLOAT64": warehouse.KindFloat, "n NUMERIC": warehouse.KindFloat,
		"bn BIGNUMERIC": warehouse.KindFloat, "b BOOL": warehouse.KindBoolean, "s STRING": warehouse.KindString,
		"by BYTES": warehouse.KindString, "d DATE": warehouse.KindTimestamp, "dt DATETIME": warehouse.KindTimestamp,
		"ts TIMESTAMP": warehouse.KindTimestamp, "t TIME": warehouse.KindString, "a ARRAY<INT64>": warehouse.KindArray,
		"st STRUCT<x INT64, z STRING>": warehouse.KindObject, "j JSON": warehouse.KindOther,
		"g GEOGRAPHY": warehouse.KindString, "iv INTERVAL": warehouse.KindString, "r RANGE<DATE>": warehouse.KindObject,
	}, kinds)
	var rows []warehouse.Row
	require.NoError(t, p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "types", Table: plan.Table, Fields: req.Fields,
		Chunk: plan.Chunks[0]}, func(r warehouse.Row) error { rows = append(rows, r); return nil }))
	require.Len(t, rows, 1)
	require.Equal(t, map[string]any{
		"i": int64(42), "f": 1.5, "n": 12.34, "bn": 1.25, "b": true, "s": "text", "by": "AAE=",
		"d": time.Date(2024, 2, 3, 0, 0, 0, 0, time.UTC), "dt": time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC),
		"ts": time.Date(2024, 2, 3, 2, 5, 6, 0, time.UTC), "t": "15:04:05", "a": []any{int64(1), int64(2)},
		"st": map[string]any{"x": int64(1), "z": "y"}, "j": map[string]any{"x": []any{int64(1), true}},
		"g": "POINT(1 2)", "iv": "0-0 3 0:0:0",
		"r": map[string]any{"start": time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), "end": nil},
	}, rows[0].Values.Map())
	_, err = p.Commit(ctx, warehouse.CommitRequest{ActivationID: "types", RunID: "run-1", Table: plan.Table, Chunks: []int{0}})
	require.NoError(t, err)

	req.RunID = "run-2"
	plan, err = p.Plan(ctx, req)
	require.NoError(t, err)
	require.Zero(t, plan.Counts.Planned(), "every type hashes stably")

	res, err := p.DryRun(ctx, query)
	require.NoError(t, err)
	require.Empty(t, res.Unsupported)
	require.Len(t, res.Schema, len(cols)+2)
}

// TestRealKnownIdentifiers loads identifiers and joins them, lower-cased, in ReadChunk.
func TestRealKnownIdentifiers(t *testing.T) {
	env := realBigQuery(t)
	p := env.open(t, "activations_test_"+env.suffix+"_known", false)
	ctx := context.Background()
	req := warehouse.PlanRequest{ActivationID: "known", RunID: "r1", PrimaryKey: "id", Identifier: "email",
		Query: `SELECT * FROM UNNEST([STRUCT(1 AS id, 'A@example.com' AS email, 10 AS n),
			(2, 'b@example.com', 20), (3, 'c@example.com', 30)])`,
		Fields: []warehouse.Field{{Column: "n", Field: "n"}}}
	plan, err := p.Plan(ctx, req)
	require.NoError(t, err)
	known, n, err := p.LoadIdentifiers(ctx, "known", "r1", true, func(add func(string) error) error {
		for _, id := range []string{"a@EXAMPLE.com", "c@example.com", "c@example.com", "zz@example.com", ""} {
			if err := add(id); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, int64(3), n, "deduplicated, empty dropped")
	got := map[string]bool{}
	require.NoError(t, p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "known", Table: plan.Table, Fields: req.Fields,
		Chunk: plan.Chunks[0], KnownTable: known, KnownLowerCase: true}, func(r warehouse.Row) error {
		got[r.Key] = r.Known
		return nil
	}))
	require.Equal(t, map[string]bool{"1": true, "2": false, "3": true}, got)
	require.NoError(t, p.DropPlan(ctx, known))
	require.NoError(t, p.DropPlan(ctx, plan.Table))
}
