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
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

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
	return p.log.Runs(ctx, id, limit)
}

func (p *runLogPlanner) LastSendRate(ctx context.Context, budget string, since time.Time) (float64, error) {
	p.reads.Add(1)
	return p.log.LastSendRate(ctx, budget, since)
}

// A new worker process (fresh budgets) knows the good rate the run log last recorded for the
// project, by this activation or another one (RecordRun names the budget): it reads the log once
// and reports the rate for the next record (and the budget tells another client's burst from its
// own overshoot with it). A record too old, one of another project, or none is not taken. Every
// case sends at 98% of the ceiling from its first request (issue 14).
func TestSyncChunkRemembersTheRecordedRate(t *testing.T) {
	emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 5})
	defer emu.Close()
	emu.AddProject("rate-key", iterabletest.ProjectHybrid)
	emu.AddProject("other-key", iterabletest.ProjectHybrid)
	t.Setenv("RATE_TEST_KEY", "rate-key")
	t.Setenv("OTHER_TEST_KEY", "other-key")
	act := telemetrySpec(t, emu.URL(), "RATE_TEST_KEY")
	act.ID = "rate"
	act.Sync.RequestsPerSecond = 5
	act.Sync.UsersPerRequest = 4
	sibling := act // another activation of the same project
	sibling.ID = "rate-sibling"
	stranger := telemetrySpec(t, emu.URL(), "OTHER_TEST_KEY") // another project's
	stranger.ID = "rate-stranger"

	for _, tc := range []struct {
		name     string
		by       spec.Activation
		ago      time.Duration
		remember bool
	}{
		{"this activation, an hour ago", act, time.Hour, true},
		{"another activation of the project, an hour ago", sibling, time.Hour, true},
		{"eight days ago", act, 8 * 24 * time.Hour, false},
		{"another project's activation", stranger, time.Hour, false},
		{"nothing recorded", spec.Activation{}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			log, err := duckdb.Open(ctx, duckdb.Options{})
			require.NoError(t, err)
			defer log.Close()
			planner := &runLogPlanner{telemetryPlanner: &telemetryPlanner{valid: 12}, log: log}
			budgets := iterable.NewBudgets()
			acts := &Activities{Planners: fakePlannerSource{planner}, Budgets: budgets}
			var suite testsuite.WorkflowTestSuite
			env := suite.NewTestActivityEnvironment()
			env.RegisterActivity(acts)
			if tc.by.ID != "" {
				// The record as the workflow hands it over at the end of a run.
				_, err := env.ExecuteActivity(acts.RecordRun, RecordRunInput{Spec: tc.by, Record: warehouse.RunRecord{
					ActivationID: tc.by.ID, RunID: "run-0", Event: warehouse.RunEventEnded, At: time.Now().Add(-tc.ago),
					Trigger: warehouse.TriggerSchedule, State: warehouse.RunStateCompleted, Requests: 100, SendRate: 4.8}})
				require.NoError(t, err)
			}
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
			require.InDelta(t, 4.9, rates[0], 1e-9, "98% of the ceiling from the first request")
			if tc.remember {
				require.InDelta(t, 4.8, res.SendRate, 1e-9, "the recorded rate, reported for the run log")
			} else {
				require.Zero(t, res.SendRate, "no good rate learnt in two seconds")
			}
			require.Zero(t, emu.Stats("rate-key").RateLimited)
		})
	}
}

// RecordRun names the budget of a recorded rate (bulkUpdate, or subscribe for a list), and
// leaves a record without a rate unnamed.
func TestRecordRunNamesTheSendBudget(t *testing.T) {
	t.Setenv("RATE_TEST_KEY", "rate-key")
	act := telemetrySpec(t, "http://127.0.0.1:1", "RATE_TEST_KEY")
	act.ID = "named"
	list := act
	list.ID = "named-list"
	list.Destination.List = &spec.List{Name: "VIP"}
	ctx := context.Background()
	log, err := duckdb.Open(ctx, duckdb.Options{})
	require.NoError(t, err)
	defer log.Close()
	acts := &Activities{Planners: fakePlannerSource{&runLogPlanner{telemetryPlanner: &telemetryPlanner{}, log: log}}}
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	for _, tc := range []struct {
		act  spec.Activation
		rate float64
		want string
	}{
		{act, 4.9, iterable.ProjectKey("rate-key") + "/bulkUpdate"},
		{list, 4.5, iterable.ProjectKey("rate-key") + "/listSubscribe"},
		{act, 0, ""},
	} {
		at := time.Now()
		_, err := env.ExecuteActivity(acts.RecordRun, RecordRunInput{Spec: tc.act, Record: warehouse.RunRecord{
			ActivationID: tc.act.ID, RunID: "run-" + at.Format("150405.000000"), Event: warehouse.RunEventEnded, At: at,
			Trigger: warehouse.TriggerManual, State: warehouse.RunStateCompleted, SendRate: tc.rate}})
		require.NoError(t, err)
		recs, err := log.Runs(ctx, tc.act.ID, 1)
		require.NoError(t, err)
		require.Equal(t, tc.want, recs[0].SendBudget)
		require.NotContains(t, recs[0].SendBudget, "rate-key", "a digest, never the key")
	}
}
