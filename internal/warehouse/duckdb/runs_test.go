package duckdb_test

import (
	"context"
	"path/filepath"
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
