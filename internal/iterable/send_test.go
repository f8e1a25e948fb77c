package iterable_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

// logBuffer collects every log line of a test, to check that no user data is logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// env is an emulator with one project and a client for it, both logging into logs.
type env struct {
	emu    *iterabletest.Server
	client *iterable.Client
	key    string
	logs   *logBuffer
}

func newEnv(t *testing.T, typ iterabletest.ProjectType, opts iterabletest.Options, cfg iterable.Config) *env {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts == (iterabletest.Options{}) {
		opts.Unlimited = true
	}
	opts.Logger = logger
	emu := iterabletest.NewServer(opts)
	t.Cleanup(emu.Close)
	key := "secret-api-key-" + strings.ReplaceAll(t.Name(), "/", "-")
	emu.AddProject(key, typ)
	cfg.BaseURL = emu.URL()
	if cfg.APIKey == "" {
		cfg.APIKey = key
	}
	if cfg.RequestsPerSecond == 0 {
		cfg.RequestsPerSecond = -1
	}
	if cfg.RetryInitialInterval == 0 {
		cfg.RetryInitialInterval = time.Millisecond
	}
	if cfg.RetryMaxInterval == 0 {
		cfg.RetryMaxInterval = 5 * time.Millisecond
	}
	if cfg.MaxElapsed == 0 {
		cfg.MaxElapsed = 10 * time.Second
	}
	cfg.Logger = logger
	c, err := iterable.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		// Nothing in any log line may be user data or the key.
		out := logs.String()
		require.NotContains(t, out, "@example")
		require.NotContains(t, out, "secret-api-key")
		require.NotContains(t, out, "secret-value")
	})
	return &env{emu: emu, client: c, key: key, logs: logs}
}

// send packs and sends records, merging the batch results.
func (e *env) send(t *testing.T, createNew bool, users ...iterable.User) (iterable.BatchResult, error) {
	t.Helper()
	recs := make([]iterable.Record, len(users))
	for i, u := range users {
		recs[i] = iterable.Record{Index: i, User: u}
	}
	batches, oversize, err := e.client.Pack(recs, createNew)
	require.NoError(t, err)
	require.Empty(t, oversize)
	var total iterable.BatchResult
	for _, b := range batches {
		res, err := e.client.SendBatch(context.Background(), b)
		total.Accepted = append(total.Accepted, res.Accepted...)
		total.Rejected = append(total.Rejected, res.Rejected...)
		total.Unconfirmed = append(total.Unconfirmed, res.Unconfirmed...)
		total.Requests += res.Requests
		total.RateLimited += res.RateLimited
		total.CreatedFields = append(total.CreatedFields, res.CreatedFields...)
		total.FilteredOutFields = append(total.FilteredOutFields, res.FilteredOutFields...)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func email(i int) iterable.User {
	return iterable.User{Email: fmt.Sprintf("user%d@example.com", i)}
}

func withFields(u iterable.User, kv ...any) iterable.User {
	u.DataFields = map[string]any{}
	for i := 0; i < len(kv); i += 2 {
		u.DataFields[kv[i].(string)] = kv[i+1]
	}
	return u
}

func ptr[T any](v T) *T { return &v }

// requireNoUserData checks an error text or reason against the data a test sent.
func requireNoUserData(t *testing.T, s string) {
	t.Helper()
	require.NotContains(t, s, "@example")
	require.NotContains(t, s, "secret-api-key")
	require.NotContains(t, s, "secret-value")
}

func TestSendBatchSuccess(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	res, err := e.send(t, true,
		withFields(email(1), "plan", "gold", "age", int64(30)),
		withFields(email(2), "plan", "silver", "score", 1.5, "signup", "2023-02-05 20:42:10 +00:00"),
		email(3),
	)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, res.Accepted)
	require.Empty(t, res.Rejected)
	require.Equal(t, 1, res.Requests)
	require.Equal(t, []string{"age", "plan", "score", "signup"}, res.CreatedFields)

	u, ok := e.emu.User(e.key, "USER2@example.com", "")
	require.True(t, ok)
	require.Equal(t, map[string]any{"plan": "silver", "score": 1.5, "signup": "2023-02-05 20:42:10 +00:00"}, u.DataFields)
	require.Len(t, e.emu.Users(e.key), 3)

	fields, err := e.client.GetFields(context.Background())
	require.NoError(t, err)
	require.Equal(t, map[string]string{"email": "string", "userId": "string", "age": "long", "plan": "string",
		"score": "double", "signup": "date"}, fields)

	// A second sync merges into the profile.
	res, err = e.send(t, true, withFields(email(1), "plan", "platinum"))
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Empty(t, res.CreatedFields)
	u, _ = e.emu.User(e.key, "user1@example.com", "")
	require.Equal(t, map[string]any{"plan": "platinum", "age": int64(30)}, u.DataFields)

	st := e.emu.Stats(e.key)
	require.Equal(t, 2, st.BulkRequests)
	require.Equal(t, 4, st.UsersReceived)
	require.Equal(t, 4, st.UsersUpdated)
}

func TestSendBatchFailedUpdatesCategories(t *testing.T) {
	type tc struct {
		user     iterable.User
		category string // "" = accepted
	}
	tests := []struct {
		name  string
		typ   iterabletest.ProjectType
		setup func(t *testing.T, e *env)
		users []tc
	}{
		{
			name: "email-based project",
			typ:  iterabletest.ProjectEmail,
			setup: func(t *testing.T, e *env) {
				_, err := e.send(t, true, iterable.User{Email: "owner@example.com", UserID: "u-owner", DataFields: map[string]any{"age": 1}},
					iterable.User{Email: "owner2@example.com", UserID: "u-owner2"}, iterable.User{Email: "owner3@example.com", UserID: "u-owner3"})
				require.NoError(t, err)
				e.emu.Forget(e.key, "gone@example.com", "")
				e.emu.Forget(e.key, "", "u-gone")
			},
			users: []tc{
				{user: iterable.User{Email: "fine@example.com"}},
				{user: iterable.User{Email: "not an email"}, category: "invalidEmails"},
				{user: iterable.User{UserID: strings.Repeat("x", 53), PreferUserID: ptr(true)}, category: "invalidUserIds"},
				{user: iterable.User{Email: "other@example.com", UserID: "u-owner"}, category: "conflictUserIds"},
				{user: iterable.User{Email: "GONE@example.com"}, category: "forgottenEmails"},
				{user: iterable.User{UserID: "u-gone", PreferUserID: ptr(true)}, category: "forgottenUserIds"},
				{user: withFields(iterable.User{Email: "typed@example.com"}, "age", "secret-value"), category: "invalidDataEmails"},
				{user: withFields(iterable.User{UserID: "u-owner2"}, "age", true), category: "invalidDataUserIds"},
				{user: iterable.User{UserID: "u-nobody"}, category: "notFoundUserIds"},
				{user: iterable.User{UserID: "u-new", PreferUserID: ptr(true)}},
				{user: withFields(iterable.User{UserID: "u-owner3"}, "age", 2)},
			},
		},
		{
			name: "hybrid project",
			typ:  iterabletest.ProjectHybrid,
			setup: func(t *testing.T, e *env) {
				_, err := e.send(t, true, iterable.User{Email: "a@example.com", UserID: "ua"}, iterable.User{Email: "b@example.com", UserID: "ub"})
				require.NoError(t, err)
			},
			users: []tc{
				{user: iterable.User{Email: "b@example.com", UserID: "ua"}, category: "conflictEmails"},
				{user: iterable.User{Email: "c@example.com"}},
				{user: iterable.User{UserID: "uc"}},
				{user: iterable.User{UserID: "bad id "}, category: "invalidUserIds"},
			},
		},
		{
			name: "userId-based project",
			typ:  iterabletest.ProjectUserID,
			setup: func(t *testing.T, e *env) {
				_, err := e.send(t, true, iterable.User{Email: "twin@example.com", UserID: "t1"},
					iterable.User{Email: "twin@example.com", UserID: "t2"}, iterable.User{Email: "solo@example.com", UserID: "s1"})
				require.NoError(t, err)
			},
			users: []tc{
				{user: iterable.User{Email: "nobody@example.com"}, category: "notFoundEmails"},
				{user: iterable.User{Email: "twin@example.com"}, category: "invalidDataEmails"},
				{user: withFields(iterable.User{Email: "SOLO@example.com"}, "x", 1)},
				{user: iterable.User{UserID: "new-id", Email: "new@example.com"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.typ, iterabletest.Options{}, iterable.Config{})
			tt.setup(t, e)
			var users []iterable.User
			wantAccepted := []int{}
			var wantRejected []iterable.RecordRejection
			for i, c := range tt.users {
				users = append(users, c.user)
				if c.category == "" {
					wantAccepted = append(wantAccepted, i)
				} else {
					wantRejected = append(wantRejected, iterable.RecordRejection{Index: i, Category: c.category, Reason: iterable.CategoryReason(c.category)})
				}
			}
			res, err := e.send(t, true, users...)
			require.NoError(t, err)
			require.Equal(t, wantAccepted, append([]int{}, res.Accepted...))
			require.Equal(t, wantRejected, res.Rejected)
			for _, r := range res.Rejected {
				require.Contains(t, r.Reason, "failedUpdates."+r.Category)
				requireNoUserData(t, r.Reason)
			}
		})
	}
}

// TestSendBatchMapsCannedResponse checks the mapping against an answer naming all ten categories,
// with emails echoed in another case (Iterable matches and may echo emails lower-cased): the
// answer accounts for every record, so one request settles the batch.
func TestSendBatchMapsCannedResponse(t *testing.T) {
	cats := []string{"invalidEmails", "invalidUserIds", "conflictEmails", "conflictUserIds", "forgottenEmails",
		"forgottenUserIds", "invalidDataEmails", "invalidDataUserIds", "notFoundEmails", "notFoundUserIds"}
	var users []iterable.User
	failed := map[string][]string{}
	for _, cat := range cats {
		failed[cat] = []string{}
	}
	for i, cat := range cats {
		if strings.HasSuffix(cat, "Emails") {
			e := fmt.Sprintf("Cat%d@Example.com", i)
			users = append(users, iterable.User{Email: e})
			failed[cat] = []string{strings.ToLower(e)}
		} else {
			id := fmt.Sprintf("Id-%d", i)
			users = append(users, iterable.User{UserID: id})
			failed[cat] = []string{id}
		}
	}
	users = append(users, iterable.User{Email: "ok@example.com"}, iterable.User{UserID: "id-1"}) // userIds match exactly
	body, err := json.Marshal(map[string]any{"successCount": 2, "failCount": 10, "failedUpdates": failed,
		"createdFields": []string{}, "filteredOutFields": []string{}})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "canned-key", r.Header.Get("Api-Key"))
		require.Equal(t, "application/json", r.Header.Get("Content-Type"))
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	c := mustClient(t, iterable.Config{BaseURL: srv.URL, APIKey: "canned-key", RequestsPerSecond: -1})
	recs := make([]iterable.Record, len(users))
	for i, u := range users {
		recs[i] = iterable.Record{Index: 100 + i, User: u}
	}
	batches, _, err := c.Pack(recs, true)
	require.NoError(t, err)
	res, err := c.SendBatch(context.Background(), batches[0])
	require.NoError(t, err)
	require.Equal(t, 1, res.Requests)
	require.Equal(t, []int{110, 111}, res.Accepted)
	require.Empty(t, res.Unconfirmed)
	require.Len(t, res.Rejected, 10)
	for i, r := range res.Rejected {
		require.Equal(t, 100+i, r.Index)
		require.Equal(t, cats[i], r.Category)
	}
}

func TestSendBatchSplitsInHalves(t *testing.T) {
	tests := []struct {
		name         string
		n            int
		bad          []int
		faults       iterabletest.Faults
		badField     string
		wantRequests int
		wantCategory string
	}{
		{name: "one bad record of 8", n: 8, bad: []int{5}, faults: iterabletest.Faults{RejectField: "poison"},
			badField: "poison", wantRequests: 7, wantCategory: "RequestFieldsTypesMismatched"},
		{name: "two bad records of 8", n: 8, bad: []int{0, 7}, faults: iterabletest.Faults{RejectField: "poison"},
			badField: "poison", wantRequests: 1 + 2 + 4 + 4, wantCategory: "RequestFieldsTypesMismatched"},
		{name: "empty field name of 5", n: 5, bad: []int{2}, badField: "",
			wantRequests: 1 + 2 + 2, wantCategory: "BadParams"},
		{name: "single record", n: 1, bad: []int{0}, faults: iterabletest.Faults{RejectField: "poison"},
			badField: "poison", wantRequests: 1, wantCategory: "RequestFieldsTypesMismatched"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
			e.emu.InjectFaults(tt.faults)
			users := make([]iterable.User, tt.n)
			var wantAccepted []int
			for i := range users {
				users[i] = withFields(email(i), "plan", "secret-value")
				if slices.Contains(tt.bad, i) {
					users[i].DataFields[tt.badField] = "secret-value"
				} else {
					wantAccepted = append(wantAccepted, i)
				}
			}
			res, err := e.send(t, true, users...)
			require.NoError(t, err)
			require.Equal(t, tt.wantRequests, res.Requests)
			require.Equal(t, wantAccepted, res.Accepted)
			require.Len(t, res.Rejected, len(tt.bad))
			for i, r := range res.Rejected {
				require.Equal(t, tt.bad[i], r.Index)
				require.Equal(t, tt.wantCategory, r.Category)
				require.Contains(t, r.Reason, "HTTP 400 "+tt.wantCategory)
				requireNoUserData(t, r.Reason)
			}
			require.Len(t, e.emu.Users(e.key), len(wantAccepted))
		})
	}
}

// The reason keeps the user's field names and hides its values, whether the user's fields came
// as a map or as names and values (a warehouse row's).
func TestSendBatchRejectionReasonKeepsFieldNames(t *testing.T) {
	asMap := withFields(email(1), "poison", "secret-value")
	asFields := email(1)
	asFields.Fields = iterable.Fields{Names: []string{"poison"}, Values: []any{"secret-value"}}
	for name, u := range map[string]iterable.User{"DataFields": asMap, "Fields": asFields} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
			e.emu.InjectFaults(iterabletest.Faults{RejectField: "poison"})
			res, err := e.send(t, true, u)
			require.NoError(t, err)
			require.Len(t, res.Rejected, 1)
			require.Equal(t, "Iterable refused a request holding only this user with HTTP 400 RequestFieldsTypesMismatched: Field types mismatched for field 'poison'", res.Rejected[0].Reason)
		})
	}
}

func TestSendBatchRetries(t *testing.T) {
	tests := []struct {
		name            string
		faults          iterabletest.Faults
		wantRequests    int
		wantRateLimited int
		minElapsed      time.Duration
		perRequest      int
		check           func(t *testing.T, st iterabletest.Stats)
	}{
		{name: "429 burst", faults: iterabletest.Faults{Burst429: 3}, wantRequests: 4, wantRateLimited: 3},
		{name: "Retry-After honoured", faults: iterabletest.Faults{Burst429: 1, RetryAfter: time.Second},
			wantRequests: 2, wantRateLimited: 1, minElapsed: time.Second},
		{name: "dropped connections", faults: iterabletest.Faults{DropConnections: 2}, wantRequests: 3,
			check: func(t *testing.T, st iterabletest.Stats) { require.Equal(t, 2, st.DroppedConnections) }},
		{name: "5xx", faults: iterabletest.Faults{Error5xxRate: 0.5}, perRequest: 1, wantRequests: -1,
			check: func(t *testing.T, st iterabletest.Stats) {
				require.Positive(t, st.Errors5xx)
				require.Equal(t, st.Errors5xx+2, st.BulkRequests)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{UsersPerRequest: tt.perRequest})
			e.emu.InjectFaults(tt.faults)
			start := time.Now()
			res, err := e.send(t, true, email(1), email(2))
			require.NoError(t, err)
			require.GreaterOrEqual(t, time.Since(start), tt.minElapsed)
			require.Equal(t, []int{0, 1}, res.Accepted)
			if tt.wantRequests >= 0 {
				require.Equal(t, tt.wantRequests, res.Requests)
			}
			require.Equal(t, tt.wantRateLimited, res.RateLimited)
			st := e.emu.Stats(e.key)
			require.Equal(t, res.Requests, st.BulkRequests)
			if tt.check != nil {
				tt.check(t, st)
			}
			require.Len(t, e.emu.Users(e.key), 2)
		})
	}
}

func TestSendBatchGivesUpAfterMaxElapsed(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{MaxElapsed: 50 * time.Millisecond})
	e.emu.InjectFaults(iterabletest.Faults{Error5xxRate: 1})
	res, err := e.send(t, true, email(1))
	require.Error(t, err)
	require.Contains(t, err.Error(), "giving up")
	var apiErr *iterable.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 500, apiErr.Status)
	require.True(t, apiErr.Retryable())
	require.Greater(t, res.Requests, 1)
	require.Empty(t, res.Accepted)
}

func TestSendBatchFatal(t *testing.T) {
	tests := []struct {
		name       string
		cfg        iterable.Config
		opts       iterabletest.Options
		users      []iterable.User
		wantStatus int
		wantCode   string
	}{
		{name: "bad API key", cfg: iterable.Config{APIKey: "secret-api-key-wrong"}, users: []iterable.User{email(1), email(2)},
			wantStatus: 401, wantCode: "BadApiKey"},
		{name: "unique fields limit", opts: iterabletest.Options{Unlimited: true, MaxFields: 2},
			users:      []iterable.User{withFields(email(1), "a", 1, "b", 2), withFields(email(2), "c", 3)},
			wantStatus: 400, wantCode: "UniqueFieldsLimitExceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, tt.opts, tt.cfg)
			res, err := e.send(t, true, tt.users...)
			require.Error(t, err)
			var apiErr *iterable.APIError
			require.ErrorAs(t, err, &apiErr)
			require.True(t, apiErr.Fatal())
			require.False(t, apiErr.Retryable())
			require.Equal(t, tt.wantStatus, apiErr.Status)
			require.Equal(t, tt.wantCode, apiErr.Code)
			require.Equal(t, 1, res.Requests, "a fatal answer is neither retried nor split")
			require.Empty(t, res.Accepted)
			require.Empty(t, res.Rejected)
			requireNoUserData(t, err.Error())
		})
	}
}

func TestFieldTypeLocking(t *testing.T) {
	tests := []struct {
		name   string
		locked string // pre-locked type of field "f"; "" = none
		first  any    // value sent first, in its own request
		then   any
		want   string // category of the second user; "" = accepted
	}{
		{name: "long then double", first: int64(1), then: 1.5, want: "invalidDataEmails"},
		{name: "double then long", first: 1.5, then: int64(2)},
		{name: "integral double stays double", first: 0.0, then: 1.5},
		{name: "string then long", first: "s", then: int64(1), want: "invalidDataEmails"},
		{name: "string then date-shaped string", first: "s", then: "2023-02-05 20:42:10 +00:00"},
		{name: "date then plain string", first: "2023-02-05 20:42:10 +00:00", then: "tomorrow", want: "invalidDataEmails"},
		{name: "boolean then string", first: true, then: "true", want: "invalidDataEmails"},
		{name: "object then array", first: map[string]any{"a": 1}, then: []any{1}, want: "invalidDataEmails"},
		{name: "null locks nothing", first: nil, then: "x"},
		{name: "null clears a locked field", first: int64(1), then: nil},
		{name: "pre-locked by SetFieldType", locked: "long", first: nil, then: "x", want: "invalidDataEmails"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
			if tt.locked != "" {
				e.emu.SetFieldType(e.key, "f", tt.locked)
			}
			res, err := e.send(t, true, withFields(email(1), "f", tt.first))
			require.NoError(t, err)
			require.Equal(t, []int{0}, res.Accepted)
			res, err = e.send(t, true, withFields(email(1), "f", tt.then, "other", "kept only if accepted"))
			require.NoError(t, err)
			u, _ := e.emu.User(e.key, "user1@example.com", "")
			if tt.want == "" {
				require.Equal(t, []int{0}, res.Accepted)
				want, err := iterable.Value(tt.then)
				require.NoError(t, err)
				require.Equal(t, want, u.DataFields["f"])
				require.Contains(t, u.DataFields, "other")
				return
			}
			require.Equal(t, []iterable.RecordRejection{{Index: 0, Category: tt.want, Reason: iterable.CategoryReason(tt.want)}}, res.Rejected)
			require.NotContains(t, u.DataFields, "other", "a rejected user is not updated at all")
		})
	}
}

func TestFieldTypeLockedWithinOneRequest(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	res, err := e.send(t, true, withFields(email(1), "f", int64(1)), withFields(email(2), "f", "x"))
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Equal(t, "invalidDataEmails", res.Rejected[0].Category)
}

func TestCreateNewFieldsFalse(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	_, err := e.send(t, true, withFields(email(1), "known", "a"))
	require.NoError(t, err)
	res, err := e.send(t, false, withFields(email(1), "known", "b", "unknown", "c", "alsoUnknown", nil), withFields(email(2), "unknown", "d"))
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, res.Accepted)
	require.Empty(t, res.CreatedFields)
	require.Equal(t, []string{"alsoUnknown", "unknown"}, res.FilteredOutFields)
	u, _ := e.emu.User(e.key, "user1@example.com", "")
	require.Equal(t, map[string]any{"known": "b"}, u.DataFields)
	fields, err := e.client.GetFields(context.Background())
	require.NoError(t, err)
	require.NotContains(t, fields, "unknown")
}

func TestProjectTypes(t *testing.T) {
	tests := []struct {
		name        string
		typ         iterabletest.ProjectType
		user        iterable.User
		want        string // category; "" = accepted
		wantCreated bool
	}{
		{name: "email project, email creates", typ: iterabletest.ProjectEmail, user: email(1), wantCreated: true},
		{name: "email project, userId without preferUserId is update only", typ: iterabletest.ProjectEmail,
			user: iterable.User{UserID: "u1"}, want: "notFoundUserIds"},
		{name: "email project, userId with preferUserId=false is update only", typ: iterabletest.ProjectEmail,
			user: iterable.User{UserID: "u1", PreferUserID: ptr(false)}, want: "notFoundUserIds"},
		{name: "email project, userId with preferUserId creates", typ: iterabletest.ProjectEmail,
			user: iterable.User{UserID: "u1", PreferUserID: ptr(true)}, wantCreated: true},
		{name: "userId project, userId creates", typ: iterabletest.ProjectUserID, user: iterable.User{UserID: "u1"}, wantCreated: true},
		{name: "userId project, email alone cannot create", typ: iterabletest.ProjectUserID, user: email(1), want: "notFoundEmails"},
		{name: "hybrid project, email creates", typ: iterabletest.ProjectHybrid, user: email(1), wantCreated: true},
		{name: "hybrid project, userId creates", typ: iterabletest.ProjectHybrid, user: iterable.User{UserID: "u1"}, wantCreated: true},
		{name: "no identifier", typ: iterabletest.ProjectHybrid, user: iterable.User{DataFields: map[string]any{"a": 1}}, want: "invalidEmails"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.typ, iterabletest.Options{}, iterable.Config{})
			res, err := e.send(t, true, tt.user)
			require.NoError(t, err)
			if tt.want == "" {
				require.Equal(t, []int{0}, res.Accepted)
			} else {
				require.Len(t, res.Rejected, 1)
				require.Equal(t, tt.want, res.Rejected[0].Category)
			}
			_, found := e.emu.User(e.key, tt.user.Email, tt.user.UserID)
			require.Equal(t, tt.wantCreated, found)
		})
	}
}

func TestUpdateOnlyByUserIDInEmailProject(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	_, err := e.send(t, true, iterable.User{Email: "known@example.com", UserID: "k1"})
	require.NoError(t, err)
	res, err := e.send(t, true, withFields(iterable.User{UserID: "k1"}, "plan", "gold"), withFields(iterable.User{UserID: "k2"}, "plan", "gold"))
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Equal(t, "notFoundUserIds", res.Rejected[0].Category)
	u, ok := e.emu.User(e.key, "known@example.com", "")
	require.True(t, ok)
	require.Equal(t, "gold", u.DataFields["plan"])
	require.Len(t, e.emu.Users(e.key), 1)
}

func TestLookups(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	_, err := e.send(t, true, withFields(iterable.User{Email: "a@example.com", UserID: "id/with slash"}, "n", int64(3), "x", 2.5))
	require.NoError(t, err)
	ctx := context.Background()

	u, found, err := e.client.GetUserByEmail(ctx, "A@example.com")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, iterable.User{Email: "a@example.com", UserID: "id/with slash", DataFields: map[string]any{"n": int64(3), "x": 2.5}}, u)

	u, found, err = e.client.GetUserByUserID(ctx, "id/with slash")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "a@example.com", u.Email)

	_, found, err = e.client.GetUserByEmail(ctx, "nobody+tag@example.com")
	require.NoError(t, err)
	require.False(t, found)
	_, found, err = e.client.GetUserByUserID(ctx, "nobody")
	require.NoError(t, err)
	require.False(t, found)
}

func TestLookupErrorsHaveNoUserData(t *testing.T) {
	c := mustClient(t, iterable.Config{BaseURL: "http://127.0.0.1:1", APIKey: "secret-api-key", MaxElapsed: 20 * time.Millisecond,
		RetryInitialInterval: time.Millisecond, RequestsPerSecond: -1})
	_, _, err := c.GetUserByEmail(context.Background(), "alice@example.com")
	require.Error(t, err)
	requireNoUserData(t, err.Error())
	require.Contains(t, err.Error(), "getByEmail")
	_, _, err = c.GetUserByUserID(context.Background(), "secret-value")
	require.Error(t, err)
	requireNoUserData(t, err.Error())
}

func TestBaseURL(t *testing.T) {
	tests := []struct {
		region, override, want, wantErr string
	}{
		{region: "us", want: iterable.USBaseURL},
		{region: "", want: iterable.USBaseURL},
		{region: "EU", want: iterable.EUBaseURL},
		{region: "eu", override: "http://127.0.0.1:8080/", want: "http://127.0.0.1:8080"},
		{region: "apac", wantErr: "unknown Iterable region"},
		{region: "us", override: "not a url", wantErr: "absolute http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.region+"|"+tt.override, func(t *testing.T) {
			got, err := iterable.BaseURL(tt.region, tt.override)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     iterable.Config
		wantErr string
	}{
		{name: "no base URL", cfg: iterable.Config{APIKey: "k"}, wantErr: "BaseURL is required"},
		{name: "no key", cfg: iterable.Config{BaseURL: iterable.USBaseURL}, wantErr: "APIKey is empty"},
		{name: "negative users", cfg: iterable.Config{BaseURL: iterable.USBaseURL, APIKey: "k", UsersPerRequest: -1}, wantErr: "must not be negative"},
		{name: "tiny body", cfg: iterable.Config{BaseURL: iterable.USBaseURL, APIKey: "k", MaxBodyBytes: 10}, wantErr: "too small"},
		{name: "ok", cfg: iterable.Config{BaseURL: iterable.EUBaseURL, APIKey: "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := iterable.New(tt.cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, iterable.DefaultUsersPerRequest, c.UsersPerRequest())
			require.Equal(t, iterable.DefaultMaxBodyBytes, c.MaxBodyBytes())
			require.Equal(t, 5.0, c.BulkBudget().Ceiling())
		})
	}
}

func TestPackedBodyAtTheLimitIsAcceptedByTheEmulator(t *testing.T) {
	const max = 20_000
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{Unlimited: true, MaxBodyBytes: max}, iterable.Config{MaxBodyBytes: max})
	overhead := len(prefixTrue) + len(suffix)
	half := (max - overhead - 1) / 2
	recs := []iterable.Record{
		{Index: 0, User: userOfSize(t, 0, half)},
		{Index: 1, User: userOfSize(t, 1, max-overhead-1-half)},
	}
	batches, oversize, err := e.client.Pack(recs, true)
	require.NoError(t, err)
	require.Empty(t, oversize)
	require.Len(t, batches, 1)
	require.Len(t, batches[0].Body, max)
	res, err := e.client.SendBatch(context.Background(), batches[0])
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, res.Accepted)

	// A hand-built batch one byte over the limit is split before sending, never refused.
	big := iterable.Batch{Records: []iterable.Record{
		{Index: 0, User: userOfSize(t, 0, half)},
		{Index: 1, User: userOfSize(t, 1, max-overhead-half)},
	}, CreateNewFields: true}
	res, err = e.client.SendBatch(context.Background(), big)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, res.Accepted)
	require.Equal(t, 2, res.Requests)
	require.Zero(t, e.emu.Stats(e.key).BadRequests)
}

func TestSendBatchCanceled(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	e.emu.InjectFaults(iterabletest.Faults{Error5xxRate: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	batches, _, err := e.client.Pack([]iterable.Record{{Index: 0, User: email(1)}}, true)
	require.NoError(t, err)
	_, err = e.client.SendBatch(ctx, batches[0])
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.False(t, errors.Is(err, context.Canceled))
}

func TestSendBatchRetriesTimeouts(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{
		HTTPClient:           &http.Client{Timeout: 50 * time.Millisecond},
		RetryInitialInterval: 20 * time.Millisecond,
	})
	e.emu.InjectFaults(iterabletest.Faults{Latency: 300 * time.Millisecond})
	go func() {
		time.Sleep(120 * time.Millisecond)
		e.emu.InjectFaults(iterabletest.Faults{})
	}()
	res, err := e.send(t, true, email(1))
	require.NoError(t, err)
	require.Equal(t, []int{0}, res.Accepted)
	require.Greater(t, res.Requests, 1)
	_, ok := e.emu.User(e.key, "user1@example.com", "")
	require.True(t, ok)
}

// With Iterable's documented limit on both sides a lone client stays (almost) clear of 429s;
// the few that timing jitter may cause are retried.
func TestSendBatchWithinTheDocumentedRate(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{BulkUpdateRPS: 5}, iterable.Config{RequestsPerSecond: 5, UsersPerRequest: 1})
	users := make([]iterable.User, 8)
	for i := range users {
		users[i] = email(i)
	}
	start := time.Now()
	res, err := e.send(t, true, users...)
	require.NoError(t, err)
	require.Len(t, res.Accepted, 8)
	require.LessOrEqual(t, res.RateLimited, 2)
	require.GreaterOrEqual(t, time.Since(start), time.Second, "one at once, then 4.9/s (98% of 5)")
}
