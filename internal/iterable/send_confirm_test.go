package iterable_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// bulkAnswer is a bulkUpdate answer shaped like Iterable's: all ten failedUpdates lists, empty
// unless given.
func bulkAnswer(success, fail int, lists map[string][]string) map[string]any {
	failed := map[string][]string{}
	for _, cat := range []string{"invalidEmails", "invalidUserIds", "conflictEmails", "conflictUserIds", "forgottenEmails",
		"forgottenUserIds", "invalidDataEmails", "invalidDataUserIds", "notFoundEmails", "notFoundUserIds"} {
		failed[cat] = []string{}
	}
	for k, v := range lists {
		failed[k] = v
	}
	return map[string]any{"successCount": success, "failCount": fail, "createdFields": []string{},
		"filteredOutFields": []string{}, "failedUpdates": failed}
}

// scriptedBulk serves bulkUpdate with answer(request number from 1, emails of the request).
func scriptedBulk(t *testing.T, answer func(n int, emails []string) map[string]any) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Users []iterable.User `json:"users"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		emails := make([]string, len(req.Users))
		for i, u := range req.Users {
			emails[i] = u.Email
		}
		mu.Lock()
		n++
		body := answer(n, emails)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// requireEachOnce checks that every index 0..n-1 is in exactly one of the result's lists.
func requireEachOnce(t *testing.T, res iterable.BatchResult, n int) {
	t.Helper()
	seen := map[int]int{}
	for _, i := range res.Accepted {
		seen[i]++
	}
	for _, r := range append(slices.Clone(res.Rejected), res.Unconfirmed...) {
		seen[r.Index]++
	}
	require.Len(t, seen, n)
	for i := range n {
		require.Equal(t, 1, seen[i], "record %d", i)
	}
}

func TestSendBatchSplitsAnswersThatDoNotAccountForEveryUser(t *testing.T) {
	const n, k = 8, 5
	other := "user5@bücher.example" // Iterable may echo it IDN-encoded
	truthful := func(emails []string) map[string]any { return bulkAnswer(len(emails), 0, nil) }
	holdsK := func(emails []string) bool {
		return slices.Contains(emails, email(k).Email) || slices.Contains(emails, other)
	}
	tests := []struct {
		name            string
		users           func(i int) iterable.User
		answer          func(n int, emails []string) map[string]any
		wantRequests    int
		wantRejected    []int
		wantUnconfirmed []int
		wantReason      string
	}{
		{
			name: "counts that disagree once", wantRequests: 3,
			answer: func(req int, emails []string) map[string]any {
				if req == 1 {
					return bulkAnswer(len(emails)+1, 0, nil)
				}
				return truthful(emails)
			},
		},
		{
			name: "an unknown category naming a user", wantRequests: 1 + 2 + 2 + 2, wantUnconfirmed: []int{k},
			wantReason: "Iterable's answer did not account for this user (successCount 1, failCount 0; 1 entry in unknown failedUpdates category fooEmails); not committed, sent again next run",
			answer: func(_ int, emails []string) map[string]any {
				a := truthful(emails)
				if holdsK(emails) {
					a["failedUpdates"].(map[string][]string)["fooEmails"] = []string{email(k).Email}
				}
				return a
			},
		},
		{
			name: "an identifier echoed in another form", wantRequests: 7, wantUnconfirmed: []int{k},
			users: func(i int) iterable.User {
				if i == k {
					return iterable.User{Email: other}
				}
				return email(i)
			},
			wantReason: "Iterable's answer did not account for this user (successCount 0, failCount 1; 1 failedUpdates entry naming no user of the request); not committed, sent again next run",
			answer: func(_ int, emails []string) map[string]any {
				if holdsK(emails) {
					return bulkAnswer(len(emails)-1, 1, map[string][]string{"invalidEmails": {"user5@xn--bcher-kva.example"}})
				}
				return truthful(emails)
			},
		},
		{
			name: "a failCount without an entry", wantRequests: 7, wantUnconfirmed: []int{k},
			wantReason: "Iterable's answer did not account for this user (successCount 0, failCount 1); not committed, sent again next run",
			answer: func(_ int, emails []string) map[string]any {
				if holdsK(emails) {
					return bulkAnswer(len(emails)-1, 1, nil)
				}
				return truthful(emails)
			},
		},
		{
			name: "a user both named and counted as updated", wantRequests: 7, wantUnconfirmed: []int{k},
			wantReason: "Iterable's answer did not account for this user (successCount 1, failCount 0; the user is named in failedUpdates.invalidDataEmails); not committed, sent again next run",
			answer: func(_ int, emails []string) map[string]any {
				if holdsK(emails) {
					return bulkAnswer(len(emails), 0, map[string][]string{"invalidDataEmails": {email(k).Email}})
				}
				return truthful(emails)
			},
		},
		{
			name: "counts that always disagree", wantRequests: 2*n - 1, wantUnconfirmed: []int{0, 1, 2, 3, 4, 5, 6, 7},
			wantReason: "Iterable's answer did not account for this user (successCount 2, failCount 0); not committed, sent again next run",
			answer:     func(_ int, emails []string) map[string]any { return bulkAnswer(len(emails)+1, 0, nil) },
		},
		{
			name: "an empty unknown category", wantRequests: 1,
			answer: func(_ int, emails []string) map[string]any {
				a := truthful(emails)
				a["failedUpdates"].(map[string][]string)["invalidPhoneNumbers"] = []string{}
				return a
			},
		},
		{
			name: "a known rejection next to an unknown category", wantRequests: 7, wantRejected: []int{2}, wantUnconfirmed: []int{k},
			answer: func(_ int, emails []string) map[string]any {
				lists := map[string][]string{}
				fail := 0
				if slices.Contains(emails, email(2).Email) {
					lists["notFoundEmails"] = []string{email(2).Email}
					fail = 1
				}
				if holdsK(emails) {
					lists["fooEmails"] = []string{email(k).Email}
				}
				return bulkAnswer(len(emails)-fail, fail, lists)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := scriptedBulk(t, tt.answer)
			logs := &logBuffer{}
			c := fastClient(t, srv.URL, iterable.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			recs := make([]iterable.Record, n)
			var wantAccepted []int
			for i := range recs {
				u := email(i)
				if tt.users != nil {
					u = tt.users(i)
				}
				recs[i] = iterable.Record{Index: i, User: u}
				if !slices.Contains(tt.wantRejected, i) && !slices.Contains(tt.wantUnconfirmed, i) {
					wantAccepted = append(wantAccepted, i)
				}
			}
			batches, _, err := c.Pack(recs, true)
			require.NoError(t, err)
			require.Len(t, batches, 1)
			res, err := c.SendBatch(context.Background(), batches[0])
			require.NoError(t, err)
			requireEachOnce(t, res, n)
			require.Equal(t, tt.wantRequests, res.Requests)
			require.Equal(t, wantAccepted, res.Accepted)
			var rejected, unconfirmed []int
			for _, r := range res.Rejected {
				rejected = append(rejected, r.Index)
			}
			for _, r := range res.Unconfirmed {
				unconfirmed = append(unconfirmed, r.Index)
				require.Equal(t, iterable.CategoryUnconfirmed, r.Category)
				if tt.wantReason != "" {
					require.Equal(t, tt.wantReason, r.Reason)
				}
				requireNoUserData(t, r.Reason)
				require.NotContains(t, r.Reason, "bücher")
			}
			require.Equal(t, tt.wantRejected, rejected)
			require.Equal(t, tt.wantUnconfirmed, unconfirmed)
			if tt.wantRequests > 1 {
				require.Contains(t, logs.String(), "does not account for every user")
			}
			requireNoUserData(t, logs.String())
			require.NotContains(t, logs.String(), "bücher")
		})
	}
}

// The emulator's answer faults drive the same splitting end to end: the faulty user is applied
// by the emulator yet ends Unconfirmed, the others Accepted.
func TestSendBatchUnaccountedAgainstTheEmulator(t *testing.T) {
	const n, k = 8, 5
	tests := []struct {
		name   string
		faults iterabletest.Faults
		stat   func(iterabletest.Stats) int
	}{
		{name: "miscounted answers", faults: iterabletest.Faults{MiscountUser: email(k).Email},
			stat: func(st iterabletest.Stats) int { return st.MiscountedAnswers }},
		{name: "unknown failedUpdates category", faults: iterabletest.Faults{UnknownCategoryUser: strings.ToUpper(email(k).Email)},
			stat: func(st iterabletest.Stats) int { return st.UnknownCategoryAnswers }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
			e.emu.InjectFaults(tt.faults)
			users := make([]iterable.User, n)
			for i := range users {
				users[i] = withFields(email(i), "plan", "secret-value")
			}
			res, err := e.send(t, true, users...)
			require.NoError(t, err)
			require.Equal(t, []int{0, 1, 2, 3, 4, 6, 7}, res.Accepted)
			require.Empty(t, res.Rejected)
			require.Len(t, res.Unconfirmed, 1)
			require.Equal(t, k, res.Unconfirmed[0].Index)
			require.Equal(t, iterable.CategoryUnconfirmed, res.Unconfirmed[0].Category)
			require.Equal(t, 1+2+2+2, res.Requests)
			st := e.emu.Stats(e.key)
			require.Equal(t, 4, tt.stat(st), "every request holding the user: 8, 4, 2 and 1 users")
			require.Len(t, e.emu.Users(e.key), n, "the emulator applied every user")
		})
	}
}

// Numbers in Iterable's msg are data (the value of a field): the rejection reason redacts them,
// while the HTTP status and error code the client writes itself stay.
func TestSendBatchRejectionReasonRedactsNumbers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = fmt.Fprint(w, `{"code":"RequestFieldsTypesMismatched","msg":"Field age2 has type string, got value 12345 (long)","params":null}`)
	}))
	t.Cleanup(srv.Close)
	c := fastClient(t, srv.URL, iterable.Config{})
	res, err := c.SendBatch(context.Background(), iterable.Batch{CreateNewFields: true,
		Records: []iterable.Record{{Index: 0, User: withFields(email(1), "age2", int64(12345))}}})
	require.NoError(t, err)
	require.Len(t, res.Rejected, 1)
	require.Equal(t, "Iterable refused a request holding only this user with HTTP 400 RequestFieldsTypesMismatched: Field age2 has type string, got value <number> (long)",
		res.Rejected[0].Reason)
}
