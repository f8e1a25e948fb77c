package iterable_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

func records(users ...iterable.User) []iterable.Record {
	recs := make([]iterable.Record, len(users))
	for i, u := range users {
		recs[i] = iterable.Record{Index: i, User: u}
	}
	return recs
}

// subscribe packs users for listID and subscribes them batch by batch, merging the results.
func (e *env) subscribe(t *testing.T, listID int64, updateOnly bool, users ...iterable.User) (iterable.BatchResult, error) {
	t.Helper()
	batches, oversize, err := e.client.PackSubscribe(records(users...), listID, updateOnly)
	require.NoError(t, err)
	require.Empty(t, oversize)
	return mergeResults(batches, func(b iterable.Batch) (iterable.BatchResult, error) {
		return e.client.Subscribe(context.Background(), listID, b, updateOnly)
	})
}

func (e *env) unsubscribe(t *testing.T, listID int64, users ...iterable.User) (iterable.BatchResult, error) {
	t.Helper()
	batches, oversize, err := e.client.PackUnsubscribe(records(users...), listID)
	require.NoError(t, err)
	require.Empty(t, oversize)
	return mergeResults(batches, func(b iterable.Batch) (iterable.BatchResult, error) {
		return e.client.Unsubscribe(context.Background(), listID, b)
	})
}

func mergeResults(batches []iterable.Batch, send func(iterable.Batch) (iterable.BatchResult, error)) (iterable.BatchResult, error) {
	var total iterable.BatchResult
	for _, b := range batches {
		res, err := send(b)
		total.Accepted = append(total.Accepted, res.Accepted...)
		total.Rejected = append(total.Rejected, res.Rejected...)
		total.Unconfirmed = append(total.Unconfirmed, res.Unconfirmed...)
		total.Requests += res.Requests
		total.RateLimited += res.RateLimited
		total.CreatedFields = append(total.CreatedFields, res.CreatedFields...)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func TestPackListBodies(t *testing.T) {
	users := []iterable.User{
		withFields(iterable.User{Email: "a@example.com"}, "tier", "gold", "score", 2.0),
		{UserID: "u-b", PreferUserID: ptr(true), DataFields: map[string]any{"x": int64(1)}},
		{Email: "c@example.com", UserID: "u-c"},
		{Email: "d@example.com", UserID: "u-d", PreferUserID: ptr(true)},
	}
	c := mustClient(t, iterable.Config{})
	tests := []struct {
		name string
		pack func() ([]iterable.Batch, []int, error)
		want string
	}{
		{
			name: "subscribe carries the users as given and the flag",
			pack: func() ([]iterable.Batch, []int, error) { return c.PackSubscribe(records(users...), 42, true) },
			want: `{"listId":42,"updateExistingUsersOnly":true,"subscribers":[` +
				`{"email":"a@example.com","dataFields":{"score":2.0,"tier":"gold"}},` +
				`{"userId":"u-b","preferUserId":true,"dataFields":{"x":1}},` +
				`{"email":"c@example.com","userId":"u-c"},` +
				`{"email":"d@example.com","userId":"u-d","preferUserId":true}]}`,
		},
		{
			name: "subscribe says updateExistingUsersOnly false explicitly",
			pack: func() ([]iterable.Batch, []int, error) { return c.PackSubscribe(records(users[2]), 7, false) },
			want: `{"listId":7,"updateExistingUsersOnly":false,"subscribers":[{"email":"c@example.com","userId":"u-c"}]}`,
		},
		{
			// One identifier each, nothing else, and never a channel unsubscribe.
			name: "unsubscribe names one identifier and says channelUnsubscribe false",
			pack: func() ([]iterable.Batch, []int, error) { return c.PackUnsubscribe(records(users...), 42) },
			want: `{"listId":42,"channelUnsubscribe":false,"subscribers":[` +
				`{"email":"a@example.com"},{"userId":"u-b"},{"email":"c@example.com"},{"userId":"u-d"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batches, oversize, err := tt.pack()
			require.NoError(t, err)
			require.Empty(t, oversize)
			require.Len(t, batches, 1)
			require.Equal(t, tt.want, string(batches[0].Body))
			require.True(t, json.Valid(batches[0].Body))
			require.NotContains(t, string(batches[0].Body), "campaignId")
		})
	}

	_, _, err := c.PackSubscribe(records(users...), 0, false)
	require.Error(t, err)
	_, _, err = c.PackUnsubscribe(records(users...), -1)
	require.Error(t, err)
}

func TestPackListLimits(t *testing.T) {
	const max = 2000
	const listID = 123456
	prefix := fmt.Sprintf(`{"listId":%d,"updateExistingUsersOnly":false,"subscribers":[`, listID)
	overhead := len(prefix) + len(`]}`)
	half := (max - overhead - 1) / 2
	rest := max - overhead - 1 - half
	tests := []struct {
		name         string
		cfg          iterable.Config
		sizes        []int // encoded size of each user; 0 = a small user
		n            int   // that many small users instead
		wantBatches  []int // records per batch
		wantOversize []int
	}{
		{name: "exactly the byte limit in one body", cfg: iterable.Config{MaxBodyBytes: max}, sizes: []int{half, rest}, wantBatches: []int{2}},
		{name: "one byte more splits", cfg: iterable.Config{MaxBodyBytes: max}, sizes: []int{half, rest + 1}, wantBatches: []int{1, 1}},
		{name: "a user over the limit alone is oversize", cfg: iterable.Config{MaxBodyBytes: max},
			sizes: []int{100, max - overhead + 1, 100}, wantBatches: []int{2}, wantOversize: []int{1}},
		{name: "1,000 subscribers at most, whatever UsersPerRequest", cfg: iterable.Config{UsersPerRequest: 5000}, n: 2500,
			wantBatches: []int{1000, 1000, 500}},
		{name: "UsersPerRequest below 1,000 applies", cfg: iterable.Config{UsersPerRequest: 300}, n: 700,
			wantBatches: []int{300, 300, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustClient(t, tt.cfg)
			var recs []iterable.Record
			for i, n := range tt.sizes {
				recs = append(recs, iterable.Record{Index: i, User: userOfSize(t, i, n)})
			}
			for i := range tt.n {
				recs = append(recs, iterable.Record{Index: i, User: email(i)})
			}
			batches, oversize, err := c.PackSubscribe(recs, listID, false)
			require.NoError(t, err)
			require.Equal(t, tt.wantOversize, oversize)
			var got []int
			for _, b := range batches {
				got = append(got, len(b.Records))
				require.LessOrEqual(t, len(b.Body), c.MaxBodyBytes())
				require.True(t, strings.HasPrefix(string(b.Body), prefix))
				require.True(t, json.Valid(b.Body))
			}
			require.Equal(t, tt.wantBatches, got)
		})
	}
}

// listServer is a fake Iterable answering list requests with canned, Iterable-shaped answers.
type listServer struct {
	t     *testing.T
	mu    sync.Mutex
	lists []map[string]any // GET /api/lists
	// answer answers the n-th (from 1) subscribe or unsubscribe request.
	answer func(n int, path string, identifiers []string) (int, any)

	n         int
	listsGets int
	bodies    []string
}

func newListServer(t *testing.T, ls *listServer) *httptest.Server {
	ls.t = t
	srv := httptest.NewServer(ls)
	t.Cleanup(srv.Close)
	return srv
}

func (ls *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodGet && r.URL.Path == "/api/lists" {
		ls.listsGets++
		_ = json.NewEncoder(w).Encode(map[string]any{"lists": ls.lists})
		return
	}
	body, err := io.ReadAll(r.Body)
	require.NoError(ls.t, err)
	ls.bodies = append(ls.bodies, string(body))
	var req struct {
		Subscribers []iterable.User `json:"subscribers"`
	}
	require.NoError(ls.t, json.Unmarshal(body, &req))
	ids := make([]string, len(req.Subscribers))
	for i, u := range req.Subscribers {
		ids[i] = u.Email + u.UserID
	}
	ls.n++
	status, answer := ls.answer(ls.n, r.URL.Path, ids)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(answer)
}

func standardList(id int64) map[string]any {
	return map[string]any{"id": id, "name": "VIP", "listType": "Standard", "createdAt": 1675629730000}
}

func badParams(msg string) any { return map[string]any{"code": "BadParams", "msg": msg, "params": nil} }

func fastListClient(t *testing.T, url string) *iterable.Client {
	t.Helper()
	return mustClient(t, iterable.Config{BaseURL: url, APIKey: "list-key", RequestsPerSecond: -1,
		RetryInitialInterval: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond, MaxElapsed: 5 * time.Second})
}

// The answer of subscribe and unsubscribe is UserBulkUpdateListResponse: mapped like bulkUpdate's.
func TestListAnswerMapping(t *testing.T) {
	users := []iterable.User{{Email: "a@example.com"}, {Email: "B@example.com"}, {UserID: "u-c"}, {Email: "d@example.com"}}
	tests := []struct {
		name            string
		unsubscribe     bool
		answer          func(n int, ids []string) (int, any)
		wantAccepted    []int
		wantRejected    map[int]string // index → category
		wantUnconfirmed []int
		wantRequests    int
	}{
		{
			name: "notFound lists name the records not added",
			answer: func(int, []string) (int, any) {
				return 200, bulkAnswer(2, 2, map[string][]string{"notFoundEmails": {"b@example.com"}, "notFoundUserIds": {"u-c"}})
			},
			wantAccepted: []int{0, 3}, wantRejected: map[int]string{1: "notFoundEmails", 2: "notFoundUserIds"}, wantRequests: 1,
		},
		{
			name:        "unsubscribe: invalid and unknown users",
			unsubscribe: true,
			answer: func(int, []string) (int, any) {
				return 200, bulkAnswer(2, 2, map[string][]string{"invalidEmails": {"a@example.com"}, "notFoundEmails": {"d@example.com"}})
			},
			wantAccepted: []int{1, 2}, wantRejected: map[int]string{0: "invalidEmails", 3: "notFoundEmails"}, wantRequests: 1,
		},
		{
			name: "deprecated top-level invalidEmails only",
			answer: func(int, []string) (int, any) {
				return 200, map[string]any{"successCount": 3, "failCount": 1, "invalidEmails": []string{"d@example.com"}}
			},
			wantAccepted: []int{0, 1, 2}, wantRejected: map[int]string{3: "invalidEmails"}, wantRequests: 1,
		},
		{
			// The answer counts one success too many whenever a@ is in the request: split until
			// a@ is alone, which stays unconfirmed; the others are settled by honest answers.
			name: "counts that do not add up split down to the record",
			answer: func(_ int, ids []string) (int, any) {
				ok := len(ids)
				if slices.Contains(ids, "a@example.com") {
					ok++
				}
				return 200, bulkAnswer(ok, 0, nil)
			},
			wantAccepted: []int{1, 2, 3}, wantUnconfirmed: []int{0}, wantRequests: 5,
		},
		{
			name:        "an unknown failedUpdates list splits down to the record",
			unsubscribe: true,
			answer: func(_ int, ids []string) (int, any) {
				a := bulkAnswer(len(ids), 0, nil)
				if slices.Contains(ids, "u-c") {
					a["failedUpdates"].(map[string][]string)["notAMemberUserIds"] = []string{"u-c"}
				}
				return 200, a
			},
			wantAccepted: []int{0, 1, 3}, wantUnconfirmed: []int{2}, wantRequests: 5,
		},
		{
			// The list exists and is static, so the refusal is about a record: halve until alone.
			name: "a splittable 400 about a record",
			answer: func(_ int, ids []string) (int, any) {
				if slices.Contains(ids, "d@example.com") {
					return 400, map[string]any{"code": "RequestFieldsTypesMismatched", "msg": "d@example.com: field 'x'"}
				}
				return 200, bulkAnswer(len(ids), 0, nil)
			},
			wantAccepted: []int{0, 1, 2}, wantRejected: map[int]string{3: "RequestFieldsTypesMismatched"}, wantRequests: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := &listServer{lists: []map[string]any{standardList(42)},
				answer: func(n int, _ string, ids []string) (int, any) { return tt.answer(n, ids) }}
			c := fastListClient(t, newListServer(t, ls).URL)
			recs := records(users...)
			var (
				res iterable.BatchResult
				err error
			)
			if tt.unsubscribe {
				res, err = c.Unsubscribe(context.Background(), 42, iterable.Batch{Records: recs})
			} else {
				res, err = c.Subscribe(context.Background(), 42, iterable.Batch{Records: recs}, true)
			}
			require.NoError(t, err)
			requireEachOnce(t, res, len(users))
			require.ElementsMatch(t, tt.wantAccepted, res.Accepted)
			rejected := map[int]string{}
			for _, r := range res.Rejected {
				rejected[r.Index] = r.Category
				requireNoUserData(t, r.Reason)
				require.NotEmpty(t, r.Reason)
			}
			if tt.wantRejected == nil {
				tt.wantRejected = map[int]string{}
			}
			require.Equal(t, tt.wantRejected, rejected)
			var unconfirmed []int
			for _, u := range res.Unconfirmed {
				unconfirmed = append(unconfirmed, u.Index)
				require.Equal(t, iterable.CategoryUnconfirmed, u.Category)
				requireNoUserData(t, u.Reason)
			}
			require.Equal(t, tt.wantUnconfirmed, unconfirmed)
			require.Equal(t, tt.wantRequests, res.Requests)
			for _, b := range ls.bodies {
				// Every split keeps the list and the flags.
				require.Contains(t, b, `"listId":42,`)
				if tt.unsubscribe {
					require.Contains(t, b, `"channelUnsubscribe":false`)
				} else {
					require.Contains(t, b, `"updateExistingUsersOnly":true`)
				}
			}
		})
	}
}

// A refusal caused by the list fails the whole call, with no record rejected and no split.
func TestListRefusedBecauseOfTheList(t *testing.T) {
	tests := []struct {
		name        string
		lists       []map[string]any
		status      int
		unsubscribe bool
		wantType    string
	}{
		{name: "subscribe to a list the project does not have", lists: []map[string]any{standardList(7)}, status: 400},
		{name: "unsubscribe from a list the project does not have", lists: []map[string]any{}, status: 400, unsubscribe: true},
		{name: "subscribe to a dynamic list", status: 400, wantType: "Dynamic",
			lists: []map[string]any{{"id": 42, "name": "Openers", "listType": "Dynamic", "createdAt": 1}}},
		{name: "a 404 for a list that does not exist", lists: []map[string]any{}, status: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := &listServer{lists: tt.lists, answer: func(int, string, []string) (int, any) {
				return tt.status, badParams("listId 42 is invalid")
			}}
			c := fastListClient(t, newListServer(t, ls).URL)
			recs := records(email(1), email(2), email(3))
			var (
				res iterable.BatchResult
				err error
			)
			if tt.unsubscribe {
				res, err = c.Unsubscribe(context.Background(), 42, iterable.Batch{Records: recs})
			} else {
				res, err = c.Subscribe(context.Background(), 42, iterable.Batch{Records: recs}, false)
			}
			var le *iterable.ListError
			require.ErrorAs(t, err, &le)
			require.Equal(t, int64(42), le.ListID)
			require.Equal(t, tt.wantType, le.Type)
			var apiErr *iterable.APIError
			require.ErrorAs(t, err, &apiErr)
			require.True(t, apiErr.Fatal(), "the activation must pause, not retry")
			require.Equal(t, tt.status, apiErr.Status)
			require.Contains(t, err.Error(), "list 42")
			requireNoUserData(t, err.Error())
			require.Empty(t, res.Rejected)
			require.Empty(t, res.Accepted)
			require.Equal(t, 1, res.Requests, "no split")
			require.Equal(t, 1, ls.listsGets)
		})
	}
}

func TestListRefusalsThatAreNotAboutTheList(t *testing.T) {
	t.Run("bad key is fatal without looking at the lists", func(t *testing.T) {
		ls := &listServer{answer: func(int, string, []string) (int, any) {
			return 401, map[string]any{"code": "BadApiKey", "msg": "Invalid API key"}
		}}
		c := fastListClient(t, newListServer(t, ls).URL)
		_, err := c.Subscribe(context.Background(), 42, iterable.Batch{Records: records(email(1), email(2))}, false)
		var apiErr *iterable.APIError
		require.ErrorAs(t, err, &apiErr)
		require.True(t, apiErr.Fatal())
		var le *iterable.ListError
		require.False(t, errors.As(err, &le))
		require.Zero(t, ls.listsGets)
	})
	t.Run("the list is checked once per call", func(t *testing.T) {
		ls := &listServer{lists: []map[string]any{standardList(42)}, answer: func(int, string, []string) (int, any) {
			return 400, badParams("something about the users")
		}}
		c := fastListClient(t, newListServer(t, ls).URL)
		res, err := c.Unsubscribe(context.Background(), 42, iterable.Batch{Records: records(email(1), email(2), email(3), email(4))})
		require.NoError(t, err)
		require.Len(t, res.Rejected, 4, "every record refused on its own")
		require.Equal(t, 7, res.Requests)
		require.Equal(t, 1, ls.listsGets)
	})
	t.Run("invalid list ids are refused before any request", func(t *testing.T) {
		ls := &listServer{}
		c := fastListClient(t, newListServer(t, ls).URL)
		_, err := c.Subscribe(context.Background(), 0, iterable.Batch{Records: records(email(1))}, false)
		require.Error(t, err)
		_, err = c.Unsubscribe(context.Background(), -3, iterable.Batch{Records: records(email(1))})
		require.Error(t, err)
		require.Zero(t, ls.n)
	})
}

func TestSubscribeAgainstTheEmulator(t *testing.T) {
	tests := []struct {
		name         string
		typ          iterabletest.ProjectType
		updateOnly   bool
		wantAccepted []int
		wantRejected map[int]string
		wantMembers  []string
	}{
		{name: "email project ignores updateExistingUsersOnly", typ: iterabletest.ProjectEmail, updateOnly: true,
			wantAccepted: []int{0, 1, 3}, wantRejected: map[int]string{2: "notFoundUserIds"},
			wantMembers: []string{"known@example.com", "new@example.com", "user7@example.com"}},
		{name: "hybrid project honours updateExistingUsersOnly", typ: iterabletest.ProjectHybrid, updateOnly: true,
			wantAccepted: []int{0, 3}, wantRejected: map[int]string{1: "notFoundEmails", 2: "notFoundUserIds"},
			wantMembers: []string{"known@example.com", "user7@example.com"}},
		{name: "hybrid project creates without it", typ: iterabletest.ProjectHybrid,
			wantAccepted: []int{0, 1, 2, 3}, wantMembers: []string{"known@example.com", "new-id", "new@example.com", "user7@example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.typ, iterabletest.Options{}, iterable.Config{})
			_, err := e.send(t, true, iterable.User{Email: "known@example.com", UserID: "known-id"},
				iterable.User{Email: "user7@example.com", UserID: "u7"})
			require.NoError(t, err)
			listID, err := e.client.CreateList(context.Background(), "VIP", "")
			require.NoError(t, err)
			res, err := e.subscribe(t, listID, tt.updateOnly,
				withFields(iterable.User{Email: "known@example.com"}, "tier", "gold"),
				iterable.User{Email: "new@example.com"},
				iterable.User{UserID: "new-id"},
				iterable.User{UserID: "u7"})
			require.NoError(t, err)
			require.Equal(t, tt.wantAccepted, res.Accepted)
			rejected := map[int]string{}
			for _, r := range res.Rejected {
				rejected[r.Index] = r.Category
				require.Contains(t, r.Reason, "failedUpdates."+r.Category)
				requireNoUserData(t, r.Reason)
			}
			if tt.wantRejected == nil {
				tt.wantRejected = map[int]string{}
			}
			require.Equal(t, tt.wantRejected, rejected)
			require.Equal(t, tt.wantMembers, e.emu.ListMembers(e.key, listID))
			require.Equal(t, []string{"tier"}, res.CreatedFields)
			u, _ := e.emu.User(e.key, "known@example.com", "")
			require.Equal(t, "gold", u.DataFields["tier"], "subscribe updates the profile's fields")
		})
	}
}

func TestUnsubscribeAgainstTheEmulator(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	listID := e.emu.AddList(e.key, "VIP", false)
	_, err := e.subscribe(t, listID, false, email(1), email(2), iterable.User{UserID: "u3"}, email(4))
	require.NoError(t, err)
	_, err = e.send(t, true, email(5))
	require.NoError(t, err)

	res, err := e.unsubscribe(t, listID,
		withFields(email(1), "tier", "secret-value"), // fields are not sent
		iterable.User{Email: "user3-unused@example.com", UserID: "u3", PreferUserID: ptr(true)},
		email(5),                      // not a member: nothing to do
		email(9),                      // no such user
		iterable.User{UserID: "nope"}, // no such user
	)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, res.Accepted)
	require.Equal(t, []iterable.RecordRejection{
		{Index: 3, Category: "notFoundEmails", Reason: "no user with this email exists in Iterable, so it is in no list (failedUpdates.notFoundEmails)"},
		{Index: 4, Category: "notFoundUserIds", Reason: "no user with this userId exists in Iterable, so it is in no list (failedUpdates.notFoundUserIds)"},
	}, res.Rejected)
	require.Equal(t, []string{"user2@example.com", "user4@example.com"}, e.emu.ListMembers(e.key, listID))
	st := e.emu.Stats(e.key)
	require.Zero(t, st.ChannelUnsubscribes, "leaving a list must never unsubscribe from the channel")
	require.Equal(t, 2, st.MembersRemoved)
	require.Equal(t, 1, st.UnsubscribeRequests)
	require.Len(t, e.emu.Users(e.key), 5, "no profile is deleted")
}

func TestListErrorsAgainstTheEmulator(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	dynamic := e.emu.AddList(e.key, "Openers", true)
	for name, id := range map[string]int64{"unknown": 98765, "dynamic": dynamic} {
		t.Run(name, func(t *testing.T) {
			_, err := e.subscribe(t, id, false, email(1), email(2))
			var le *iterable.ListError
			require.ErrorAs(t, err, &le, name)
			_, err = e.unsubscribe(t, id, email(1))
			require.ErrorAs(t, err, &le, name)
		})
	}
	require.Empty(t, e.emu.Users(e.key))
}

func TestSubscribeRepacksBatchesOfOtherRequests(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	a := e.emu.AddList(e.key, "A", false)
	b := e.emu.AddList(e.key, "B", false)
	batches, _, err := e.client.PackSubscribe(records(email(1), email(2)), a, false)
	require.NoError(t, err)
	// Sent to another list, the batch is packed again for it.
	res, err := e.client.Subscribe(context.Background(), b, batches[0], false)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, res.Accepted)
	require.Empty(t, e.emu.ListMembers(e.key, a))
	require.Len(t, e.emu.ListMembers(e.key, b), 2)
	// A bulkUpdate batch, unsubscribed: only identifiers go.
	bulk, _, err := e.client.Pack(records(withFields(email(1), "x", "secret-value")), true)
	require.NoError(t, err)
	res, err = e.client.Unsubscribe(context.Background(), b, bulk[0])
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Equal(t, []string{"user2@example.com"}, e.emu.ListMembers(e.key, b))
	// A list batch is never sent to bulkUpdate.
	_, err = e.client.SendBatch(context.Background(), batches[0])
	require.ErrorContains(t, err, "list request")
	require.Zero(t, e.emu.Stats(e.key).BulkRequests)
}

// Subscribe and unsubscribe wait on budgets of their own, adapt to 429s and honour Retry-After.
func TestListBudgets(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	budgets := iterable.NewBudgets()
	c := mustClient(t, iterable.Config{BaseURL: e.emu.URL(), APIKey: e.key, Budgets: budgets,
		RetryInitialInterval: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond, MaxElapsed: 10 * time.Second})
	other := mustClient(t, iterable.Config{BaseURL: e.emu.URL(), APIKey: e.key, Budgets: budgets, SubscribeRPS: 2, UnsubscribeRPS: 3})
	require.Same(t, c.SubscribeBudget(), other.SubscribeBudget(), "one budget per project and endpoint")
	require.NotSame(t, c.SubscribeBudget(), c.UnsubscribeBudget())
	require.NotSame(t, c.SubscribeBudget(), c.BulkBudget())
	require.Equal(t, 2.0, c.SubscribeBudget().Ceiling(), "the lowest configured ceiling wins")
	require.Equal(t, 3.0, c.UnsubscribeBudget().Ceiling())
	require.Equal(t, 5.0, mustClient(t, iterable.Config{APIKey: "fresh"}).SubscribeBudget().Ceiling(), "default 5/s")

	listID := e.emu.AddList(e.key, "VIP", false)
	e.emu.InjectFaults(iterabletest.Faults{List429: 1, RetryAfter: time.Second})
	before := c.SubscribeBudget().Rate()
	start := time.Now()
	res, err := c.Subscribe(context.Background(), listID, iterable.Batch{Records: records(email(1))}, false)
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Equal(t, 1, res.RateLimited)
	require.Equal(t, 2, res.Requests)
	require.GreaterOrEqual(t, time.Since(start), time.Second, "Retry-After is honoured")
	require.Less(t, c.SubscribeBudget().Rate(), before, "a 429 lowers the rate")
}

func TestListsFindAndCreate(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	ctx := context.Background()
	_, found, err := e.client.FindList(ctx, "VIP")
	require.NoError(t, err)
	require.False(t, found)

	id, err := e.client.CreateList(ctx, "VIP", "kept equal to the vip model")
	require.NoError(t, err)
	dyn := e.emu.AddList(e.key, "Openers", true)
	l, found, err := e.client.FindList(ctx, "VIP")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, id, l.ID)
	require.Equal(t, iterable.ListTypeStandard, l.Type)
	require.True(t, l.Static())
	require.Equal(t, "kept equal to the vip model", l.Description)
	require.WithinDuration(t, time.Now(), l.CreatedAt, time.Minute)

	lists, err := e.client.Lists(ctx)
	require.NoError(t, err)
	require.Len(t, lists, 2)
	require.Equal(t, dyn, lists[1].ID)
	require.Equal(t, iterable.ListTypeDynamic, lists[1].Type)
	require.False(t, lists[1].Static())

	_, found, err = e.client.FindList(ctx, "vip")
	require.NoError(t, err)
	require.False(t, found, "names match exactly")

	_, err = e.client.CreateList(ctx, "VIP", "")
	require.NoError(t, err)
	_, _, err = e.client.FindList(ctx, "VIP")
	require.ErrorContains(t, err, "2 lists of the project have this name")

	_, err = e.client.CreateList(ctx, " ", "")
	require.Error(t, err)
	require.Equal(t, 2, e.emu.Stats(e.key).ListsCreated)
}

// Creating a list is not idempotent: a failure that may have created it is checked, not resent.
func TestCreateListNeverDuplicates(t *testing.T) {
	tests := []struct {
		name        string
		failures    int  // POST answers 500 this many times first
		createsAnyw bool // ...after creating the list
		wantPosts   int
		wantLists   int
	}{
		{name: "created but answered 500", failures: 1, createsAnyw: true, wantPosts: 1, wantLists: 1},
		{name: "500 that created nothing is sent again", failures: 2, wantPosts: 3, wantLists: 1},
		{name: "answered at once", wantPosts: 1, wantLists: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				mu    sync.Mutex
				lists = []map[string]any{{"id": 3, "name": "VIP", "listType": "Standard", "createdAt": 1}} // an older namesake
				posts int
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				if r.Method == http.MethodGet {
					_ = json.NewEncoder(w).Encode(map[string]any{"lists": lists})
					return
				}
				posts++
				var req struct{ Name string }
				require.NoError(t, json.NewDecoder(r.Body).Decode(&req))
				if posts <= tt.failures && !tt.createsAnyw {
					w.WriteHeader(500)
					_, _ = w.Write([]byte(`{"code":"GenericError","msg":"oops"}`))
					return
				}
				id := 100 + posts
				lists = append(lists, map[string]any{"id": id, "name": req.Name, "listType": "Standard", "createdAt": 2})
				if posts <= tt.failures {
					w.WriteHeader(500)
					_, _ = w.Write([]byte(`{"code":"GenericError","msg":"oops"}`))
					return
				}
				_ = json.NewEncoder(w).Encode(map[string]any{"listId": id})
			}))
			defer srv.Close()
			c := fastListClient(t, srv.URL)
			id, err := c.CreateList(context.Background(), "VIP", "")
			require.NoError(t, err)
			require.Equal(t, tt.wantPosts, posts)
			require.Len(t, lists, 1+tt.wantLists)
			require.Equal(t, lists[len(lists)-1]["id"], int(id))
		})
	}
}

func TestListUsersAndSize(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	ctx := context.Background()
	listID := e.emu.AddList(e.key, "VIP", false)
	_, err := e.subscribe(t, listID, false, iterable.User{Email: "b@example.com", UserID: "id-b"}, iterable.User{UserID: "only-id"}, email(1))
	require.NoError(t, err)

	var got []string
	n, err := e.client.ListUsers(ctx, listID, false, func(id string) error { got = append(got, id); return nil })
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	require.Equal(t, []string{"b@example.com", "only-id", "user1@example.com"}, got)
	got = nil
	_, err = e.client.ListUsers(ctx, listID, true, func(id string) error { got = append(got, id); return nil })
	require.NoError(t, err)
	require.Equal(t, []string{"id-b", "only-id", "user1@example.com"}, got)

	size, err := e.client.ListSize(ctx, listID)
	require.NoError(t, err)
	require.Equal(t, int64(3), size)

	_, err = e.client.ListSize(ctx, 555)
	var le *iterable.ListError
	require.ErrorAs(t, err, &le)
	_, err = e.client.ListUsers(ctx, 555, false, func(string) error { return nil })
	require.ErrorAs(t, err, &le)

	stop := errors.New("stop")
	_, err = e.client.ListUsers(ctx, listID, false, func(string) error { return stop })
	require.ErrorIs(t, err, stop)
}
