//go:build integration

package workflows_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// Real data is messy: these tests run the engine on models with a standing share of bad rows,
// removed users, shared identifiers and answers Iterable does not account for.

// runInput starts a run with the given input and waits for its report (a paused run is
// cancelled after the wait, and its progress returned as the report's state).
func (h *harness) runInput(in workflows.RunInput) workflows.RunReport {
	h.t.Helper()
	run, err := h.c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: fmt.Sprintf("it-%s-%d", h.queue, time.Now().UnixNano()), TaskQueue: h.queue,
	}, workflows.WorkflowName, in)
	require.NoError(h.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(h.t, run.Get(ctx, &rep))
	return rep
}

// untilPausedOrDone waits for a run to end or pause and returns its progress.
func (h *harness) untilPausedOrDone(run client.WorkflowRun) workflows.Progress {
	h.t.Helper()
	var p workflows.Progress
	require.Eventually(h.t, func() bool {
		v, err := h.c.QueryWorkflow(context.Background(), run.GetID(), run.GetRunID(), workflows.QueryProgress)
		if err != nil || v.Get(&p) != nil {
			return false
		}
		return p.State == workflows.StatePaused || p.State == workflows.StateCompleted
	}, 2*time.Minute, 100*time.Millisecond)
	return p
}

// The acceptance: 20,000 users with 1% malformed emails. Run 1 completes with 1%
// rejected. Run 2, after 3% of the rows changed, completes: the known-bad rows are neither sent
// nor counted, and are listed as still rejected. A change that breaks 30% of the emails pauses.
func TestKnownRejectionsKeepIncrementalRunsGoing(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(20000)
	for i := 0; i < len(us); i += 100 {
		us[i].email = fmt.Sprintf("malformed-%d", i) // 200 rows, 1%
	}
	h.writeModel(us)
	act := h.spec()
	act.Sync = spec.SyncSettings{ChunkRows: 5000, UsersPerRequest: 1000, RequestsPerSecond: 100}

	rep := h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(200), rep.Rejected.Total())
	require.Zero(t, rep.KnownRejected.Total(), "nothing is known on a first run")
	require.Equal(t, int64(19800), rep.Succeeded.Total())

	changed := 0
	for i := 1; i < len(us); i += 33 { // 3% of the rows change (none of the malformed ones)
		if i%100 != 0 {
			us[i].score += 1000
			changed++
		}
	}
	h.writeModel(us)
	mark := h.emu.Stats(h.key).UsersReceived
	rep = h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.Equal(t, int64(changed), rep.Planned.Changed)
	require.Equal(t, int64(200), rep.Planned.Added, "the known-bad rows are in the plan...")
	require.Equal(t, int64(200), rep.StillRejected.Added, "...held back by their known rejection...")
	require.Zero(t, rep.Attempted.Added, "...and neither attempted")
	require.Zero(t, rep.Rejected.Total(), "nor rejected again")
	require.Equal(t, changed, h.emu.Stats(h.key).UsersReceived-mark, "only the changed rows are sent")
	require.Len(t, rep.KnownReasons, 1)
	require.Equal(t, int64(200), rep.KnownReasons[0].Count)
	require.Contains(t, rep.KnownReasons[0].Reason, "invalid email in column email")
	require.Empty(t, rep.Pauses)

	// Control: with --retry-rejected the same 200 rows are checked again. They make 200 of 200
	// attempts rejected, far above 10%, which paused every incremental run before; they are the
	// same rejections as before (known), so the run still completes.
	rep = h.runInput(workflows.RunInput{Spec: act, RetryRejected: true})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.Equal(t, int64(200), rep.Attempted.Total())
	require.Equal(t, int64(200), rep.Rejected.Total())
	require.Equal(t, int64(200), rep.KnownRejected.Total(), "the same rows, the same reason: known")
	require.Zero(t, rep.StillRejected.Total())

	// New breakage still pauses at once: 30% of the emails become malformed.
	for i := 2; i < len(us); i += 10 {
		us[i].email = fmt.Sprintf("broken-%d", i)
	}
	for i := 3; i < len(us); i += 5 {
		us[i].email = fmt.Sprintf("broken-%d", i)
	}
	h.writeModel(us)
	run := h.start(act)
	p := h.untilPausedOrDone(run)
	require.Equal(t, workflows.StatePaused, p.State)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	require.Equal(t, int64(20000), p.Plan.ModelRows, "a paused run shows its plan's counts")
	require.NoError(t, h.c.CancelWorkflow(context.Background(), run.GetID(), run.GetRunID()))
}

// deleteInEmulator removes a user from Iterable as another client would.
func (h *harness) deleteInEmulator(email string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodDelete, h.emu.URL()+"/api/users/"+url.PathEscape(email), nil)
	require.NoError(h.t, err)
	req.Header.Set("Api-Key", h.key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	_ = resp.Body.Close()
	require.Equal(h.t, http.StatusOK, resp.StatusCode)
}

// onRemoved: clear sets the mapped fields of removed users to null, on the profile they were
// last synced with, never creates one, and commits: the removals are not planned again. A
// removal whose person came back under another key keeps the profile. onRemoved: delete
// deletes only the profiles the activation synced.
func TestOnRemovedClearAndDelete(t *testing.T) {
	for _, mode := range []string{"clear", "delete"} {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, iterabletest.Options{})
			h.startWorker()
			us := users(4000)
			h.writeModel(us)
			act := h.spec()
			act.Destination.OnRemoved = mode
			rep := h.runInput(workflows.RunInput{Spec: act})
			require.Equal(t, int64(4000), rep.Succeeded.Added)

			// 200 users leave; one more is deleted in Iterable by someone else before it leaves;
			// user 3000's person comes back as key 9999 with the same email, in capitals.
			kept := append([]user(nil), us[200:]...)
			gone, rekeyed := us[:200], us[2999]
			h.deleteInEmulator(us[0].email)
			for i, u := range kept {
				if u.id == rekeyed.id {
					kept[i].id = "9999"
					kept[i].email = strings.ToUpper(u.email)
				}
			}
			h.writeModel(kept)
			rep = h.runInput(workflows.RunInput{Spec: act})
			require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
			require.Equal(t, int64(201), rep.Planned.Removed)
			require.Equal(t, int64(200), rep.Succeeded.Removed, "199 cleared or deleted, 1 kept for its new key")
			require.Equal(t, int64(1), rep.Skipped.Removed, "the user Iterable no longer has")
			_, recreated := h.emu.User(h.key, us[0].email, "")
			require.False(t, recreated, "a removal never creates a profile")
			for _, u := range gone[1:] {
				s, found := h.emu.User(h.key, u.email, "")
				if mode == "delete" {
					require.False(t, found, "user %s is deleted", u.id)
					continue
				}
				require.True(t, found)
				require.Nil(t, s.DataFields["name"], "user %s is cleared", u.id)
				require.Nil(t, s.DataFields["score"], "user %s is cleared", u.id)
			}
			s, found := h.emu.User(h.key, rekeyed.email, "")
			require.True(t, found, "the re-keyed person's profile is kept")
			require.Equal(t, rekeyed.name, s.DataFields["name"])
			if mode == "delete" {
				require.Equal(t, 199, h.emu.Stats(h.key).UsersDeleted-1, "the 199 profiles this activation synced, besides the one deleted by someone else")
			}

			rep = h.runInput(workflows.RunInput{Spec: act})
			require.Zero(t, rep.Planned.Total(), "removals were committed, the skipped one too")
		})
	}
}

// One email on two primary keys (compared as Iterable compares emails) is never sent: both rows
// are skipped with a reason, counted, and what the state held for them stays.
func TestSharedIdentifiersAreNeverSent(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(100)
	h.writeModel(us)
	h.run(h.spec())

	us[10].email = strings.ToUpper(us[11].email) // 11 and 12 now share one email
	us[10].name, us[11].name = "Ten", "Eleven"
	us = append(us, user{id: "500", email: "twin@example.com", name: "A"}, user{id: "501", email: "Twin@Example.com", name: "B"})
	h.writeModel(us)
	mark := len(h.emu.Received(h.key))
	rep := h.run(h.spec())
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(4), rep.DuplicateIdentifiers)
	require.Zero(t, rep.Planned.Total(), "neither the pair nor the twins are planned")
	require.Empty(t, h.emu.Received(h.key)[mark:], "nothing is sent")
	_, found := h.emu.User(h.key, "twin@example.com", "")
	require.False(t, found)
	var reason bool
	for _, r := range rep.TopRejections {
		reason = reason || r.Reason == fmt.Sprintf("shared identifier: %d primary keys carry this identifier; none of them is sent until only one does", 2) && r.Count == 4
	}
	require.True(t, reason, "%+v", rep.TopRejections)

	// Once 11 has its own email again, it is sent; 12 kept its state and its profile.
	us[10].email = "eleven@example.com"
	h.writeModel(us[:100])
	rep = h.run(h.spec())
	require.Zero(t, rep.DuplicateIdentifiers)
	s, _ := h.emu.User(h.key, us[11].email, "")
	require.Equal(t, "Eleven", s.DataFields["name"])
	s, _ = h.emu.User(h.key, "eleven@example.com", "")
	require.Equal(t, "Ten", s.DataFields["name"])
}

// A user that Iterable's answer does not account for (counts that disagree with the lists, or
// an unknown failedUpdates category) is never committed as synced: it is unconfirmed, reported,
// and sent again next run.
func TestUnconfirmedAnswersAreSentAgain(t *testing.T) {
	for _, fault := range []string{"miscount", "unknown-category"} {
		t.Run(fault, func(t *testing.T) {
			h := newHarness(t, iterabletest.Options{})
			h.startWorker()
			us := users(300)
			h.writeModel(us)
			odd := us[42].email
			f := iterabletest.Faults{MiscountUser: odd}
			if fault == "unknown-category" {
				f = iterabletest.Faults{UnknownCategoryUser: odd, UnknownCategory: "suppressedEmails"}
			}
			h.emu.InjectFaults(f)
			rep := h.run(h.spec())
			require.Equal(t, workflows.StateCompleted, rep.State)
			require.Equal(t, int64(1), rep.Unconfirmed.Added)
			require.Equal(t, int64(299), rep.Succeeded.Added)
			require.Equal(t, int64(299), rep.Committed, "the unconfirmed user is not committed")
			var why bool
			for _, r := range rep.TopRejections {
				why = why || r.Outcome == "unconfirmed" && strings.Contains(r.Reason, "did not account for this user")
			}
			require.True(t, why, "%+v", rep.TopRejections)

			h.emu.InjectFaults(iterabletest.Faults{})
			mark := len(h.emu.Received(h.key))
			rep = h.run(h.spec())
			require.Equal(t, int64(1), rep.Succeeded.Added, "sent again")
			got := h.emu.Received(h.key)[mark:]
			require.Len(t, got, 1)
			require.Equal(t, odd, got[0].Email)
			require.Zero(t, h.run(h.spec()).Planned.Total())
		})
	}
}
