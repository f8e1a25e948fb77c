package iterabletest_test

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// raw sends one request to h and returns the answer's status and body as text.
func raw(t *testing.T, h *iterabletest.Server, method, path, apiKey, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Api-Key", apiKey)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	return rec.Code, string(b)
}

func subscribeBody(listID int64, updateOnly bool, subscribers ...string) string {
	return fmt.Sprintf(`{"listId":%d,"updateExistingUsersOnly":%t,"subscribers":[%s]}`, listID, updateOnly, strings.Join(subscribers, ","))
}

func unsubscribeBody(listID int64, channel bool, subscribers ...string) string {
	return fmt.Sprintf(`{"listId":%d,"channelUnsubscribe":%t,"subscribers":[%s]}`, listID, channel, strings.Join(subscribers, ","))
}

func TestCreateAndGetLists(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	status, out := call(t, s, "POST", "/api/lists", key, `{"name":"VIP","description":"from the warehouse"}`)
	require.Equal(t, 200, status, out)
	id := int64(out["listId"].(float64))
	require.Positive(t, id)
	dyn := s.AddList(key, "Openers", true)
	again, _ := call(t, s, "POST", "/api/lists", key, `{"name":"VIP"}`)
	require.Equal(t, 200, again, "Iterable does not require unique names")

	status, out = call(t, s, "GET", "/api/lists", key, "")
	require.Equal(t, 200, status)
	lists := out["lists"].([]any)
	require.Len(t, lists, 3)
	first := lists[0].(map[string]any)
	require.Equal(t, float64(id), first["id"])
	require.Equal(t, "VIP", first["name"])
	require.Equal(t, "Standard", first["listType"])
	require.Equal(t, "from the warehouse", first["description"])
	require.Positive(t, first["createdAt"])
	require.Equal(t, "Dynamic", lists[1].(map[string]any)["listType"])
	require.Equal(t, float64(dyn), lists[1].(map[string]any)["id"])

	got, ok := s.ListIDByName(key, "VIP")
	require.True(t, ok)
	require.Equal(t, id, got, "the lowest id of the lists sharing the name")
	_, ok = s.ListIDByName(key, "nope")
	require.False(t, ok)

	for _, body := range []string{`{}`, `{"name":"  "}`, `{"name":`} {
		status, _ := call(t, s, "POST", "/api/lists", key, body)
		require.Equal(t, 400, status, body)
	}
	status, _ = call(t, s, "GET", "/api/lists", "wrong", "")
	require.Equal(t, 401, status)
	st := s.Stats(key)
	require.Equal(t, 2, st.ListsCreated)
	require.Equal(t, 1, st.ListsRequests)
}

func TestSubscribeUpdateExistingUsersOnly(t *testing.T) {
	tests := []struct {
		name       string
		typ        iterabletest.ProjectType
		updateOnly bool
		subscriber string
		wantList   string // failedUpdates list; "" = success
		wantMember string // identifier in the list after success
	}{
		{name: "email project creates unknown emails even when told not to", typ: iterabletest.ProjectEmail, updateOnly: true,
			subscriber: `{"email":"new@example.com"}`, wantMember: "new@example.com"},
		{name: "email project creates unknown emails", typ: iterabletest.ProjectEmail,
			subscriber: `{"email":"new@example.com"}`, wantMember: "new@example.com"},
		{name: "email project, unknown userId without preferUserId", typ: iterabletest.ProjectEmail,
			subscriber: `{"userId":"new-id"}`, wantList: "notFoundUserIds"},
		{name: "userId project honours the flag", typ: iterabletest.ProjectUserID, updateOnly: true,
			subscriber: `{"userId":"new-id"}`, wantList: "notFoundUserIds"},
		{name: "userId project creates without the flag", typ: iterabletest.ProjectUserID,
			subscriber: `{"userId":"new-id"}`, wantMember: "new-id"},
		{name: "hybrid project honours the flag by email", typ: iterabletest.ProjectHybrid, updateOnly: true,
			subscriber: `{"email":"new@example.com"}`, wantList: "notFoundEmails"},
		{name: "hybrid project honours the flag by userId", typ: iterabletest.ProjectHybrid, updateOnly: true,
			subscriber: `{"userId":"new-id"}`, wantList: "notFoundUserIds"},
		{name: "hybrid project creates without the flag", typ: iterabletest.ProjectHybrid,
			subscriber: `{"email":"new@example.com"}`, wantMember: "new@example.com"},
		{name: "userId project, existing user with the flag", typ: iterabletest.ProjectUserID, updateOnly: true,
			subscriber: `{"userId":"old-id"}`, wantMember: "old@example.com"},
		{name: "hybrid project, existing email with the flag", typ: iterabletest.ProjectHybrid, updateOnly: true,
			subscriber: `{"email":"OLD@example.com"}`, wantMember: "OLD@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, tt.typ)
			status, _ := bulk(t, s, `{"users":[{"email":"old@example.com","userId":"old-id"}]}`)
			require.Equal(t, 200, status)
			id := s.AddList(key, "L", false)
			status, out := call(t, s, "POST", "/api/lists/subscribe", key, subscribeBody(id, tt.updateOnly, tt.subscriber))
			require.Equal(t, 200, status, out)
			failed := out["failedUpdates"].(map[string]any)
			if tt.wantList != "" {
				require.Equal(t, 0.0, out["successCount"])
				require.Equal(t, 1.0, out["failCount"])
				require.Len(t, failed[tt.wantList], 1, failed)
				require.Empty(t, s.ListMembers(key, id))
				require.Len(t, s.Users(key), 1, "an unknown subscriber is not created")
				return
			}
			require.Equal(t, 1.0, out["successCount"], failed)
			require.Equal(t, 0.0, out["failCount"])
			require.Equal(t, []string{tt.wantMember}, s.ListMembers(key, id))
			require.Equal(t, 1, s.Stats(key).MembersAdded)
		})
	}
}

func TestSubscribeAppliesDataFields(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	s.SetFieldType(key, "age", "long")
	id := s.AddList(key, "L", false)
	status, out := call(t, s, "POST", "/api/lists/subscribe", key, subscribeBody(id, false,
		`{"email":"a@example.com","dataFields":{"age":41,"tier":"gold"}}`,
		`{"email":"b@example.com","dataFields":{"age":"forty"}}`,
		`{"email":"not-an-email"}`,
		`{"email":"A@example.com"}`))
	require.Equal(t, 200, status, out)
	require.Equal(t, 2.0, out["successCount"], "subscribing a member again succeeds")
	require.Equal(t, 2.0, out["failCount"])
	require.Equal(t, []any{"tier"}, out["createdFields"])
	failed := out["failedUpdates"].(map[string]any)
	require.Equal(t, []any{"b@example.com"}, failed["invalidDataEmails"], "a type-locked field refuses the subscriber")
	require.Equal(t, []any{"not-an-email"}, failed["invalidEmails"])
	require.Len(t, failed, 10, "every documented list is present")
	require.Equal(t, []string{"a@example.com"}, s.ListMembers(key, id))
	u, ok := s.User(key, "a@example.com", "")
	require.True(t, ok)
	require.Equal(t, map[string]any{"age": int64(41), "tier": "gold"}, u.DataFields)
	require.False(t, s.HasUser(key, "b@example.com", ""), "a refused subscriber is not created")
	st := s.Stats(key)
	require.Equal(t, 1, st.SubscribeRequests)
	require.Equal(t, 1, st.MembersAdded)
}

func TestListRequestErrors(t *testing.T) {
	const maxBody = 300
	a := `{"email":"a@example.com"}`
	tests := []struct {
		name     string
		path     string
		body     func(static, dynamic, foreign int64) string
		wantCode string
	}{
		{name: "subscribe to an unknown list", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(_, _, _ int64) string { return subscribeBody(999999, false, a) }},
		{name: "subscribe to another project's list", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(_, _, f int64) string { return subscribeBody(f, false, a) }},
		{name: "subscribe to a dynamic list", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(_, d, _ int64) string { return subscribeBody(d, false, a) }},
		{name: "unsubscribe from a dynamic list", path: "/api/lists/unsubscribe", wantCode: "BadParams",
			body: func(_, d, _ int64) string { return unsubscribeBody(d, false, a) }},
		{name: "unsubscribe from an unknown list", path: "/api/lists/unsubscribe", wantCode: "BadParams",
			body: func(_, _, _ int64) string { return unsubscribeBody(999999, false, a) }},
		{name: "no listId", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(_, _, _ int64) string { return `{"subscribers":[` + a + `]}` }},
		{name: "no subscribers", path: "/api/lists/unsubscribe", wantCode: "BadParams",
			body: func(s, _, _ int64) string { return fmt.Sprintf(`{"listId":%d}`, s) }},
		{name: "listId not a number", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(s, _, _ int64) string { return fmt.Sprintf(`{"listId":"%d","subscribers":[]}`, s) }},
		{name: "empty field name", path: "/api/lists/subscribe", wantCode: "BadParams",
			body: func(s, _, _ int64) string {
				return subscribeBody(s, false, `{"email":"a@example.com","dataFields":{"":1}}`)
			}},
		{name: "more subscribers than allowed", path: "/api/lists/subscribe", wantCode: "BatchTooLarge",
			body: func(s, _, _ int64) string { return subscribeBody(s, false, a, a, a, a) }},
		{name: "more unsubscribers than allowed", path: "/api/lists/unsubscribe", wantCode: "BatchTooLarge",
			body: func(s, _, _ int64) string { return unsubscribeBody(s, false, a, a, a, a) }},
		{name: "body over the limit", path: "/api/lists/subscribe", wantCode: "BatchTooLarge",
			body: func(s, _, _ int64) string {
				return subscribeBody(s, false, `{"email":"a@example.com","dataFields":{"pad":"`+strings.Repeat("x", maxBody)+`"}}`)
			}},
		{name: "malformed JSON", path: "/api/lists/unsubscribe", wantCode: "BadJsonBody",
			body: func(_, _, _ int64) string { return `{"listId":` }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true, MaxSubscribers: 3, MaxBodyBytes: maxBody}, iterabletest.ProjectEmail)
			s.AddProject("other", iterabletest.ProjectEmail)
			static := s.AddList(key, "static", false)
			dynamic := s.AddList(key, "dynamic", true)
			foreign := s.AddList("other", "theirs", false)
			status, out := call(t, s, "POST", tt.path, key, tt.body(static, dynamic, foreign))
			require.Equal(t, 400, status, out)
			require.Equal(t, tt.wantCode, out["code"])
			require.NotEmpty(t, out["msg"])
			require.Empty(t, s.Users(key), "nothing is applied")
			require.Empty(t, s.ListMembers(key, static))
			require.Equal(t, 1, s.Stats(key).BadRequests)
		})
	}
}

func TestUnsubscribe(t *testing.T) {
	tests := []struct {
		name        string
		typ         iterabletest.ProjectType
		subscriber  string
		wantList    string // failedUpdates list; "" = success
		wantRemoved bool
	}{
		{name: "member by email", typ: iterabletest.ProjectEmail, subscriber: `{"email":"A@example.com"}`, wantRemoved: true},
		{name: "member by userId", typ: iterabletest.ProjectHybrid, subscriber: `{"userId":"id-a"}`, wantRemoved: true},
		{name: "member by userId in a userId project", typ: iterabletest.ProjectUserID, subscriber: `{"userId":"id-a"}`, wantRemoved: true},
		{name: "existing user not a member is a no-op success", typ: iterabletest.ProjectEmail, subscriber: `{"email":"c@example.com"}`},
		{name: "unknown email", typ: iterabletest.ProjectEmail, subscriber: `{"email":"nobody@example.com"}`, wantList: "notFoundEmails"},
		{name: "unknown userId", typ: iterabletest.ProjectHybrid, subscriber: `{"userId":"nobody"}`, wantList: "notFoundUserIds"},
		{name: "invalid email", typ: iterabletest.ProjectEmail, subscriber: `{"email":"nope"}`, wantList: "invalidEmails"},
		{name: "no identifier", typ: iterabletest.ProjectEmail, subscriber: `{}`, wantList: "invalidEmails"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, tt.typ)
			id := s.AddList(key, "L", false)
			status, out := call(t, s, "POST", "/api/lists/subscribe", key, subscribeBody(id, false,
				`{"email":"a@example.com","userId":"id-a"}`, `{"email":"b@example.com","userId":"id-b"}`))
			require.Equal(t, 200, status)
			require.Equal(t, 2.0, out["successCount"], out)
			status, _ = bulk(t, s, `{"users":[{"email":"c@example.com","userId":"id-c"}]}`)
			require.Equal(t, 200, status)

			status, out = call(t, s, "POST", "/api/lists/unsubscribe", key, unsubscribeBody(id, false, tt.subscriber))
			require.Equal(t, 200, status, out)
			failed := out["failedUpdates"].(map[string]any)
			if tt.wantList != "" {
				require.Equal(t, 1.0, out["failCount"])
				require.Len(t, failed[tt.wantList], 1, failed)
			} else {
				require.Equal(t, 1.0, out["successCount"], failed)
			}
			members := len(s.ListMembers(key, id))
			if tt.wantRemoved {
				require.Equal(t, 1, members)
				require.Equal(t, 1, s.Stats(key).MembersRemoved)
			} else {
				require.Equal(t, 2, members)
				require.Zero(t, s.Stats(key).MembersRemoved)
			}
			require.Len(t, s.Users(key), 3, "unsubscribing deletes no profile")
		})
	}
}

func TestChannelUnsubscribesAreCounted(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	id := s.AddList(key, "L", false)
	a := `{"email":"a@example.com"}`
	for _, body := range []string{
		unsubscribeBody(id, false, a),
		fmt.Sprintf(`{"listId":%d,"subscribers":[%s]}`, id, a),
	} {
		status, _ := call(t, s, "POST", "/api/lists/unsubscribe", key, body)
		require.Equal(t, 200, status)
	}
	require.Zero(t, s.Stats(key).ChannelUnsubscribes)
	status, _ := call(t, s, "POST", "/api/lists/unsubscribe", key, unsubscribeBody(id, true, a))
	require.Equal(t, 200, status)
	st := s.Stats(key)
	require.Equal(t, 1, st.ChannelUnsubscribes)
	require.Equal(t, 3, st.UnsubscribeRequests)
}

func TestGetUsersAndSize(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectHybrid)
	id := s.AddList(key, "L", false)
	other := s.AddList(key, "empty", false)
	status, _ := call(t, s, "POST", "/api/lists/subscribe", key, subscribeBody(id, false,
		`{"email":"b@example.com","userId":"id-b"}`, `{"userId":"only-id"}`, `{"email":"a@example.com"}`))
	require.Equal(t, 200, status)

	status, body := raw(t, s, "GET", "/api/lists/getUsers?listId="+strconv.FormatInt(id, 10), key, "")
	require.Equal(t, 200, status)
	require.Equal(t, "a@example.com\nb@example.com\nonly-id\n", body, "the email, or the userId of a member without one")
	status, body = raw(t, s, "GET", "/api/lists/getUsers?preferUserId=true&listId="+strconv.FormatInt(id, 10), key, "")
	require.Equal(t, 200, status)
	require.Equal(t, "a@example.com\nid-b\nonly-id\n", body)
	status, body = raw(t, s, "GET", "/api/lists/getUsers?listId="+strconv.FormatInt(other, 10), key, "")
	require.Equal(t, 200, status)
	require.Empty(t, body)

	status, body = raw(t, s, "GET", "/api/lists/"+strconv.FormatInt(id, 10)+"/size", key, "")
	require.Equal(t, 200, status)
	require.Equal(t, "3", body)

	for _, path := range []string{"/api/lists/getUsers?listId=424242", "/api/lists/getUsers", "/api/lists/424242/size", "/api/lists/x/size"} {
		status, _ := call(t, s, "GET", path, key, "")
		require.Equal(t, 400, status, path)
	}

	// Deleting a profile removes it from its lists.
	status, _ = call(t, s, "DELETE", "/api/users/byUserId/only-id", key, "")
	require.Equal(t, 200, status)
	require.Equal(t, []string{"a@example.com", "b@example.com"}, s.ListMembers(key, id))
	require.Nil(t, s.ListMembers(key, 424242))
}

func TestListRateLimits(t *testing.T) {
	// ListsRPS is set low: 100 requests may take more than 10 ms, after which a token is back.
	s := newHandler(iterabletest.Options{ListsRPS: 3}, iterabletest.ProjectEmail)
	id := s.AddList(key, "L", false)
	sub := subscribeBody(id, false, `{"email":"a@example.com"}`)
	unsub := unsubscribeBody(id, false, `{"email":"a@example.com"}`)
	size := "/api/lists/" + strconv.FormatInt(id, 10) + "/size"
	users := "/api/lists/getUsers?listId=" + strconv.FormatInt(id, 10)
	tests := []struct {
		name, method, path, body string
		allowed                  int // the default burst
	}{
		{name: "subscribe 5/s", method: "POST", path: "/api/lists/subscribe", body: sub, allowed: 5},
		{name: "unsubscribe 5/s, its own", method: "POST", path: "/api/lists/unsubscribe", body: unsub, allowed: 5},
		{name: "getUsers 5/min", method: "GET", path: users, allowed: 5},
		{name: "size 5/min, its own", method: "GET", path: size, allowed: 5},
		{name: "lists as configured", method: "GET", path: "/api/lists", allowed: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.allowed {
				status, _ := raw(t, s, tt.method, tt.path, key, tt.body)
				require.Equal(t, 200, status, "request %d", i)
			}
			status, _ := raw(t, s, tt.method, tt.path, key, tt.body)
			require.Equal(t, 429, status)
		})
	}
	time.Sleep(250 * time.Millisecond)
	status, _ := raw(t, s, "POST", "/api/lists/subscribe", key, sub)
	require.Equal(t, 200, status, "a subscribe token comes back after 1/5 s")
	status, _ = raw(t, s, "GET", users, key, "")
	require.Equal(t, 429, status, "a getUsers token takes 12 s")
}

func TestList429Fault(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	id := s.AddList(key, "L", false)
	s.InjectFaults(iterabletest.Faults{List429: 2, RetryAfter: time.Second})
	var codes []int
	for _, path := range []string{"/api/lists/subscribe", "/api/lists/unsubscribe", "/api/lists/subscribe"} {
		status, _ := raw(t, s, "POST", path, key, subscribeBody(id, false, `{"email":"a@example.com"}`))
		codes = append(codes, status)
	}
	require.Equal(t, []int{429, 429, 200}, codes)
	require.Equal(t, 2, s.Stats(key).RateLimited)
}
