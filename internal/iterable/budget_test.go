package iterable_test

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

func TestBudgetsKeyedPerAPIKey(t *testing.T) {
	budgets := iterable.NewBudgets()
	newClient := func(key string, rps float64) *iterable.Client {
		return mustClient(t, iterable.Config{APIKey: key, Budgets: budgets, RequestsPerSecond: rps})
	}
	a1, a2, b := newClient("key-a", 0), newClient("key-a", 0), newClient("key-b", 0)
	require.Same(t, a1.BulkBudget(), a2.BulkBudget(), "clients of one project share its budget")
	require.NotSame(t, a1.BulkBudget(), b.BulkBudget())
	require.NotSame(t, a1.BulkBudget(), mustClient(t, iterable.Config{APIKey: "key-a"}).BulkBudget(),
		"a client without Budgets has a private one")

	// A client configured lower lowers the shared ceiling: the project's limit is one.
	newClient("key-a", 2)
	require.Equal(t, 2.0, a1.BulkBudget().Ceiling())
	require.Len(t, iterable.ProjectKey("key-a"), 64)
	require.NotContains(t, iterable.ProjectKey("key-a"), "key-a")
}

func TestBudgetSharedAcrossClientsLimitsTogether(t *testing.T) {
	budgets := iterable.NewBudgets()
	const rps = 10 // starts at 98%: 9.8 requests/s, one token in the bucket
	a := budgets.Budget("key-a", iterable.EndpointBulkUpdate, rps)
	b := budgets.Budget("key-a", iterable.EndpointBulkUpdate, rps)
	other := budgets.Budget("key-b", iterable.EndpointBulkUpdate, rps)
	require.InDelta(t, 9.8, a.Rate(), 1e-9)
	ctx := context.Background()
	require.NoError(t, a.Wait(ctx))
	start := time.Now()
	require.NoError(t, other.Wait(ctx))
	require.Less(t, time.Since(start), 20*time.Millisecond, "another project has its own bucket")

	start = time.Now()
	for range 3 {
		require.NoError(t, b.Wait(ctx))
	}
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "the second client found the bucket drained")

	ctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, b.Wait(ctx), context.Canceled)
}

// The shape of the rate control over time is tested on a virtual clock in
// budget_internal_test.go; this checks the decreases through the exported API.
func TestBudgetDecreases(t *testing.T) {
	b := iterable.NewBudgets().Budget("k", iterable.EndpointBulkUpdate, 4)
	rates := []float64{b.Rate()}
	for range 4 {
		b.RateLimited(0)
		rates = append(rates, b.Rate())
	}
	// 98% at the start; its first 429 came at once (no request yet): the floor, and it stays there
	want := []float64{3.92, 0.5, 0.5, 0.5, 0.5}
	require.InDeltaSlice(t, want, rates, 1e-9)
	for range 100 {
		b.Succeeded()
	}
	require.LessOrEqual(t, b.Rate(), 4*0.98, "never above 98% of the ceiling")

	unlimited := iterable.NewBudgets().Budget("k", iterable.EndpointBulkUpdate, -1)
	unlimited.RateLimited(0)
	require.True(t, math.IsInf(unlimited.Rate(), 1))
}

func TestBudgetRetryAfterPausesEverySender(t *testing.T) {
	budgets := iterable.NewBudgets()
	a := budgets.Budget("k", iterable.EndpointBulkUpdate, 100)
	b := budgets.Budget("k", iterable.EndpointBulkUpdate, 100)
	a.RateLimited(200 * time.Millisecond)
	start := time.Now()
	require.NoError(t, b.Wait(context.Background()))
	require.GreaterOrEqual(t, time.Since(start), 190*time.Millisecond)
}

// TestBudgetDecreasesOnRealRateLimit sends faster than the emulator allows: the client's budget
// (configured above the project's limit) learns the real limit from the 429s.
func TestBudgetDecreasesOnRealRateLimit(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{BulkUpdateRPS: 5},
		iterable.Config{RequestsPerSecond: 40})
	res, err := e.send(t, true, email(1))
	require.NoError(t, err)
	require.Zero(t, res.RateLimited)

	before := e.client.BulkBudget().Rate()
	require.InDelta(t, 0.98*40, before, 1e-9, "98% of the configured 40 from the first request")

	e.emu.InjectFaults(iterabletest.Faults{Burst429: 1})
	res, err = e.send(t, true, email(2))
	require.NoError(t, err)
	require.Equal(t, 1, res.RateLimited)
	// The start's first 429, moments after its first request: the budget drops to the floor
	// (so many senders, or a limit so far below 40) and regains little.
	require.Less(t, e.client.BulkBudget().Rate(), 2.0)

	// Two clients of one project hammering the emulator from goroutines: all users land and
	// every 429 is retried.
	budgets := iterable.NewBudgets()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var accepted, limited int
	var errs []error
	for w := range 2 {
		c := mustClient(t, iterable.Config{BaseURL: e.emu.URL(), APIKey: e.key, Budgets: budgets, RequestsPerSecond: 40,
			RetryInitialInterval: 5 * time.Millisecond, RetryMaxInterval: 50 * time.Millisecond, MaxElapsed: 20 * time.Second})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 6 {
				batches, _, err := c.Pack([]iterable.Record{{Index: i, User: email(100*w + i)}}, true)
				var res iterable.BatchResult
				if err == nil {
					res, err = c.SendBatch(context.Background(), batches[0])
				}
				mu.Lock()
				accepted += len(res.Accepted)
				limited += res.RateLimited
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Empty(t, errs)
	require.Equal(t, 12, accepted)
	require.Positive(t, limited)
	require.Equal(t, limited+1, e.emu.Stats(e.key).RateLimited)
}
