package activities

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

func TestLastSendRate(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	rec := func(ago time.Duration, rate float64) warehouse.RunRecord {
		return warehouse.RunRecord{At: now.Add(-ago), SendRate: rate}
	}
	tests := []struct {
		name string
		recs []warehouse.RunRecord
		want float64
	}{
		{"no records", nil, 0},
		{"the newest record's rate", []warehouse.RunRecord{rec(time.Hour, 4.9), rec(2*time.Hour, 3)}, 4.9},
		{"records without a rate are passed over", []warehouse.RunRecord{rec(time.Minute, 0), rec(time.Hour, 3.5)}, 3.5},
		{"six days old", []warehouse.RunRecord{rec(6*24*time.Hour, 4.9)}, 4.9},
		{"too old: the project may have other clients now", []warehouse.RunRecord{rec(8*24*time.Hour, 4.9)}, 0},
		{"none has a rate", []warehouse.RunRecord{rec(time.Minute, 0), rec(time.Hour, 0)}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, LastSendRate(tc.recs, now))
		})
	}
}

// runLogPlanner is telemetryPlanner with a real DuckDB run log.
type runLogPlanner struct {
	*telemetryPlanner
	log   *duckdb.Planner
	reads atomic.Int32
}

func (p *runLogPlanner) RecordRun(ctx context.Context, r warehouse.RunRecord) error {
	return p.log.RecordRun(ctx, r)
}

func (p *runLogPlanner) Runs(ctx context.Context, id string, limit int) ([]warehouse.RunRecord, error) {
	p.reads.Add(1)
	return p.log.Runs(ctx, id, limit)
}

// A new worker process (fresh budgets) starts a project's run at the good rate the activation's
// last run recorded in the run log, reads the log once, and reports the rate for the next record.
// A record too old, or none, leaves the slow start.
func TestSyncChunkStartsAtTheRecordedRate(t *testing.T) {
	emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 5})
	defer emu.Close()
	emu.AddProject("rate-key", iterabletest.ProjectHybrid)
	t.Setenv("RATE_TEST_KEY", "rate-key")
	act := telemetrySpec(t, emu.URL(), "RATE_TEST_KEY")
	act.ID = "rate"
	act.Sync.RequestsPerSecond = 5
	act.Sync.UsersPerRequest = 4

	for _, tc := range []struct {
		name     string
		recorded float64
		ago      time.Duration
		remember bool
	}{
		{"recorded an hour ago", 4.8, time.Hour, true},
		{"recorded eight days ago", 4.8, 8 * 24 * time.Hour, false},
		{"nothing recorded", 0, time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			log, err := duckdb.Open(ctx, duckdb.Options{})
			require.NoError(t, err)
			defer log.Close()
			// The run log's record as the workflow writes it at the end of a run.
			require.NoError(t, log.RecordRun(ctx, warehouse.RunRecord{ActivationID: act.ID, RunID: "run-0",
				Event: warehouse.RunEventEnded, At: time.Now().Add(-tc.ago), Trigger: warehouse.TriggerSchedule,
				State: warehouse.RunStateCompleted, Requests: 100, SendRate: tc.recorded}))
			planner := &runLogPlanner{telemetryPlanner: &telemetryPlanner{valid: 12}, log: log}
			budgets := iterable.NewBudgets()
			acts := &Activities{Planners: fakePlannerSource{planner}, Budgets: budgets}
			var suite testsuite.WorkflowTestSuite
			env := suite.NewTestActivityEnvironment()
			env.RegisterActivity(acts)
			var res ChunkResult
			rates := make([]float64, 2)
			for i := range rates {
				val, err := env.ExecuteActivity(acts.SyncChunk, SyncChunkInput{Spec: act, RunID: "run-1", Table: "plan_t",
					Chunk: warehouse.Chunk{Index: 0, FirstSeq: 1, LastSeq: 14, Added: 13, Removed: 1}})
				require.NoError(t, err)
				require.NoError(t, val.Get(&res))
				rates[i] = budgets.Budget("rate-key", iterable.EndpointBulkUpdate, 5).Rate()
			}
			require.EqualValues(t, 1, planner.reads.Load(), "the run log is read once per budget")
			if tc.remember {
				require.GreaterOrEqual(t, rates[0], 4.8, "at the recorded rate from the first request")
				require.InDelta(t, 4.8, res.SendRate, 1e-9, "reported for the run log")
			} else {
				// 4 requests from 2/s, +1.25/s: about 1.2 s, so about 3.5/s.
				require.Less(t, rates[0], 4.5, "a slow start: 40%% of the ceiling, +25%%/s")
				require.Zero(t, res.SendRate, "no good rate learnt in two seconds")
			}
			require.Zero(t, emu.Stats("rate-key").RateLimited)
		})
	}
}
