package iterabletest_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// answer is what a client saw: a status and Retry-After, or a transport error.
type answer struct {
	status     int
	retryAfter string
	err        error
}

func send(t *testing.T, c *http.Client, method, url, apiKey, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if apiKey != "" {
		req.Header.Set("Api-Key", apiKey)
	}
	res, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return answer{status: res.StatusCode, retryAfter: res.Header.Get("Retry-After")}
}

func TestRepeated429Bursts(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	s.InjectFaults(iterabletest.Faults{Burst429Every: 3, Burst429Length: 2,
		Burst429RetryAfters: []time.Duration{1500 * time.Millisecond, 0}})
	type seen struct {
		status     int
		retryAfter string
	}
	var got []seen
	for i := 0; i < 15; i++ {
		req, err := http.NewRequest("POST", "/api/users/bulkUpdate", strings.NewReader(`{"users":[{"email":"a@example.com"}]}`))
		require.NoError(t, err)
		req.Header.Set("Api-Key", key)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		got = append(got, seen{rec.Code, rec.Header().Get("Retry-After")})
	}
	ok, withRA, noRA := seen{200, ""}, seen{429, "2"}, seen{429, ""}
	require.Equal(t, []seen{ok, ok, ok, withRA, withRA, ok, ok, ok, noRA, noRA, ok, ok, ok, withRA, withRA}, got)
	st := s.Stats(key)
	require.Equal(t, 3, st.Bursts429)
	require.Equal(t, 6, st.RateLimited)
	require.Equal(t, 4, st.Burst429RetryAfter)
	require.Equal(t, 15, st.BulkRequests)
	require.Equal(t, 9, st.UsersUpdated)

	// Faults{} stops the bursts.
	s.InjectFaults(iterabletest.Faults{})
	code, _ := bulk(t, s, `{"users":[{"email":"a@example.com"}]}`)
	require.Equal(t, 200, code)
}

func TestOutages(t *testing.T) {
	s := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer s.Close()
	s.AddProject(key, iterabletest.ProjectEmail)
	c := &http.Client{Timeout: 5 * time.Second}
	bulkURL, fieldsURL := s.URL()+"/api/users/bulkUpdate", s.URL()+"/api/users/getFields"
	body := `{"users":[{"email":"a@example.com","dataFields":{"n":1}}]}`
	require.Equal(t, 200, send(t, c, "POST", bulkURL, key, body).status)

	tests := []struct {
		outage iterabletest.Outage
		check  func(t *testing.T, a answer)
	}{
		{iterabletest.OutageServiceUnavailable, func(t *testing.T, a answer) {
			require.NoError(t, a.err)
			require.Equal(t, 503, a.status)
		}},
		{iterabletest.OutageDropConnections, func(t *testing.T, a answer) {
			require.Error(t, a.err, "no answer")
		}},
	}
	answered := 0
	for _, tt := range tests {
		t.Run(tt.outage.String(), func(t *testing.T) {
			s.InjectFaults(iterabletest.Faults{Outage: tt.outage})
			// Every endpoint, with or without a valid key.
			tt.check(t, send(t, c, "POST", bulkURL, key, body))
			tt.check(t, send(t, c, "GET", fieldsURL, key, ""))
			tt.check(t, send(t, c, "GET", fieldsURL, "unknown-key", ""))
			answered += 3
			require.Equal(t, answered, s.OutageAnswers())
			s.InjectFaults(iterabletest.Faults{})
			require.Equal(t, 200, send(t, c, "GET", fieldsURL, key, "").status, "back after Faults{}")
		})
	}
	require.Equal(t, 1, s.Stats(key).BulkRequests, "outage answers are not bulk requests")
}

func TestGoOfflineRefusesConnectionsUntilGoOnline(t *testing.T) {
	s := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer s.Close()
	s.AddProject(key, iterabletest.ProjectEmail)
	url := s.URL()
	c := &http.Client{Timeout: 5 * time.Second}
	body := `{"users":[{"email":"a@example.com","dataFields":{"n":1}}]}`
	require.Equal(t, 200, send(t, c, "POST", url+"/api/users/bulkUpdate", key, body).status)

	s.GoOffline()
	a := send(t, c, "GET", url+"/api/users/getFields", key, "")
	require.ErrorIs(t, a.err, syscall.ECONNREFUSED)
	require.NoError(t, s.GoOnline())
	require.Equal(t, url, s.URL(), "same address")
	require.Equal(t, 200, send(t, c, "GET", url+"/api/users/getFields", key, "").status)
	u, found := s.User(key, "a@example.com", "")
	require.True(t, found, "the data survived the outage")
	require.EqualValues(t, 1, u.DataFields["n"])
}
