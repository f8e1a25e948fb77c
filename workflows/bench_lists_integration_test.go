//go:build integration

package workflows_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
)

// listBenchRows is the model size of BenchmarkListSubscribeAtTheBudget: 100,000, or the first
// size of BENCH_ROWS.
func listBenchRows() int {
	if sizes := benchSizes(nil); len(sizes) > 0 {
		return sizes[0]
	}
	return 100_000
}

// seedProfiles creates the profiles user1@example.com … user<rows>@example.com (benchSpec's
// emails) in the emulator, as an attribute activation would have, within its bulkUpdate limit.
func seedProfiles(b *testing.B, url, key string, rows int) {
	b.Helper()
	c, err := iterable.New(iterable.Config{BaseURL: url, APIKey: key, RequestsPerSecond: 5, UsersPerRequest: 1000})
	require.NoError(b, err)
	recs := make([]iterable.Record, rows)
	for i := range recs {
		recs[i] = iterable.Record{Index: i, User: iterable.User{Email: fmt.Sprintf("user%d@example.com", i+1),
			DataFields: map[string]any{"seeded": true}}}
	}
	batches, _, err := c.Pack(recs, true)
	require.NoError(b, err)
	for _, batch := range batches {
		res, err := c.SendBatch(context.Background(), batch)
		require.NoError(b, err)
		require.Len(b, res.Accepted, len(batch.Records))
	}
}

// BenchmarkListSubscribeAtTheBudget subscribes 100,000 entering members (BENCH_ROWS overrides)
// to a new static list through the whole engine (the real worker program, the dev server,
// DuckDB) in update mode, the list default, whose profiles exist. Every setting is the default:
// 4 chunks of 10,000 rows at once, 1,000 subscribers per request, the subscribe budget of 5
// requests/s per project; the emulator limits subscribe to 5 requests/s as Iterable would
// (Iterable documents no limit: the emulator's default). The physical limit is 5 × 1,000 =
// 5,000 members/s; it reports members/s over the sync phase, the ratio to that limit and the
// share of subscribe requests answered 429.
//
//	go test -tags integration -run '^$' -bench ListSubscribeAtTheBudget -benchtime 1x -timeout 30m ./workflows/
func BenchmarkListSubscribeAtTheBudget(b *testing.B) {
	for i := 0; i < b.N; i++ {
		rows := listBenchRows()
		emu := iterabletest.NewServer(iterabletest.Options{})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		seedProfiles(b, emu.URL(), key, rows)
		require.Len(b, emu.Users(key), rows)

		queue := fmt.Sprintf("bench-lists-%d", time.Now().UnixNano())
		w := startWorkerProcess(b, queue, keyEnv, key)
		act := benchSpec(b.TempDir(), emu.URL(), keyEnv, rows)
		act.ID = "bench-list"
		act.Destination.Mode = spec.ModeUpdate
		act.Destination.List = &spec.List{Name: "Bench list"}
		before := emu.Stats(key)
		rep := runBench(b, act, queue)
		cpu, peak := w.stop(b)
		st := emu.Stats(key)
		id, ok := emu.ListIDByName(key, "Bench list")
		members := len(emu.ListMembers(key, id))
		profiles := len(emu.Users(key))
		emu.Close()

		require.True(b, ok)
		require.Equal(b, int64(rows), rep.Succeeded.Added)
		require.Equal(b, rows, members)
		require.Equal(b, rows, profiles, "update mode creates no profile")
		subscribes := st.SubscribeRequests - before.SubscribeRequests
		// Every other request of the run (one getFields, one or two GET /api/lists, one list
		// creation) is far below its limit: the run's 429s are subscribe's.
		rateLimited := st.RateLimited - before.RateLimited
		membersPerSec := float64(rep.Succeeded.Added) / rep.SyncDuration.Seconds()
		b.ReportMetric(membersPerSec, "members/s")
		b.ReportMetric(membersPerSec/(spec.DefaultListRequestsPerSecond*iterable.MaxSubscribersPerRequest), "ratio-to-limit")
		b.ReportMetric(100*float64(rateLimited)/float64(subscribes), "%429")
		b.ReportMetric(float64(subscribes), "subscribe-requests")
		b.ReportMetric(rep.PlanDuration.Seconds(), "plan-s")
		b.ReportMetric(rep.SyncDuration.Seconds(), "sync-s")
		b.ReportMetric(cpu, "worker-cpu-s")
		b.ReportMetric(peak, "worker-peak-MiB")
	}
}
