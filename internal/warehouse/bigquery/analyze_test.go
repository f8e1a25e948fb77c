package bigquery

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/api/option"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/zetasqltest"
)

// These tests run GoogleSQL's reference analyzer (ZetaSQL, see zetasqltest) over every SQL text
// the planner sends to BigQuery. The planner runs for real against bqfake, so each job's SQL and
// its query parameters are exactly what BigQuery would get: the parameters are declared to the
// analyzer from the job (an @name that Go does not pass is refused), with the types the
// BigQuery client gives them. The catalog starts with the model table and the rejections table as
// Open creates it; every table a statement creates (the state table from its CREATE statement,
// temporary tables, plan and known tables) enters it with the analyzer's column types. Each call
// runs again until bqfake answers each of its queries with one row of NULLs (empty arrays, op
// 'add') shaped by the analyzer's result schema, so the Go code that reads results is checked
// against the SQL's real result columns too.

const (
	zsProject = "test-proj"
	zsDataset = "activations"
)

// zsTypes are the model column types of the matrix: every BigQuery type.
var zsTypes = []string{"INT64", "NUMERIC", "BIGNUMERIC", "FLOAT64", "BOOL", "STRING", "BYTES", "DATE",
	"DATETIME", "TIME", "TIMESTAMP", "JSON", "GEOGRAPHY", "INTERVAL", "RANGE<DATE>",
	"STRUCT<a INT64, `b c` STRING, d ARRAY<DATE>>", "ARRAY<STRING>", "ARRAY<STRUCT<x FLOAT64, y JSON>>"}

// zsKeyRefused are the types that GoogleSQL does not CAST to STRING: a primary key of such a type
// is refused by Plan's dry run (the analyzer refuses the snapshot's CAST); an identifier of such
// a type passes the dry run, and Plan refuses it from the dry run's schema before sending the
// script.
var zsKeyRefused = []string{"JSON", "GEOGRAPHY", "STRUCT", "ARRAY"}

type zsCase struct {
	name    string
	columns []zetasqltest.Column // of the model table
	req     warehouse.PlanRequest
	update  bool // update mode: LoadIdentifiers, and ReadChunk with the known table
	email   bool // the identifier is an email: compared lower-cased
	// refusedIn, when set, are the steps one of which the analyzer must refuse, with refusedText;
	// the case ends there.
	refusedIn   []string
	refusedText string
	// planRefused, when set, is what Plan's error must say after the dry run, refusing the model
	// (ErrInvalidModel) without sending the script; the case ends there.
	planRefused string
}

func zsCol(name, typ string) zetasqltest.Column {
	return zetasqltest.Column{Name: name, Type: zetasqltest.MustParseType(typ)}
}

// zsCases is the matrix.
func zsCases() []zsCase {
	base := func(name string, cols []zetasqltest.Column, key, ident string, fields []warehouse.Field) zsCase {
		return zsCase{name: name, columns: cols, req: warehouse.PlanRequest{
			ActivationID: "crm-users", RunID: "run-1", Query: "SELECT * FROM `" + zsProject + ".crm.users`",
			PrimaryKey: key, Identifier: ident, Fields: fields, ChunkRows: 500}}
	}
	// every type as a mapped field, with an email identifier
	all := []zetasqltest.Column{zsCol("user_id", "INT64"), zsCol("email", "STRING"), zsCol("uid", "STRING")}
	var allFields []warehouse.Field
	for i, typ := range zsTypes {
		col := fmt.Sprintf("c%d_%s", i, strings.ToLower(strings.FieldsFunc(typ, func(r rune) bool {
			return r < 'A' || r > 'Z'
		})[0]))
		all = append(all, zsCol(col, typ))
		allFields = append(allFields, warehouse.Field{Column: col, Field: "f" + col})
	}

	var cases []zsCase
	c := base("every type mapped, email, upsert", all, "user_id", "email", allFields)
	c.email = true
	cases = append(cases, c)
	c = base("every type mapped, email, update", all, "user_id", "email", allFields)
	c.update, c.email = true, true
	cases = append(cases, c)
	c = base("every type mapped, userId, upsert, full resync", all, "user_id", "uid", allFields)
	c.req.FullResync = true
	cases = append(cases, c)
	c = base("every type mapped, userId, update, retry rejected", all, "user_id", "uid", allFields)
	c.update = true
	c.req.RetryRejected = true
	cases = append(cases, c)
	c = base("no mapped fields, email", all[:2], "user_id", "email", nil)
	c.email = true
	cases = append(cases, c)
	c = base("no mapped fields, no identifier, full resync", all[:1], "user_id", "", nil)
	c.req.FullResync = true
	cases = append(cases, c)
	c = base("no mapped fields, userId, update", all, "user_id", "uid", nil)
	c.update = true
	cases = append(cases, c)

	// awkward names: spaces, quotes, backticks, backslashes, unicode, emoji, 300 characters (the
	// longest BigQuery column name), field names differing only in case, and a field name of
	// 1,000 bytes (value columns are named by a digest: their length does not depend on it)
	long := strings.Repeat("long", 75)
	names := []string{"first name", "it's", `say "hi"`, "we`ird", `back\slash`, "ünïcödé", "emoji 😀", "SELECT", long,
		"mail one", "mail two"}
	fieldNames := []string{"first name", "it's", `say "hi"`, "we`ird", `back\slash`, "ünï cödé", "emoji 😀",
		"new\nline", strings.Repeat("f", 1000), "email", "Email"}
	odd := []zetasqltest.Column{zsCol("the key`'\"", "STRING"), zsCol("e-mail ✉", "STRING")}
	var oddFields []warehouse.Field
	for i, n := range names {
		odd = append(odd, zsCol(n, zsTypes[i%len(zsTypes)]))
		oddFields = append(oddFields, warehouse.Field{Column: n, Field: fieldNames[i]})
	}
	c = base("awkward names, email, update", odd, "the key`'\"", "e-mail ✉", oddFields)
	c.update, c.email = true, true
	c.req.Query = "SELECT * FROM `" + zsProject + ".crm.users` WHERE `first name` IS NOT NULL -- the model; a comment\n;\n"
	cases = append(cases, c)

	// each type as the primary key and as the identifier (update mode casts it to STRING too)
	name := []warehouse.Field{{Column: "name", Field: "firstName"}}
	for _, typ := range zsTypes {
		cols := []zetasqltest.Column{zsCol("k", typ), zsCol("i", typ), zsCol("name", "STRING")}
		c := base("key and identifier "+typ, cols, "k", "i", name)
		c.update = true
		if !slices.ContainsFunc(zsKeyRefused, func(p string) bool { return strings.HasPrefix(typ, p) }) {
			cases = append(cases, c)
			continue
		}
		c.refusedIn, c.refusedText = []string{"plan"}, "Invalid cast from "
		cases = append(cases, c)
		// Plan's dry run does not cast the identifier (the script does): the dry run's schema
		// shows its type, and Plan refuses the model before sending the script.
		for _, update := range []bool{false, true} {
			c = base(fmt.Sprintf("identifier %s, update %v", typ, update), []zetasqltest.Column{zsCol("k", "INT64"),
				zsCol("i", typ), zsCol("name", "STRING")}, "k", "i", name)
			c.update = update
			c.planRefused = `activation crm-users: the identifier column "i" has type `
			cases = append(cases, c)
		}
	}
	return cases
}

// TestGeneratedSQLAnalyzes runs every statement the planner sends, over the matrix, through the
// analyzer.
func TestGeneratedSQLAnalyzes(t *testing.T) {
	zs := zetasqltest.Start(t)
	total := &zsStats{byStep: map[string]int{}, workarounds: map[string]int{}}
	for _, tc := range zsCases() {
		t.Run(tc.name, func(t *testing.T) { zsRunCase(t, zs, tc, total) })
	}
	var steps []string
	for s, n := range total.byStep {
		steps = append(steps, fmt.Sprintf("%s %d", s, n))
	}
	sort.Strings(steps)
	t.Logf("analyzed %d statements and IF conditions of %d jobs: %s", total.statements, total.jobs, strings.Join(steps, ", "))
	for _, w := range zetasqltest.Workarounds {
		t.Logf("workaround %q applied to %d statements: %s", w.Name, total.workarounds[w.Name], w.Why)
	}
	if len(zetasqltest.Workarounds) == 0 {
		t.Logf("no workaround: every statement was analyzed as generated")
	}
}

type zsStats struct {
	jobs, statements int
	byStep           map[string]int
	workarounds      map[string]int
}

// zsHarness is a planner on bqfake whose every job is analyzed.
type zsHarness struct {
	t        *testing.T
	zs       *zetasqltest.Server
	fake     *bqfake.Server
	p        *Planner
	cat      *zetasqltest.Catalog
	stats    *zsStats
	analyzed map[string][]zetasqltest.Statement // by SQL and parameters
	refused  map[string]error                   // by step
}

func zsRunCase(t *testing.T, zs *zetasqltest.Server, tc zsCase, stats *zsStats) {
	ctx := context.Background()
	h := &zsHarness{t: t, zs: zs, fake: bqfake.New(t), cat: zetasqltest.NewCatalog(), stats: stats,
		analyzed: map[string][]zetasqltest.Statement{}, refused: map[string]error{}}
	// BigQuery reads a quoted `project.dataset.table` as a path; the analyzer as one name.
	h.cat.AddTable([]string{zsProject + ".crm.users"}, tc.columns...)
	h.cat.AddTable([]string{zsProject, "crm", "users"}, tc.columns...)
	h.fake.AddDataset(zsDataset, "EU")
	h.run("open", func() error {
		// DML rejections: the Storage Write API path sends no SQL to analyze.
		p, err := Open(ctx, Options{Project: zsProject, Dataset: zsDataset, Location: "EU", RejectionsDML: true,
			ClientOptions: []option.ClientOption{option.WithEndpoint(h.fake.URL() + "/"), option.WithoutAuthentication()}})
		if err == nil {
			p.newBackOff = func() backoff.BackOff { return &backoff.StopBackOff{} }
			h.p = p
			t.Cleanup(func() { _ = p.Close() })
		}
		return err
	})
	if h.p == nil {
		return
	}
	// the rejections table as Open creates it (through the API, not SQL)
	rej := h.fake.Table(zsDataset + "." + RejectionsTable)
	require.NotNil(t, rej, "Open creates the rejections table")
	h.cat.AddTable([]string{zsProject, zsDataset, RejectionsTable}, zsColumns(t, rej.Schema.Fields)...)
	// and the runs table (the run log)
	runs := h.fake.Table(zsDataset + "." + RunsTable)
	require.NotNil(t, runs, "Open creates the runs table")
	h.cat.AddTable([]string{zsProject, zsDataset, RunsTable}, zsColumns(t, runs.Schema.Fields)...)

	req := tc.req
	req.IdentifierLowerCase = tc.email
	id, run := req.ActivationID, req.RunID
	known := ""
	lower := tc.email
	// stop reports whether the case ends at this step, whose SQL the analyzer refused (as the
	// case expects, or not: the steps after it would fail for the same reason).
	stop := func(step string) bool {
		err := h.refused[step]
		delete(h.refused, step)
		if i := slices.Index(tc.refusedIn, step); i >= 0 && (err != nil || i == len(tc.refusedIn)-1) {
			require.Error(t, err, "the analyzer must refuse the SQL of one of %v", tc.refusedIn)
			require.Contains(t, err.Error(), tc.refusedText)
			t.Logf("refused as expected: %s", strings.SplitN(err.Error(), "\n", 2)[0])
			return true
		}
		if err != nil {
			t.Errorf("%s: %v", step, err)
		}
		return err != nil
	}
	if tc.update {
		h.run("load identifiers", func() error {
			table, _, err := h.p.LoadIdentifiers(ctx, id, run, lower, func(add func(string) error) error {
				return add("Ann@Example.com")
			})
			known = table
			return err
		})
		if stop("load identifiers") {
			return
		}
	}
	if tc.planRefused != "" {
		// bqfake answers the dry run with the schema the analyzer gives the snapshot's SELECT.
		fields, err := checkPlanRequest(req)
		require.NoError(t, err)
		for _, a := range h.analyze("plan", []*bqfake.Job{{SQL: snapshotSelect(req, fields), DryRun: true,
			Labels: map[string]string{"step": "plan-validate"}}}) {
			h.fake.Handle(a.sql, a.res)
		}
		require.NoError(t, h.refused["plan"], "the dry run analyzes")
		start := len(h.fake.Jobs())
		_, err = h.p.Plan(ctx, req)
		require.ErrorIs(t, err, warehouse.ErrInvalidModel)
		require.ErrorContains(t, err, tc.planRefused)
		require.ErrorContains(t, err, "cast it in the model")
		jobs := h.fake.Jobs()[start:]
		require.Len(t, jobs, 1, "only the dry run: no script is sent")
		require.True(t, jobs[0].DryRun)
		t.Logf("refused as expected: %v", err)
		return
	}
	h.run("plan", func() error {
		_, err := h.p.Plan(ctx, req)
		return err
	})
	if stop("plan") {
		return
	}
	plan := warehouse.PlanTable(id, run)
	h.run("read", func() error {
		return h.p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: id, Table: plan, Fields: req.Fields,
			Chunk: warehouse.Chunk{Index: 0, FirstSeq: 1, LastSeq: 500}, KnownTable: known, KnownLowerCase: lower},
			func(warehouse.Row) error { return nil })
	})
	if stop("read") {
		return
	}
	h.run("rejections", func() error {
		return h.p.RecordRejections(ctx, id, run, []warehouse.Rejection{
			{Key: "1", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Field: "email", Reason: "invalid email"},
			{Key: "2", Op: warehouse.OpChange, Outcome: warehouse.OutcomeSkipped, Reason: "not in Iterable"},
		})
	})
	for _, limit := range []int{10, 0} {
		h.run("top reasons", func() error {
			_, err := h.p.TopReasons(ctx, id, run, limit)
			return err
		})
	}
	h.run("commit", func() error {
		_, err := h.p.Commit(ctx, warehouse.CommitRequest{ActivationID: id, RunID: run, Table: plan, Chunks: []int{0, 1}})
		return err
	})
	// the run log: a pause (NULL end, list id and workflow id) and an end with every column set
	pause := warehouse.RunRecord{ActivationID: id, RunID: run, Event: warehouse.RunEventPaused, At: time.Now(),
		Trigger: warehouse.TriggerSchedule, StartedAt: time.Now(), State: warehouse.RunStatePaused}
	end := warehouse.RunRecord{ActivationID: id, RunID: run, WorkflowID: "activation-" + id + "-manual-1",
		Event: warehouse.RunEventEnded, At: time.Now(), Trigger: warehouse.TriggerManual, StartedAt: time.Now(),
		EndedAt: time.Now(), State: warehouse.RunStateCompleted, ModelRows: 3, Planned: warehouse.OpCounts{Added: 1},
		PauseCauses: []string{"rejections"}, PauseReason: "too many rejections", PlanSeconds: 1.5, BytesBilled: 1, ListID: 7}
	for _, r := range []warehouse.RunRecord{pause, end} {
		h.run("record run", func() error { return h.p.RecordRun(ctx, r) })
	}
	h.run("runs", func() error {
		_, err := h.p.Runs(ctx, id, 0)
		return err
	})
	h.run("dry run", func() error {
		res, err := h.p.DryRun(ctx, req.Query)
		if err == nil && len(res.Unsupported) > 0 {
			return fmt.Errorf("types the planner cannot send: %v", res.Unsupported)
		}
		return err
	})
	for step, err := range h.refused {
		t.Errorf("%s: %v", step, err)
	}
}

// run calls a planner method until bqfake has an answer shaped by the analyzer for every query
// it sends (see the top of this file), and analyzes the jobs it sent.
func (h *zsHarness) run(step string, call func() error) {
	h.t.Helper()
	answers := map[string]bqfake.Result{}
	var err, first error
	for round := 0; ; round++ {
		start := len(h.fake.Jobs())
		err = call()
		if round == 0 {
			first = err
		}
		fresh := 0
		for _, a := range h.analyze(step, h.fake.Jobs()[start:]) {
			if _, ok := answers[a.sql]; !ok {
				answers[a.sql] = a.res
				fresh++
			}
		}
		if h.refused[step] != nil || round > 0 && fresh == 0 {
			break
		}
		if round == 5 {
			h.t.Errorf("%s sends new queries each time it is answered", step)
			return
		}
		// A rule answers every query whose SQL contains its text and later rules win: the
		// shorter SQL first, so each query gets its own answer.
		sqls := slices.Collect(maps.Keys(answers))
		slices.SortFunc(sqls, func(a, b string) int { return len(a) - len(b) })
		for _, sql := range sqls {
			h.fake.Handle(sql, answers[sql])
		}
	}
	if err != nil && h.refused[step] == nil {
		h.t.Errorf("%s, answered with result rows shaped by the analyzer: %v (answered without rows: %v)", step, err, first)
	}
}

type zsAnswer struct {
	sql string
	res bqfake.Result
}

// analyze analyzes each query job (once per SQL and parameters) and returns the answers for
// bqfake: the result schema and one row.
func (h *zsHarness) analyze(step string, jobs []*bqfake.Job) []zsAnswer {
	var answers []zsAnswer
	for _, j := range jobs {
		if j.Load != nil { // LoadIdentifiers' staging table, as the load job creates it
			ref := j.Load.DestinationTable
			require.NotNil(h.t, ref)
			require.NotNil(h.t, j.Load.Schema)
			h.cat.AddTable([]string{ref.ProjectId, ref.DatasetId, ref.TableId}, zsColumns(h.t, j.Load.Schema.Fields)...)
			continue
		}
		params := zsParams(h.t, j.Params)
		pj, _ := json.Marshal(params)
		key := j.SQL + "\x00" + string(pj)
		stmts, done := h.analyzed[key]
		if !done {
			var err error
			stmts, err = h.zs.AnalyzeScript(context.Background(), h.cat, j.SQL, params)
			if err != nil {
				if h.refused[step] == nil { // the first refusal; those after it may follow from it
					h.refused[step] = fmt.Errorf("job %q (dry run %v): %w", j.Labels["step"], j.DryRun, err)
				}
				continue
			}
			h.analyzed[key] = stmts
			h.stats.jobs++
			h.stats.statements += len(stmts)
			h.stats.byStep[step] += len(stmts)
			for _, st := range stmts {
				for _, w := range st.Workarounds {
					h.stats.workarounds[w]++
				}
			}
		}
		res := bqfake.Result{StatementType: "SCRIPT", BytesProcessed: 1}
		if last := stmts[len(stmts)-1]; last.Kind == "resolved_query_stmt" {
			res.Schema = &bq.TableSchema{}
			row := make([]any, len(last.Columns))
			for i, c := range last.Columns {
				f := zsField(c.Name, c.Type)
				res.Schema.Fields = append(res.Schema.Fields, f)
				switch {
				case f.Mode == "REPEATED":
					row[i] = []any{}
				case c.Name == "op" && f.Type == "STRING":
					row[i] = string(warehouse.OpAdd)
				}
			}
			res.Rows = [][]any{row}
		}
		answers = append(answers, zsAnswer{sql: j.SQL, res: res})
	}
	return answers
}

// zsParams declares a job's query parameters with the types the BigQuery client sent.
func zsParams(t *testing.T, ps []*bq.QueryParameter) []zetasqltest.Param {
	var out []zetasqltest.Param
	for _, p := range ps {
		out = append(out, zetasqltest.Param{Name: p.Name, Type: zsParamType(t, p.ParameterType)})
	}
	return out
}

func zsParamType(t *testing.T, pt *bq.QueryParameterType) zetasqltest.Type {
	require.NotNil(t, pt)
	switch pt.Type {
	case "ARRAY":
		return zetasqltest.Array(zsParamType(t, pt.ArrayType))
	case "RANGE":
		return zetasqltest.Range(zsParamType(t, pt.RangeElementType))
	case "STRUCT":
		var fs []zetasqltest.StructField
		for _, f := range pt.StructTypes {
			fs = append(fs, zetasqltest.Field(f.Name, zsParamType(t, f.Type)))
		}
		return zetasqltest.Struct(fs...)
	}
	typ, err := zetasqltest.ParseType(pt.Type)
	require.NoError(t, err)
	return typ
}

// zsColumns reads a REST table schema.
func zsColumns(t *testing.T, fields []*bq.TableFieldSchema) []zetasqltest.Column {
	var out []zetasqltest.Column
	for _, f := range fields {
		var typ zetasqltest.Type
		switch f.Type {
		case "RECORD", "STRUCT":
			var fs []zetasqltest.StructField
			for _, c := range zsColumns(t, f.Fields) {
				fs = append(fs, zetasqltest.Field(c.Name, c.Type))
			}
			typ = zetasqltest.Struct(fs...)
		case "RANGE":
			require.NotNil(t, f.RangeElementType)
			typ = zetasqltest.Range(zetasqltest.MustParseType(f.RangeElementType.Type))
		default:
			var err error
			typ, err = zetasqltest.ParseType(f.Type)
			require.NoError(t, err)
		}
		if f.Mode == "REPEATED" {
			typ = zetasqltest.Array(typ)
		}
		out = append(out, zetasqltest.Column{Name: f.Name, Type: typ})
	}
	return out
}

// zsField writes an analyzer type as a REST schema field.
func zsField(name string, t zetasqltest.Type) *bq.TableFieldSchema {
	legacy := map[string]string{"TYPE_INT64": "INTEGER", "TYPE_DOUBLE": "FLOAT", "TYPE_BOOL": "BOOLEAN"}
	name1 := func(t zetasqltest.Type) string {
		if n, ok := legacy[t.Kind]; ok {
			return n
		}
		return t.String()
	}
	switch t.Kind {
	case "TYPE_ARRAY":
		f := zsField(name, *t.Array.Element)
		f.Mode = "REPEATED"
		return f
	case "TYPE_STRUCT":
		f := &bq.TableFieldSchema{Name: name, Type: "RECORD", Mode: "NULLABLE"}
		for _, sf := range t.Struct.Fields {
			f.Fields = append(f.Fields, zsField(sf.Name, *sf.Type))
		}
		return f
	case "TYPE_RANGE":
		return &bq.TableFieldSchema{Name: name, Type: "RANGE", Mode: "NULLABLE",
			RangeElementType: &bq.TableFieldSchemaRangeElementType{Type: name1(*t.Range.Element)}}
	}
	return &bq.TableFieldSchema{Name: name, Type: name1(t), Mode: "NULLABLE"}
}

// TestAnalyzerRefusesBrokenSQL is the control: broken SQL against the same kind of catalog (the
// state table from createStateSQL, temporary tables of the script) is reported, wherever it is.
func TestAnalyzerRefusesBrokenSQL(t *testing.T) {
	zs := zetasqltest.Start(t)
	ctx := context.Background()
	state := "`p`.`d`.`state_x`"
	cat := zetasqltest.NewCatalog()
	_, err := zs.AnalyzeScript(ctx, cat, createStateSQL(state), nil)
	require.NoError(t, err)
	_, ok := cat.Table("p", "d", "state_x")
	require.True(t, ok, "the CREATE TABLE statement adds the state table")
	n := []zetasqltest.Param{{Name: "n", Type: zetasqltest.Scalar("INT64")}}

	tests := []struct {
		name, sql string
		params    []zetasqltest.Param
		want      string
	}{
		{"unknown column", "SELECT no_such_column FROM " + state, nil, "Unrecognized name: no_such_column"},
		{"unknown table", "SELECT key FROM `p`.`d`.`no_such_table`", nil, "Table not found"},
		{"STRING compared with INT64", "SELECT key FROM " + state + " WHERE key = 42", nil,
			"No matching signature for operator ="},
		{"undeclared parameter", "SELECT key FROM " + state + " WHERE key = @undeclared", n,
			"Query parameter 'undeclared' not found"},
		{"parameter of another type", "SELECT key FROM " + state + " WHERE key = @n", n,
			"No matching signature for operator ="},
		{"inside an IF block", "IF TRUE THEN\n  SELECT 1;\n  DELETE FROM " + state + " WHERE nope;\nEND IF", nil,
			"Unrecognized name: nope"},
		{"IF condition that is not a BOOL", "IF (SELECT COUNT(*) FROM " + state + ") THEN\n  SELECT 1;\nEND IF", nil,
			"the IF condition is a INT64, not a BOOL"},
		{"column a temporary table does not have", "CREATE TEMP TABLE t AS SELECT key AS k FROM " + state +
			";\nSELECT key FROM t", nil, "Unrecognized name: key"},
		{"table used before it is created", "SELECT * FROM later;\nCREATE TEMP TABLE later AS SELECT 1 AS x", nil,
			"Table not found: later"},
		{"unknown table option", "CREATE TABLE `p`.`d`.`x` (a INT64)\nOPTIONS (expiration_timestamps = CURRENT_TIMESTAMP())",
			nil, "Unknown option"},
		{"table option of the wrong type", "CREATE TABLE `p`.`d`.`x` (a INT64)\nOPTIONS (expiration_timestamp = 7)", nil,
			"expiration_timestamp"},
		{"script statement the test does not model", "DECLARE x INT64 DEFAULT 1;\nSELECT x", nil, "is not analyzed"},
		{"syntax error", "SELECT key FROM " + state + " WHERE", nil, "Syntax error"},
		{"column an ALTER TABLE dropped", "ALTER TABLE " + state + " DROP COLUMN row_hash;\nSELECT row_hash FROM " + state,
			nil, "Unrecognized name: row_hash"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := zs.AnalyzeScript(ctx, cat.Clone(), tc.sql, tc.params)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}

	t.Run("ALTER TABLE ADD COLUMN adds the column", func(t *testing.T) {
		c := cat.Clone()
		_, err := zs.AnalyzeScript(ctx, c, "ALTER TABLE "+state+" ADD COLUMN IF NOT EXISTS extra INT64;\n"+
			"SELECT extra + 1 FROM "+state, nil)
		require.NoError(t, err)
		tbl, _ := c.Table("p", "d", "state_x")
		require.Equal(t, zetasqltest.Column{Name: "extra", Type: zetasqltest.Scalar("INT64")}, tbl.Columns[len(tbl.Columns)-1])
	})

	t.Run("temporary tables end with their script", func(t *testing.T) {
		c := cat.Clone()
		_, err := zs.AnalyzeScript(ctx, c, "CREATE TEMP TABLE t AS SELECT 1 AS x;\nSELECT x FROM t", nil)
		require.NoError(t, err)
		_, err = zs.AnalyzeScript(ctx, c, "SELECT x FROM t", nil)
		require.ErrorContains(t, err, "Table not found: t")
	})
}
