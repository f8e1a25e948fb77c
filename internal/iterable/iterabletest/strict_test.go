package iterabletest_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// usersBody is a bulk body of n users user0@example.com, user1@example.com, …
func usersBody(n int) string {
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf(`{"email":"user%d@example.com","dataFields":{"n":%d}}`, i, i)
	}
	return `{"users":[` + strings.Join(users, ",") + `]}`
}

func TestBulkUserLimit(t *testing.T) {
	tests := []struct {
		name       string
		opts       iterabletest.Options
		users      int
		wantStatus int
	}{
		{name: "1000 users by default", users: 1000, wantStatus: 200},
		{name: "1001 users by default", users: 1001, wantStatus: 400},
		{name: "MaxBulkUsers", opts: iterabletest.Options{MaxBulkUsers: 3}, users: 4, wantStatus: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Unlimited = true
			s := newHandler(tt.opts, iterabletest.ProjectEmail)
			status, out := bulk(t, s, usersBody(tt.users))
			require.Equal(t, tt.wantStatus, status, out)
			st := s.Stats(key)
			require.Equal(t, tt.users, st.UsersReceived)
			if tt.wantStatus == 200 {
				require.Len(t, s.Users(key), tt.users)
				return
			}
			require.Equal(t, "BatchTooLarge", out["code"])
			require.Empty(t, s.Users(key), "nothing is applied")
			status, out = call(t, s, "GET", "/api/users/getFields", key, "")
			require.Equal(t, 200, status)
			require.NotContains(t, out["fields"], "n", "no field is created")
			require.Equal(t, 1, st.BadRequests)
			require.Zero(t, st.UsersUpdated)
		})
	}
}

func TestNestedFieldTypes(t *testing.T) {
	tests := []struct {
		name   string
		first  string // dataFields of the first request
		then   string // dataFields of the second request
		want   string // failedUpdates list of the second; "" = success
		fields map[string]any
	}{
		{name: "sub-field type is locked", first: `{"address":{"zip":123}}`, then: `{"address":{"zip":"abc"}}`,
			want: "invalidDataEmails", fields: map[string]any{"address": "object", "address.zip": "long"}},
		{name: "same type", first: `{"address":{"zip":123}}`, then: `{"address":{"zip":456,"city":"Paris"}}`,
			fields: map[string]any{"address": "object", "address.zip": "long", "address.city": "string"}},
		{name: "double accepts long", first: `{"address":{"lat":1.5}}`, then: `{"address":{"lat":2}}`,
			fields: map[string]any{"address": "object", "address.lat": "double"}},
		{name: "deeper levels", first: `{"a":{"b":{"c":true}}}`, then: `{"a":{"b":{"c":"yes"}}}`,
			want: "invalidDataEmails", fields: map[string]any{"a": "object", "a.b": "object", "a.b.c": "boolean"}},
		{name: "object sub-field then scalar", first: `{"a":{"b":{"c":1}}}`, then: `{"a":{"b":1}}`,
			want: "invalidDataEmails", fields: map[string]any{"a": "object", "a.b": "object", "a.b.c": "long"}},
		{name: "null locks nothing", first: `{"address":{"zip":null}}`, then: `{"address":{"zip":"abc"}}`,
			fields: map[string]any{"address": "object", "address.zip": "string"}},
		{name: "arrays are not descended", first: `{"items":[{"sku":1}]}`, then: `{"items":[{"sku":"x"}]}`,
			fields: map[string]any{"items": "array"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
			status, out := bulk(t, s, `{"users":[{"email":"a@example.com","dataFields":`+tt.first+`}]}`)
			require.Equal(t, 200, status)
			require.Equal(t, 1.0, out["successCount"])
			status, out = bulk(t, s, `{"users":[{"email":"b@example.com","dataFields":`+tt.then+`}]}`)
			require.Equal(t, 200, status)
			failed := out["failedUpdates"].(map[string]any)
			if tt.want == "" {
				require.Equal(t, 1.0, out["successCount"], failed)
			} else {
				require.Equal(t, []any{"b@example.com"}, failed[tt.want])
				require.False(t, s.HasUser(key, "b@example.com", ""), "a rejected user is not created")
			}
			status, out = call(t, s, "GET", "/api/users/getFields", key, "")
			require.Equal(t, 200, status)
			want := map[string]any{"email": "string", "userId": "string"}
			for k, v := range tt.fields {
				want[k] = v
			}
			require.Equal(t, want, out["fields"])
		})
	}
}

func TestNestedFieldsCountTowardMaxFields(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true, MaxFields: 2}, iterabletest.ProjectEmail)
	status, out := bulk(t, s, `{"users":[{"email":"a@example.com","dataFields":{"address":{"zip":1,"city":"x"}}}]}`)
	require.Equal(t, 400, status)
	require.Equal(t, "UniqueFieldsLimitExceeded", out["code"])
	status, out = bulk(t, s, `{"users":[{"email":"a@example.com","dataFields":{"address":{"zip":1}}}]}`)
	require.Equal(t, 200, status)
	require.Equal(t, []any{"address"}, out["createdFields"], "createdFields names top-level fields")
}

// Iterable matches emails case-insensitively; so does every path of the emulator.
func TestEmailsMatchCaseInsensitively(t *testing.T) {
	for _, typ := range []iterabletest.ProjectType{iterabletest.ProjectEmail, iterabletest.ProjectHybrid, iterabletest.ProjectUserID} {
		t.Run(string(typ), func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, typ)
			status, out := bulk(t, s, `{"users":[{"email":"Mixed.Case@Example.com","userId":"u1","dataFields":{"n":1}}]}`)
			require.Equal(t, 200, status)
			require.Equal(t, 1.0, out["successCount"], out)

			// An update naming the email in another case updates that user (in a userID-based
			// project: finds it, where an unknown email is notFound).
			status, out = bulk(t, s, `{"users":[{"email":"mixed.case@example.com","dataFields":{"n":2}}]}`)
			require.Equal(t, 200, status)
			require.Equal(t, 1.0, out["successCount"], out)
			require.Len(t, s.Users(key), 1)
			require.True(t, s.HasUser(key, "MIXED.CASE@EXAMPLE.COM", ""))

			status, out = call(t, s, "GET", "/api/users/getByEmail?email="+url.QueryEscape("MIXED.case@example.COM"), key, "")
			require.Equal(t, 200, status)
			require.EqualValues(t, 2, out["user"].(map[string]any)["dataFields"].(map[string]any)["n"])

			status, _, rec := export(t, s, "dataTypeName=user&range=All&onlyFields=email")
			require.Equal(t, 200, status)
			require.Len(t, rec, 1)
			require.True(t, strings.EqualFold("mixed.case@example.com", rec[0]["email"].(string)))

			if typ != iterabletest.ProjectUserID {
				status, _ = call(t, s, "DELETE", "/api/users/"+url.PathEscape("MIXED.CASE@example.com"), key, "")
				require.Equal(t, 200, status)
				require.Empty(t, s.Users(key))
			}
		})
	}
}

func TestForgottenEmailsMatchCaseInsensitively(t *testing.T) {
	s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
	s.Forget(key, "Gone@Example.com", "")
	_, out := bulk(t, s, `{"users":[{"email":"gone@example.com"}]}`)
	require.Equal(t, []any{"gone@example.com"}, out["failedUpdates"].(map[string]any)["forgottenEmails"])
}

func TestDeleteUser(t *testing.T) {
	const seed = `{"users":[{"email":"a@example.com","userId":"ua","dataFields":{"n":1}},{"email":"b@example.com","userId":"id/with slash"}]}`
	tests := []struct {
		name       string
		typ        iterabletest.ProjectType
		path       string
		apiKey     string
		wantStatus int
		wantCode   string
		wantMsg    string
		gone       string // email of the user removed
	}{
		{name: "by email", typ: iterabletest.ProjectEmail, path: "/api/users/A@example.com", wantStatus: 200, wantCode: "Success", gone: "a@example.com"},
		{name: "by userId", typ: iterabletest.ProjectHybrid, path: "/api/users/byUserId/ua", wantStatus: 200, wantCode: "Success", gone: "a@example.com"},
		{name: "by escaped userId", typ: iterabletest.ProjectUserID, path: "/api/users/byUserId/" + url.PathEscape("id/with slash"),
			wantStatus: 200, wantCode: "Success", gone: "b@example.com"},
		{name: "absent email", typ: iterabletest.ProjectEmail, path: "/api/users/nobody@example.com", wantStatus: 400,
			wantCode: "BadParams", wantMsg: "User does not exist. Email: nobody@example.com UserId: "},
		{name: "absent userId", typ: iterabletest.ProjectHybrid, path: "/api/users/byUserId/nobody", wantStatus: 400,
			wantCode: "BadParams", wantMsg: "User does not exist. Email:  UserId: nobody"},
		{name: "userId is exact", typ: iterabletest.ProjectHybrid, path: "/api/users/byUserId/UA", wantStatus: 400, wantCode: "BadParams"},
		{name: "by email in a userID-based project", typ: iterabletest.ProjectUserID, path: "/api/users/a@example.com",
			wantStatus: 400, wantCode: "BadParams"},
		{name: "bad key", typ: iterabletest.ProjectEmail, path: "/api/users/a@example.com", apiKey: "other", wantStatus: 401, wantCode: "BadApiKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, tt.typ)
			status, _ := bulk(t, s, seed)
			require.Equal(t, 200, status)
			apiKey := key
			if tt.apiKey != "" {
				apiKey = tt.apiKey
			}
			status, out := call(t, s, "DELETE", tt.path, apiKey, "")
			require.Equal(t, tt.wantStatus, status, out)
			require.Equal(t, tt.wantCode, out["code"])
			if tt.wantMsg != "" {
				require.Equal(t, tt.wantMsg, out["msg"])
			}
			st := s.Stats(key)
			if tt.gone == "" {
				require.Len(t, s.Users(key), 2)
				require.Zero(t, st.UsersDeleted)
				return
			}
			require.False(t, s.HasUser(key, tt.gone, ""))
			require.Len(t, s.Users(key), 1)
			require.Equal(t, 1, st.DeleteRequests)
			require.Equal(t, 1, st.UsersDeleted)

			// Deleting is not forgetting: a later update creates the user again, and the
			// field types stay locked.
			status, out = bulk(t, s, `{"users":[{"email":"`+tt.gone+`","userId":"new","dataFields":{"n":"x"}}]}`)
			require.Equal(t, 200, status)
			require.Len(t, out["failedUpdates"].(map[string]any)["invalidDataEmails"], 1)
			status, _ = bulk(t, s, `{"users":[{"email":"`+tt.gone+`","userId":"new","dataFields":{"n":2}}]}`)
			require.Equal(t, 200, status)
			require.True(t, s.HasUser(key, tt.gone, ""))
		})
	}
}

func TestDeleteRateLimit(t *testing.T) {
	s := newHandler(iterabletest.Options{DeleteRPS: 2, BulkUpdateRPS: 100}, iterabletest.ProjectHybrid)
	status, _ := bulk(t, s, usersBody(6))
	require.Equal(t, 200, status)
	var byEmail []int
	for i := range 3 {
		status, _ := call(t, s, "DELETE", fmt.Sprintf("/api/users/user%d@example.com", i), key, "")
		byEmail = append(byEmail, status)
	}
	require.Equal(t, []int{200, 200, 429}, byEmail, "burst equals the rate")
	status, _ = call(t, s, "DELETE", "/api/users/byUserId/nobody", key, "")
	require.Equal(t, 400, status, "each delete endpoint has its own limit")
	time.Sleep(550 * time.Millisecond)
	status, _ = call(t, s, "DELETE", "/api/users/user2@example.com", key, "")
	require.Equal(t, 200, status, "a token came back after 1/rate")
	st := s.Stats(key)
	require.Equal(t, 5, st.DeleteRequests)
	require.Equal(t, 3, st.UsersDeleted)
	require.Equal(t, 1, st.RateLimited)
	require.Len(t, s.Users(key), 3)
}

func TestAnswerFaults(t *testing.T) {
	const body = `{"users":[{"email":"a@example.com"},{"email":"B@example.com","dataFields":{"n":1}},{"userId":"uc","preferUserId":true},{"email":"bad"}]}`
	tests := []struct {
		name          string
		faults        iterabletest.Faults
		body          string
		wantSuccess   float64
		wantExtra     map[string]any // extra failedUpdates lists
		wantMiscount  int
		wantUnknownAn int
	}{
		{name: "miscount", faults: iterabletest.Faults{MiscountUser: "b@example.com"}, body: body, wantSuccess: 4, wantMiscount: 1},
		{name: "miscount by userId", faults: iterabletest.Faults{MiscountUser: "uc"}, body: body, wantSuccess: 4, wantMiscount: 1},
		{name: "miscount without the user", faults: iterabletest.Faults{MiscountUser: "other@example.com"}, body: body, wantSuccess: 3},
		{name: "unknown category", faults: iterabletest.Faults{UnknownCategoryUser: "b@example.com"}, body: body, wantSuccess: 3,
			wantExtra: map[string]any{"undocumentedEmails": []any{"B@example.com"}}, wantUnknownAn: 1},
		{name: "unknown category by userId", faults: iterabletest.Faults{UnknownCategoryUser: "uc"}, body: body, wantSuccess: 3,
			wantExtra: map[string]any{"undocumentedUserIds": []any{"uc"}}, wantUnknownAn: 1},
		{name: "named unknown category", faults: iterabletest.Faults{UnknownCategoryUser: "a@example.com", UnknownCategory: "fooEmails"},
			body: body, wantSuccess: 3, wantExtra: map[string]any{"fooEmails": []any{"a@example.com"}}, wantUnknownAn: 1},
		{name: "unknown category without the user", faults: iterabletest.Faults{UnknownCategoryUser: "other@example.com"}, body: body, wantSuccess: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newHandler(iterabletest.Options{Unlimited: true}, iterabletest.ProjectEmail)
			s.InjectFaults(tt.faults)
			status, out := bulk(t, s, tt.body)
			require.Equal(t, 200, status)
			require.Equal(t, tt.wantSuccess, out["successCount"])
			require.Equal(t, 1.0, out["failCount"])
			failed := out["failedUpdates"].(map[string]any)
			require.Equal(t, []any{"bad"}, failed["invalidEmails"])
			require.Len(t, failed, 10+len(tt.wantExtra))
			for k, v := range tt.wantExtra {
				require.Equal(t, v, failed[k])
			}
			// The update is applied as without the fault.
			require.Len(t, s.Users(key), 3)
			u, ok := s.User(key, "b@example.com", "")
			require.True(t, ok)
			require.EqualValues(t, 1, u.DataFields["n"])
			st := s.Stats(key)
			require.Equal(t, 3, st.UsersUpdated, "stats count what was applied")
			require.Equal(t, 1, st.UsersFailed)
			require.Equal(t, tt.wantMiscount, st.MiscountedAnswers)
			require.Equal(t, tt.wantUnknownAn, st.UnknownCategoryAnswers)
		})
	}
}
