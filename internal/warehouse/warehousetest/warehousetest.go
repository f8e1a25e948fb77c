// Package warehousetest is the conformance suite of warehouse.Planner: every warehouse (DuckDB,
// BigQuery) must pass Run, so the workflow can rely on one behaviour.
package warehousetest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

// ColumnType is a portable column type of a test model.
type ColumnType string

const (
	String    ColumnType = "string"    // VARCHAR / STRING; Go string
	Int       ColumnType = "int"       // BIGINT / INT64; Go int64
	Float     ColumnType = "float"     // DOUBLE / FLOAT64; Go float64
	Bool      ColumnType = "bool"      // BOOLEAN / BOOL; Go bool
	Timestamp ColumnType = "timestamp" // TIMESTAMP; Go time.Time (UTC)
)

// Column is one column of a test model.
type Column struct {
	Name string
	Type ColumnType
}

// Table is the whole content of a test model; a nil cell is NULL.
type Table struct {
	Columns []Column
	Rows    [][]any
}

// Model is where the planner finds a test model.
type Model struct {
	Query   string
	BaseDir string
}

// Fixture lets the suite change the model between runs.
type Fixture interface {
	// SetModel makes the model hold exactly table's rows, with its column types, replacing what
	// it held before, and returns the query (and base folder) that reads it.
	SetModel(t *testing.T, table Table) Model
}

// Run runs the conformance suite. newPlanner returns a fresh planner (with an empty state) and
// the fixture that writes its models; each subtest calls it once.
func Run(t *testing.T, newPlanner func(t *testing.T) (warehouse.Planner, Fixture)) {
	tests := []struct {
		name string
		run  func(t *testing.T, s *suite)
	}{
		{"first run plans every row as an add", testFirstRun},
		{"unchanged model plans nothing", testUnchanged},
		{"one changed field", testOneChangedField},
		{"identifier change changes every field", testIdentifierChange},
		{"removed row", testRemovedRow},
		{"null keys are counted and never planned", testNullKeys},
		{"duplicate keys are counted and skipped and never removed", testDuplicateKeys},
		{"commit holds rejected keys which are planned again", testCommitHoldsRejected},
		{"commit only applies finished chunks", testCommitFinishedChunks},
		{"commit is idempotent", testCommitIdempotent},
		{"commit of adds is idempotent over repeated and overlapping chunks", testCommitAddsIdempotent},
		{"committed chunks committed again under another run id apply its rejections", testRecommitUnderAnotherRun},
		{"read chunk resumes after a seq", testReadChunkResume},
		{"chunks cover every seq exactly once", testChunksCover},
		{"full resync plans every row as an add", testFullResync},
		{"hashes are type sensitive", testTypeSensitive},
		{"NULL differs from the string null", testNullVersusString},
		{"a field added to the mapping is the only changed field", testAddedField},
		{"plan is deterministic and replaceable", testDeterministic},
		{"top reasons count keys most frequent first", testTopReasons},
		{"drop plan", testDropPlan},
		{"invalid model", testInvalidModel},
		{"removal carries the identifier last synced", testRemovalIdentifier},
		{"removal whose identifier another key carries keeps the profile", testRemovalKeepsProfile},
		{"identifiers shared by several keys are skipped", testSharedIdentifiers},
		{"known rejections hold rows back until they change", testKnownRejections},
		{"type conflicts hold rows back while the conflict lasts", testKnownTypeConflict},
		{"rejections by Iterable are sent again with their prior", testPriorIterableRejection},
		{"old rejections are pruned except each key's latest", testRejectionsRetention},
		{"unmapping a field refreshes the state once", testUnmappedFieldRefresh},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, fx := newPlanner(t)
			s := &suite{t: t, p: p, fx: fx, req: warehouse.PlanRequest{
				ActivationID: fmt.Sprintf("conformance-%d", i),
				PrimaryKey:   "id",
				Identifier:   "email",
				Fields:       baseFields(),
			}}
			tt.run(t, s)
		})
	}
}

// suite drives one activation through runs.
type suite struct {
	t    *testing.T
	p    warehouse.Planner
	fx   Fixture
	req  warehouse.PlanRequest
	runs int
}

func baseFields() []warehouse.Field {
	return []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}, {Column: "plan", Field: "plan"}}
}

var allFields = []string{"age", "firstName", "plan"}

var userColumns = []Column{{"id", Int}, {"email", String}, {"name", String}, {"age", Int}, {"plan", String}}

func user(i int) []any {
	return []any{int64(i), fmt.Sprintf("user%d@example.com", i), fmt.Sprintf("Name%d", i), int64(20 + i), "free"}
}

func users(ids ...int) [][]any {
	rows := make([][]any, len(ids))
	for i, id := range ids {
		rows[i] = user(id)
	}
	return rows
}

func ids(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func keys(ids ...int) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = strconv.Itoa(id)
	}
	sort.Strings(out)
	return out
}

func (s *suite) model(rows [][]any) { s.modelOf(Table{Columns: userColumns, Rows: rows}) }

func (s *suite) modelOf(tb Table) {
	s.t.Helper()
	m := s.fx.SetModel(s.t, tb)
	s.req.Query, s.req.BaseDir = m.Query, m.BaseDir
}

// plan plans a new run; a modifier may set RunID to plan a run again.
func (s *suite) plan(mods ...func(*warehouse.PlanRequest)) warehouse.Plan {
	s.t.Helper()
	s.runs++
	req := s.req
	req.RunID = fmt.Sprintf("run-%d", s.runs)
	for _, m := range mods {
		m(&req)
	}
	p, err := s.p.Plan(context.Background(), req)
	require.NoError(s.t, err)
	require.NotEmpty(s.t, p.Table)
	require.Equal(s.t, p.Counts.Added+p.Counts.Changed+p.Counts.Removed, p.Counts.Planned())
	return p
}

func (s *suite) runID() string { return fmt.Sprintf("run-%d", s.runs) }

func (s *suite) read(p warehouse.Plan, c warehouse.Chunk, after int64) []warehouse.Row {
	s.t.Helper()
	var rows []warehouse.Row
	err := s.p.ReadChunk(context.Background(), warehouse.ChunkRequest{
		ActivationID: s.req.ActivationID, Table: p.Table, Fields: s.req.Fields, Chunk: c, AfterSeq: after,
	}, func(r warehouse.Row) error { rows = append(rows, r); return nil })
	require.NoError(s.t, err)
	return rows
}

func (s *suite) readAll(p warehouse.Plan) []warehouse.Row {
	s.t.Helper()
	var rows []warehouse.Row
	for _, c := range p.Chunks {
		rows = append(rows, s.read(p, c, c.FirstSeq-1)...)
	}
	return rows
}

func (s *suite) commit(p warehouse.Plan, chunks ...int) warehouse.CommitResult {
	s.t.Helper()
	res, err := s.p.Commit(context.Background(), warehouse.CommitRequest{
		ActivationID: s.req.ActivationID, RunID: s.runID(), Table: p.Table, Chunks: chunks,
	})
	require.NoError(s.t, err)
	return res
}

func allChunks(p warehouse.Plan) []int {
	out := make([]int, len(p.Chunks))
	for i, c := range p.Chunks {
		out[i] = c.Index
	}
	return out
}

func (s *suite) reject(rs ...warehouse.Rejection) {
	s.t.Helper()
	require.NoError(s.t, s.p.RecordRejections(context.Background(), s.req.ActivationID, s.runID(), rs))
}

// sync runs a whole successful run: plan, read, commit every chunk, drop.
func (s *suite) sync(mods ...func(*warehouse.PlanRequest)) warehouse.Plan {
	s.t.Helper()
	p := s.plan(mods...)
	s.readAll(p)
	s.commit(p, allChunks(p)...)
	require.NoError(s.t, s.p.DropPlan(context.Background(), p.Table))
	return p
}

func rowKeys(rows []warehouse.Row) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Key
	}
	return out
}

func byKey(rows []warehouse.Row) map[string]warehouse.Row {
	out := map[string]warehouse.Row{}
	for _, r := range rows {
		out[r.Key] = r
	}
	return out
}

func testFirstRun(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Added: 5}, p.Counts)
	require.Equal(t, []warehouse.Chunk{{Index: 0, FirstSeq: 1, LastSeq: 5, Added: 5}}, p.Chunks)
	rows := s.readAll(p)
	require.Equal(t, keys(1, 2, 3, 4, 5), rowKeys(rows))
	for i, r := range rows {
		require.Equal(t, int64(i+1), r.Seq)
		require.Equal(t, warehouse.OpAdd, r.Op)
		require.Equal(t, allFields, r.Changed)
	}
	r := byKey(rows)["3"]
	require.Equal(t, "user3@example.com", r.Identifier)
	require.Equal(t, map[string]any{"firstName": "Name3", "age": int64(23), "plan": "free"}, r.Values.Map())
}

func testUnchanged(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	s.sync()
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Unchanged: 5}, p.Counts)
	require.Empty(t, p.Chunks)
}

func testOneChangedField(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	s.sync()
	rows := users(1, 2, 3)
	rows[1][2] = "Renamed" // name of id 2
	s.model(rows)
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Changed: 1, Unchanged: 2}, p.Counts)
	got := s.readAll(p)
	require.Len(t, got, 1)
	require.Equal(t, "2", got[0].Key)
	require.Equal(t, warehouse.OpChange, got[0].Op)
	require.Equal(t, []string{"firstName"}, got[0].Changed)
	require.Equal(t, map[string]any{"firstName": "Renamed", "age": int64(22), "plan": "free"}, got[0].Values.Map())
	require.Equal(t, "user2@example.com", got[0].Identifier)
	require.Nil(t, got[0].PreviousIdentifier, "the identifier did not change")
}

func testIdentifierChange(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	s.sync()
	rows := users(1, 2, 3)
	rows[2][1] = "new@example.com"
	s.model(rows)
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Changed: 1, Unchanged: 2}, p.Counts)
	got := s.readAll(p)
	require.Len(t, got, 1)
	require.Equal(t, "3", got[0].Key)
	require.Equal(t, warehouse.OpChange, got[0].Op)
	require.Equal(t, allFields, got[0].Changed)
	require.Equal(t, "new@example.com", got[0].Identifier)
	require.Equal(t, "user3@example.com", got[0].PreviousIdentifier, "the profile it was synced with (a list unsubscribes it)")
	require.False(t, got[0].KeepProfile)
}

func testRemovedRow(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4))
	s.sync()
	s.model(users(1, 2, 3))
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Removed: 1, Unchanged: 3}, p.Counts)
	got := s.readAll(p)
	require.Len(t, got, 1)
	require.Equal(t, "4", got[0].Key)
	require.Equal(t, warehouse.OpRemove, got[0].Op)
	require.Zero(t, got[0].Values.Len())
	require.Empty(t, got[0].Changed)
	require.Equal(t, warehouse.CommitResult{Deleted: 1}, s.commit(p, allChunks(p)...))
	require.Zero(t, s.plan().Counts.Planned())
}

func testNullKeys(t *testing.T, s *suite) {
	rows := users(1, 2, 3)
	nullKey := user(9)
	nullKey[0] = nil
	s.model(append(rows, nullKey, slices.Clone(nullKey)))
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Added: 3, NullKeys: 2}, p.Counts)
	require.Equal(t, keys(1, 2, 3), rowKeys(s.readAll(p)))
}

func testDuplicateKeys(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	s.sync()
	// Key 2 (synced before) now appears twice, new key 6 three times.
	rows := users(1, 2, 3, 4, 5, 6, 6, 6)
	dup := user(2)
	dup[2] = "Other"
	rows = append(rows, dup)
	s.model(rows)
	for range 2 { // a retried Plan of the same run records the duplicates once
		p := s.plan(func(r *warehouse.PlanRequest) { r.RunID = "run-dup" })
		require.Equal(t, warehouse.Counts{ModelRows: 9, Unchanged: 4, DuplicateKeys: 5}, p.Counts)
		require.Empty(t, p.Chunks)
	}
	top, err := s.p.TopReasons(context.Background(), s.req.ActivationID, "run-dup", 10)
	require.NoError(t, err)
	require.ElementsMatch(t, []warehouse.ReasonCount{
		{Outcome: warehouse.OutcomeSkipped, Reason: fmt.Sprintf(warehouse.DuplicateKeyReasonFormat, 2), Count: 1},
		{Outcome: warehouse.OutcomeSkipped, Reason: fmt.Sprintf(warehouse.DuplicateKeyReasonFormat, 3), Count: 1},
	}, top)

	// Once the duplicates are gone, 6 is added (a retry: an earlier run held it back) and 2,
	// still in the state, is unchanged.
	s.model(users(1, 2, 3, 4, 5, 6))
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 6, Added: 1, Unchanged: 5, Retried: 1}, p.Counts)
}

func testCommitHoldsRejected(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan()
	s.reject(warehouse.Rejection{Key: "3", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Field: "email", Reason: "invalid email"},
		warehouse.Rejection{Key: "3", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Field: "email", Reason: "invalid email"})
	require.Equal(t, warehouse.CommitResult{Upserted: 4, Held: 1}, s.commit(p, allChunks(p)...))

	// 3 is planned again (counted as retried); 5 and 4 leave the model. The removal of 5 is
	// skipped (its profile is not in Iterable: nothing to clear) and committed all the same;
	// the removal of 4 is rejected, held, and planned again.
	s.model(users(1, 2, 3))
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Added: 1, Removed: 2, Unchanged: 2, Retried: 1}, p.Counts)
	got := byKey(s.readAll(p))
	require.Equal(t, warehouse.OpAdd, got["3"].Op)
	require.Equal(t, warehouse.OpRemove, got["5"].Op)
	s.reject(warehouse.Rejection{Key: "5", Op: warehouse.OpRemove, Outcome: warehouse.OutcomeSkipped,
		Class: warehouse.ClassNotInIterable, Reason: "not in Iterable"},
		warehouse.Rejection{Key: "4", Op: warehouse.OpRemove, Outcome: warehouse.OutcomeRejected,
			Class: warehouse.ClassIterable, Reason: "refused"})
	require.Equal(t, warehouse.CommitResult{Upserted: 1, Deleted: 1, Held: 1}, s.commit(p, allChunks(p)...))

	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Removed: 1, Unchanged: 3}, p.Counts)
	require.Equal(t, []string{"4"}, rowKeys(s.readAll(p)))
}

func testCommitFinishedChunks(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 2 })
	require.Len(t, p.Chunks, 3)
	require.Equal(t, warehouse.CommitResult{Upserted: 3}, s.commit(p, 0, 2))
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Added: 2, Unchanged: 3}, p.Counts)
	require.Equal(t, keys(3, 4), rowKeys(s.readAll(p)))
}

func testCommitIdempotent(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4))
	s.sync()
	rows := users(1, 2, 3, 5)
	rows[0][3] = int64(99)
	s.model(rows)
	p := s.plan()
	s.reject(warehouse.Rejection{Key: "5", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Reason: "bad"})
	first := s.commit(p, allChunks(p)...)
	require.Equal(t, warehouse.CommitResult{Upserted: 1, Deleted: 1, Held: 1}, first)
	require.Equal(t, first, s.commit(p, allChunks(p)...))
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 4, Added: 1, Unchanged: 3, Retried: 1}, p.Counts)
}

func testReadChunkResume(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 2 })
	c := p.Chunks[1]
	require.Equal(t, warehouse.Chunk{Index: 1, FirstSeq: 3, LastSeq: 4, Added: 2}, c)
	seqs := func(rows []warehouse.Row) []int64 {
		out := []int64{}
		for _, r := range rows {
			out = append(out, r.Seq)
		}
		return out
	}
	for _, tc := range []struct {
		after int64
		want  []int64
	}{{0, []int64{3, 4}}, {2, []int64{3, 4}}, {3, []int64{4}}, {4, []int64{}}, {9, []int64{}}} {
		require.Equal(t, tc.want, seqs(s.read(p, c, tc.after)), "after %d", tc.after)
	}
}

func testChunksCover(t *testing.T, s *suite) {
	s.model(users(ids(1, 10)...))
	s.sync()
	rows := users(append(ids(1, 7), ids(11, 14)...)...)
	rows[1][2], rows[4][3] = "Changed", int64(0)
	s.model(rows)
	p := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 3 })
	require.Equal(t, warehouse.Counts{ModelRows: 11, Added: 4, Changed: 2, Removed: 3, Unchanged: 5}, p.Counts)
	require.Len(t, p.Chunks, 3)
	next := int64(1)
	var all []warehouse.Row
	for i, c := range p.Chunks {
		require.Equal(t, i, c.Index)
		require.Equal(t, next, c.FirstSeq)
		require.LessOrEqual(t, c.Rows(), int64(3))
		next = c.LastSeq + 1
		got := s.read(p, c, c.FirstSeq-1)
		require.Len(t, got, int(c.Rows()))
		var n warehouse.Counts
		for _, r := range got {
			switch r.Op {
			case warehouse.OpAdd:
				n.Added++
			case warehouse.OpChange:
				n.Changed++
			case warehouse.OpRemove:
				n.Removed++
			}
		}
		require.Equal(t, []int64{c.Added, c.Changed, c.Removed}, []int64{n.Added, n.Changed, n.Removed})
		all = append(all, got...)
	}
	require.Equal(t, p.Counts.Planned(), next-1)
	for i, r := range all {
		require.Equal(t, int64(i+1), r.Seq)
	}
	require.True(t, sort.StringsAreSorted(rowKeys(all)), "rows are in key order")
	require.Equal(t, keys(2, 5, 8, 9, 10, 11, 12, 13, 14), rowKeys(all))
}

// testCommitAddsIdempotent commits the same chunks of adds twice, then chunks overlapping them:
// the state must hold each key once, which a later change of one key shows (one row to send).
func testCommitAddsIdempotent(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 2 })
	require.Len(t, p.Chunks, 3)
	first := s.commit(p, 0, 1)
	require.Equal(t, warehouse.CommitResult{Upserted: 4}, first)
	require.Equal(t, first, s.commit(p, 0, 1))
	require.Equal(t, first, s.commit(p, 1, 0, 1))
	require.Equal(t, warehouse.CommitResult{Upserted: 3}, s.commit(p, 1, 2))
	require.Zero(t, s.plan().Counts.Planned())
	rows := users(1, 2, 3, 4, 5)
	rows[2][2] = "Changed"
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Changed: 1, Unchanged: 4}, p.Counts)
	require.Equal(t, keys(3), rowKeys(s.readAll(p)))
	require.Equal(t, warehouse.CommitResult{Upserted: 1}, s.commit(p, allChunks(p)...))
	require.Zero(t, s.plan().Counts.Planned())
}

// testRecommitUnderAnotherRun is what `resume --skip-rejected` does (activities.SkipRejected):
// chunks already committed are committed again under a pseudo-run id that has no rejections, so
// the rows the run held back enter the state. The adds committed the first time must not be in
// the state twice.
func testRecommitUnderAnotherRun(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4))
	p := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 2 })
	s.reject(warehouse.Rejection{Key: "2", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Reason: "bad"})
	require.Equal(t, warehouse.CommitResult{Upserted: 3, Held: 1}, s.commit(p, allChunks(p)...))
	skip := warehouse.CommitRequest{ActivationID: s.req.ActivationID, RunID: s.runID() + "/skipped-by-operator",
		Table: p.Table, Chunks: allChunks(p)}
	res, err := s.p.Commit(context.Background(), skip)
	require.NoError(t, err)
	require.Equal(t, warehouse.CommitResult{Upserted: 4}, res)
	res, err = s.p.Commit(context.Background(), skip)
	require.NoError(t, err)
	require.Equal(t, warehouse.CommitResult{Upserted: 4}, res, "a repeated commit reports the same")
	require.Zero(t, s.plan().Counts.Planned(), "the held add entered the state")
	rows := users(1, 2, 3, 4)
	rows[0][2] = "Changed"
	rows[1][2] = "Changed too"
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 4, Changed: 2, Unchanged: 2}, p.Counts)
	require.Equal(t, keys(1, 2), rowKeys(s.readAll(p)), "each key once")
}

func testFullResync(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	s.sync()
	rows := users(1, 2, 3, 4)
	rows[0][2] = "Changed"
	s.model(rows)
	p := s.plan(func(r *warehouse.PlanRequest) { r.FullResync = true })
	require.Equal(t, warehouse.Counts{ModelRows: 4, Added: 4, Removed: 1}, p.Counts)
	for _, r := range s.readAll(p) {
		if r.Key == "5" {
			require.Equal(t, warehouse.OpRemove, r.Op)
			continue
		}
		require.Equal(t, warehouse.OpAdd, r.Op)
		require.Equal(t, allFields, r.Changed)
		require.Equal(t, 3, r.Values.Len())
	}
	require.Equal(t, warehouse.CommitResult{Upserted: 4, Deleted: 1}, s.commit(p, allChunks(p)...))
	require.Zero(t, s.plan().Counts.Planned())
	// The adds replaced their keys' rows: a change of one key is one row to send, not two.
	rows[1][2] = "Changed too"
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 4, Changed: 1, Unchanged: 3}, p.Counts)
	require.Equal(t, keys(2), rowKeys(s.readAll(p)))
}

// withColumn is the users model plus one column, with one value for every row.
func withColumn(col Column, v any, ids ...int) Table {
	tb := Table{Columns: append(slices.Clone(userColumns), col)}
	for _, r := range users(ids...) {
		tb.Rows = append(tb.Rows, append(r, v))
	}
	return tb
}

// changedFields plans the next run and returns the changed fields of every planned row.
func (s *suite) changedFields() map[string][]string {
	s.t.Helper()
	p := s.plan()
	out := map[string][]string{}
	for _, r := range s.readAll(p) {
		out[r.Key] = r.Changed
	}
	s.commit(p, allChunks(p)...)
	return out
}

func testTypeSensitive(t *testing.T, s *suite) {
	s.req.Fields = append(baseFields(), warehouse.Field{Column: "score", Field: "score"})
	steps := []struct {
		col  Column
		v    any
		want map[string][]string
	}{
		{Column{"score", Int}, int64(1), map[string][]string{"1": {"age", "firstName", "plan", "score"}, "2": {"age", "firstName", "plan", "score"}}},
		{Column{"score", String}, "1", map[string][]string{"1": {"score"}, "2": {"score"}}},
		{Column{"score", String}, "1", map[string][]string{}},
		{Column{"score", Int}, int64(1), map[string][]string{"1": {"score"}, "2": {"score"}}},
		{Column{"score", Bool}, true, map[string][]string{"1": {"score"}, "2": {"score"}}},
		{Column{"score", String}, "true", map[string][]string{"1": {"score"}, "2": {"score"}}},
	}
	for i, st := range steps {
		s.modelOf(withColumn(st.col, st.v, 1, 2))
		require.Equal(t, st.want, s.changedFields(), "step %d", i)
	}
}

func testNullVersusString(t *testing.T, s *suite) {
	s.req.Fields = append(baseFields(), warehouse.Field{Column: "nick", Field: "nickname"})
	steps := []struct {
		v    any
		want map[string][]string
	}{
		{nil, map[string][]string{"1": {"age", "firstName", "nickname", "plan"}}},
		{"null", map[string][]string{"1": {"nickname"}}},
		{nil, map[string][]string{"1": {"nickname"}}},
		{"", map[string][]string{"1": {"nickname"}}},
		{nil, map[string][]string{"1": {"nickname"}}},
		{nil, map[string][]string{}},
	}
	for i, st := range steps {
		s.modelOf(withColumn(Column{"nick", String}, st.v, 1))
		require.Equal(t, st.want, s.changedFields(), "step %d", i)
	}
}

func testAddedField(t *testing.T, s *suite) {
	s.req.Fields = []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}}
	s.model(users(1, 2))
	s.sync()
	s.req.Fields = baseFields()
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 2, Changed: 2}, p.Counts)
	for _, r := range s.readAll(p) {
		require.Equal(t, []string{"plan"}, r.Changed)
		plan, _ := r.Values.Get("plan")
		require.Equal(t, "free", plan)
	}
	s.commit(p, allChunks(p)...)
	// A field leaving the mapping has nothing to send.
	s.req.Fields = []warehouse.Field{{Column: "name", Field: "firstName"}}
	require.Zero(t, s.plan().Counts.Planned())
}

func testDeterministic(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4))
	s.sync()
	rows := users(1, 2, 3, 5, 6, 7)
	rows[0][4] = "pro"
	s.model(rows)
	same := func(r *warehouse.PlanRequest) { r.RunID = "run-again"; r.ChunkRows = 2 }
	p1 := s.plan(same)
	r1 := s.readAll(p1)
	p2 := s.plan(same)
	require.Equal(t, p1, p2)
	require.Equal(t, r1, s.readAll(p2))
	other := s.plan(func(r *warehouse.PlanRequest) { r.ChunkRows = 2 })
	require.NotEqual(t, p1.Table, other.Table, "each run has its own plan table")
	require.Equal(t, p1.Chunks, other.Chunks)
}

func testTopReasons(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan()
	rej := func(key string, o warehouse.Outcome, reason string) warehouse.Rejection {
		return warehouse.Rejection{Key: key, Op: warehouse.OpAdd, Outcome: o, Reason: reason}
	}
	s.reject(rej("1", warehouse.OutcomeRejected, "invalid email"), rej("2", warehouse.OutcomeRejected, "invalid email"),
		rej("3", warehouse.OutcomeSkipped, "not in Iterable"))
	// a retried chunk records the same rejections again
	s.reject(rej("1", warehouse.OutcomeRejected, "invalid email"), rej("4", warehouse.OutcomeRejected, "invalid email"))
	require.NoError(t, s.p.RecordRejections(context.Background(), s.req.ActivationID, "other-run",
		[]warehouse.Rejection{rej("5", warehouse.OutcomeRejected, "other run")}))
	require.NoError(t, s.p.RecordRejections(context.Background(), s.req.ActivationID, s.runID(), nil))

	top, err := s.p.TopReasons(context.Background(), s.req.ActivationID, s.runID(), 10)
	require.NoError(t, err)
	require.Equal(t, []warehouse.ReasonCount{
		{Outcome: warehouse.OutcomeRejected, Reason: "invalid email", Count: 3},
		{Outcome: warehouse.OutcomeSkipped, Reason: "not in Iterable", Count: 1},
	}, top)
	top, err = s.p.TopReasons(context.Background(), s.req.ActivationID, s.runID(), 1)
	require.NoError(t, err)
	require.Len(t, top, 1)
	require.Equal(t, warehouse.CommitResult{Upserted: 1, Held: 4}, s.commit(p, allChunks(p)...))
}

func testDropPlan(t *testing.T, s *suite) {
	s.model(users(1, 2))
	p := s.plan()
	ctx := context.Background()
	require.NoError(t, s.p.DropPlan(ctx, p.Table))
	require.NoError(t, s.p.DropPlan(ctx, p.Table), "dropping twice is harmless")
	err := s.p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: s.req.ActivationID, Table: p.Table,
		Fields: s.req.Fields, Chunk: p.Chunks[0]}, func(warehouse.Row) error { return nil })
	require.Error(t, err)
}

func testInvalidModel(t *testing.T, s *suite) {
	s.model(users(1, 2))
	good := s.req
	cases := []struct {
		name string
		mod  func(*warehouse.PlanRequest)
	}{
		{"syntax error", func(r *warehouse.PlanRequest) { r.Query = "SELEC id FROM nowhere" }},
		{"missing table", func(r *warehouse.PlanRequest) { r.Query = "SELECT * FROM no_such_table_anywhere" }},
		{"missing field column", func(r *warehouse.PlanRequest) {
			r.Fields = append(baseFields(), warehouse.Field{Column: "no_such_column", Field: "x"})
		}},
		{"missing primary key column", func(r *warehouse.PlanRequest) { r.PrimaryKey = "no_such_key" }},
		{"missing identifier column", func(r *warehouse.PlanRequest) { r.Identifier = "no_such_identifier" }},
		{"field mapped twice", func(r *warehouse.PlanRequest) {
			r.Fields = append(baseFields(), warehouse.Field{Column: "email", Field: "age"})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := good
			req.RunID = "run-invalid"
			tc.mod(&req)
			_, err := s.p.Plan(context.Background(), req)
			require.ErrorIs(t, err, warehouse.ErrInvalidModel)
			require.Contains(t, err.Error(), req.ActivationID)
		})
	}
	// The activation still plans once the model is fixed.
	require.Equal(t, int64(2), s.plan().Counts.Added)
}

func testRemovalIdentifier(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4))
	s.sync()
	rows := users(1, 2, 3, 4)
	rows[3][1] = "moved4@example.com" // 4 is synced once more with another identifier
	s.model(rows)
	s.sync()
	s.model(users(1, 2))
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 2, Removed: 2, Unchanged: 2}, p.Counts)
	got := byKey(s.readAll(p))
	require.Equal(t, "user3@example.com", got["3"].Identifier, "a removal names the profile it was synced with")
	require.Equal(t, "moved4@example.com", got["4"].Identifier, "the identifier of the latest commit")
	for _, k := range []string{"3", "4"} {
		require.Equal(t, warehouse.OpRemove, got[k].Op)
		require.False(t, got[k].KeepProfile)
		require.Zero(t, got[k].Values.Len())
	}
	require.Equal(t, warehouse.CommitResult{Deleted: 2}, s.commit(p, allChunks(p)...))
	require.Equal(t, warehouse.Counts{ModelRows: 2, Unchanged: 2}, s.plan().Counts, "committed removals are not planned again")
}

func testRemovalKeepsProfile(t *testing.T, s *suite) {
	s.req.IdentifierLowerCase = true
	s.model(users(1, 2, 3))
	s.sync()
	// The person of key 3 comes back under key 9 with the same email, in another case.
	rows := users(1, 2, 9)
	rows[2][1] = "USER3@example.com"
	s.model(rows)
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Added: 1, Removed: 1, Unchanged: 2}, p.Counts)
	got := byKey(s.readAll(p))
	require.True(t, got["3"].KeepProfile, "the removal of 3 must not clear the profile key 9 now carries")
	require.Equal(t, "user3@example.com", got["3"].Identifier)
	require.False(t, got["9"].KeepProfile)
}

func testSharedIdentifiers(t *testing.T, s *suite) {
	s.req.IdentifierLowerCase = true
	s.model(users(1, 2, 3, 4, 5))
	s.sync()
	// 2 takes 3's email (another case), 5 is changed; 6 and 7 enter sharing one email.
	rows := users(1, 2, 3, 4, 5, 6, 7)
	rows[1][1] = "User3@Example.com"
	rows[1][2] = "Renamed"
	rows[4][2] = "Renamed"
	rows[6][1] = "user6@example.com"
	s.model(rows)
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 7, Changed: 1, Unchanged: 2, DuplicateIdentifiers: 4}, p.Counts)
	require.Equal(t, keys(5), rowKeys(s.readAll(p)), "rows sharing an identifier are never sent")
	top, err := s.p.TopReasons(context.Background(), s.req.ActivationID, s.runID(), 0)
	require.NoError(t, err)
	require.Equal(t, []warehouse.ReasonCount{{Outcome: warehouse.OutcomeSkipped,
		Reason: fmt.Sprintf(warehouse.SharedIdentifierReasonFormat, 2), Count: 4}}, top)
	// A retried plan of the same run records them once.
	run := s.runID()
	again := s.plan(func(r *warehouse.PlanRequest) { r.RunID = run })
	s.runs--
	require.Equal(t, p.Counts, again.Counts)
	top, err = s.p.TopReasons(context.Background(), s.req.ActivationID, s.runID(), 0)
	require.NoError(t, err)
	require.Equal(t, int64(4), top[0].Count)
	require.Equal(t, warehouse.CommitResult{Upserted: 1}, s.commit(p, allChunks(p)...))

	// Once 2 has its own email again, the state still held its old row: 2 changes (its
	// original value comes back, so nothing but the fields it changed is sent).
	rows[1][1] = "user2@example.com"
	rows = rows[:5]
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Changed: 1, Unchanged: 4}, p.Counts)
	got := s.readAll(p)
	require.Equal(t, keys(2), rowKeys(got), "the state kept 2's last synced row while it was held")
	require.Equal(t, []string{"firstName"}, got[0].Changed)
}

// rejectAll records one rejection per key with the row hash the plan gave it.
func (s *suite) rejectAll(p warehouse.Plan, class warehouse.Class, field, reason string, keys ...string) {
	s.t.Helper()
	rows := byKey(s.readAll(p))
	var rs []warehouse.Rejection
	for _, k := range keys {
		r, ok := rows[k]
		require.True(s.t, ok, "key %s is in the plan", k)
		require.NotEmpty(s.t, r.RowHash, "planned rows carry their row hash")
		rs = append(rs, warehouse.Rejection{Key: k, Op: r.Op, Outcome: warehouse.OutcomeRejected, Class: class,
			Field: field, Reason: reason, RowHash: r.RowHash})
	}
	s.reject(rs...)
}

func testKnownRejections(t *testing.T, s *suite) {
	s.model(users(1, 2, 3, 4, 5))
	p := s.plan()
	s.rejectAll(p, warehouse.ClassIdentifier, "email", "invalid email in column email", "2", "4")
	require.Equal(t, warehouse.CommitResult{Upserted: 3, Held: 2}, s.commit(p, allChunks(p)...))

	// Unchanged rows that were rejected before sending are planned with their prior, held.
	rows := users(1, 2, 3, 4, 5)
	rows[3][2] = "Renamed" // 4 changed: it is checked again
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 5, Added: 2, Unchanged: 3, Retried: 2, Known: 1}, p.Counts)
	require.Equal(t, []warehouse.ReasonCount{{Outcome: warehouse.OutcomeRejected, Reason: "invalid email in column email", Count: 1}},
		p.KnownReasons)
	got := byKey(s.readAll(p))
	require.Equal(t, &warehouse.Prior{Outcome: warehouse.OutcomeRejected, Class: warehouse.ClassIdentifier, Field: "email",
		Reason: "invalid email in column email", Hold: true}, got["2"].Prior)
	require.Nil(t, got["4"].Prior, "a changed row has no prior")
	// The run neither sends nor records 2 again; Commit holds it all the same.
	require.Equal(t, warehouse.CommitResult{Upserted: 1, Held: 1}, s.commit(p, allChunks(p)...))
	p = s.plan()
	require.Equal(t, int64(1), p.Counts.Known, "still held: its rejection is still the key's latest")

	// --retry-rejected and --full-resync send it again: the prior is there, the hold is not.
	for _, mod := range []func(*warehouse.PlanRequest){
		func(r *warehouse.PlanRequest) { r.RetryRejected = true },
		func(r *warehouse.PlanRequest) { r.FullResync = true },
	} {
		p = s.plan(mod)
		require.Zero(t, p.Counts.Known)
		r := byKey(s.readAll(p))["2"]
		require.NotNil(t, r.Prior)
		require.False(t, r.Prior.Hold)
	}
	require.Equal(t, warehouse.CommitResult{Upserted: 5}, s.commit(p, allChunks(p)...), "released, accepted, committed")
}

func testKnownTypeConflict(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	p := s.plan()
	reason := "type conflict: field age is string in Iterable"
	s.rejectAll(p, warehouse.ClassType, "age", reason, "1", "2", "3")
	s.commit(p, allChunks(p)...)

	p = s.plan()
	require.Equal(t, int64(3), p.Counts.Known)
	// While Iterable still has the same conflicting type, Commit holds them...
	res, err := s.p.Commit(context.Background(), warehouse.CommitRequest{ActivationID: s.req.ActivationID, RunID: s.runID(),
		Table: p.Table, Chunks: allChunks(p), Conflicts: map[string]string{"age": reason}})
	require.NoError(t, err)
	require.Equal(t, warehouse.CommitResult{Held: 3}, res)
	require.True(t, warehouse.HeldByPrior(byKey(s.readAll(p))["1"].Prior, map[string]string{"age": reason}))
	// ...and once the field's type changed in Iterable, they are sent and committed.
	p = s.plan()
	require.False(t, warehouse.HeldByPrior(byKey(s.readAll(p))["1"].Prior, nil))
	require.Equal(t, warehouse.CommitResult{Upserted: 3}, s.commit(p, allChunks(p)...))
}

func testPriorIterableRejection(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	p := s.plan()
	s.rejectAll(p, warehouse.ClassIterable, "", "Iterable rejected the email as invalid (failedUpdates.invalidEmails)", "3")
	s.commit(p, allChunks(p)...)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Added: 1, Unchanged: 2, Retried: 1}, p.Counts)
	got := byKey(s.readAll(p))
	require.Equal(t, &warehouse.Prior{Outcome: warehouse.OutcomeRejected, Class: warehouse.ClassIterable,
		Reason: "Iterable rejected the email as invalid (failedUpdates.invalidEmails)"}, got["3"].Prior,
		"sent again, with the prior that tells a known rejection from a new one")
}

func testRejectionsRetention(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	p := s.plan()
	first := s.runID()
	s.rejectAll(p, warehouse.ClassIterable, "", "refused", "1", "2")
	s.commit(p, allChunks(p)...)
	p = s.plan()
	second := s.runID()
	s.rejectAll(p, warehouse.ClassIterable, "", "refused", "1")
	s.commit(p, allChunks(p)...)

	count := func(run string) int64 {
		top, err := s.p.TopReasons(context.Background(), s.req.ActivationID, run, 0)
		require.NoError(t, err)
		var n int64
		for _, r := range top {
			n += r.Count
		}
		return n
	}
	s.plan() // the default retention keeps everything
	require.Equal(t, int64(2), count(first))
	require.Equal(t, int64(1), count(second))
	p = s.plan(func(r *warehouse.PlanRequest) { r.RejectionsRetention = time.Nanosecond })
	require.Equal(t, int64(1), count(first), "2's only rejection is its latest: kept")
	require.Equal(t, int64(1), count(second))
	require.Equal(t, int64(1), p.Counts.Retried, "a latest rejection still counts as retried")
}

func testUnmappedFieldRefresh(t *testing.T, s *suite) {
	s.model(users(1, 2, 3))
	s.sync()
	s.req.Fields = []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"}}
	p := s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Unchanged: 3, Refreshed: 3}, p.Counts)
	require.Empty(t, p.Chunks, "nothing to send")
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Unchanged: 3}, p.Counts, "refreshed once: the fast path again")
	rows := users(1, 2, 3)
	rows[0][3] = int64(99)
	s.model(rows)
	p = s.plan()
	require.Equal(t, warehouse.Counts{ModelRows: 3, Changed: 1, Unchanged: 2}, p.Counts)
	require.Equal(t, []string{"age"}, s.readAll(p)[0].Changed)
}
