//go:build integration

package workflows_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/workflows"
)

// TestHistoryOfAFiveHundredChunkPlan measures the history of a run whose plan has 500 chunks:
// what a 5,000,000-row plan makes with the default 10,000 rows per chunk (history grows with
// chunks, not rows). It must stay under 10,000 events.
func TestHistoryOfAFiveHundredChunkPlan(t *testing.T) {
	h := newHarness(t, iterabletest.Options{Unlimited: true})
	h.startWorker()
	us := users(5000)
	h.writeModel(us)
	act := h.spec()
	act.Sync.ChunkRows, act.Sync.UsersPerRequest, act.Sync.RequestsPerSecond, act.Sync.Concurrency = 10, 10, 1000, 8
	run := h.start(act)
	var rep workflows.RunReport
	require.NoError(t, run.Get(context.Background(), &rep))
	require.Equal(t, 500, rep.Chunks)
	require.Equal(t, int64(5000), rep.Succeeded.Added)

	events := 0
	it := h.c.GetWorkflowHistory(context.Background(), run.GetID(), run.GetRunID(), false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		_, err := it.Next()
		require.NoError(t, err)
		events++
	}
	t.Logf("history of a 500-chunk run: %d events", events)
	require.Less(t, events, 10000)
}
