package bigquery_test

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

// runsSchema is the runs table's schema as bqfake holds it after Open.
func runsSchema(t *testing.T, fake *bqfake.Server) *bq.TableSchema {
	t.Helper()
	tbl := fake.Table(dataset + "." + bigquery.RunsTable)
	require.NotNil(t, tbl, "Open creates the runs table")
	return tbl.Schema
}

func TestOpenCreatesRunsTable(t *testing.T) {
	fake := bqfake.New(t)
	open(t, fake)
	tbl := fake.Table(dataset + ".runs")
	require.NotNil(t, tbl)
	require.Equal(t, "at", tbl.TimePartitioning.Field)
	require.Equal(t, "DAY", tbl.TimePartitioning.Type)
	require.Equal(t, []string{"activation_id"}, tbl.Clustering.Fields)
	cols := warehouse.RunColumns()
	require.Len(t, tbl.Schema.Fields, len(cols))
	types := map[warehouse.RunColumnType]string{warehouse.RunString: "STRING", warehouse.RunTimestamp: "TIMESTAMP",
		warehouse.RunInt: "INTEGER", warehouse.RunFloat: "FLOAT", warehouse.RunStrings: "STRING"}
	for i, c := range cols {
		f := tbl.Schema.Fields[i]
		require.Equal(t, c.Name, f.Name)
		require.Equal(t, types[c.Type], f.Type, c.Name)
		mode := "" // NULLABLE: the client leaves it out
		if c.Required {
			mode = "REQUIRED"
		}
		if c.Type == warehouse.RunStrings {
			mode = "REPEATED"
		}
		require.Equal(t, mode, f.Mode, c.Name)
	}
	require.Len(t, fake.Jobs(), 1, "created through the API: no job")
	open(t, fake) // an existing table is kept
}

func pauseForTest() warehouse.RunRecord {
	return warehouse.RunRecord{ActivationID: "crm-users", RunID: "run-1", WorkflowID: "activation-crm-users-ui-x",
		Event: warehouse.RunEventPaused, At: time.Date(2025, 3, 14, 9, 26, 53, 589793238, time.UTC),
		Trigger: warehouse.TriggerUI, StartedAt: time.Date(2025, 3, 14, 9, 20, 0, 0, time.UTC), State: warehouse.RunStatePaused,
		ModelRows: 1000, Planned: warehouse.OpCounts{Added: 10, Changed: 20, Removed: 30},
		Rejected: warehouse.OpCounts{Added: 7}, PauseCauses: []string{"transient", "rejections"},
		PauseReason: "7 of 10 attempted rows were rejected", Requests: 3, RateLimited: 1, PlanSeconds: 1.5}
}

func TestRecordRun(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	ctx := context.Background()
	rec := pauseForTest()
	require.NoError(t, p.RecordRun(ctx, rec))
	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 1, "one MERGE job")
	j := jobs[0]
	require.True(t, strings.HasPrefix(j.SQL, "MERGE `test-proj`.`activations`.`runs` AS runs"), j.SQL)
	require.Contains(t, j.SQL, "WHEN NOT MATCHED THEN")
	require.NotContains(t, j.SQL, "WHEN MATCHED", "an insert only: the first write wins")
	require.Equal(t, map[string]string{"step": "record-run", "activation_id": "crm-users", "run_id": "run-1"}, j.Labels)
	require.Equal(t, "EU", j.Location)
	require.Equal(t, maxBill, j.MaxBytesBilled)
	for _, value := range []string{"crm-users", "run-1", "activation-crm-users-ui-x", "7 of 10", "transient"} {
		require.NotContains(t, j.SQL, value, "values travel as parameters")
	}
	params := map[string]*bq.QueryParameter{}
	for _, prm := range j.Params {
		params[prm.Name] = prm
	}
	require.Len(t, params, len(warehouse.RunColumns()))
	for name, want := range map[string]string{"activation_id": "crm-users", "run_id": "run-1", "event": "paused",
		"trigger": "ui", "state": "Paused", "model_rows": "1000", "planned_removed": "30", "rejected_added": "7",
		"requests": "3", "rate_limited": "1", "plan_seconds": "1.5", "bytes_billed": "0",
		"at": "2025-03-14 09:26:53.589793", "started_at": "2025-03-14 09:20:00"} {
		got, ok := j.Param(name)
		require.True(t, ok, name)
		require.True(t, strings.HasPrefix(got, want), "%s: %q does not start with %q", name, got, want)
	}
	causes, _ := j.Param("pause_causes")
	require.JSONEq(t, `{"arrayValues":[{"value":"transient"},{"value":"rejections"}]}`, causes)
	for name, typ := range map[string]string{"ended_at": "TIMESTAMP", "list_id": "INT64", "pause_causes": "ARRAY",
		"workflow_id": "STRING", "plan_seconds": "FLOAT64"} {
		require.Equal(t, typ, params[name].ParameterType.Type, "%s is typed, even when NULL", name)
	}

	t.Run("an invalid record sends no job", func(t *testing.T) {
		bad := rec
		bad.Event = "started"
		require.ErrorContains(t, p.RecordRun(ctx, bad), `event "started"`)
		require.Len(t, jobsAfterOpen(fake), 1)
	})
	t.Run("a failed job is retried, and errors name the record", func(t *testing.T) {
		fake.Handle("MERGE `test-proj`.`activations`.`runs`",
			bqfake.Result{Err: &bqfake.Error{Code: 500, Reason: "backendError", Message: "try again"}},
			bqfake.Result{})
		before := len(fake.Jobs())
		require.NoError(t, p.RecordRun(ctx, rec))
		require.Len(t, fake.Jobs(), before+2)
		fake.Handle("MERGE `test-proj`.`activations`.`runs`",
			bqfake.Result{Err: &bqfake.Error{Code: 400, Reason: "invalidQuery", Message: "nope"}})
		err := p.RecordRun(ctx, rec)
		require.ErrorContains(t, err, "record paused of crm-users run run-1 at 2025-03-14T09:26:53.589793Z")
		require.ErrorContains(t, err, "nope")
	})
}

func TestRuns(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	ctx := context.Background()
	want, err := warehouse.CheckRunRecord(pauseForTest())
	require.NoError(t, err)
	end := want
	end.Event, end.State, end.At, end.EndedAt = warehouse.RunEventEnded, warehouse.RunStateAborted,
		want.At.Add(time.Minute), want.At.Add(time.Minute)
	end.PauseCauses, end.PauseReason, end.WorkflowID, end.ListID, end.BytesBilled = nil, "", "", 77, 1<<40
	var rows [][]any
	for _, r := range []warehouse.RunRecord{end, want} {
		row := r.Values()
		for i, v := range row {
			switch x := v.(type) {
			case time.Time:
				row[i] = x.UnixMicro()
			case []string:
				items := make([]any, len(x))
				for k, s := range x {
					items[k] = s
				}
				row[i] = items
			}
		}
		rows = append(rows, row)
	}
	fake.Handle("FROM `test-proj`.`activations`.`runs`", bqfake.Result{Schema: runsSchema(t, fake), Rows: rows})
	got, err := p.Runs(ctx, "crm-users", 0)
	require.NoError(t, err)
	require.Equal(t, []warehouse.RunRecord{end, want}, got)
	j := jobsAfterOpen(fake)[0]
	require.Equal(t, "runs", j.Labels["step"])
	require.Contains(t, j.SQL, "WHERE activation_id = @activation_id\nORDER BY `at` DESC, run_id, event\nLIMIT @limit")
	limit, _ := j.Param("limit")
	require.Equal(t, "20", limit, "limit <= 0 means 20")
	id, _ := j.Param("activation_id")
	require.Equal(t, "crm-users", id)

	_, err = p.Runs(ctx, "crm-users", 5)
	require.NoError(t, err)
	limit, _ = jobsAfterOpen(fake)[1].Param("limit")
	require.Equal(t, "5", limit)

	_, err = p.Runs(ctx, "Bad Id", 5)
	require.ErrorContains(t, err, "activation id")
	require.Len(t, jobsAfterOpen(fake), 2)

	fake.Handle("FROM `test-proj`.`activations`.`runs`", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("x", "STRING")),
		Rows: [][]any{{"x"}}})
	_, err = p.Runs(ctx, "crm-users", 0)
	require.ErrorContains(t, err, "runs of crm-users: record 0: run record: got 1 columns")
}

// TestRunBytesBilled: the planner sums the bytes billed of the jobs it ran for a run (read from
// each job's statistics), fills them in the run's records when the caller leaves them 0, and
// forgets them once the run's end is recorded.
func TestRunBytesBilled(t *testing.T) {
	ctx := context.Background()
	for _, storage := range []bool{false, true} {
		name := map[bool]string{false: "rest", true: "storage read"}[storage]
		t.Run(name, func(t *testing.T) {
			fake := bqfake.New(t)
			p := open(t, fake, func(o *bigquery.Options) {
				if storage {
					addr := fake.StartStorage(t)
					o.StorageRead = true
					o.StorageClientOptions = []option.ClientOption{option.WithEndpoint(addr), option.WithoutAuthentication(),
						option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}
				}
			})
			plan := warehouse.PlanTable("crm-users", "run-1")
			fake.Handle("COUNT(DISTINCT key)", bqfake.Result{BytesBilled: 10 << 20})
			fake.Handle("WHERE plan.seq > @after", bqfake.Result{BytesBilled: 20 << 20,
				Schema: bqfake.Schema(append(readHead(), bqfake.Field("known", "BOOLEAN"))...)})
			handleCommit(fake)
			fake.Handle("MERGE `test-proj`.`activations`.`state_", bqfake.Result{BytesBilled: 300 << 20,
				Schema: bqfake.Schema(bqfake.Field("upserted", "INTEGER"), bqfake.Field("deleted", "INTEGER"),
					bqfake.Field("held", "INTEGER")), Rows: [][]any{{7, 2, 1}}})
			fake.Handle("MERGE `test-proj`.`activations`.`runs`", bqfake.Result{BytesBilled: 10 << 20})

			_, err := p.TopReasons(ctx, "crm-users", "run-1", 3)
			require.NoError(t, err)
			_, err = p.TopReasons(ctx, "crm-users", "run-2", 3) // another run
			require.NoError(t, err)
			require.NoError(t, p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
				Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 10}}, func(warehouse.Row) error { return nil }))

			pause := pauseForTest()
			require.NoError(t, p.RecordRun(ctx, pause))
			require.Equal(t, "31457280", lastParam(t, fake, "bytes_billed"), "a top-reasons job and a chunk read")

			// resume --skip-rejected commits the run's plan under a pseudo-run id
			_, err = p.Commit(ctx, warehouse.CommitRequest{ActivationID: "crm-users", RunID: "run-1/skip", Table: plan,
				Chunks: []int{0}})
			require.NoError(t, err)
			end := pause
			end.Event, end.State, end.At, end.EndedAt = warehouse.RunEventEnded, warehouse.RunStateCompleted,
				pause.At.Add(time.Minute), pause.At.Add(time.Minute)
			require.NoError(t, p.RecordRun(ctx, end))
			require.Equal(t, "346030080", lastParam(t, fake, "bytes_billed"),
				"and the commit; not the run log's own jobs")

			require.NoError(t, p.RecordRun(ctx, end))
			require.Equal(t, "0", lastParam(t, fake, "bytes_billed"), "forgotten once the end is recorded")
			end.BytesBilled = 12345
			require.NoError(t, p.RecordRun(ctx, end))
			require.Equal(t, "12345", lastParam(t, fake, "bytes_billed"), "the caller's value wins")

			other := pause
			other.RunID = "run-2"
			require.NoError(t, p.RecordRun(ctx, other))
			require.Equal(t, "10485760", lastParam(t, fake, "bytes_billed"), "each run its own")
		})
	}
}

func lastParam(t *testing.T, fake *bqfake.Server, name string) string {
	t.Helper()
	jobs := fake.Jobs()
	v, ok := jobs[len(jobs)-1].Param(name)
	require.True(t, ok, name)
	return v
}

// fakeRunsTable answers the run log's two statements on bqfake from rows kept in Go, as
// BigQuery would run them (recordRunSQL: insert unless the key is there; runsSQL: the
// activation's rows, newest first, limited). bqfake runs no SQL: this checks what travels (each
// typed parameter, each result cell) through the real client, not BigQuery's semantics, which
// the golden files, the analyzer and the real-BigQuery run of the suite cover.
type fakeRunsTable struct {
	t    *testing.T
	cols []*bq.TableFieldSchema
	rows [][]any // in bqfake's cell values: TIMESTAMP as Unix microseconds, arrays as []any
}

func (f *fakeRunsTable) merge(j *bqfake.Job) bqfake.Result {
	byName := map[string]*bq.QueryParameter{}
	for _, p := range j.Params {
		byName[p.Name] = p
	}
	row := make([]any, len(f.cols))
	for i, c := range f.cols {
		p := byName[c.Name]
		require.NotNil(f.t, p, "parameter @%s", c.Name)
		v := p.ParameterValue.Value
		switch c.Type {
		case "STRING":
			if c.Mode == "REPEATED" {
				items := []any{}
				for _, a := range p.ParameterValue.ArrayValues {
					items = append(items, a.Value)
				}
				row[i] = items
			} else if v != "" {
				row[i] = v
			}
		case "TIMESTAMP":
			if v != "" {
				ts, err := time.Parse("2006-01-02 15:04:05.999999-07:00", v)
				require.NoError(f.t, err)
				row[i] = ts.UnixMicro()
			}
		case "INTEGER":
			if v != "" {
				n, err := strconv.ParseInt(v, 10, 64)
				require.NoError(f.t, err)
				row[i] = n
			}
		case "FLOAT":
			if v != "" {
				x, err := strconv.ParseFloat(v, 64)
				require.NoError(f.t, err)
				row[i] = x
			}
		}
	}
	for _, r := range f.rows {
		if r[0] == row[0] && r[1] == row[1] && r[3] == row[3] && r[4] == row[4] { // activation_id, run_id, event, at
			return bqfake.Result{StatementType: "MERGE"}
		}
	}
	f.rows = append(f.rows, row)
	return bqfake.Result{StatementType: "MERGE"}
}

func (f *fakeRunsTable) query(j *bqfake.Job) bqfake.Result {
	id, _ := j.Param("activation_id")
	limit, _ := j.Param("limit")
	n, err := strconv.Atoi(limit)
	require.NoError(f.t, err)
	var out [][]any
	for _, r := range f.rows {
		if r[0] == id {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a][4] != out[b][4] {
			return out[a][4].(int64) > out[b][4].(int64)
		}
		if out[a][1] != out[b][1] {
			return out[a][1].(string) < out[b][1].(string)
		}
		return out[a][3].(string) < out[b][3].(string)
	})
	if len(out) > n {
		out = out[:n]
	}
	return bqfake.Result{Schema: &bq.TableSchema{Fields: f.cols}, Rows: out, StatementType: "SELECT"}
}

// lastSendRate answers lastSendRateSQL: the send rate of the budget's newest row at or after
// @since with a rate.
func (f *fakeRunsTable) lastSendRate(j *bqfake.Job) bqfake.Result {
	budget, _ := j.Param("send_budget")
	sinceText, _ := j.Param("since")
	since, err := time.Parse("2006-01-02 15:04:05.999999-07:00", sinceText)
	require.NoError(f.t, err)
	col := map[string]int{}
	for i, c := range f.cols {
		col[c.Name] = i
	}
	var best []any
	for _, r := range f.rows {
		rate, _ := r[col["send_rate"]].(float64)
		at := r[col["at"]].(int64)
		if r[col["send_budget"]] == budget && rate > 0 && at >= since.UnixMicro() &&
			(best == nil || at > best[1].(int64)) {
			best = []any{rate, at}
		}
	}
	out := [][]any{}
	if best != nil {
		out = append(out, []any{best[0]})
	}
	return bqfake.Result{Schema: &bq.TableSchema{Fields: []*bq.TableFieldSchema{bqfake.Field("send_rate", "FLOAT")}},
		Rows: out, StatementType: "SELECT"}
}

// TestRunLogSuiteOnFake runs the run log's conformance suite through the real client against
// bqfake answering as fakeRunsTable.
func TestRunLogSuiteOnFake(t *testing.T) {
	warehousetest.RunLogSuite(t, func(t *testing.T) warehouse.RunLog {
		fake := bqfake.New(t)
		p := open(t, fake)
		f := &fakeRunsTable{t: t, cols: runsSchema(t, fake).Fields}
		fake.HandleFunc("MERGE `test-proj`.`activations`.`runs`", f.merge)
		fake.HandleFunc("FROM `test-proj`.`activations`.`runs`", f.query)
		fake.HandleFunc("WHERE send_budget = @send_budget", f.lastSendRate)
		return p
	})
}
