package iterable_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// seed creates users in the emulator project of e.
func (e *env) seed(t *testing.T, users ...iterable.User) {
	t.Helper()
	res, err := e.send(t, true, users...)
	require.NoError(t, err)
	require.Empty(t, res.Rejected)
}

// fastClient is a client of url with quick retries and no client-side rate limit.
func fastClient(t *testing.T, url string, cfg iterable.Config) *iterable.Client {
	t.Helper()
	cfg.BaseURL = url
	if cfg.APIKey == "" {
		cfg.APIKey = "secret-api-key"
	}
	if cfg.RequestsPerSecond == 0 {
		cfg.RequestsPerSecond = -1
	}
	cfg.RetryInitialInterval, cfg.RetryMaxInterval = time.Millisecond, 5*time.Millisecond
	if cfg.MaxElapsed == 0 {
		cfg.MaxElapsed = 5 * time.Second
	}
	return mustClient(t, cfg)
}

func TestExists(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	e.seed(t,
		iterable.User{Email: "a@example.com", UserID: "u1"},
		iterable.User{Email: "b@example.com", UserID: "u2"},
		iterable.User{Email: "only-email@example.com"},
	)
	tests := []struct {
		name        string
		field       string
		ids         []string
		want        map[string]bool
		wantLookups int
	}{
		{
			name:  "emails, case-insensitive, deduplicated",
			field: iterable.FieldEmail,
			ids:   []string{"A@example.com", "a@example.com", "b@example.com", "c@example.com", "only-email@example.com", "A@example.com"},
			want: map[string]bool{"A@example.com": true, "a@example.com": true, "b@example.com": true,
				"c@example.com": false, "only-email@example.com": true},
			wantLookups: 4,
		},
		{
			name:        "invalid emails are missing without a request",
			field:       iterable.FieldEmail,
			ids:         []string{"", "not an email", "x@localhost"},
			want:        map[string]bool{"": false, "not an email": false, "x@localhost": false},
			wantLookups: 0,
		},
		{
			name:        "userIds, exact",
			field:       iterable.FieldUserID,
			ids:         []string{"u1", "U1", "u2", "u3", "trailing ", strings.Repeat("x", 53)},
			want:        map[string]bool{"u1": true, "U1": false, "u2": true, "u3": false, "trailing ": false, strings.Repeat("x", 53): false},
			wantLookups: 4,
		},
		{name: "nothing to look up", field: iterable.FieldUserID, ids: nil, want: map[string]bool{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.emu.Stats(e.key).LookupRequests
			got, err := e.client.Exists(context.Background(), tt.field, tt.ids)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.wantLookups, e.emu.Stats(e.key).LookupRequests-before)
		})
	}

	_, err := e.client.Exists(context.Background(), "phone", []string{"1"})
	require.ErrorContains(t, err, `field must be "email" or "userId"`)
}

// Lookups beyond the project's limit are answered 429 and retried until every one is answered.
func TestExistsRetriesRateLimits(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{LookupRPS: 20, BulkUpdateRPS: 1000}, iterable.Config{LookupRPS: 1000})
	var users []iterable.User
	var ids []string
	for i := range 30 {
		if i%2 == 0 {
			users = append(users, email(i))
		}
		ids = append(ids, email(i).Email)
	}
	e.seed(t, users...)
	got, err := e.client.Exists(context.Background(), iterable.FieldEmail, ids)
	require.NoError(t, err)
	for i, id := range ids {
		require.Equal(t, i%2 == 0, got[id], id)
	}
	st := e.emu.Stats(e.key)
	require.Positive(t, st.RateLimited, "the emulator's lookup limit was hit")
	require.Equal(t, 30+st.RateLimited, st.LookupRequests)
}

func TestExistsFailures(t *testing.T) {
	t.Run("bad key is fatal", func(t *testing.T) {
		e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{APIKey: "secret-api-key-unknown"})
		_, err := e.client.Exists(context.Background(), iterable.FieldEmail, []string{"alice@example.com"})
		var apiErr *iterable.APIError
		require.ErrorAs(t, err, &apiErr)
		require.True(t, apiErr.Fatal())
		requireNoUserData(t, err.Error())
	})
	t.Run("canceled", func(t *testing.T) {
		e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := e.client.Exists(ctx, iterable.FieldUserID, []string{"secret-value"})
		require.ErrorIs(t, err, context.Canceled)
		requireNoUserData(t, err.Error())
	})
	t.Run("server errors exhaust the retries", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
		}))
		t.Cleanup(srv.Close)
		c := fastClient(t, srv.URL, iterable.Config{MaxElapsed: 30 * time.Millisecond})
		_, err := c.Exists(context.Background(), iterable.FieldEmail, []string{"alice@example.com", "bob@example.com"})
		require.ErrorContains(t, err, "HTTP 502")
		requireNoUserData(t, err.Error())
	})
}

// A 400 to one lookup means Iterable refuses the identifier itself: that id is missing, the
// others are answered, and the log says how many without saying which.
func TestExistsRefusedIdentifierIsMissing(t *testing.T) {
	var inFlight, maxInFlight atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		switch email := r.URL.Query().Get("email"); {
		case strings.HasPrefix(email, "refused"):
			w.WriteHeader(http.StatusBadRequest)
			_, _ = fmt.Fprintf(w, `{"code":"InvalidEmailAddressError","msg":"Invalid email: %s"}`, email)
		case strings.HasPrefix(email, "known"):
			_, _ = fmt.Fprintf(w, `{"user":{"email":%q,"dataFields":{}}}`, email)
		default:
			_, _ = w.Write([]byte(`{}`))
		}
	}))
	t.Cleanup(srv.Close)
	logs := &logBuffer{}
	c := fastClient(t, srv.URL, iterable.Config{LookupConcurrency: 4, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("known%d@example.com", i), fmt.Sprintf("unknown%d@example.com", i))
	}
	ids = append(ids, "refused@example.com")
	got, err := c.Exists(context.Background(), iterable.FieldEmail, ids)
	require.NoError(t, err)
	require.Len(t, got, 41)
	for id, ok := range got {
		require.Equal(t, strings.HasPrefix(id, "known"), ok, id)
	}
	require.Equal(t, int32(4), maxInFlight.Load(), "LookupConcurrency lookups at once")
	require.Contains(t, logs.String(), "refused=1")
	requireNoUserData(t, logs.String())
}

func TestExportUserIDs(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	e.seed(t,
		withFields(iterable.User{Email: "b@example.com", UserID: "u2"}, "secret", "secret-value"),
		iterable.User{Email: "a@example.com", UserID: "u1"},
		iterable.User{Email: "c@example.com"},
	)
	tests := []struct {
		field string
		want  []string
	}{
		{field: iterable.FieldEmail, want: []string{"a@example.com", "b@example.com", "c@example.com"}},
		{field: iterable.FieldUserID, want: []string{"u1", "u2"}},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			var got []string
			n, err := e.client.ExportUserIDs(context.Background(), tt.field, func(id string) error {
				got = append(got, id)
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, int64(len(tt.want)), n)
		})
	}
	_, err := e.client.ExportUserIDs(context.Background(), "phone", func(string) error { return nil })
	require.ErrorContains(t, err, `field must be "email" or "userId"`)
}

// The request asks for the user data type, all of it, and the identifier field only; the body is
// handed over line by line while it streams.
func TestExportUserIDsStreams(t *testing.T) {
	firstSeen := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/export/data.json" || r.Header.Get("Api-Key") != "secret-api-key" {
			http.Error(w, "unexpected request", http.StatusTeapot)
			return
		}
		q := r.URL.Query()
		if q.Get("dataTypeName") != "user" || q.Get("range") != "All" || strings.Join(q["onlyFields"], ",") != "userId" {
			http.Error(w, "unexpected query "+r.URL.RawQuery, http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/x-json-stream")
		_, _ = w.Write([]byte(`{"userId":"first","profileUpdatedAt":"2023-02-05 20:42:10 +00:00"}` + "\n"))
		w.(http.Flusher).Flush()
		select {
		case <-firstSeen: // the client handed the first line over before the body ended
		case <-time.After(5 * time.Second):
			return
		}
		_, _ = w.Write([]byte("\n{}\n" + `{"userId":null}` + "\n" + `{"userId":"second"}` + "\n" + `{"userId":"third"}`))
	}))
	t.Cleanup(srv.Close)
	c := fastClient(t, srv.URL, iterable.Config{})
	var got []string
	n, err := c.ExportUserIDs(context.Background(), iterable.FieldUserID, func(id string) error {
		if len(got) == 0 {
			close(firstSeen)
		}
		got = append(got, id)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, []string{"first", "second", "third"}, got)
	require.Equal(t, int64(3), n)
}

func TestExportUserIDsRetriesBeforeTheFirstLine(t *testing.T) {
	tests := []struct {
		name  string
		first func(w http.ResponseWriter)
	}{
		{name: "429", first: func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"code":"RateLimitExceeded","msg":"Rate limit exceeded"}`))
		}},
		{name: "503", first: func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) }},
		{name: "cut before any line", first: func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/x-json-stream")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"email":"half`))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					tt.first(w)
					return
				}
				_, _ = w.Write([]byte(`{"email":"a@example.com"}` + "\n"))
			}))
			t.Cleanup(srv.Close)
			c := fastClient(t, srv.URL, iterable.Config{})
			var got []string
			n, err := c.ExportUserIDs(context.Background(), iterable.FieldEmail, func(id string) error {
				got = append(got, id)
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, int64(1), n)
			require.Equal(t, []string{"a@example.com"}, got)
			require.Equal(t, int32(2), calls.Load())
		})
	}
}

func TestExportUserIDsEmulatorRateLimit(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	e.seed(t, email(1), email(2))
	e.emu.InjectFaults(iterabletest.Faults{Export429: 2})
	n, err := e.client.ExportUserIDs(context.Background(), iterable.FieldEmail, func(string) error { return nil })
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	st := e.emu.Stats(e.key)
	require.Equal(t, 3, st.ExportRequests)
	require.Equal(t, 2, st.RateLimited)
}

// A stream cut after some lines is not retried (the callback already saw a prefix): the caller
// starts the export again.
func TestExportUserIDsCutStream(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	var users []iterable.User
	for i := range 10 {
		users = append(users, email(i))
	}
	e.seed(t, users...)
	e.emu.InjectFaults(iterabletest.Faults{CutExportAfter: 3})
	var got []string
	collect := func(id string) error {
		got = append(got, id)
		return nil
	}
	n, err := e.client.ExportUserIDs(context.Background(), iterable.FieldEmail, collect)
	require.ErrorContains(t, err, "export stream cut after 3 lines")
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	requireNoUserData(t, err.Error())
	require.Equal(t, int64(3), n)
	require.Len(t, got, 3)
	require.Equal(t, 1, e.emu.Stats(e.key).ExportRequests, "not retried")

	e.emu.InjectFaults(iterabletest.Faults{})
	got = nil
	n, err = e.client.ExportUserIDs(context.Background(), iterable.FieldEmail, collect)
	require.NoError(t, err)
	require.Equal(t, int64(10), n)
}

func TestExportUserIDsFailures(t *testing.T) {
	stop := errors.New("enough")
	tests := []struct {
		name    string
		body    string
		fn      func(string) error
		wantErr string
		wantIs  error
		wantN   int64
	}{
		{name: "callback error stops the export", body: "{\"email\":\"a@example.com\"}\n{\"email\":\"b@example.com\"}\n{\"email\":\"c@example.com\"}\n",
			fn: func(id string) error {
				if strings.HasPrefix(id, "b") {
					return stop
				}
				return nil
			}, wantErr: "callback: enough", wantIs: stop, wantN: 2},
		{name: "invalid JSON", body: "{\"email\":\"a@example.com\"}\n{\"email\":\"secret-value@example.com\n", wantErr: "export line 2: invalid JSON", wantN: 1},
		{name: "identifier not a string", body: "{\"email\":12}\n", wantErr: "export line 1: email is not a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				_, _ = w.Write([]byte(tt.body))
			}))
			t.Cleanup(srv.Close)
			c := fastClient(t, srv.URL, iterable.Config{})
			fn := tt.fn
			if fn == nil {
				fn = func(string) error { return nil }
			}
			n, err := c.ExportUserIDs(context.Background(), iterable.FieldEmail, fn)
			require.ErrorContains(t, err, tt.wantErr)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			requireNoUserData(t, err.Error())
			require.Equal(t, tt.wantN, n)
			require.Equal(t, int32(1), calls.Load(), "not retried")
		})
	}

	t.Run("bad key is fatal", func(t *testing.T) {
		e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{APIKey: "secret-api-key-unknown"})
		_, err := e.client.ExportUserIDs(context.Background(), iterable.FieldEmail, func(string) error { return nil })
		var apiErr *iterable.APIError
		require.ErrorAs(t, err, &apiErr)
		require.True(t, apiErr.Fatal())
	})
}

// An export that stalls is cut by the idle timeout, not by HTTPClient's overall timeout, which
// would cut every long export.
func TestExportUserIDsIdleTimeout(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		for i := range 5 {
			_, _ = fmt.Fprintf(w, "{\"email\":\"u%d@example.com\"}\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(30 * time.Millisecond) // slower in total than the HTTP client's timeout
		}
		select { // then stall
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	c := fastClient(t, srv.URL, iterable.Config{HTTPClient: &http.Client{Timeout: 100 * time.Millisecond}, ExportIdleTimeout: 300 * time.Millisecond})
	n, err := c.ExportUserIDs(context.Background(), iterable.FieldEmail, func(string) error { return nil })
	require.ErrorContains(t, err, "stream idle timeout")
	require.Equal(t, int64(5), n, "every line sent before the stall was read, past the client's 100ms timeout")
	require.Equal(t, int32(1), calls.Load())
}
