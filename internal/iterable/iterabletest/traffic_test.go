package iterabletest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStrictWindowLimiter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	l := newLimiter(5, false).mode(RateLimitStrictWindow)
	for i := range 5 {
		require.True(t, l.allow(ms(204*i)), "request %d", i)
	}
	require.False(t, l.allow(ms(990)), "a sixth request within one second")
	require.True(t, l.allow(ms(1000)), "one second after the first")

	// A token bucket accepts the same early request: its burst absorbs it.
	b := newLimiter(5, false)
	for i := range 5 {
		require.True(t, b.allow(ms(204*i)))
	}
	require.True(t, b.allow(ms(990)))
}

func TestInjectTraffic(t *testing.T) {
	s := NewServer(Options{BulkUpdateRPS: 5})
	defer s.Close()
	s.AddProject("k", ProjectEmail)
	// 20 requests/s for 300ms: the bucket's 5 tokens and a little refill are accepted.
	s.InjectTraffic("k", Traffic{RPS: 20, For: 300 * time.Millisecond})
	require.Eventually(t, func() bool { return s.TrafficStats("k").Requests == 6 }, 2*time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	st := s.TrafficStats("k")
	require.Equal(t, 6, st.Requests, "it stops")
	require.GreaterOrEqual(t, st.Accepted, 5)
	require.Equal(t, st.Requests, st.Accepted+st.RateLimited)
	require.Zero(t, s.Stats("k").BulkRequests, "not counted as the project's own requests")
}
