package iterable_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

func TestDeleteUser(t *testing.T) {
	seed := []iterable.User{
		{Email: "Mixed@example.com", UserID: "u1"},
		{Email: "b@example.com", UserID: "id/with slash"},
		{Email: "c@example.com", UserID: "u3"},
	}
	tests := []struct {
		name      string
		typ       iterabletest.ProjectType
		field, id string
		want      iterable.DeleteResult
		wantGone  string // email of the user removed
		wantErr   string
	}{
		{name: "by email, another case", typ: iterabletest.ProjectEmail, field: iterable.FieldEmail, id: "mixed@EXAMPLE.com",
			want: iterable.DeleteResult{Deleted: true, Requests: 1}, wantGone: "mixed@example.com"},
		{name: "by userId", typ: iterabletest.ProjectHybrid, field: iterable.FieldUserID, id: "u3",
			want: iterable.DeleteResult{Deleted: true, Requests: 1}, wantGone: "c@example.com"},
		{name: "by userId holding a slash", typ: iterabletest.ProjectUserID, field: iterable.FieldUserID, id: "id/with slash",
			want: iterable.DeleteResult{Deleted: true, Requests: 1}, wantGone: "b@example.com"},
		{name: "absent email", typ: iterabletest.ProjectEmail, field: iterable.FieldEmail, id: "nobody@example.com",
			want: iterable.DeleteResult{NotFound: true, Requests: 1}},
		{name: "absent userId", typ: iterabletest.ProjectHybrid, field: iterable.FieldUserID, id: "U1",
			want: iterable.DeleteResult{NotFound: true, Requests: 1}},
		{name: "invalid email, no request", typ: iterabletest.ProjectEmail, field: iterable.FieldEmail, id: "not an email",
			want: iterable.DeleteResult{NotFound: true}},
		{name: "invalid userId, no request", typ: iterabletest.ProjectEmail, field: iterable.FieldUserID, id: "",
			want: iterable.DeleteResult{NotFound: true}},
		{name: "by email in a userID-based project", typ: iterabletest.ProjectUserID, field: iterable.FieldEmail, id: "b@example.com",
			want: iterable.DeleteResult{Requests: 1}, wantErr: "HTTP 400 BadParams"},
		{name: "unknown field", typ: iterabletest.ProjectEmail, field: "phone", id: "x", wantErr: "field must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.typ, iterabletest.Options{}, iterable.Config{})
			e.seed(t, seed...)
			got, err := e.client.DeleteUser(context.Background(), tt.field, tt.id)
			require.Equal(t, tt.want, got)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				requireNoUserData(t, err.Error())
				if tt.want.Requests > 0 {
					var apiErr *iterable.APIError
					require.ErrorAs(t, err, &apiErr)
					require.False(t, apiErr.Fatal(), "a refusal of one identifier is not fatal")
				}
				require.Len(t, e.emu.Users(e.key), len(seed))
				return
			}
			require.NoError(t, err)
			st := e.emu.Stats(e.key)
			require.Equal(t, tt.want.Requests, st.DeleteRequests)
			if tt.wantGone == "" {
				require.Len(t, e.emu.Users(e.key), len(seed))
				require.Zero(t, st.UsersDeleted)
				return
			}
			require.False(t, e.emu.HasUser(e.key, tt.wantGone, ""))
			require.Len(t, e.emu.Users(e.key), len(seed)-1)
			require.Equal(t, 1, st.UsersDeleted)
		})
	}
}

func TestDeleteUserFatal(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{APIKey: "secret-api-key-wrong"})
	got, err := e.client.DeleteUser(context.Background(), iterable.FieldEmail, "alice@example.com")
	var apiErr *iterable.APIError
	require.ErrorAs(t, err, &apiErr)
	require.True(t, apiErr.Fatal())
	require.Equal(t, "DELETE /api/users/{email}", apiErr.Op)
	require.Equal(t, iterable.DeleteResult{Requests: 1}, got)
	requireNoUserData(t, err.Error())
}

// Iterable's answers, canned: what is NotFound, what is an error, and how the path is escaped.
func TestDeleteUserAnswers(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		body      string
		want      iterable.DeleteResult
		wantFatal bool
		wantErr   bool
	}{
		{name: "deleted", status: 200, body: `{"msg":"All users associated with a/b@example.com were successfully deleted","code":"Success","params":null}`,
			want: iterable.DeleteResult{Deleted: true, Requests: 1}},
		{name: "absent user", status: 400, body: `{"msg":"User does not exist. Email: a/b@example.com UserId: ","code":"BadParams","params":null}`,
			want: iterable.DeleteResult{NotFound: true, Requests: 1}},
		{name: "unknown email code", status: 400, body: `{"msg":"Unknown email","code":"UnknownEmailError","params":null}`,
			want: iterable.DeleteResult{NotFound: true, Requests: 1}},
		{name: "other bad params", status: 400, body: `{"msg":"Invalid email: a/b@example.com","code":"InvalidEmailAddressError","params":null}`,
			want: iterable.DeleteResult{Requests: 1}, wantErr: true},
		{name: "bad key", status: 401, body: `{"msg":"Invalid API key","code":"BadApiKey","params":{"endpoint":"/api/users/a/b@example.com"}}`,
			want: iterable.DeleteResult{Requests: 1}, wantErr: true, wantFatal: true},
		{name: "bare 404 is a wrong URL", status: 404, body: `Not Found`,
			want: iterable.DeleteResult{Requests: 1}, wantErr: true, wantFatal: true},
		{name: "rate limited then deleted", status: 429, body: `{"msg":"Rate limit exceeded","code":"RateLimitExceeded","params":null}`,
			want: iterable.DeleteResult{Deleted: true, Requests: 2, RateLimited: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var paths []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				paths = append(paths, r.Method+" "+r.URL.EscapedPath())
				first := len(paths) == 1
				mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				if tt.status == 429 && !first {
					_, _ = fmt.Fprint(w, `{"msg":"done","code":"Success","params":null}`)
					return
				}
				w.WriteHeader(tt.status)
				_, _ = fmt.Fprint(w, tt.body)
			}))
			t.Cleanup(srv.Close)
			c := fastClient(t, srv.URL, iterable.Config{})
			got, err := c.DeleteUser(context.Background(), iterable.FieldEmail, "a/b@example.com")
			require.Equal(t, tt.want, got)
			require.Equal(t, "DELETE /api/users/a%2Fb@example.com", paths[0])
			if !tt.wantErr {
				require.NoError(t, err)
				return
			}
			var apiErr *iterable.APIError
			require.ErrorAs(t, err, &apiErr)
			require.Equal(t, tt.wantFatal, apiErr.Fatal())
			requireNoUserData(t, err.Error())
		})
	}
}

// Deletes wait on their own per-project budgets (100/s each, like the lookups), retry the
// emulator's 429s and end deleted.
func TestDeleteUserBudget(t *testing.T) {
	budgets := iterable.NewBudgets()
	c := mustClient(t, iterable.Config{BaseURL: iterable.USBaseURL, APIKey: "k", Budgets: budgets})
	require.NotNil(t, c)
	for _, ep := range []string{iterable.EndpointDeleteByEmail, iterable.EndpointDeleteByUserID} {
		b := budgets.Budget("k", ep, -1)
		require.Equal(t, 100.0, b.Ceiling(), ep)
		require.NotSame(t, b, budgets.Budget("k", iterable.EndpointGetByEmail, -1))
	}
	require.NotSame(t, budgets.Budget("k", iterable.EndpointDeleteByEmail, -1), budgets.Budget("k", iterable.EndpointDeleteByUserID, -1))
	mustClient(t, iterable.Config{BaseURL: iterable.USBaseURL, APIKey: "k", Budgets: budgets, DeleteRPS: 7})
	require.Equal(t, 7.0, budgets.Budget("k", iterable.EndpointDeleteByUserID, -1).Ceiling())

	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{DeleteRPS: 5, BulkUpdateRPS: 1000},
		iterable.Config{DeleteRPS: 1000})
	var users []iterable.User
	for i := range 12 {
		users = append(users, email(i))
	}
	e.seed(t, users...)
	start := time.Now()
	limited := 0
	for _, u := range users {
		got, err := e.client.DeleteUser(context.Background(), iterable.FieldEmail, u.Email)
		require.NoError(t, err)
		require.True(t, got.Deleted)
		limited += got.RateLimited
	}
	require.Positive(t, limited, "the emulator's delete limit was hit")
	require.Greater(t, time.Since(start), time.Second)
	st := e.emu.Stats(e.key)
	require.Equal(t, 12, st.UsersDeleted)
	require.Equal(t, 12+limited, st.DeleteRequests)
	require.Empty(t, e.emu.Users(e.key))
}
