package activities

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// recorder is the part of the planner a window uses: it keeps what was recorded.
type recorder struct {
	warehouse.Planner
	got []warehouse.Rejection
}

func (r *recorder) RecordRejections(_ context.Context, _, _ string, rs []warehouse.Rejection) error {
	r.got = append(r.got, rs...)
	return nil
}

// newWindow returns a sender of one window against a fresh emulator project.
func newWindow(t *testing.T, d spec.Destination, typ iterabletest.ProjectType) (*chunkSender, *recorder, *iterabletest.Server) {
	t.Helper()
	srv := iterabletest.NewServer(iterabletest.Options{})
	t.Cleanup(srv.Close)
	srv.AddProject("key", typ)
	c, err := iterable.New(iterable.Config{BaseURL: srv.URL(), APIKey: "key", HTTPClient: http.DefaultClient,
		Budgets: iterable.NewBudgets(), RequestsPerSecond: 1000})
	require.NoError(t, err)
	rec := &recorder{}
	return &chunkSender{act: spec.Activation{ID: "a", Destination: d}, runID: "run", client: c, planner: rec,
		window: 1000}, rec, srv
}

func (s *chunkSender) sendRows(t *testing.T, rows ...warehouse.Row) ChunkResult {
	t.Helper()
	ctx := context.Background()
	for i, r := range rows {
		r.Seq = int64(i + 1)
		require.NoError(t, s.add(ctx, r))
	}
	require.NoError(t, s.flush(ctx))
	return s.prog.Result
}

// Rows that a known rejection holds back are neither sent nor recorded; a rejection equal to
// the row's prior one is known (reported, not new); one that differs, or has no prior, is new.
func TestWindowKnownRejections(t *testing.T) {
	d := spec.Destination{Mode: spec.ModeUpsert, Identifier: spec.Identifier{Column: "email", Field: "email"},
		Fields: []spec.Field{{Column: "a", Field: "a"}, {Column: "b", Field: "b"}}}
	s, rec, srv := newWindow(t, d, iterabletest.ProjectHybrid)
	s.conflicts = map[string]string{"b": "type conflict: b is string in Iterable"}
	bad := "invalid email in column email: "
	u, rej := s.user(warehouse.Row{Op: warehouse.OpAdd, Identifier: "not-an-email", Values: warehouse.ValuesOf(map[string]any{"a": int64(1)}), Changed: []string{"a"}})
	require.Nil(t, u)
	bad = rej.Reason
	prior := func(class warehouse.Class, field, reason string, hold bool) *warehouse.Prior {
		return &warehouse.Prior{Outcome: warehouse.OutcomeRejected, Class: class, Field: field, Reason: reason, Hold: hold}
	}
	add := func(key, email string, p *warehouse.Prior, changed ...string) warehouse.Row {
		return warehouse.Row{Key: key, Op: warehouse.OpAdd, Identifier: email, RowHash: "h" + key,
			Values: warehouse.ValuesOf(map[string]any{"a": int64(1), "b": int64(2)}), Changed: changed, Prior: p}
	}
	res := s.sendRows(t,
		add("held", "not-an-email", prior(warehouse.ClassIdentifier, "email", bad, true), "a"),
		add("held-type", "ok1@example.com", prior(warehouse.ClassType, "b", s.conflicts["b"], true), "b"),
		add("released-type", "ok2@example.com", prior(warehouse.ClassType, "b", "type conflict: b was date", true), "a"),
		add("retried-known", "not-an-email", prior(warehouse.ClassIdentifier, "email", bad, false), "a"),
		add("new", "not-an-email", nil, "a"),
		add("other-reason", "not-an-email", prior(warehouse.ClassIdentifier, "email", "invalid email: older wording", false), "a"),
		add("good", "good@example.com", nil, "a"),
	)
	require.Equal(t, OpCounts{Added: 2}, res.StillRejected, "held rows are counted apart")
	require.Equal(t, OpCounts{Added: 5}, res.Attempted, "held rows are not attempted")
	require.Equal(t, OpCounts{Added: 3}, res.Rejected)
	require.Equal(t, OpCounts{Added: 1}, res.Known, "only the rejection equal to its prior is known")
	require.Equal(t, OpCounts{Added: 2}, res.Succeeded)
	var keys []string
	for _, r := range rec.got {
		keys = append(keys, r.Key)
		require.Equal(t, warehouse.ClassIdentifier, r.Class)
		require.Equal(t, "h"+r.Key, r.RowHash, "a rejection keeps the row hash it was made with")
	}
	require.ElementsMatch(t, []string{"retried-known", "new", "other-reason"}, keys, "held rows are not recorded again")
	require.Equal(t, 2, srv.Stats("key").UsersReceived)
}

// onRemoved: delete deletes the profile the row was last synced with; one Iterable does not
// have is skipped (a skipped removal is committed); a profile another key carries is kept.
func TestWindowDeletes(t *testing.T) {
	d := spec.Destination{Mode: spec.ModeUpsert, OnRemoved: "delete", Identifier: spec.Identifier{Column: "email", Field: "email"},
		Fields: []spec.Field{{Column: "a", Field: "a"}}}
	s, rec, srv := newWindow(t, d, iterabletest.ProjectEmail)
	ctx := context.Background()
	s.sendRows(t, warehouse.Row{Key: "1", Op: warehouse.OpAdd, Identifier: "one@example.com", Values: warehouse.ValuesOf(map[string]any{"a": int64(1)}), Changed: []string{"a"}},
		warehouse.Row{Key: "2", Op: warehouse.OpAdd, Identifier: "two@example.com", Values: warehouse.ValuesOf(map[string]any{"a": int64(1)}), Changed: []string{"a"}})
	require.True(t, srv.HasUser("key", "one@example.com", ""))
	s.prog = ChunkProgress{}
	res := s.sendRows(t,
		warehouse.Row{Key: "1", Op: warehouse.OpRemove, Identifier: "ONE@example.com"},
		warehouse.Row{Key: "2", Op: warehouse.OpRemove, Identifier: "two@example.com", KeepProfile: true},
		warehouse.Row{Key: "3", Op: warehouse.OpRemove, Identifier: "never@example.com"},
	)
	_ = ctx
	require.False(t, srv.HasUser("key", "one@example.com", ""), "deleted, emails matched case-insensitively")
	require.True(t, srv.HasUser("key", "two@example.com", ""), "another key carries it: kept")
	require.Equal(t, OpCounts{Removed: 2}, res.Succeeded)
	require.Equal(t, OpCounts{Removed: 1}, res.Skipped)
	require.Len(t, rec.got, 1)
	require.Equal(t, warehouse.ClassNotInIterable, rec.got[0].Class)
	require.Equal(t, 2, srv.Stats("key").DeleteRequests)
}

// onRemoved: clear in upsert mode never creates a profile: removals are looked up first.
func TestWindowClearNeverCreates(t *testing.T) {
	d := spec.Destination{Mode: spec.ModeUpsert, OnRemoved: "clear", Identifier: spec.Identifier{Column: "email", Field: "email"},
		Fields: []spec.Field{{Column: "a", Field: "a"}}}
	s, rec, srv := newWindow(t, d, iterabletest.ProjectEmail)
	s.sendRows(t, warehouse.Row{Key: "1", Op: warehouse.OpAdd, Identifier: "one@example.com", Values: warehouse.ValuesOf(map[string]any{"a": int64(1)}), Changed: []string{"a"}})
	s.prog = ChunkProgress{}
	s.removalExistence = RemovalExistenceStrategy(spec.Activation{Destination: d}, ExistenceNone, 2)
	require.Equal(t, ExistenceLookup, s.removalExistence)
	res := s.sendRows(t,
		warehouse.Row{Key: "1", Op: warehouse.OpRemove, Identifier: "one@example.com"},
		warehouse.Row{Key: "3", Op: warehouse.OpRemove, Identifier: "gone@example.com"},
	)
	require.False(t, srv.HasUser("key", "gone@example.com", ""), "a removal never creates a profile")
	u, ok := srv.User("key", "one@example.com", "")
	require.True(t, ok)
	require.Nil(t, u.DataFields["a"], "the mapped field is cleared")
	require.Equal(t, OpCounts{Removed: 1}, res.Succeeded)
	require.Equal(t, OpCounts{Removed: 1}, res.Skipped)
	require.Len(t, rec.got, 1)
	require.Equal(t, "3", rec.got[0].Key)
}
