package iterabletest_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// export calls GET /api/export/data.json with the raw query and returns the status, the
// Content-Type and the body's lines decoded (or the error body for a non-200).
func export(t *testing.T, h http.Handler, query string) (int, string, []map[string]any) {
	t.Helper()
	req := httptest.NewRequest("GET", "/api/export/data.json?"+query, nil)
	req.Header.Set("Api-Key", key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var lines []map[string]any
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		lines = append(lines, m)
	}
	return rec.Code, rec.Header().Get("Content-Type"), lines
}

func exportHandler(t *testing.T) *iterabletest.Server {
	t.Helper()
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectHybrid)
	status, _ := bulk(t, s, `{"users":[
		{"email":"b@example.com","userId":"ub","dataFields":{"plan":"pro","n":2}},
		{"email":"a@example.com","dataFields":{"plan":"free"}},
		{"userId":"uc","dataFields":{"n":3}}]}`)
	require.Equal(t, 200, status)
	return s
}

func TestExportUsers(t *testing.T) {
	s := exportHandler(t)
	tests := []struct {
		name  string
		query string
		want  []map[string]any // profileUpdatedAt removed
	}{
		{name: "all fields", query: "dataTypeName=user&range=All", want: []map[string]any{
			{"userId": "uc", "n": float64(3)},
			{"email": "a@example.com", "plan": "free"},
			{"email": "b@example.com", "userId": "ub", "plan": "pro", "n": float64(2)},
		}},
		{name: "onlyFields", query: "dataTypeName=user&range=All&onlyFields=email", want: []map[string]any{
			{}, {"email": "a@example.com"}, {"email": "b@example.com"},
		}},
		{name: "onlyFields repeated and comma separated", query: "dataTypeName=user&range=Today&onlyFields=userId&onlyFields=plan,%20n", want: []map[string]any{
			{"userId": "uc", "n": float64(3)}, {"plan": "free"}, {"userId": "ub", "plan": "pro", "n": float64(2)},
		}},
		{name: "before today", query: "dataTypeName=user&range=BeforeToday", want: nil},
		{name: "yesterday", query: "dataTypeName=user&range=Yesterday", want: nil},
		{name: "date window", query: url.Values{"dataTypeName": {"user"}, "onlyFields": {"userId"},
			"startDateTime": {time.Now().UTC().Add(-time.Hour).Format("2006-01-02 15:04:05")},
			"endDateTime":   {time.Now().Add(time.Hour).Format("2006-01-02 15:04:05 -07:00")}}.Encode(),
			want: []map[string]any{{"userId": "uc"}, {}, {"userId": "ub"}}},
		{name: "window in the past", query: "dataTypeName=user&startDateTime=2020-01-01+00:00:00&endDateTime=2020-01-02+00:00:00", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ctype, lines := export(t, s, tt.query)
			require.Equal(t, 200, status)
			require.Equal(t, "application/x-json-stream", ctype)
			for _, l := range lines {
				if at, ok := l["profileUpdatedAt"]; ok {
					_, err := time.Parse("2006-01-02 15:04:05 -07:00", at.(string))
					require.NoError(t, err)
					delete(l, "profileUpdatedAt")
				}
			}
			require.Equal(t, tt.want, lines)
		})
	}
	st := s.Stats(key)
	require.Equal(t, len(tests), st.ExportRequests)
	require.Equal(t, 3+3+3+3, st.ExportedUsers)
}

func TestExportBadRequests(t *testing.T) {
	tests := []struct {
		name  string
		query string
	}{
		{name: "no data type", query: "range=All"},
		{name: "another data type", query: "dataTypeName=emailSend&range=All"},
		{name: "neither range nor start", query: "dataTypeName=user"},
		{name: "unknown range", query: "dataTypeName=user&range=Forever"},
		{name: "bad start", query: "dataTypeName=user&startDateTime=2023-02-05"},
		{name: "bad end", query: "dataTypeName=user&startDateTime=2023-02-05+00:00:00&endDateTime=tomorrow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := exportHandler(t)
			status, out := call(t, s, "GET", "/api/export/data.json?"+tt.query, key, "")
			require.Equal(t, 400, status)
			require.Equal(t, "BadParams", out["code"])
			require.Equal(t, 1, s.Stats(key).BadRequests)
		})
	}
	s := exportHandler(t)
	status, out := call(t, s, "GET", "/api/export/data.json?dataTypeName=user&range=All", "wrong-key", "")
	require.Equal(t, 401, status)
	require.Equal(t, "BadApiKey", out["code"])
}

// Iterable allows 4 exports a minute per project: a burst of 4, then one every 15 s.
func TestExportRateLimit(t *testing.T) {
	s := newHandler(iterabletest.Options{}, iterabletest.ProjectEmail)
	var codes []int
	for range 5 {
		status, _, _ := export(t, s, "dataTypeName=user&range=All")
		codes = append(codes, status)
	}
	require.Equal(t, []int{200, 200, 200, 200, 429}, codes)
	s.AddProject("other", iterabletest.ProjectEmail)
	req := httptest.NewRequest("GET", "/api/export/data.json?dataTypeName=user&range=All", nil)
	req.Header.Set("Api-Key", "other")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	require.Equal(t, 200, rec.Code, "per project")

	st := s.Stats(key)
	require.Equal(t, 5, st.ExportRequests)
	require.Equal(t, 1, st.RateLimited)

	s = newHandler(iterabletest.Options{ExportPerMinute: 600}, iterabletest.ProjectEmail) // 10/s, burst 4
	for range 4 {
		status, _, _ := export(t, s, "dataTypeName=user&range=All")
		require.Equal(t, 200, status)
	}
	status, _, _ := export(t, s, "dataTypeName=user&range=All")
	require.Equal(t, 429, status, "the burst stays 4")
	time.Sleep(110 * time.Millisecond)
	status, _, _ = export(t, s, "dataTypeName=user&range=All")
	require.Equal(t, 200, status)

	s.InjectFaults(iterabletest.Faults{Export429: 1})
	time.Sleep(110 * time.Millisecond)
	status, _, _ = export(t, s, "dataTypeName=user&range=All")
	require.Equal(t, 429, status, "injected")
	status, _, _ = export(t, s, "dataTypeName=user&range=All")
	require.Equal(t, 200, status)
}

// CutExportAfter closes the connection mid-body: a client sees the lines, then an unexpected EOF.
func TestExportCut(t *testing.T) {
	s := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer s.Close()
	s.AddProject(key, iterabletest.ProjectEmail)
	var users []string
	for i := range 5 {
		users = append(users, `{"email":"u`+itoa(i)+`@example.com"}`)
	}
	req, err := http.NewRequest("POST", s.URL()+"/api/users/bulkUpdate", strings.NewReader(`{"users":[`+strings.Join(users, ",")+`]}`))
	require.NoError(t, err)
	req.Header.Set("Api-Key", key)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = res.Body.Close()
	require.Equal(t, 200, res.StatusCode)

	s.InjectFaults(iterabletest.Faults{CutExportAfter: 2})
	req, err = http.NewRequest("GET", s.URL()+"/api/export/data.json?dataTypeName=user&range=All&onlyFields=email", nil)
	require.NoError(t, err)
	req.Header.Set("Api-Key", key)
	res, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, 200, res.StatusCode)
	body, err := io.ReadAll(res.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, "{\"email\":\"u0@example.com\"}\n{\"email\":\"u1@example.com\"}\n", string(body))
	require.Equal(t, 2, s.Stats(key).ExportedUsers)
}

// Lookups count in LookupRequests and have their own limit per endpoint.
func TestLookupLimits(t *testing.T) {
	s := newHandler(iterabletest.Options{LookupRPS: 2}, iterabletest.ProjectEmail)
	var codes []int
	for range 3 {
		status, _ := call(t, s, "GET", "/api/users/getByEmail?email=a@example.com", key, "")
		codes = append(codes, status)
	}
	status, _ := call(t, s, "GET", "/api/users/byUserId/u1", key, "")
	codes = append(codes, status)
	require.Equal(t, []int{200, 200, 429, 200}, codes, "getByEmail and byUserId are limited separately")
	st := s.Stats(key)
	require.Equal(t, 4, st.LookupRequests)
	require.Equal(t, 1, st.RateLimited)
}

func itoa(i int) string { return string(rune('0' + i)) }
