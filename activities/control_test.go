package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// fakePlanner serves a chunk of n added rows; only what SyncChunk needs is implemented.
type fakePlanner struct {
	warehouse.Planner
	n        int
	rejected int
	leads    []int // ChunkRequest.Lead of each read
}

func (p *fakePlanner) ReadChunk(_ context.Context, req warehouse.ChunkRequest, fn func(warehouse.Row) error) error {
	p.leads = append(p.leads, req.Lead)
	for i := 1; i <= p.n; i++ {
		if int64(i) <= req.AfterSeq {
			continue
		}
		err := fn(warehouse.Row{Seq: int64(i), Key: fmt.Sprint(i), Op: warehouse.OpAdd,
			Identifier: fmt.Sprintf("user%d@example.com", i), Values: warehouse.ValuesOf(map[string]any{"a": int64(i)}), Changed: []string{"a"}})
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *fakePlanner) RecordRejections(_ context.Context, _, _ string, rs []warehouse.Rejection) error {
	p.rejected += len(rs)
	return nil
}

type fakePlanners struct{ p warehouse.Planner }

func (f fakePlanners) Planner(context.Context, spec.Activation) (warehouse.Planner, error) {
	return f.p, nil
}

func controlSpec(t *testing.T, url string, th *spec.Thresholds) spec.Activation {
	t.Setenv("CONTROL_TEST_KEY", "key-1")
	return spec.Activation{
		ID: "control",
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: url, APIKey: spec.SecretRef{Env: "CONTROL_TEST_KEY"}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "a", Field: "a"}},
		},
		Sync:       spec.SyncSettings{UsersPerRequest: 10, RequestsPerSecond: -1},
		Thresholds: th,
	}
}

func activityEnv(t *testing.T, acts *Activities) *testsuite.TestActivityEnvironment {
	var s testsuite.WorkflowTestSuite
	e := s.NewTestActivityEnvironment()
	e.RegisterActivity(acts)
	return e
}

// TestSyncChunkStopsAfterConsecutiveFailedRequests: Iterable answers 503 to everything; the
// chunk gives up after exactly maxConsecutiveFailedRequests requests with IterableUnavailable,
// which Temporal does not retry.
func TestSyncChunkStopsAfterConsecutiveFailedRequests(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	acts := &Activities{Planners: fakePlanners{&fakePlanner{n: 25}}, Budgets: iterable.NewBudgets(),
		Logger: slog.New(slog.DiscardHandler)}
	act := controlSpec(t, srv.URL, &spec.Thresholds{MaxConsecutiveFailedRequests: 3})

	start := time.Now()
	_, err := activityEnv(t, acts).ExecuteActivity(acts.SyncChunk, SyncChunkInput{Spec: act, RunID: "r1", Table: "plan_control_x",
		Chunk: warehouse.Chunk{Index: 0, FirstSeq: 1, LastSeq: 25, Added: 25}})
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "%v", err)
	require.Equal(t, ErrTypeIterableUnavailable, appErr.Type())
	require.True(t, appErr.NonRetryable())
	require.Contains(t, appErr.Message(), "3 consecutive requests failed (last: HTTP 503)")
	require.Equal(t, int64(3), requests.Load(), "exactly maxConsecutiveFailedRequests requests were made")
	require.Less(t, time.Since(start), 10*time.Second)
}

// TestSyncChunkLead: the run's first chunk asks its reader for one request's rows first (its
// first request starts the sync); the other chunks, and a resumed first chunk, read whole.
func TestSyncChunkLead(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"successCount":10,"failCount":0}`))
	}))
	defer srv.Close()
	tests := []struct {
		name   string
		index  int
		resume *ChunkProgress
		want   int
	}{
		{name: "first chunk", index: 0, want: 10},
		{name: "another chunk", index: 1, want: 0},
		{name: "first chunk resumed", index: 0, resume: &ChunkProgress{AfterSeq: 10, Result: ChunkResult{Chunk: 0}}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			planner := &fakePlanner{n: 20}
			acts := &Activities{Planners: fakePlanners{planner}, Budgets: iterable.NewBudgets(), Logger: slog.New(slog.DiscardHandler)}
			act := controlSpec(t, srv.URL, nil)
			_, err := activityEnv(t, acts).ExecuteActivity(acts.SyncChunk, SyncChunkInput{Spec: act, RunID: "r1", Table: "plan_control_x",
				Chunk: warehouse.Chunk{Index: tt.index, FirstSeq: 1, LastSeq: 20, Added: 20}, Resume: tt.resume})
			require.NoError(t, err)
			require.Equal(t, []int{tt.want}, planner.leads)
		})
	}
}

// TestFailureCounterResetsOnAnswers: failures interleaved with answers never add up.
func TestFailureCounterResetsOnAnswers(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	fc := &failureCounter{base: http.DefaultTransport, max: 2}
	c := &http.Client{Transport: fc}
	for i := 0; i < 10; i++ {
		res, err := c.Get(srv.URL)
		require.NoError(t, err, "request %d", i)
		_ = res.Body.Close()
	}
	fc2 := &failureCounter{base: http.DefaultTransport, max: 2}
	c2 := &http.Client{Transport: fc2}
	n.Store(0)
	res, err := c2.Get(srv.URL) // 429
	require.NoError(t, err)
	_ = res.Body.Close()
	n.Store(0)
	_, err = c2.Get(srv.URL) // 429 again: the second in a row
	var ue *unavailableError
	require.ErrorAs(t, err, &ue)
	_, err = c2.Get(srv.URL)
	require.ErrorAs(t, err, &ue, "later requests of the chunk are not sent")
}

func TestChunkMaxElapsedFitsTheLimit(t *testing.T) {
	require.Equal(t, 60*time.Second+750*time.Millisecond, chunkMaxElapsed(1, 0))
	require.Greater(t, chunkMaxElapsed(20, 0), 20*time.Minute, "20 attempts of up to 60s each, plus the waits")
	require.Equal(t, chunkMaxElapsedCap, chunkMaxElapsed(1000, 0))
}

func TestProbe(t *testing.T) {
	status := atomic.Int64{}
	status.Store(http.StatusServiceUnavailable)
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		require.Equal(t, "/api/users/getFields", r.URL.Path)
		w.WriteHeader(int(status.Load()))
		if status.Load() == http.StatusOK {
			_, _ = w.Write([]byte(`{"fields":{"a":"long"}}`))
		}
		if status.Load() == http.StatusUnauthorized {
			_, _ = w.Write([]byte(`{"code":"BadApiKey","msg":"invalid key"}`))
		}
	}))
	defer srv.Close()
	acts := &Activities{Budgets: iterable.NewBudgets(), Logger: slog.New(slog.DiscardHandler)}
	act := controlSpec(t, srv.URL, nil)
	env := activityEnv(t, acts)

	_, err := env.ExecuteActivity(acts.Probe, ProbeInput{Spec: act, RunID: "r1"})
	require.Error(t, err, "unhealthy")
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.False(t, appErr.NonRetryable(), "a 503 is retried by the workflow's probe policy")
	require.Equal(t, int64(1), requests.Load(), "one request per probe")

	status.Store(http.StatusUnauthorized)
	_, err = env.ExecuteActivity(acts.Probe, ProbeInput{Spec: act, RunID: "r1"})
	require.True(t, errors.As(err, &appErr))
	require.Equal(t, ErrTypeIterableFatal, appErr.Type())

	status.Store(http.StatusOK)
	_, err = env.ExecuteActivity(acts.Probe, ProbeInput{Spec: act, RunID: "r1"})
	require.NoError(t, err)
}

func TestScheduleActivitiesNeedATemporalClient(t *testing.T) {
	acts := &Activities{}
	_, err := activityEnv(t, acts).ExecuteActivity(acts.PauseSchedule, ScheduleInput{ActivationID: "x", ScheduleID: "activation-x"})
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.Equal(t, ErrTypeNoTemporalClient, appErr.Type())
}

func TestAddChunkKeepsSortedDisjointRanges(t *testing.T) {
	tests := []struct {
		add  []int
		want []ChunkRange
	}{
		{[]int{0, 1, 2}, []ChunkRange{{0, 2}}},
		{[]int{2, 0, 1}, []ChunkRange{{0, 2}}},
		{[]int{5, 0, 3}, []ChunkRange{{0, 0}, {3, 3}, {5, 5}}},
		{[]int{5, 0, 3, 4, 1, 2}, []ChunkRange{{0, 5}}},
		{[]int{7, 7, 6, 8}, []ChunkRange{{6, 8}}},
		{[]int{10, 2, 6, 4}, []ChunkRange{{2, 2}, {4, 4}, {6, 6}, {10, 10}}},
	}
	for _, tc := range tests {
		var rs []ChunkRange
		for _, i := range tc.add {
			rs = AddChunk(rs, i)
		}
		require.Equal(t, tc.want, rs, "adding %v", tc.add)
		var want []int
		for _, r := range tc.want {
			for i := r.First; i <= r.Last; i++ {
				want = append(want, i)
			}
		}
		require.Equal(t, want, ChunksOf(rs))
	}
}
