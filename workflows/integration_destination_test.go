//go:build integration

package workflows_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// seed creates profiles directly through the API, as if another system had made them.
func (h *harness) seed(us []user, byUserID bool) {
	h.t.Helper()
	c, err := iterable.New(iterable.Config{BaseURL: h.emu.URL(), APIKey: h.key, RequestsPerSecond: -1})
	require.NoError(h.t, err)
	recs := make([]iterable.Record, len(us))
	yes := true
	for i, u := range us {
		recs[i] = iterable.Record{Index: i, User: iterable.User{Email: u.email, DataFields: map[string]any{"seeded": true}}}
		if byUserID {
			recs[i].User = iterable.User{UserID: u.id, PreferUserID: &yes, DataFields: map[string]any{"seeded": true}}
		}
	}
	batches, _, err := c.Pack(recs, true)
	require.NoError(h.t, err)
	for _, b := range batches {
		res, err := c.SendBatch(context.Background(), b)
		require.NoError(h.t, err)
		require.Len(h.t, res.Accepted, len(b.Records))
	}
}

func TestUpdateModeNeverCreatesProfiles(t *testing.T) {
	tests := []struct {
		name          string
		project       iterabletest.ProjectType
		idField       string
		lookupMaxRows int64
		want          string
	}{
		{"hybrid project with a small plan: lookups", iterabletest.ProjectHybrid, "email", 0, activities.ExistenceLookup},
		{"hybrid project with a large plan: export", iterabletest.ProjectHybrid, "email", 5, activities.ExistenceExport},
		{"userId project: export", iterabletest.ProjectUserID, "userId", 5, activities.ExistenceExport},
		{"email project by userId: Iterable refuses", iterabletest.ProjectEmail, "userId", 0, activities.ExistenceNative},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, iterabletest.Options{})
			h.emu.AddProject(h.key, tc.project)
			h.startWorker()
			us := users(40)
			h.writeModel(us)
			h.seed(us[:15], tc.idField == "userId")

			act := h.spec()
			act.Destination.Mode = "update"
			act.Destination.Iterable.ProjectType = string(tc.project)
			if tc.idField == "userId" {
				act.Destination.Identifier = spec.Identifier{Column: "user_id", Field: "userId"}
			}
			act.Sync.LookupMaxRows = tc.lookupMaxRows
			// 25 of the 40 users are never committed (not in Iterable) and are planned again by
			// every run: as retries they do not count toward the volume guard (default 50%).
			rep := h.run(act)
			require.Equal(t, tc.want, rep.Existence)
			require.Equal(t, int64(15), rep.Succeeded.Added, "the existing profiles are updated")
			require.Equal(t, int64(25), rep.Skipped.Added, "the others are skipped")
			require.Zero(t, rep.Rejected.Total())
			require.Len(t, h.emu.Users(h.key), 15, "update mode created no profile")
			var skippedReason bool
			for _, r := range rep.TopRejections {
				skippedReason = skippedReason || (r.Outcome == "skipped" && strings.Contains(r.Reason, "not in Iterable") && r.Count == 25)
			}
			require.True(t, skippedReason, "%+v", rep.TopRejections)

			// Skipped rows are not committed: the next run looks at them again.
			rep = h.run(act)
			require.Equal(t, workflows.StateCompleted, rep.State, "retried rows do not trip the volume guard")
			require.Equal(t, int64(25), rep.Planned.Added)
			require.Equal(t, int64(25), rep.Skipped.Added)
			require.Len(t, h.emu.Users(h.key), 15)
		})
	}
}

func TestTypeConflictReportedOnceAndItsRowsRejected(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	h.emu.SetFieldType(h.key, "score", "string")
	us := users(30)
	h.writeModel(us)
	rep := h.run(h.spec())
	var conflicts []string
	for _, w := range rep.Warnings {
		if strings.Contains(w, "type conflict") {
			conflicts = append(conflicts, w)
		}
	}
	require.Len(t, conflicts, 1, "reported once, at activation level: %v", rep.Warnings)
	require.Contains(t, conflicts[0], "field score is string in Iterable")
	require.Equal(t, int64(30), rep.Rejected.Added)
	require.Zero(t, rep.Requests, "nothing was sent that Iterable would refuse")
	require.Equal(t, int64(30), rep.TopRejections[0].Count)
	require.Contains(t, rep.TopRejections[0].Reason, "RequestFieldsTypesMismatched")
}

func TestInvalidIdentifiersRejectedLocallyAndNeverSent(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(10)
	us[2].email = "no-at-sign.example.com"
	us[4].email = "two@@example.com"
	h.writeModel(us)
	rep := h.run(h.spec())
	require.Equal(t, int64(2), rep.Rejected.Added)
	require.Equal(t, int64(8), rep.Succeeded.Added)
	require.Equal(t, 8, h.emu.Stats(h.key).UsersReceived, "rejected rows never reach Iterable")
	require.Contains(t, rep.TopRejections[0].Reason, "invalid email in column email")

	act := h.spec()
	act.ID = "it-users-by-id"
	act.Destination.Identifier = spec.Identifier{Column: "name", Field: "userId"}
	us = users(3)
	us[1].name = strings.Repeat("x", 53)
	h.writeModel(us)
	rep = h.run(act)
	require.Equal(t, int64(1), rep.Rejected.Added)
	require.Contains(t, rep.TopRejections[0].Reason, "invalid userId in column name")
}

func TestNullsIgnoreKeepsIterableValues(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(5)
	h.writeModel(us)
	h.run(h.spec())

	act := h.spec()
	act.Source.Query = strings.Replace(act.Source.Query, "SELECT *", "SELECT user_id, email, CASE WHEN user_id = 1 THEN NULL ELSE name END AS name, score", 1)
	act.Destination.Nulls = "ignore"
	rep := h.run(act)
	require.Equal(t, int64(1), rep.Planned.Changed)
	require.Zero(t, rep.Requests, "a change to NULL is left out: nothing to send")
	u, ok := h.emu.User(h.key, us[0].email, "")
	require.True(t, ok)
	require.Equal(t, us[0].name, u.DataFields["name"], "Iterable keeps its value")

	act.Destination.Nulls = "clear"
	act.ID = "it-users-clear"
	h.run(act) // first run of another activation: adds with name NULL
	u, _ = h.emu.User(h.key, us[0].email, "")
	require.Nil(t, u.DataFields["name"], "nulls: clear sets the field to null")
}

func TestRunCompletesThroughServerErrorsAnd429Bursts(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	h.emu.InjectFaults(iterabletest.Faults{Error5xxRate: 0.2, Burst429: 5, DropConnections: 2})
	us := users(2000)
	h.writeModel(us)
	rep := h.run(h.spec())
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(2000), rep.Succeeded.Added)
	st := h.emu.Stats(h.key)
	require.Positive(t, st.Errors5xx)
	require.GreaterOrEqual(t, st.RateLimited, 5)
	h.requireIterableEqualsModel(us)
}
