package warehouse_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

func TestKeyedMutexSerialisesOneKey(t *testing.T) {
	var (
		k       warehouse.KeyedMutex
		wg      sync.WaitGroup
		mu      sync.Mutex
		inside  = map[string]int{}
		maxSeen = map[string]int{}
	)
	for i := 0; i < 40; i++ {
		key := []string{"a", "b"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := k.Lock(key)
			mu.Lock()
			inside[key]++
			maxSeen[key] = max(maxSeen[key], inside[key])
			mu.Unlock()
			mu.Lock()
			inside[key]--
			mu.Unlock()
			unlock()
		}()
	}
	wg.Wait()
	require.Equal(t, map[string]int{"a": 1, "b": 1}, maxSeen)
}
