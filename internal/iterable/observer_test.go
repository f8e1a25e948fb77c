package iterable_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
)

func TestRoute(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/api/users/bulkUpdate", "/api/users/bulkUpdate"},
		{"/api/users/getFields", "/api/users/getFields"},
		{"/api/users/getByEmail", "/api/users/getByEmail"},
		{"/api/export/data.json", "/api/export/data.json"},
		{"/api/users/byUserId/user-42", "/api/users/byUserId/{userId}"},
		{"/api/users/byUserId/a/b", "/api/users/byUserId/{userId}"},
		{"/proxy/iterable/api/users/bulkUpdate", "/proxy/iterable/api/users/bulkUpdate"},
		{"/api/lists", "/api/lists"},
		{"/api/lists/subscribe", "/api/lists/subscribe"},
		{"/api/lists/unsubscribe", "/api/lists/unsubscribe"},
		{"/api/lists/getUsers", "/api/lists/getUsers"},
		{"/api/lists/12345/size", "/api/lists/{listId}/size"},
		{"/api/users/jane@example.com", "/{other}"},
		{"/", "/{other}"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, iterable.Route(tc.path), tc.path)
	}
}

// observed records what the client tells its Observer.
type observed struct {
	mu       sync.Mutex
	requests []string // endpoint + " " + status
	waits    map[string]int
}

func (o *observed) IterableRequest(_ context.Context, endpoint string, status int, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests = append(o.requests, endpoint+" "+http.StatusText(status))
}

func (o *observed) IterableBudgetWait(_ context.Context, endpoint string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.waits == nil {
		o.waits = map[string]int{}
	}
	o.waits[endpoint]++
}

// TestObserverSeesEveryAttempt: a 429 then a 200 are two observed requests of the bulkUpdate
// endpoint, each after a budget wait; a nil Observer is allowed (every other test).
func TestObserverSeesEveryAttempt(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write([]byte(`{"successCount":1,"failCount":0}`))
	}))
	defer srv.Close()
	obs := &observed{}
	c, err := iterable.New(iterable.Config{BaseURL: srv.URL, APIKey: "k", RequestsPerSecond: -1, Observer: obs,
		RetryInitialInterval: time.Millisecond, RetryMaxInterval: time.Millisecond})
	require.NoError(t, err)
	_, err = c.SendBatch(context.Background(), iterable.Batch{Records: []iterable.Record{{User: iterable.User{Email: "a@example.com"}}}})
	require.NoError(t, err)
	require.Equal(t, []string{"POST /api/users/bulkUpdate Too Many Requests", "POST /api/users/bulkUpdate OK"}, obs.requests)
	require.Equal(t, map[string]int{"POST /api/users/bulkUpdate": 2}, obs.waits)
}
