package iterabletest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

const key = "test-key"

// call sends one request to h and decodes the JSON answer.
func call(t *testing.T, h http.Handler, method, path, apiKey, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if apiKey != "" {
		req.Header.Set("Api-Key", apiKey)
	}
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), rec.Body.String())
	return rec.Code, out
}

func bulk(t *testing.T, h http.Handler, body string) (int, map[string]any) {
	t.Helper()
	return call(t, h, "POST", "/api/users/bulkUpdate", key, body)
}

func newHandler(opts iterabletest.Options, typ iterabletest.ProjectType) *iterabletest.Server {
	s := iterabletest.NewHandler(opts)
	s.AddProject(key, typ)
	return s
}

func TestErrors(t *testing.T) {
	const max = 200
	tests := []struct {
		name       string
		apiKey     string
		body       string
		wantStatus int
		wantCode   string
	}{
		{name: "no key", body: `{"users":[]}`, wantStatus: 401, wantCode: "BadApiKey"},
		{name: "unknown key", apiKey: "other", body: `{"users":[]}`, wantStatus: 401, wantCode: "BadApiKey"},
		{name: "malformed JSON", apiKey: key, body: `{"users":[`, wantStatus: 400, wantCode: "BadJsonBody"},
		{name: "trailing garbage", apiKey: key, body: `{"users":[]} x`, wantStatus: 400, wantCode: "BadJsonBody"},
		{name: "users missing", apiKey: key, body: `{"createNewFields":true}`, wantStatus: 400, wantCode: "BadParams"},
		{name: "email not a string", apiKey: key, body: `{"users":[{"email":1}]}`, wantStatus: 400, wantCode: "BadParams"},
		{name: "empty field name", apiKey: key, body: `{"users":[{"email":"a@b.co","dataFields":{"":1}}]}`, wantStatus: 400, wantCode: "BadParams"},
		{name: "body of exactly the limit", apiKey: key, body: padded(max), wantStatus: 200},
		{name: "body one byte over", apiKey: key, body: padded(max + 1), wantStatus: 400, wantCode: "BatchTooLarge"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true, MaxBodyBytes: max}, iterabletest.ProjectEmail)
			status, out := call(t, s, "POST", "/api/users/bulkUpdate", tt.apiKey, tt.body)
			require.Equal(t, tt.wantStatus, status, out)
			if tt.wantCode != "" {
				require.Equal(t, tt.wantCode, out["code"])
				require.NotEmpty(t, out["msg"])
			}
		})
	}
}

// padded is a valid bulk body of exactly n bytes.
func padded(n int) string {
	b := `{"users":[{"email":"a@example.com","dataFields":{"pad":""}}]}`
	return strings.Replace(b, `"pad":""`, `"pad":"`+strings.Repeat("x", n-len(b))+`"`, 1)
}

func TestResponseShape(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	status, out := bulk(t, s, `{"createNewFields":false,"users":[{"email":"a@example.com","dataFields":{"x":1}},{"email":"bad"}]}`)
	require.Equal(t, 200, status)
	require.Equal(t, 1.0, out["successCount"])
	require.Equal(t, 1.0, out["failCount"])
	require.Equal(t, []any{}, out["createdFields"])
	require.Equal(t, []any{"x"}, out["filteredOutFields"])
	failed := out["failedUpdates"].(map[string]any)
	for _, k := range []string{"conflictEmails", "conflictUserIds", "forgottenEmails", "forgottenUserIds", "invalidDataEmails",
		"invalidDataUserIds", "invalidEmails", "invalidUserIds", "notFoundEmails", "notFoundUserIds"} {
		require.Contains(t, failed, k)
		require.NotNil(t, failed[k], k)
	}
	require.Len(t, failed, 10)
	require.Equal(t, []any{"bad"}, failed["invalidEmails"])
}

func TestValidation(t *testing.T) {
	tests := []struct {
		user string
		want string // failedUpdates list; "" = success
	}{
		{user: `{"email":"a@example.com"}`},
		{user: `{"email":"first.last+tag@sub.example.co.uk"}`},
		{user: `{"email":"no-at.example.com"}`, want: "invalidEmails"},
		{user: `{"email":"two@@example.com"}`, want: "invalidEmails"},
		{user: `{"email":"@example.com"}`, want: "invalidEmails"},
		{user: `{"email":"a@localhost"}`, want: "invalidEmails"},
		{user: `{"email":"a b@example.com"}`, want: "invalidEmails"},
		{user: `{"email":"a@example."}`, want: "invalidEmails"},
		{user: `{"userId":"ok-id","preferUserId":true}`},
		{user: fmt.Sprintf(`{"userId":%q,"preferUserId":true}`, strings.Repeat("x", 52))},
		{user: fmt.Sprintf(`{"userId":%q,"preferUserId":true}`, strings.Repeat("x", 53)), want: "invalidUserIds"},
		{user: `{"userId":"trailing ","preferUserId":true}`, want: "invalidUserIds"},
		{user: `{"userId":"tab\there","preferUserId":true}`, want: "invalidUserIds"},
		{user: `{"userId":"ünïcode","preferUserId":true}`, want: "invalidUserIds"},
		{user: `{"dataFields":{"a":1}}`, want: "invalidEmails"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
			status, out := bulk(t, s, `{"users":[`+tt.user+`]}`)
			require.Equal(t, 200, status)
			failed := out["failedUpdates"].(map[string]any)
			if tt.want == "" {
				require.Equal(t, 1.0, out["successCount"], failed)
				return
			}
			require.Equal(t, 1.0, out["failCount"])
			require.Len(t, failed[tt.want], 1)
		})
	}
}

func TestRateLimits(t *testing.T) {
	s := newHandler(iterabletest.Options{BulkUpdateRPS: 2, GetFieldsRPS: 1, LookupRPS: 1}, iterabletest.ProjectEmail)
	body := `{"users":[{"email":"a@example.com"}]}`
	require.True(t, s.Stats(key).FirstBulkAt.IsZero(), "no bulk request yet")
	began := time.Now()
	var codes []int
	for range 3 {
		status, _ := bulk(t, s, body)
		codes = append(codes, status)
	}
	require.Equal(t, []int{200, 200, 429}, codes, "burst equals the rate")
	status, out := bulk(t, s, body)
	require.Equal(t, 429, status)
	require.Equal(t, "RateLimitExceeded", out["code"])
	time.Sleep(550 * time.Millisecond)
	status, _ = bulk(t, s, body)
	require.Equal(t, 200, status, "a token came back after 1/rate")
	ended := time.Now()
	wire := s.Stats(key)
	require.False(t, wire.FirstBulkAt.Before(began), "the first bulk request's arrival")
	require.Less(t, wire.FirstBulkAt.Sub(began), 500*time.Millisecond, "the first bulk request's arrival")
	require.GreaterOrEqual(t, wire.LastBulkAt.Sub(wire.FirstBulkAt), 550*time.Millisecond, "the last answer's time")
	require.False(t, wire.LastBulkAt.After(ended), "the last answer's time")

	for _, path := range []string{"/api/users/getFields", "/api/users/getByEmail?email=a@example.com", "/api/users/byUserId/x"} {
		status, _ = call(t, s, "GET", path, key, "")
		require.Equal(t, 200, status, path)
		status, _ = call(t, s, "GET", path, key, "")
		require.Equal(t, 429, status, path)
	}
	st := s.Stats(key)
	require.Equal(t, 5, st.BulkRequests)
	require.Equal(t, 5, st.RateLimited)
	require.Equal(t, 3, st.UsersReceived)
	require.Equal(t, 2, st.GetFieldsRequests)
	require.Equal(t, 4, st.LookupRequests)
}

func TestProjectsAreSeparate(t *testing.T) {
	s := iterabletest.NewHandler(iterabletest.Options{BulkUpdateRPS: 1})
	s.AddProject("k1", iterabletest.ProjectEmail)
	s.AddProject("k2", iterabletest.ProjectEmail)
	body := `{"users":[{"email":"a@example.com","dataFields":{"f":1}}]}`
	st1, _ := call(t, s, "POST", "/api/users/bulkUpdate", "k1", body)
	st2, _ := call(t, s, "POST", "/api/users/bulkUpdate", "k2", strings.Replace(body, "1", `"one"`, 1))
	require.Equal(t, 200, st1)
	require.Equal(t, 200, st2, "each project has its own rate limit and field types")
	require.Len(t, s.Users("k1"), 1)
	u, _ := s.User("k2", "a@example.com", "")
	require.Equal(t, "one", u.DataFields["f"])
	require.Nil(t, s.Users("unknown"))
	_, _ = call(t, s, "POST", "/api/users/bulkUpdate", "unknown", body)
	require.Equal(t, 1, s.Unauthorized())
}

func TestProfilesAndCopies(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectHybrid)
	status, out := bulk(t, s, `{"users":[
		{"email":"b@example.com","dataFields":{"obj":{"a":1},"n":2.5,"list":[1,"x"]}},
		{"userId":"u-a","email":"a@example.com","dataFields":{"when":"2023-02-05 20:42:10 +00:00","ok":true}}]}`)
	require.Equal(t, 200, status)
	require.Equal(t, []any{"list", "n", "obj", "ok", "when"}, sorted(out["createdFields"]))

	users := s.Users(key)
	require.Equal(t, []iterabletest.StoredUser{
		{Email: "a@example.com", UserID: "u-a", DataFields: map[string]any{"when": "2023-02-05 20:42:10 +00:00", "ok": true}},
		{Email: "b@example.com", DataFields: map[string]any{"obj": map[string]any{"a": int64(1)}, "n": 2.5, "list": []any{int64(1), "x"}}},
	}, users)
	users[1].DataFields["obj"].(map[string]any)["a"] = "changed"
	u, ok := s.User(key, "B@EXAMPLE.COM", "")
	require.True(t, ok)
	require.Equal(t, int64(1), u.DataFields["obj"].(map[string]any)["a"], "Users returns deep copies")

	// Top-level fields are overwritten; mergeNestedObjects merges one level.
	status, _ = bulk(t, s, `{"users":[{"email":"b@example.com","dataFields":{"obj":{"b":2}}},
		{"userId":"u-a","mergeNestedObjects":true,"dataFields":{"ok":false}}]}`)
	require.Equal(t, 200, status)
	u, _ = s.User(key, "b@example.com", "")
	require.Equal(t, map[string]any{"b": int64(2)}, u.DataFields["obj"])
	status, _ = bulk(t, s, `{"users":[{"email":"b@example.com","mergeNestedObjects":true,"dataFields":{"obj":{"c":3}}}]}`)
	require.Equal(t, 200, status)
	u, _ = s.User(key, "b@example.com", "")
	require.Equal(t, map[string]any{"b": int64(2), "c": int64(3)}, u.DataFields["obj"])

	status, out = call(t, s, "GET", "/api/users/getFields", key, "")
	require.Equal(t, 200, status)
	require.Equal(t, map[string]any{"email": "string", "userId": "string", "list": "array", "n": "double", "obj": "object",
		"obj.a": "long", "obj.b": "long", "obj.c": "long", "ok": "boolean", "when": "date"}, out["fields"])

	status, out = call(t, s, "GET", "/api/users/byUserId/u-a", key, "")
	require.Equal(t, 200, status)
	require.Equal(t, map[string]any{"email": "a@example.com", "userId": "u-a", "dataFields": map[string]any{"when": "2023-02-05 20:42:10 +00:00", "ok": false}}, out["user"])
	status, out = call(t, s, "GET", "/api/users/getByEmail?email=nobody@example.com", key, "")
	require.Equal(t, 200, status)
	require.Empty(t, out)
}

func TestForget(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	_, _ = bulk(t, s, `{"users":[{"email":"a@example.com","userId":"ua"}]}`)
	s.Forget(key, "a@example.com", "")
	require.Empty(t, s.Users(key))
	_, out := bulk(t, s, `{"users":[{"email":"A@example.com"},{"userId":"ua","preferUserId":true}]}`)
	failed := out["failedUpdates"].(map[string]any)
	require.Equal(t, []any{"A@example.com"}, failed["forgottenEmails"])
	require.Equal(t, []any{"ua"}, failed["forgottenUserIds"])
}

func TestFaults(t *testing.T) {
	s := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	defer s.Close()
	s.AddProject(key, iterabletest.ProjectEmail)
	post := func() (int, error) {
		req, err := http.NewRequest("POST", s.URL()+"/api/users/bulkUpdate", strings.NewReader(`{"users":[{"email":"a@example.com"}]}`))
		require.NoError(t, err)
		req.Header.Set("Api-Key", key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		if res.StatusCode == 429 {
			require.Equal(t, "2", res.Header.Get("Retry-After"))
		}
		return res.StatusCode, nil
	}
	s.InjectFaults(iterabletest.Faults{DropConnections: 1, Burst429: 2, RetryAfter: 1500 * time.Millisecond})
	_, err := post()
	require.Error(t, err, "the connection was dropped")
	for _, want := range []int{429, 429, 200} {
		status, err := post()
		require.NoError(t, err)
		require.Equal(t, want, status)
	}
	s.InjectFaults(iterabletest.Faults{Error5xxRate: 1})
	status, err := post()
	require.NoError(t, err)
	require.Equal(t, 500, status)

	s.InjectFaults(iterabletest.Faults{Latency: 100 * time.Millisecond})
	start := time.Now()
	status, err = post()
	require.NoError(t, err)
	require.Equal(t, 200, status)
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)

	st := s.Stats(key)
	require.Equal(t, 1, st.DroppedConnections)
	require.Equal(t, 2, st.RateLimited)
	require.Equal(t, 1, st.Errors5xx)
	require.Equal(t, 6, st.BulkRequests)
	require.Equal(t, 2, st.UsersUpdated)
}

func sorted(v any) []any {
	l := append([]any{}, v.([]any)...)
	for i := range l {
		for j := i + 1; j < len(l); j++ {
			if fmt.Sprint(l[j]) < fmt.Sprint(l[i]) {
				l[i], l[j] = l[j], l[i]
			}
		}
	}
	return l
}
