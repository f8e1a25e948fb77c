package activities

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

type closingPlanner struct {
	warehouse.Planner
	closed atomic.Bool
}

func (c *closingPlanner) Close() error { c.closed.Store(true); return nil }

// A slow open (BigQuery retrying, say) blocks the activities of its own state only; the same
// state is opened once however many activities ask at once; a failed open is tried again.
func TestPlannerPoolOpensOutsideItsLock(t *testing.T) {
	p := NewPlannerPool(nil)
	ctx := context.Background()
	release := make(chan struct{})
	var opens atomic.Int32
	slow := &closingPlanner{}
	slowOpen := func() (warehouse.Planner, error) {
		opens.Add(1)
		<-release
		return slow, nil
	}
	results := make(chan warehouse.Planner, 3)
	for range 3 {
		go func() {
			pl, err := p.get(ctx, "slow", slowOpen)
			if err == nil {
				results <- pl
			}
		}()
	}
	require.Eventually(t, func() bool { return opens.Load() == 1 }, 5*time.Second, time.Millisecond, "the slow open started")
	fast := &closingPlanner{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pl, err := p.get(ctx, "fast", func() (warehouse.Planner, error) { return fast, nil })
		require.NoError(t, err)
		require.Same(t, fast, pl)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("another state's activity waited for a slow open")
	}
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := p.get(waitCtx, "slow", slowOpen)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "a waiter gives up with its context")
	close(release)
	for range 3 {
		require.Same(t, slow, <-results)
	}
	require.Equal(t, int32(1), opens.Load(), "opened once")

	boom := errors.New("boom")
	_, err = p.get(ctx, "flaky", func() (warehouse.Planner, error) { return nil, boom })
	require.ErrorIs(t, err, boom)
	pl, err := p.get(ctx, "flaky", func() (warehouse.Planner, error) { return fast, nil })
	require.NoError(t, err, "a failed open is tried again")
	require.Same(t, fast, pl)

	require.NoError(t, p.Close())
	require.True(t, slow.closed.Load())
	require.True(t, fast.closed.Load())
}
