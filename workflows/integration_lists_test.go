//go:build integration

package workflows_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// listSpec is a list activation of the harness's model: the VIP list, update mode, the score
// kept in sync for members.
func (h *harness) listSpec() spec.Activation {
	act := h.spec()
	act.ID = "it-vip-" + h.queue
	act.State.DuckDB.Path = h.dir + "/list-state.duckdb"
	act.Destination.Mode = spec.ModeUpdate
	act.Destination.List = &spec.List{Name: "VIP users"}
	act.Destination.Fields = []spec.Field{{Column: "score", Field: "score"}}
	act.Sync = spec.SyncSettings{ChunkRows: 5000, UsersPerRequest: 1000, RequestsPerSecond: 100}
	act.Destination.List.RequestsPerSecond = 100
	return act
}

func emailsOf(us []user) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.email
	}
	slices.Sort(out)
	return out
}

// The acceptance: a model of 20,000 users where 5% leave and 5% enter between runs ends
// with the list's members equal to the model; update mode creates no profile (a member Iterable
// does not know is skipped and tried again); no channel unsubscribe is ever sent.
func TestListMembersFollowTheModel(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	// 21,000 profiles exist in Iterable (an attribute activation put them there).
	all := users(21000)
	h.writeModel(all)
	require.Equal(t, workflows.StateCompleted, h.run(h.spec()).State)
	profiles := len(h.emu.Users(h.key))

	// The segment: 20,000 of them, plus 30 people Iterable has never seen.
	strangers := make([]user, 30)
	for i := range strangers {
		strangers[i] = user{id: fmt.Sprint(900000 + i), email: fmt.Sprintf("stranger%d@example.com", i), name: "S"}
	}
	segment := append(append([]user(nil), all[:20000]...), strangers...)
	h.writeModel(segment)
	act := h.listSpec()
	rep := h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.NotNil(t, rep.List)
	require.True(t, rep.List.Created, "the list is created when no list has its name")
	id, ok := h.emu.ListIDByName(h.key, "VIP users")
	require.True(t, ok)
	require.Equal(t, id, rep.List.ID)
	require.Equal(t, "flag", rep.ListExistence, "hybrid projects honour updateExistingUsersOnly")
	require.Equal(t, int64(20000), rep.Succeeded.Added)
	require.Equal(t, int64(30), rep.Skipped.Added, "members Iterable does not know are skipped")
	require.Equal(t, emailsOf(all[:20000]), h.emu.ListMembers(h.key, id))
	require.Len(t, h.emu.Users(h.key), profiles, "update mode creates no profile")

	// 5% leave, 5% enter, 1% of the members' scores change.
	next := append([]user(nil), all[1000:21000]...)
	for i := 0; i < len(next); i += 100 {
		next[i].score += 7
	}
	h.writeModel(append(append([]user(nil), next...), strangers...))
	rep = h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.False(t, rep.List.Created)
	require.Equal(t, int64(1000), rep.Succeeded.Removed, "unsubscribed")
	require.Equal(t, int64(1000+30), rep.Planned.Added, "entering, and the strangers again")
	require.Equal(t, int64(1000), rep.Succeeded.Added, "subscribed")
	require.Equal(t, int64(30), rep.Skipped.Added)
	require.Equal(t, emailsOf(next), h.emu.ListMembers(h.key, id), "the list's members equal the model")
	require.Len(t, h.emu.Users(h.key), profiles, "still no profile created")
	st := h.emu.Stats(h.key)
	require.Zero(t, st.ChannelUnsubscribes, "leaving a segment never unsubscribes from a channel")
	u, _ := h.emu.User(h.key, next[0].email, "")
	require.EqualValues(t, next[0].score, u.DataFields["score"], "members' changed attributes are updated")

	rep = h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, int64(30), rep.Planned.Total(), "nothing else left to do")
}

// Every pause rule applies: entering members rejected above maxRejectedPercent pause the run.
func TestListRunPausesAtTheRejectionThreshold(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(2000)
	for i := 0; i < len(us); i += 3 {
		us[i].email = fmt.Sprintf("not-an-email-%d", i)
	}
	h.writeModel(us)
	act := h.listSpec()
	act.Destination.Mode = spec.ModeUpsert
	act.Sync.ChunkRows = 500
	run := h.start(act)
	p := h.untilPausedOrDone(run)
	require.Equal(t, workflows.StatePaused, p.State)
	require.Equal(t, workflows.CauseRejections, p.Pause.Cause)
	require.True(t, strings.Contains(p.Pause.Reason, "rejected"), p.Pause.Reason)
	require.NoError(t, h.c.CancelWorkflow(context.Background(), run.GetID(), run.GetRunID()))
}
