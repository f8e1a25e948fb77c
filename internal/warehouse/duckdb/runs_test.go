package duckdb_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
	"github.com/activation-engine/activations/internal/warehouse/warehousetest"
)

func TestRunLogConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		warehousetest.RunLogSuite(t, func(t *testing.T) warehouse.RunLog { return open(t, duckdb.Options{}) })
	})
	t.Run("file", func(t *testing.T) {
		warehousetest.RunLogSuite(t, func(t *testing.T) warehouse.RunLog {
			return open(t, duckdb.Options{Path: filepath.Join(t.TempDir(), "state.duckdb")})
		})
	})
}

// TestRunLogSurvivesReopen: the runs table is created once and kept, with its records, when the
// state file is opened again; concurrent writes of one record leave one row.
func TestRunLogSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	p, err := duckdb.Open(ctx, duckdb.Options{Path: path})
	require.NoError(t, err)
	rec := warehouse.RunRecord{ActivationID: "reopen", RunID: "run-1", Event: warehouse.RunEventEnded,
		At: time.Now(), Trigger: warehouse.TriggerSchedule, StartedAt: time.Now().Add(-time.Minute),
		EndedAt: time.Now(), State: warehouse.RunStateFailed, PauseCauses: []string{"warehouse"}}
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- p.RecordRun(ctx, rec) }()
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}
	require.NoError(t, p.Close())

	p = open(t, duckdb.Options{Path: path})
	got, err := p.Runs(ctx, "reopen", 0)
	require.NoError(t, err)
	require.Len(t, got, 1)
	want, err := warehouse.CheckRunRecord(rec)
	require.NoError(t, err)
	require.Equal(t, want, got[0])
}

// TestRunLogOfAnEarlierVersion: a runs table created before send_rate existed gets the column
// when the state is opened; its records read back with no rate, new ones keep theirs.
func TestRunLogOfAnEarlierVersion(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.duckdb")
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	var defs []string
	for _, c := range warehouse.RunColumns() {
		if c.Added {
			continue
		}
		typ := map[warehouse.RunColumnType]string{warehouse.RunString: "VARCHAR", warehouse.RunTimestamp: "TIMESTAMP",
			warehouse.RunInt: "BIGINT", warehouse.RunFloat: "DOUBLE", warehouse.RunStrings: "VARCHAR[]"}[c.Type]
		defs = append(defs, `"`+c.Name+`" `+typ)
	}
	_, err = db.ExecContext(ctx, `CREATE TABLE runs (`+strings.Join(defs, ", ")+`)`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `INSERT INTO runs (activation_id, run_id, event, "at", "trigger", state, pause_causes)
		VALUES ('old', 'run-0', 'ended', TIMESTAMP '2026-12-01 10:00:00', 'schedule', 'Completed', [])`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	p := open(t, duckdb.Options{Path: path})
	rec := warehouse.RunRecord{ActivationID: "old", RunID: "run-1", Event: warehouse.RunEventEnded,
		At: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), Trigger: warehouse.TriggerSchedule,
		State: warehouse.RunStateCompleted, SendRate: 4.9}
	require.NoError(t, p.RecordRun(ctx, rec))
	got, err := p.Runs(ctx, "old", 0)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, 4.9, got[0].SendRate)
	require.Equal(t, "run-0", got[1].RunID)
	require.Zero(t, got[1].SendRate, "NULL in the rows of the earlier version")
}
