package bigquery_test

import (
	"context"
	"errors"
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
)

const (
	project = "test-proj"
	dataset = "activations"
	maxBill = int64(5 << 30)
)

func options(fake *bqfake.Server) bigquery.Options {
	return bigquery.Options{
		Project: project, Dataset: dataset, Location: "EU", MaximumBytesBilled: maxBill,
		ClientOptions: []option.ClientOption{option.WithEndpoint(fake.URL() + "/"), option.WithoutAuthentication()},
		// The fake's Storage Write API needs its gRPC server: see writeOptions.
		RejectionsDML: true,
	}
}

// writeOptions records rejections through the fake's Storage Write API (and reads chunks
// through its Storage Read API) at addr, from fake.StartStorage.
func writeOptions(addr string) func(*bigquery.Options) {
	return func(o *bigquery.Options) {
		o.RejectionsDML = false
		o.StorageClientOptions = []option.ClientOption{option.WithEndpoint(addr), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}
	}
}

// open opens a planner on the fake, its dataset already there, and retries without waiting.
func open(t *testing.T, fake *bqfake.Server, mods ...func(*bigquery.Options)) *bigquery.Planner {
	t.Helper()
	if fake.Dataset(dataset) == nil {
		fake.AddDataset(dataset, "EU")
	}
	opts := options(fake)
	for _, m := range mods {
		m(&opts)
	}
	p, err := bigquery.Open(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	bigquery.FastRetries(p)
	return p
}

func v(field string) string { return warehouse.ValueColumn(field) }

// jobsAfterOpen drops the dry run that Open runs.
func jobsAfterOpen(fake *bqfake.Server) []*bqfake.Job { return fake.Jobs()[1:] }

func TestOpen(t *testing.T) {
	t.Run("creates the dataset and the rejections table", func(t *testing.T) {
		fake := bqfake.New(t)
		p, err := bigquery.Open(context.Background(), options(fake))
		require.NoError(t, err)
		require.NoError(t, p.Close())
		ds := fake.Dataset(dataset)
		require.NotNil(t, ds)
		require.Equal(t, "EU", ds.Location)
		rej := fake.Table(dataset + ".rejections")
		require.NotNil(t, rej)
		require.Equal(t, "at", rej.TimePartitioning.Field)
		require.Equal(t, "DAY", rej.TimePartitioning.Type)
		require.Equal(t, []string{"activation_id", "run_id"}, rej.Clustering.Fields)
		jobs := fake.Jobs()
		require.Len(t, jobs, 1)
		require.True(t, jobs[0].DryRun, "the job permission is checked with a free dry run")
		require.Equal(t, "EU", jobs[0].Location)
		require.Equal(t, map[string]string{"step": "open"}, jobs[0].Labels)

		// Opening again finds both.
		p, err = bigquery.Open(context.Background(), options(fake))
		require.NoError(t, err)
		require.NoError(t, p.Close())
	})
	t.Run("takes the location of an existing dataset", func(t *testing.T) {
		fake := bqfake.New(t)
		fake.AddDataset(dataset, "asia-northeast1")
		p := open(t, fake, func(o *bigquery.Options) { o.Location = "" })
		_, err := p.TopReasons(context.Background(), "loc", "run-1", 0)
		require.NoError(t, err)
		jobs := fake.Jobs()
		require.Equal(t, "asia-northeast1", jobs[len(jobs)-1].Location)
	})

	tests := []struct {
		name    string
		setup   func(*bqfake.Server)
		mod     func(*bigquery.Options)
		message []string
	}{
		{"dataset creation refused", func(f *bqfake.Server) {
			f.Refuse("create dataset", bqfake.Error{Code: 403, Reason: "accessDenied",
				Message: "Access Denied: Project test-proj: User does not have bigquery.datasets.create permission"})
		}, nil, []string{"creating dataset activations in EU was refused", "roles/bigquery.dataEditor",
			"bigquery.datasets.create", "roles/bigquery.user", "roles/bigquery.jobUser", "roles/bigquery.readSessionUser",
			"roles/bigquery.dataViewer"}},
		{"dataset in another location", func(f *bqfake.Server) { f.AddDataset(dataset, "US") }, nil,
			[]string{"dataset activations is in location US, not EU"}},
		{"jobs refused", func(f *bqfake.Server) {
			f.Handle("SELECT 1", bqfake.Result{Err: &bqfake.Error{Code: 403, Reason: "accessDenied",
				Message: "Access Denied: Project test-proj: User does not have bigquery.jobs.create permission in project test-proj."}})
		}, nil, []string{"bigquery.jobs.create", "roles/bigquery.jobUser on project test-proj"}},
		{"bad dataset name", nil, func(o *bigquery.Options) { o.Dataset = "my-dataset" }, []string{"dataset \"my-dataset\""}},
		{"short plan expiration", nil, func(o *bigquery.Options) { o.PlanExpiration = time.Minute }, []string{"PlanExpiration"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := bqfake.New(t)
			if tc.setup != nil {
				tc.setup(fake)
			}
			opts := options(fake)
			if tc.mod != nil {
				tc.mod(&opts)
			}
			_, err := bigquery.Open(context.Background(), opts)
			require.Error(t, err)
			for _, m := range tc.message {
				require.Contains(t, err.Error(), m)
			}
		})
	}
}

func planRequest() warehouse.PlanRequest {
	return warehouse.PlanRequest{
		ActivationID: "crm-users", RunID: "run-1", Query: "SELECT * FROM `acme.crm.users`",
		PrimaryKey: "id", Identifier: "email", ChunkRows: 3,
		Fields: []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}, {Column: "tags", Field: "tags"}},
	}
}

// handlePlan answers Plan's dry run and script.
func handlePlan(fake *bqfake.Server) {
	fake.Handle("AS row_hash FROM", bqfake.Result{BytesProcessed: 123456, Schema: bqfake.Schema(
		bqfake.Field("key", "STRING"), bqfake.Field("ident", "STRING"), bqfake.Field("ident_hash", "STRING"),
		bqfake.Field(v("age"), "INTEGER"), bqfake.Field(v("firstName"), "STRING"), bqfake.Repeated(v("tags"), "STRING"),
		bqfake.Field("field_hashes", "STRING"), bqfake.Field("row_hash", "STRING"))})
	fake.Handle("CREATE TEMP TABLE", summary(12, 1, 2, 2, 1, 1, 1,
		[]any{[]any{"invalid email in column email", 1}},
		[]any{[]any{0, 1, 3, 2, 1, 0}, []any{1, 4, 5, 0, 0, 2}}))
}

// summary is the plan script's last row: model_rows, null_keys, duplicate_keys,
// duplicate_identifiers, retried, known, refreshed, added, changed, removed (the totals of the
// chunks given), then known_reasons (reason, n) and chunks (chunk, first_seq, last_seq, added,
// changed, removed).
func summary(modelRows, nullKeys, duplicateKeys, duplicateIdentifiers, retried, known, refreshed int64,
	knownReasons, chunks []any) bqfake.Result {
	integer := func(name string) *bq.TableFieldSchema { return bqfake.Field(name, "INTEGER") }
	var added, changed, removed int
	for _, c := range chunks {
		cells := c.([]any)
		added, changed, removed = added+cells[3].(int), changed+cells[4].(int), removed+cells[5].(int)
	}
	return bqfake.Result{StatementType: "SCRIPT", Schema: bqfake.Schema(
		integer("model_rows"), integer("null_keys"), integer("duplicate_keys"), integer("duplicate_identifiers"),
		integer("retried"), integer("known"), integer("refreshed"), integer("added"), integer("changed"), integer("removed"),
		&bq.TableFieldSchema{Name: "known_reasons", Type: "RECORD", Mode: "REPEATED", Fields: []*bq.TableFieldSchema{
			bqfake.Field("reason", "STRING"), integer("n")}},
		&bq.TableFieldSchema{Name: "chunks", Type: "RECORD", Mode: "REPEATED", Fields: []*bq.TableFieldSchema{integer("chunk"),
			integer("first_seq"), integer("last_seq"), integer("added"), integer("changed"), integer("removed")}}),
		Rows: [][]any{{modelRows, nullKeys, duplicateKeys, duplicateIdentifiers, retried, known, refreshed,
			added, changed, removed, knownReasons, chunks}}}
}

func TestPlan(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	handlePlan(fake)
	req := planRequest()
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Plan{
		Table: warehouse.PlanTable("crm-users", "run-1"),
		Counts: warehouse.Counts{ModelRows: 12, Added: 2, Changed: 1, Removed: 2, Unchanged: 4, NullKeys: 1, DuplicateKeys: 2,
			DuplicateIdentifiers: 2, Retried: 1, Known: 1, Refreshed: 1},
		Chunks: []warehouse.Chunk{{Index: 0, FirstSeq: 1, LastSeq: 3, Added: 2, Changed: 1}, {Index: 1, FirstSeq: 4, LastSeq: 5, Removed: 2}},
		Columns: []warehouse.ColumnType{
			{Field: "age", Column: "age", Type: "INT64", Kind: warehouse.KindInteger},
			{Field: "firstName", Column: "name", Type: "STRING", Kind: warehouse.KindString},
			{Field: "tags", Column: "tags", Type: "ARRAY<STRING>", Kind: warehouse.KindArray},
		},
		KnownReasons: []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "invalid email in column email", Count: 1}},
	}, plan)

	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 2)
	labels := map[string]string{"activation_id": "crm-users", "run_id": "run-1",
		"plan": strings.TrimPrefix(plan.Table, "plan_crm_users_")}
	validate, script := jobs[0], jobs[1]
	require.True(t, validate.DryRun, "the model is validated by a free dry run")
	require.NotContains(t, validate.SQL, "CREATE", "the dry run is the snapshot's SELECT")
	require.Contains(t, script.SQL, "CREATE OR REPLACE TABLE `test-proj`.`activations`.`"+plan.Table+"`")
	require.Contains(t, script.SQL, "DIV(q.seq - 1, 3)")
	for _, j := range jobs {
		require.Equal(t, "EU", j.Location)
		require.Equal(t, maxBill, j.MaxBytesBilled)
		for k, v := range labels {
			require.Equal(t, v, j.Labels[k], k)
		}
	}
	require.Equal(t, "plan-validate", validate.Labels["step"])
	require.Equal(t, "plan", script.Labels["step"])
	for name, want := range map[string]string{"activation_id": "crm-users", "run_id": "run-1",
		"duplicate_format": warehouse.DuplicateKeyReasonFormat, "shared_format": warehouse.SharedIdentifierReasonFormat} {
		got, ok := script.Param(name)
		require.True(t, ok, name)
		require.Equal(t, want, got, name)
	}
	_, ok := script.Param("duplicate_prefix")
	require.False(t, ok, "retried plans find their skipped rows by class")
	require.WithinDuration(t, time.Now().Add(-warehouse.DefaultRejectionsRetention), cutoff(t, script), time.Minute,
		"rejections are kept for the default retention")
}

func TestPlanModelErrors(t *testing.T) {
	tests := []struct {
		name     string
		dryRun   *bqfake.Error // the dry run fails
		script   *bqfake.Error // the script fails
		invalid  bool          // wraps warehouse.ErrInvalidModel
		contains []string
		secret   string // must not appear
	}{
		{"syntax error", &bqfake.Error{Code: 400, Reason: "invalidQuery", Message: "Syntax error: Unexpected identifier \"SELEC\" at [14:1]"},
			nil, true, []string{"crm-users", "Syntax error: Unexpected identifier \"SELEC\" at [14:1]"}, ""},
		{"missing table", &bqfake.Error{Code: 404, Reason: "notFound", Message: "Not found: Table acme:crm.users was not found in location EU"},
			nil, true, []string{"Not found: Table acme:crm.users"}, ""},
		{"model dataset not readable", &bqfake.Error{Code: 403, Reason: "accessDenied",
			Message: "Access Denied: Table acme:crm.users: User does not have permission to query table acme:crm.users"},
			nil, true, []string{"User does not have permission to query table"}, ""},
		{"no permission to run jobs", &bqfake.Error{Code: 403, Reason: "accessDenied",
			Message: "Access Denied: Project test-proj: User does not have bigquery.jobs.create permission"},
			nil, false, []string{"crm-users", "roles/bigquery.jobUser"}, ""},
		{"a value fails a cast", nil, &bqfake.Error{Code: 400, Reason: "invalidQuery",
			Message: "Query error: Bad int64 value: top-secret-value at [20:5]"},
			true, []string{"crm-users", "Bad int64", "details withheld"}, "top-secret-value"},
		{"bytes billed cap", nil, &bqfake.Error{Code: 400, Reason: "bytesBilledLimitExceeded",
			Message: "Query exceeded limit for bytes billed: 5368709120. 10737418240 or higher required."},
			true, []string{"MaximumBytesBilled"}, ""},
		{"state dataset not writable", nil, &bqfake.Error{Code: 403, Reason: "accessDenied",
			Message: "Access Denied: Table test-proj:activations.state_crm_users: Permission bigquery.tables.create denied"},
			false, []string{"roles/bigquery.dataEditor on dataset test-proj:activations"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := bqfake.New(t)
			p := open(t, fake)
			handlePlan(fake)
			if tc.dryRun != nil {
				fake.Handle("AS row_hash FROM", bqfake.Result{Err: tc.dryRun})
			}
			if tc.script != nil {
				fake.Handle("CREATE TEMP TABLE", bqfake.Result{Err: tc.script})
			}
			_, err := p.Plan(context.Background(), planRequest())
			require.Error(t, err)
			require.Equal(t, tc.invalid, errors.Is(err, warehouse.ErrInvalidModel), err.Error())
			for _, c := range tc.contains {
				require.Contains(t, err.Error(), c)
			}
			if tc.secret != "" {
				require.NotContains(t, err.Error(), tc.secret)
			}
			require.Len(t, jobsAfterOpen(fake), map[bool]int{true: 1, false: 2}[tc.dryRun != nil], "no retry")
		})
	}
	t.Run("an identifier BigQuery cannot cast to STRING is refused after the dry run", func(t *testing.T) {
		for _, ident := range []*bq.TableFieldSchema{bqfake.Field("ident", "JSON"), bqfake.Field("ident", "GEOGRAPHY"),
			bqfake.Record("ident", bqfake.Field("a", "STRING")), bqfake.Repeated("ident", "STRING")} {
			fake := bqfake.New(t)
			p := open(t, fake)
			handlePlan(fake)
			fake.Handle("AS row_hash FROM", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("key", "STRING"), ident,
				bqfake.Field("ident_hash", "STRING"), bqfake.Field("field_hashes", "STRING"), bqfake.Field("row_hash", "STRING"))})
			_, err := p.Plan(context.Background(), planRequest())
			require.ErrorIs(t, err, warehouse.ErrInvalidModel)
			require.ErrorContains(t, err, `plan crm-users: invalid model: activation crm-users: the identifier column "email" has type `)
			require.ErrorContains(t, err, "cast it in the model")
			jobs := jobsAfterOpen(fake)
			require.Len(t, jobs, 1, "the script is not sent")
			require.True(t, jobs[0].DryRun)
		}
		// INTERVAL, RANGE and the others cast: the plan goes on.
		fake := bqfake.New(t)
		p := open(t, fake)
		handlePlan(fake)
		fake.Handle("AS row_hash FROM", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("key", "STRING"),
			bqfake.Field("ident", "INTERVAL"))})
		fake.Handle("CREATE TEMP TABLE", summary(1, 0, 0, 0, 0, 0, 0, nil, nil))
		_, err := p.Plan(context.Background(), planRequest())
		require.NoError(t, err)
	})
	t.Run("field mapped twice", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake)
		req := planRequest()
		req.Fields = append(req.Fields, warehouse.Field{Column: "x", Field: "age"})
		_, err := p.Plan(context.Background(), req)
		require.ErrorIs(t, err, warehouse.ErrInvalidModel)
		require.Empty(t, jobsAfterOpen(fake))
	})
}

func commitRequest() warehouse.CommitRequest {
	return warehouse.CommitRequest{ActivationID: "crm-users", RunID: "run-1",
		Table: warehouse.PlanTable("crm-users", "run-1"), Chunks: []int{0, 2}}
}

func handleCommit(fake *bqfake.Server, errs ...*bqfake.Error) {
	var results []bqfake.Result
	for _, e := range errs {
		results = append(results, bqfake.Result{Err: e})
	}
	results = append(results, bqfake.Result{Schema: bqfake.Schema(bqfake.Field("upserted", "INTEGER"),
		bqfake.Field("deleted", "INTEGER"), bqfake.Field("held", "INTEGER")), Rows: [][]any{{7, 2, 1}}})
	fake.Handle("MERGE", results...)
}

func TestCommit(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	handleCommit(fake)
	res, err := p.Commit(context.Background(), commitRequest())
	require.NoError(t, err)
	require.Equal(t, warehouse.CommitResult{Upserted: 7, Deleted: 2, Held: 1}, res)
	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 1)
	require.True(t, strings.HasPrefix(jobs[0].SQL, "MERGE `test-proj`.`activations`.`state_crm_users` AS state"))
	require.Equal(t, "commit", jobs[0].Labels["step"])
	require.Equal(t, "run-1", jobs[0].Labels["run_id"])
	chunks, _ := jobs[0].Param("chunks")
	require.JSONEq(t, `{"arrayValues":[{"value":"0"},{"value":"2"}]}`, chunks)
	conflicts, ok := jobs[0].Param("conflicts")
	require.True(t, ok, "an empty list of type conflicts is passed all the same")
	require.JSONEq(t, `{}`, conflicts)

	t.Run("no chunks, no job", func(t *testing.T) {
		req := commitRequest()
		req.Chunks = nil
		res, err := p.Commit(context.Background(), req)
		require.NoError(t, err)
		require.Zero(t, res)
		require.Len(t, jobsAfterOpen(fake), 1)
	})
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name       string
		httpFail   *bqfake.Error // jobs.query answers this once
		jobFail    []*bqfake.Error
		wantErr    []string
		wantPosted int
	}{
		{"5xx is retried", &bqfake.Error{Code: 503, Reason: "backendError", Message: "Service unavailable"}, nil, nil, 2},
		{"rateLimitExceeded is retried", &bqfake.Error{Code: 403, Reason: "rateLimitExceeded",
			Message: "Exceeded rate limits: too many api requests per user per method"}, nil, nil, 2},
		{"429 is retried", &bqfake.Error{Code: 429, Reason: "", Message: "Too many requests"}, nil, nil, 2},
		{"a job lost to a concurrent update runs again", nil, []*bqfake.Error{{Code: 400, Reason: "invalidQuery",
			Message: "Transaction is aborted due to concurrent update against table test-proj:activations.state_crm_users"}}, nil, 2},
		{"a job failing with internalError runs again", nil, []*bqfake.Error{{Code: 400, Reason: "jobInternalError",
			Message: "The job encountered an internal error during execution"}}, nil, 2},
		{"quota to retry later", nil, []*bqfake.Error{{Code: 403, Reason: "quotaExceeded",
			Message: "Quota exceeded: Your table exceeded quota for table update operations. Try again later."}}, nil, 2},
		{"daily quota fails fast", nil, []*bqfake.Error{{Code: 403, Reason: "quotaExceeded",
			Message: "Quota exceeded: Your project exceeded quota for free query bytes scanned"}},
			[]string{"quotaExceeded"}, 1},
		{"invalidQuery fails fast", nil, []*bqfake.Error{{Code: 400, Reason: "invalidQuery", Message: "Unrecognized name: nope"}},
			[]string{"commit crm-users run run-1", "Unrecognized name: nope"}, 1},
		{"accessDenied fails fast and names the roles", nil, []*bqfake.Error{{Code: 403, Reason: "accessDenied",
			Message: "Access Denied: Table test-proj:activations.state_crm_users"}},
			[]string{"Access Denied", "roles/bigquery.dataEditor on dataset test-proj:activations"}, 1},
		{"gives up after a few attempts", nil, []*bqfake.Error{{Code: 400, Reason: "jobBackendError", Message: "backend"},
			{Code: 400, Reason: "jobBackendError", Message: "backend"}, {Code: 400, Reason: "jobBackendError", Message: "backend"},
			{Code: 400, Reason: "jobBackendError", Message: "backend"}, {Code: 400, Reason: "jobBackendError", Message: "backend"}},
			[]string{"jobBackendError"}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := bqfake.New(t)
			p := open(t, fake)
			handleCommit(fake, tc.jobFail...)
			if tc.httpFail != nil {
				fake.FailNext("POST", "/projects/test-proj/queries", 1, *tc.httpFail)
			}
			res, err := p.Commit(context.Background(), commitRequest())
			require.Equal(t, tc.wantPosted, fake.Count("POST", "/projects/test-proj/queries"))
			if tc.wantErr == nil {
				require.NoError(t, err)
				require.Equal(t, int64(7), res.Upserted)
				return
			}
			require.Error(t, err)
			for _, w := range tc.wantErr {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

// readSchema is the result of readChunkSQL for the fields age, blob, day, firstName, info,
// payload, score, signup, tags.
func readSchema() *bq.TableSchema {
	return bqfake.Schema(append(readHead(),
		bqfake.Field(v("age"), "INTEGER"), bqfake.Field(v("blob"), "BYTES"), bqfake.Field(v("day"), "DATE"),
		bqfake.Field(v("firstName"), "STRING"), bqfake.Record(v("info"), bqfake.Field("a", "INTEGER")),
		bqfake.Field(v("payload"), "JSON"), bqfake.Field(v("score"), "NUMERIC"), bqfake.Field(v("signup"), "TIMESTAMP"),
		bqfake.Repeated(v("tags"), "STRING"), bqfake.Field("known", "BOOLEAN"))...)
}

// readHead are the columns of readChunkSQL before the values.
func readHead() []*bq.TableFieldSchema {
	return []*bq.TableFieldSchema{bqfake.Field("seq", "INTEGER"), bqfake.Field("key", "STRING"), bqfake.Field("op", "STRING"),
		bqfake.Repeated("changed_fields", "STRING"), bqfake.Field("ident", "STRING"), bqfake.Field("old_ident", "STRING"),
		bqfake.Field("row_hash", "STRING"), bqfake.Field("keep_profile", "BOOLEAN"), bqfake.Field("prior_outcome", "STRING"),
		bqfake.Field("prior_class", "STRING"), bqfake.Field("prior_field", "STRING"), bqfake.Field("prior_reason", "STRING"),
		bqfake.Field("hold", "BOOLEAN")}
}

// noPrior are the cells of readHead after ident for an add or change without prior: old_ident
// NULL, a row hash, keep_profile false, no prior, hold false.
func noPrior(rowHash any) []any { return []any{nil, rowHash, false, nil, nil, nil, nil, false} }

func readFields() []warehouse.Field {
	var fs []warehouse.Field
	for _, f := range []string{"tags", "signup", "score", "payload", "info", "firstName", "day", "blob", "age"} {
		fs = append(fs, warehouse.Field{Column: f, Field: f})
	}
	return fs
}

func TestReadChunk(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	signup := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	row := func(seq int, op string, changed ...any) []any {
		head := append([]any{seq, string(rune('a' + seq)), op, changed, "u@example.com"}, noPrior("h")...)
		if op == "remove" {
			head = append([]any{seq, string(rune('a' + seq)), op, changed, nil}, "old@example.com", "", false, nil, nil, nil, nil, false)
		}
		return append(head, 30+seq, "AAE=", "2024-02-03", "Ann",
			[]any{7}, `{"k":[1,"x"]}`, "12.5", signup.UnixMicro(), []any{"x", "y"}, false)
	}
	fake.Handle("WHERE plan.seq > @after", bqfake.Result{Schema: readSchema(), PageSize: 2, Rows: [][]any{
		row(3, "add"), row(4, "change", "firstName", "tags"), row(5, "remove"), row(6, "add"), row(7, "add")}})
	plan := warehouse.PlanTable("crm-users", "run-1")
	var got []warehouse.Row
	err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
		Fields: readFields(), Chunk: warehouse.Chunk{Index: 1, FirstSeq: 1, LastSeq: 9}, AfterSeq: 2},
		func(r warehouse.Row) error { got = append(got, r); return nil })
	require.NoError(t, err)
	require.Len(t, got, 5, "three pages")
	values := map[string]any{"age": int64(33), "blob": "AAE=", "day": time.Date(2024, 2, 3, 0, 0, 0, 0, time.UTC),
		"firstName": "Ann", "info": map[string]any{"a": int64(7)}, "payload": map[string]any{"k": []any{int64(1), "x"}},
		"score": 12.5, "signup": signup, "tags": []any{"x", "y"}}
	require.Equal(t, values, got[0].Values.Map())
	require.Equal(t, got[0].Changed, got[0].Values.Names, "an add's values are named by its changed fields")
	got[0].Values = warehouse.Values{}
	require.Equal(t, warehouse.Row{Seq: 3, Key: "d", Op: warehouse.OpAdd, Identifier: "u@example.com",
		RowHash: "h", Changed: []string{"age", "blob", "day", "firstName", "info", "payload", "score", "signup", "tags"}}, got[0])
	require.Equal(t, []string{"firstName", "tags"}, got[1].Changed)
	require.Equal(t, warehouse.Row{Seq: 5, Key: "f", Op: warehouse.OpRemove, Identifier: "old@example.com"}, got[2],
		"a removal names the identifier it was last synced with")

	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 1)
	require.True(t, jobs[0].FastPath)
	require.Equal(t, map[string]string{"step": "read", "activation_id": "crm-users", "plan": plan[len(plan)-12:]}, jobs[0].Labels)
	after, _ := jobs[0].Param("after")
	last, _ := jobs[0].Param("last")
	require.Equal(t, []string{"2", "9"}, []string{after, last})
	require.NotContains(t, jobs[0].SQL, "OFFSET")
	require.Equal(t, 2, fake.Count("GET", "/projects/test-proj/queries/"), "two more pages, by page token")

	t.Run("an error of fn stops the read and is returned as is", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
			Fields: readFields(), Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 9}},
			func(warehouse.Row) error { n++; return stop })
		require.Equal(t, stop, err)
		require.Equal(t, 1, n)
	})
	t.Run("a failure after rows were delivered is not retried", func(t *testing.T) {
		fake.Handle("WHERE plan.seq > @after", bqfake.Result{Schema: readSchema(), PageSize: 2, Rows: [][]any{
			row(3, "add"), row(4, "add"), row(5, "add")}})
		fake.FailNext("GET", "/projects/test-proj/queries/", 1, bqfake.Error{Code: 400, Reason: "jobInternalError",
			Message: "internal error"})
		posted := fake.Count("POST", "/projects/test-proj/queries")
		var seqs []int64
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
			Fields: readFields(), Chunk: warehouse.Chunk{Index: 2, FirstSeq: 1, LastSeq: 9}},
			func(r warehouse.Row) error { seqs = append(seqs, r.Seq); return nil })
		require.ErrorContains(t, err, "read chunk 2 of crm-users from "+plan+" after 2 rows")
		require.Equal(t, []int64{3, 4}, seqs, "no row twice: the caller resumes from its cursor")
		require.Equal(t, posted+1, fake.Count("POST", "/projects/test-proj/queries"))
	})
	t.Run("resuming past the chunk runs no job", func(t *testing.T) {
		before := len(fake.Jobs())
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
			Fields: readFields(), Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 9}, AfterSeq: 9},
			func(warehouse.Row) error { return errors.New("no row expected") })
		require.NoError(t, err)
		require.Len(t, fake.Jobs(), before)
	})
	t.Run("a dropped plan fails", func(t *testing.T) {
		fake.Handle("WHERE plan.seq > @after", bqfake.Result{Err: &bqfake.Error{Code: 404, Reason: "notFound",
			Message: "Not found: Table test-proj:activations." + plan}})
		err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan,
			Fields: readFields(), Chunk: warehouse.Chunk{Index: 4, FirstSeq: 1, LastSeq: 9}},
			func(warehouse.Row) error { return nil })
		require.ErrorContains(t, err, "read chunk 4 of crm-users")
		require.ErrorContains(t, err, "Not found")
	})
	t.Run("foreign names are refused before any job", func(t *testing.T) {
		before := len(fake.Jobs())
		for _, req := range []warehouse.ChunkRequest{
			{ActivationID: "other", Table: plan, Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 2}},
			{ActivationID: "crm-users", Table: "rejections", Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 2}},
			{ActivationID: "crm-users", Table: plan, KnownTable: "state_crm_users", Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 2}},
		} {
			require.Error(t, p.ReadChunk(context.Background(), req, func(warehouse.Row) error { return nil }))
		}
		require.Len(t, fake.Jobs(), before)
	})
}

func TestReadChunkStorageRead(t *testing.T) {
	fake := bqfake.New(t)
	addr := fake.StartStorage(t)
	p := open(t, fake, func(o *bigquery.Options) {
		o.StorageRead = true
		o.StorageClientOptions = []option.ClientOption{option.WithEndpoint(addr), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}
	})
	signup := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	schema := bqfake.Schema(append(readHead(),
		bqfake.Field(v("age"), "INTEGER"), bqfake.Field(v("firstName"), "STRING"), bqfake.Field(v("signup"), "TIMESTAMP"),
		bqfake.Field("known", "BOOLEAN"))...)
	fake.Handle("WHERE plan.seq > @after", bqfake.Result{Schema: schema, Rows: [][]any{
		{1, "1", "add", []any{}, "a@example.com", nil, "h1", false, "rejected", "iterable", nil, "refused", false,
			31, "Ann", signup.UnixMicro(), true},
		{2, "2", "change", []any{"age"}, nil, nil, "h2", false, "rejected", "value", "age", "NaN", true, 42, nil, nil, false},
		{3, "3", "remove", []any{}, nil, "c@example.com", "", true, nil, nil, nil, nil, false, nil, nil, nil, true},
	}})
	fields := []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}, {Column: "signup", Field: "signup"}}
	plan := warehouse.PlanTable("crm-users", "run-1")
	var got []warehouse.Row
	err := p.ReadChunk(context.Background(), warehouse.ChunkRequest{ActivationID: "crm-users", Table: plan, Fields: fields,
		Chunk: warehouse.Chunk{FirstSeq: 1, LastSeq: 3}, KnownTable: warehouse.KnownTable("crm-users", "run-1"), KnownLowerCase: true},
		func(r warehouse.Row) error { got = append(got, r); return nil })
	require.NoError(t, err)
	values := make([]map[string]any, len(got))
	for i := range got {
		values[i] = got[i].Values.Map()
		got[i].Values = warehouse.Values{}
	}
	require.Equal(t, []map[string]any{{"firstName": "Ann", "age": int64(31), "signup": signup},
		{"firstName": nil, "age": int64(42), "signup": nil}, {}}, values)
	require.Equal(t, []warehouse.Row{
		{Seq: 1, Key: "1", Op: warehouse.OpAdd, Identifier: "a@example.com", Known: true, RowHash: "h1",
			Prior:   &warehouse.Prior{Outcome: warehouse.OutcomeRejected, Class: warehouse.ClassIterable, Reason: "refused"},
			Changed: []string{"age", "firstName", "signup"}},
		{Seq: 2, Key: "2", Op: warehouse.OpChange,
			RowHash: "h2", Prior: &warehouse.Prior{Outcome: warehouse.OutcomeRejected, Class: warehouse.ClassValue, Field: "age",
				Reason: "NaN", Hold: true},
			Changed: []string{"age"}},
		{Seq: 3, Key: "3", Op: warehouse.OpRemove, Identifier: "c@example.com", Known: true, KeepProfile: true},
	}, got)
	require.Equal(t, 1, fake.ReadSessions(), "the rows came through the Storage Read API")
	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 1)
	require.False(t, jobs[0].FastPath, "a job whose result table the Storage Read API reads")
	require.Contains(t, jobs[0].SQL, "LEFT JOIN `test-proj`.`activations`.`"+warehouse.KnownTable("crm-users", "run-1")+"` AS k")
	require.Contains(t, jobs[0].SQL, "k.id = LOWER(IF(plan.op = 'remove', plan.old_ident, CAST(plan.ident AS STRING)))",
		"a removal is known by the identifier it was last synced with")
	require.Equal(t, "EU", jobs[0].Location)
	require.Equal(t, maxBill, jobs[0].MaxBytesBilled)
}

func TestRecordRejections(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	var rs []warehouse.Rejection
	for i := range 4500 {
		r := warehouse.Rejection{Key: "k", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Reason: "invalid email"}
		if i%2 == 0 {
			r.Field, r.Class, r.RowHash = "email", warehouse.ClassIdentifier, "0af3"
		}
		rs = append(rs, r)
	}
	require.NoError(t, p.RecordRejections(context.Background(), "crm-users", "run-1", rs))
	require.NoError(t, p.RecordRejections(context.Background(), "crm-users", "run-1", nil))
	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 3, "batches of 2000")
	var sizes []int
	for _, j := range jobs {
		require.True(t, strings.HasPrefix(j.SQL, "INSERT INTO `test-proj`.`activations`.`rejections`"))
		require.Contains(t, j.SQL, "FROM UNNEST(@rows)")
		require.Equal(t, "rejections", j.Labels["step"])
		for _, prm := range j.Params {
			if prm.Name == "rows" {
				sizes = append(sizes, len(prm.ParameterValue.ArrayValues))
				first := prm.ParameterValue.ArrayValues[0].StructValues
				require.Equal(t, "k", first["key"].Value)
				require.Equal(t, "email", first["field"].Value)
				require.Equal(t, "identifier", first["class"].Value)
				require.Equal(t, "0af3", first["row_hash"].Value)
				second := prm.ParameterValue.ArrayValues[1].StructValues
				for _, name := range []string{"field", "class", "row_hash"} {
					require.Empty(t, second[name].Value, "%s is NULL when unknown", name)
				}
				var names []string
				for _, f := range prm.ParameterType.ArrayType.StructTypes {
					names = append(names, f.Name+" "+f.Type.Type)
				}
				require.Equal(t, []string{"key STRING", "op STRING", "outcome STRING", "field STRING", "reason STRING",
					"class STRING", "row_hash STRING"}, names)
			}
		}
	}
	require.Equal(t, []int{2000, 2000, 500}, sizes)
	require.Error(t, p.RecordRejections(context.Background(), "Bad ID", "run-1", rs[:1]))
}

func TestTopReasons(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	fake.Handle("COUNT(DISTINCT key)", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("outcome", "STRING"),
		bqfake.Field("reason", "STRING"), bqfake.Field("n", "INTEGER")),
		Rows: [][]any{{"rejected", "invalid email", 3}, {"skipped", "", 1}}})
	top, err := p.TopReasons(context.Background(), "crm-users", "run-1", 10)
	require.NoError(t, err)
	require.Equal(t, []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "invalid email", Count: 3},
		{Outcome: warehouse.OutcomeSkipped, Reason: "", Count: 1}}, top)
	limit, ok := jobsAfterOpen(fake)[0].Param("limit")
	require.True(t, ok)
	require.Equal(t, "10", limit)
}

func TestDropPlan(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	plan := warehouse.PlanTable("crm-users", "run-1")
	fake.AddTable(dataset, plan, bqfake.Schema(bqfake.Field("seq", "INTEGER")))
	require.NoError(t, p.DropPlan(context.Background(), plan))
	require.Nil(t, fake.Table(dataset+"."+plan))
	require.NoError(t, p.DropPlan(context.Background(), plan), "dropping twice is harmless")
	require.Equal(t, 2, fake.Count("DELETE", "/tables/"+plan))
	for _, bad := range []string{"rejections", "state_crm_users", "plan_x_000000000000`; DROP TABLE rejections; --"} {
		require.Error(t, p.DropPlan(context.Background(), bad))
	}
	require.Equal(t, 2, fake.Count("DELETE", "/tables/"), "refused names never reach BigQuery")
	require.Empty(t, jobsAfterOpen(fake), "an API call, not a job")
}

func TestLoadIdentifiers(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	fake.Handle("CREATE OR REPLACE TABLE", bqfake.Result{Schema: bqfake.Schema(bqfake.Field("n", "INTEGER")), Rows: [][]any{{2}}})
	known := warehouse.KnownTable("crm-users", "run-1")
	table, n, err := p.LoadIdentifiers(context.Background(), "crm-users", "run-1", true, func(add func(string) error) error {
		for _, id := range []string{"A@Example.com", `we"ird<&>`, "a@example.com"} {
			if err := add(id); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, known, table)
	require.Equal(t, int64(2), n)

	jobs := jobsAfterOpen(fake)
	require.Len(t, jobs, 2)
	load, dedup := jobs[0], jobs[1]
	require.NotNil(t, load.Load)
	require.Equal(t, "{\"id\":\"A@Example.com\"}\n{\"id\":\"we\\\"ird<&>\"}\n{\"id\":\"a@example.com\"}\n", string(load.Data))
	require.Equal(t, "NEWLINE_DELIMITED_JSON", load.Load.SourceFormat)
	require.Equal(t, "WRITE_TRUNCATE", load.Load.WriteDisposition)
	require.Equal(t, known+"_staging", load.Load.DestinationTable.TableId)
	require.Equal(t, "load-identifiers", load.Labels["step"])
	require.Equal(t, "EU", load.Location)
	require.Contains(t, dedup.SQL, "SELECT DISTINCT LOWER(id) AS id")
	require.Nil(t, fake.Table(dataset+"."+known+"_staging"), "the staging table is dropped")

	t.Run("an error of load is returned", func(t *testing.T) {
		boom := errors.New("export failed")
		_, _, err := p.LoadIdentifiers(context.Background(), "crm-users", "run-2", false, func(add func(string) error) error {
			if err := add("x"); err != nil {
				return err
			}
			return boom
		})
		require.ErrorIs(t, err, boom)
	})
}

func TestDryRun(t *testing.T) {
	fake := bqfake.New(t)
	p := open(t, fake)
	fake.Handle("FROM `acme.geo.places`", bqfake.Result{BytesProcessed: 987654, Schema: bqfake.Schema(
		bqfake.Field("id", "INTEGER"), bqfake.Field("where", "GEOGRAPHY"), bqfake.Repeated("tags", "STRING"),
		bqfake.Record("s", bqfake.Field("a", "INTEGER"), bqfake.Field("embedding", "VECTOR")))})
	res, err := p.DryRun(context.Background(), "SELECT * FROM `acme.geo.places`;")
	require.NoError(t, err)
	require.Equal(t, bigquery.DryRunResult{BytesProcessed: 987654,
		Schema: []bigquery.Column{{Name: "id", Type: "INT64"}, {Name: "where", Type: "GEOGRAPHY"},
			{Name: "tags", Type: "ARRAY<STRING>"}, {Name: "s", Type: "STRUCT<a INT64, embedding VECTOR>"}},
		Unsupported: []string{"column s.embedding: VECTOR cannot be sent: unknown BigQuery type (cast it in the model, e.g. to STRING)"},
	}, res)
	j := jobsAfterOpen(fake)[0]
	require.True(t, j.DryRun)
	require.Equal(t, "SELECT * FROM `acme.geo.places`", j.SQL)

	fake.Handle("nowhere", bqfake.Result{Err: &bqfake.Error{Code: 404, Reason: "notFound", Message: "Not found: Dataset acme:nowhere"}})
	_, err = p.DryRun(context.Background(), "SELECT * FROM nowhere.t")
	require.ErrorIs(t, err, warehouse.ErrInvalidModel)
	require.ErrorContains(t, err, "Not found: Dataset acme:nowhere")
}

func TestDryRunModelTouchesNoDataset(t *testing.T) {
	fake := bqfake.New(t)
	fake.Handle("FROM `acme.crm.users`", bqfake.Result{BytesProcessed: 4242, Schema: bqfake.Schema(bqfake.Field("id", "INTEGER"))})
	res, err := bigquery.DryRunModel(context.Background(), options(fake), "SELECT * FROM `acme.crm.users`")
	require.NoError(t, err)
	require.Equal(t, int64(4242), res.BytesProcessed)
	require.Nil(t, fake.Dataset(dataset), "validate creates nothing")
	jobs := fake.Jobs()
	require.Len(t, jobs, 1)
	require.True(t, jobs[0].DryRun)
}
