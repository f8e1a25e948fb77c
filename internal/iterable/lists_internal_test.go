package iterable

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each list endpoint has its own per-project budget: Iterable's limit where it documents one,
// 5/s for subscribe and unsubscribe (undocumented), configurable.
func TestClientListBudgets(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		name                                   string
		cfg                                    Config
		lists, create, sub, unsub, readsPerMin float64
	}{
		{name: "defaults", lists: 100, create: 1, sub: 5, unsub: 5, readsPerMin: 5},
		{name: "configured", cfg: Config{ListsRPS: 10, SubscribeRPS: 2, UnsubscribeRPS: 3}, lists: 10, create: 1, sub: 2, unsub: 3, readsPerMin: 5},
		{name: "unlimited", cfg: Config{RequestsPerSecond: -1}, lists: inf, create: inf, sub: inf, unsub: inf, readsPerMin: inf},
		{name: "unlimited but subscribe", cfg: Config{RequestsPerSecond: -1, SubscribeRPS: 4}, lists: inf, create: inf, sub: 4, unsub: inf, readsPerMin: inf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.BaseURL, cfg.APIKey = "http://127.0.0.1:1", "key"
			c, err := New(cfg)
			require.NoError(t, err)
			require.Equal(t, tt.lists, c.lists.Ceiling())
			require.Equal(t, tt.create, c.createList.Ceiling())
			require.Equal(t, tt.sub, c.subscribe.Ceiling())
			require.Equal(t, tt.unsub, c.unsubscribe.Ceiling())
			require.InDelta(t, tt.readsPerMin, c.listUsers.Ceiling()*60, 1e-9)
			require.InDelta(t, tt.readsPerMin, c.listSize.Ceiling()*60, 1e-9)
			for _, b := range []*Budget{c.lists, c.createList, c.subscribe, c.listUsers, c.listSize, c.bulk} {
				require.NotSame(t, c.unsubscribe, b)
			}
			require.NotSame(t, c.listUsers, c.listSize)
		})
	}
}
