package bigquery_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bq "google.golang.org/api/bigquery/v2"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
)

// The tests of this file cover what the planner adds for known rejections, shared identifiers,
// removals by identifier and refreshed rows: the SQL runs only in BigQuery (bigquery_real_test.go
// runs the conformance suite there), so these check the Go side against the fake.

// cutoff is the @rejections_cutoff parameter of a plan script.
func cutoff(t *testing.T, j *bqfake.Job) time.Time {
	t.Helper()
	for _, p := range j.Params {
		if p.Name == "rejections_cutoff" {
			require.Equal(t, "TIMESTAMP", p.ParameterType.Type)
			at, err := time.Parse("2006-01-02 15:04:05.999999-07:00", p.ParameterValue.Value)
			require.NoError(t, err)
			return at
		}
	}
	require.Fail(t, "no parameter rejections_cutoff")
	return time.Time{}
}

func TestPlanRejectionsRetention(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	handlePlan(fake)
	req := planRequest()
	req.RejectionsRetention = 48 * time.Hour
	_, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	jobs := jobsAfterOpen(fake)
	require.WithinDuration(t, time.Now().Add(-48*time.Hour), cutoff(t, jobs[len(jobs)-1]), time.Minute)
}

func TestPlanOptionsReachTheScript(t *testing.T) {
	tests := []struct {
		name     string
		mod      func(*warehouse.PlanRequest)
		contains []string
		excludes []string
	}{
		{"known rejections hold rows back", nil,
			[]string{"AND COALESCE(pr.r.outcome = 'rejected' AND pr.r.class IN ('identifier', 'value', 'oversize', 'type'), FALSE) AS hold",
				"CAST(s.ident AS STRING) AS nid"},
			[]string{"LOWER("}},
		{"retry rejected releases them", func(r *warehouse.PlanRequest) { r.RetryRejected = true },
			[]string{"n.op IN ('add', 'change') AND FALSE AS hold"}, nil},
		{"full resync releases them", func(r *warehouse.PlanRequest) { r.FullResync = true },
			[]string{"n.op IN ('add', 'change') AND FALSE AS hold", "WHEN st.key IS NULL OR TRUE THEN 'add'"}, nil},
		{"emails compare lower-cased", func(r *warehouse.PlanRequest) { r.IdentifierLowerCase = true },
			[]string{"LOWER(CAST(s.ident AS STRING)) AS nid", "LOWER(CAST(n.old_ident AS STRING)) IN ("}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := bqfake.New(t)
			p := open(t, fake)
			handlePlan(fake)
			req := planRequest()
			if tc.mod != nil {
				tc.mod(&req)
			}
			_, err := p.Plan(context.Background(), req)
			require.NoError(t, err)
			jobs := jobsAfterOpen(fake)
			script := jobs[len(jobs)-1].SQL
			for _, c := range tc.contains {
				require.Contains(t, script, c)
			}
			for _, c := range tc.excludes {
				require.NotContains(t, script, c)
			}
		})
	}
}

func TestPlanSummary(t *testing.T) {
	t.Run("refreshed rows are unchanged and in no chunk", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake)
		handlePlan(fake)
		fake.Handle("CREATE TEMP TABLE", summary(3, 0, 0, 0, 0, 0, 3, nil, nil))
		plan, err := p.Plan(context.Background(), planRequest())
		require.NoError(t, err)
		require.Equal(t, warehouse.Counts{ModelRows: 3, Unchanged: 3, Refreshed: 3}, plan.Counts)
		require.Empty(t, plan.Chunks)
		require.Nil(t, plan.KnownReasons)
	})
	t.Run("rows sharing an identifier are neither sent nor unchanged", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake)
		handlePlan(fake)
		fake.Handle("CREATE TEMP TABLE", summary(7, 0, 0, 4, 0, 0, 0, nil, []any{[]any{0, 1, 1, 0, 1, 0}}))
		plan, err := p.Plan(context.Background(), planRequest())
		require.NoError(t, err)
		require.Equal(t, warehouse.Counts{ModelRows: 7, Changed: 1, Unchanged: 2, DuplicateIdentifiers: 4}, plan.Counts)
	})
	t.Run("known reasons keep the script's order", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake)
		handlePlan(fake)
		fake.Handle("CREATE TEMP TABLE", summary(5, 0, 0, 0, 3, 3, 0,
			[]any{[]any{"type conflict", 2}, []any{"", 1}}, []any{[]any{0, 1, 3, 3, 0, 0}}))
		plan, err := p.Plan(context.Background(), planRequest())
		require.NoError(t, err)
		require.Equal(t, warehouse.Counts{ModelRows: 5, Added: 3, Unchanged: 2, Retried: 3, Known: 3}, plan.Counts)
		require.Equal(t, []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "type conflict", Count: 2},
			{Outcome: warehouse.OutcomeRejected, Reason: "", Count: 1}}, plan.KnownReasons)
	})
	t.Run("a summary of another shape fails", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake)
		handlePlan(fake)
		fake.Handle("CREATE TEMP TABLE", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("model_rows", "INTEGER")),
			Rows: [][]any{{1}}})
		_, err := p.Plan(context.Background(), planRequest())
		require.ErrorContains(t, err, "plan crm-users: read the plan summary: summary has 1 columns, want 12")
	})
}

func TestReadChunkPriorAndRemovals(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	schema := bqfake.Schema(append(readHead(), bqfake.Field(v("age"), "INTEGER"), bqfake.Field("known", "BOOLEAN"))...)
	fake.Handle("WHERE plan.seq > @after", bqfake.Result{Schema: schema, Rows: [][]any{
		// a held add: its prior holds it back
		{1, "1", "add", []any{}, "a@example.com", nil, "h1", false, "rejected", "type", "age", "type conflict", true, 31, false},
		// a change whose prior was a skip: no field, not held
		{2, "2", "change", []any{"age"}, "b@example.com", nil, "h2", false, "skipped", "shared-identifier", nil, "shared", false, 32, false},
		// a removal whose identifier a current row carries
		{3, "3", "remove", []any{}, nil, "C@example.com", "", true, nil, nil, nil, nil, false, nil, false},
		// a removal of a legacy state row: no identifier known
		{4, "4", "remove", []any{}, nil, nil, "", false, nil, nil, nil, nil, false, nil, false},
		// an add without prior: NULL prior columns, hold false
		{5, "5", "add", []any{}, nil, nil, "h5", false, nil, nil, nil, nil, false, 35, false},
	}})
	fields := []warehouse.Field{{Column: "age", Field: "age"}}
	var got []warehouse.Row
	err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users",
		Table: warehouse.PlanTable("crm-users", "run-1"), Fields: fields, Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 5}},
		func(r warehouse.Row) error { got = append(got, r); return nil })
	require.NoError(t, err)
	require.Equal(t, []warehouse.Row{
		{Seq: 1, Key: "1", Op: warehouse.OpAdd, Identifier: "a@example.com", RowHash: "h1", Changed: []string{"age"},
			Values: warehouse.ValuesOf(map[string]any{"age": int64(31)}), Prior: &warehouse.Prior{Outcome: warehouse.OutcomeRejected,
				Class: warehouse.ClassType, Field: "age", Reason: "type conflict", Hold: true}},
		{Seq: 2, Key: "2", Op: warehouse.OpChange, Identifier: "b@example.com", RowHash: "h2", Changed: []string{"age"},
			Values: warehouse.ValuesOf(map[string]any{"age": int64(32)}), Prior: &warehouse.Prior{Outcome: warehouse.OutcomeSkipped,
				Class: warehouse.ClassSharedIdentifier, Reason: "shared"}},
		{Seq: 3, Key: "3", Op: warehouse.OpRemove, Identifier: "C@example.com", KeepProfile: true},
		{Seq: 4, Key: "4", Op: warehouse.OpRemove},
		{Seq: 5, Key: "5", Op: warehouse.OpAdd, RowHash: "h5", Changed: []string{"age"}, Values: warehouse.ValuesOf(map[string]any{"age": int64(35)})},
	}, got)
	require.Nil(t, got[3].Identifier, "a removal without identifier has a nil one, not an empty string")
	require.True(t, warehouse.HeldByPrior(got[0].Prior, map[string]string{"age": "type conflict"}))

	jobs := jobsAfterOpen(fake)
	sql := jobs[len(jobs)-1].SQL
	require.Contains(t, sql, "IFNULL(plan.row_hash, '') AS row_hash")
	require.Contains(t, sql, "FALSE AS known")

	t.Run("a row of another shape fails without its values", func(t *testing.T) {
		fake.Handle("WHERE plan.seq > @after", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("seq", "INTEGER"),
			bqfake.Field("secret", "STRING")), Rows: [][]any{{1, "top-secret"}}})
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users",
			Table: warehouse.PlanTable("crm-users", "run-1"), Fields: fields, Chunk: warehouse.Chunk{Index: 3, FirstSeq: 1, LastSeq: 5}},
			func(warehouse.Row) error { return nil })
		require.ErrorContains(t, err, "read chunk 3 of crm-users")
		require.ErrorContains(t, err, "got 2 columns, want 15")
		require.NotContains(t, err.Error(), "top-secret")
	})
}

func TestCommitConflicts(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	handleCommit(fake)
	req := commitRequest()
	req.Conflicts = map[string]string{"age": "type conflict: age is a string in Iterable", "zip": "type conflict"}
	_, err := p.Commit(context.Background(), req)
	require.NoError(t, err)
	jobs := jobsAfterOpen(fake)
	j := jobs[len(jobs)-1]
	var prm *bq.QueryParameter
	for _, x := range j.Params {
		if x.Name == "conflicts" {
			prm = x
		}
	}
	require.NotNil(t, prm)
	require.Equal(t, "ARRAY", prm.ParameterType.Type)
	require.Equal(t, "STRING", prm.ParameterType.ArrayType.Type)
	var got []string
	for _, e := range prm.ParameterValue.ArrayValues {
		got = append(got, e.Value)
	}
	require.Equal(t, warehouse.ConflictPairs(req.Conflicts), got)
	require.Equal(t, []string{"age\x00type conflict: age is a string in Iterable", "zip\x00type conflict"}, got)
	// The SQL builds the same encoding: field, a NUL (CHR(0) is '' in BigQuery), reason.
	require.Contains(t, j.SQL, "CONCAT(plan.prior_field, CAST(FROM_HEX('00') AS STRING), plan.prior_reason) IN UNNEST(@conflicts)")
	require.Equal(t, 2, strings.Count(j.SQL, "IN UNNEST(@conflicts)"), "the MERGE and the counts hold the same rows")
	require.Contains(t, j.SQL, "NOT COALESCE(r.op IN ('remove', 'unsubscribe') AND r.outcome = 'skipped', FALSE)",
		"a skipped removal is committed")
	require.Contains(t, j.SQL, "CAST(plan.ident AS STRING) AS ident", "the state keeps the identifier as text")
}

func TestOpenUpgradesRejections(t *testing.T) {
	t.Run("a table of an earlier version gets class and row_hash", func(t *testing.T) {
		fake := bqfake.New(t)
		fake.AddDataset(dataset, "EU")
		var old []*bq.TableFieldSchema
		for _, c := range []string{"activation_id", "run_id", "key", "op", "outcome", "field", "reason"} {
			old = append(old, bqfake.Field(c, "STRING"))
		}
		fake.AddTable(dataset, "rejections", bqfake.Schema(append(old, bqfake.Field("at", "TIMESTAMP"))...))
		open(t, fake)
		jobs := fake.Jobs()
		require.Len(t, jobs, 2)
		require.True(t, jobs[0].DryRun)
		require.Equal(t, "ALTER TABLE `test-proj`.`activations`.`rejections`\n"+
			"ADD COLUMN IF NOT EXISTS class STRING,\nADD COLUMN IF NOT EXISTS row_hash STRING", jobs[1].SQL)
		require.False(t, jobs[1].DryRun)
		require.Equal(t, "EU", jobs[1].Location)
		require.Equal(t, "upgrade", jobs[1].Labels["step"])
	})
	t.Run("a new table has them", func(t *testing.T) {
		fake := bqfake.New(t)
		open(t, fake)
		open(t, fake) // finds the table it created
		var names []string
		for _, f := range fake.Table(dataset + ".rejections").Schema.Fields {
			names = append(names, f.Name)
		}
		require.Equal(t, []string{"activation_id", "run_id", "key", "op", "outcome", "field", "reason", "at", "class", "row_hash"}, names)
		for _, j := range fake.Jobs() {
			require.NotContains(t, j.SQL, "ALTER TABLE")
		}
	})
	t.Run("a failed upgrade fails Open", func(t *testing.T) {
		err := openWithRefusedUpgrade(t, "rejections")
		require.ErrorContains(t, err, "upgrade table rejections: add columns class, row_hash")
		require.ErrorContains(t, err, "roles/bigquery.dataEditor")
	})
}

func TestOpenUpgradesRuns(t *testing.T) {
	t.Run("a table of an earlier version gets send_rate and send_budget", func(t *testing.T) {
		fake := bqfake.New(t)
		fake.AddDataset(dataset, "EU")
		var old []*bq.TableFieldSchema
		for _, c := range warehouse.RunColumns() {
			if !c.Added {
				old = append(old, bqfake.Field(c.Name, "STRING")) // the types do not matter here
			}
		}
		fake.AddTable(dataset, "runs", bqfake.Schema(old...))
		open(t, fake)
		jobs := fake.Jobs()
		require.Len(t, jobs, 2)
		require.Equal(t, "ALTER TABLE `test-proj`.`activations`.`runs`\n"+
			"ADD COLUMN IF NOT EXISTS `send_rate` FLOAT64,\nADD COLUMN IF NOT EXISTS `send_budget` STRING", jobs[1].SQL)
		require.False(t, jobs[1].DryRun)
		require.Equal(t, "upgrade", jobs[1].Labels["step"])
	})
	t.Run("a new table has them", func(t *testing.T) {
		fake := bqfake.New(t)
		open(t, fake)
		open(t, fake) // finds the table it created
		fields := fake.Table(dataset + ".runs").Schema.Fields
		require.Equal(t, "send_rate FLOAT", fields[len(fields)-2].Name+" "+fields[len(fields)-2].Type)
		require.Equal(t, "send_budget STRING", fields[len(fields)-1].Name+" "+fields[len(fields)-1].Type)
		for _, j := range fake.Jobs() {
			require.NotContains(t, j.SQL, "ALTER TABLE")
		}
	})
	t.Run("a failed upgrade fails Open", func(t *testing.T) {
		err := openWithRefusedUpgrade(t, "runs")
		require.ErrorContains(t, err, "upgrade table runs: add columns send_rate, send_budget")
		require.ErrorContains(t, err, "roles/bigquery.dataEditor")
	})
}

// openWithRefusedUpgrade opens a dataset whose table of an earlier version lacks columns, and
// whose ALTER TABLE BigQuery refuses.
func openWithRefusedUpgrade(t *testing.T, table string) error {
	fake := bqfake.New(t)
	fake.AddDataset(dataset, "EU")
	fake.AddTable(dataset, table, bqfake.Schema(bqfake.Field("activation_id", "STRING")))
	fake.Handle("ALTER TABLE", bqfake.Result{Err: &bqfake.Error{Code: 403, Reason: "accessDenied",
		Message: "Access Denied: Table test-proj:activations." + table}})
	_, err := bigquery.Open(context.Background(), options(fake))
	require.Error(t, err)
	return err
}
