//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/activities"
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

// listSubscribeCounter serves the emulator and counts, per identifier, the subscribe requests
// answered 200 that carried it: how many times each member was subscribed.
type listSubscribeCounter struct {
	emu   *iterabletest.Server
	mu    sync.Mutex
	times map[string]int
}

func (c *listSubscribeCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/lists/subscribe" {
		c.emu.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	sw := &listStatusWriter{ResponseWriter: w, status: http.StatusOK}
	c.emu.ServeHTTP(sw, r)
	if sw.status != http.StatusOK {
		return
	}
	var req struct {
		Subscribers []struct {
			Email  string `json:"email"`
			UserID string `json:"userId"`
		} `json:"subscribers"`
	}
	if json.Unmarshal(body, &req) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range req.Subscribers {
		id := s.Email
		if id == "" {
			id = s.UserID
		}
		c.times[id]++
	}
}

// counts returns a copy of how many times each identifier was subscribed.
func (c *listSubscribeCounter) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.times))
	for k, v := range c.times {
		out[k] = v
	}
	return out
}

type listStatusWriter struct {
	http.ResponseWriter
	status int
}

func (w *listStatusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// buildListWorker builds the worker program for a test.
func buildListWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

// startListWorker runs the worker program on the harness's task queue until the test ends;
// its logs are shown when the test fails.
func (h *harness) startListWorker(bin string) *exec.Cmd {
	h.t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+dev.HostPort, "ACTIVATIONS_TASK_QUEUE="+h.queue,
		apiKeyEnv+"="+h.key, "LOG_LEVEL=warn")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(h.t, cmd.Start())
	h.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if h.t.Failed() {
			h.t.Logf("worker %d logs:\n%s", cmd.Process.Pid, logs.String())
		}
	})
	return cmd
}

// TestListCrashMidRunLeavesTheListExact is TestWorkerKilledMidSyncAnotherFinishes for a list
// activation (update mode, the list default; the profiles exist in Iterable beforehand): a worker
// process is killed with SIGKILL while the list's first 8,000 members are being subscribed at 4
// requests/s, another worker finishes the run, and the list's members equal the model, each
// member subscribed at most a heartbeat's worth of windows twice. A second run, in which 5% of
// the members leave, 5% enter and 1% change, leaves the list exact again. No channel unsubscribe
// is ever sent.
func TestListCrashMidRunLeavesTheListExact(t *testing.T) {
	subscribeRPS := 4.0
	h := newHarness(t, iterabletest.Options{SubscribeRPS: subscribeRPS, UnsubscribeRPS: subscribeRPS})
	counter := &listSubscribeCounter{emu: h.emu, times: map[string]int{}}
	proxy := httptest.NewServer(counter)
	t.Cleanup(proxy.Close)
	bin := buildListWorker(t)

	all := users(8400)
	h.seed(all, false) // every profile exists: update mode subscribes them, creating none
	profiles := len(h.emu.Users(h.key))
	require.Equal(t, len(all), profiles)
	model := all[:8000]
	h.writeModel(model)
	seeded := h.emu.Stats(h.key)

	act := h.listSpec()
	act.Destination.Iterable.BaseURL = proxy.URL
	act.Destination.List.RequestsPerSecond = subscribeRPS
	// Two chunks of 4,000 rows at once, windows (and subscribe requests) of 100 members, 4
	// subscribe requests/s: 400 members/s, 20 s; the kill comes when about 3,000 are members.
	act.Sync = spec.SyncSettings{ChunkRows: 4000, UsersPerRequest: 100, RequestsPerSecond: 5, Concurrency: 2,
		HeartbeatTimeout: spec.Duration(3 * time.Second)}

	first := h.startListWorker(bin)
	run := h.start(act)
	require.Eventually(t, func() bool { return h.emu.Stats(h.key).MembersAdded >= 3000 }, 2*time.Minute, 50*time.Millisecond)
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	_, _ = first.Process.Wait()
	membersAtKill := h.emu.Stats(h.key).MembersAdded
	require.Less(t, membersAtKill, len(model), "the kill happened mid-run")

	h.startListWorker(bin)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.NotNil(t, rep.List)
	id, ok := h.emu.ListIDByName(h.key, "VIP users")
	require.True(t, ok)
	require.Equal(t, id, rep.List.ID)
	require.Equal(t, activities.ListExistenceFlag, rep.ListExistence)
	require.Equal(t, emailsOf(model), h.emu.ListMembers(h.key, id), "the list's members equal the model")
	require.Len(t, h.emu.Users(h.key), profiles, "update mode creates no profile")
	require.Equal(t, 2, rep.ResumedChunks, "both running chunks were taken over mid-way")
	require.Equal(t, int64(len(model)), rep.Succeeded.Added, "each member counted once, however often it was sent")
	st := h.emu.Stats(h.key)
	require.Equal(t, len(model), st.MembersAdded)
	require.Zero(t, st.UnsubscribeRequests, "nobody left")
	require.Zero(t, st.ChannelUnsubscribes)

	// Every member was subscribed, nobody else was; some twice, within a heartbeat's reach.
	times := counter.counts()
	twice, membersTwice := 0, 0
	for _, u := range model {
		n := times[u.email]
		require.Positive(t, n, "member %s never subscribed", u.email)
		if n > 1 {
			twice += n - 1
			membersTwice++
		}
		delete(times, u.email)
	}
	require.Empty(t, times, "subscribed but not in the model")
	// The SDK sends heartbeats at most every 0.8 × heartbeatTimeout, so the windows answered in
	// the last 2.4 s before the kill (≤ 9 requests at 4/s, plus the one in flight per chunk) are
	// subscribed again. Restarting the chunks from their start would subscribe about 3,000 again.
	maxTwice := (int(0.8*3*subscribeRPS) + act.Sync.Concurrency) * act.Sync.UsersPerRequest
	require.LessOrEqual(t, twice, maxTwice, "a retried chunk resumes at its heartbeat cursor")
	t.Logf("members at the kill: %d, subscribed twice: %d (%d members; bound %d); %d subscribe requests, %d answered 429",
		membersAtKill, twice, membersTwice, maxTwice, st.SubscribeRequests, st.RateLimited-seeded.RateLimited)
	require.Zero(t, h.run(act).Planned.Total(), "everything was committed")

	// 5% leave, 5% enter, 1% of the staying members' scores change.
	next := append([]user(nil), all[400:8400]...)
	changed := 0
	for i := 0; i < len(next); i += 100 {
		next[i].score += 7
		if i < len(next)-400 {
			changed++
		}
	}
	h.writeModel(next)
	before := h.emu.Stats(h.key)
	rep = h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.Equal(t, int64(400), rep.Succeeded.Removed, "unsubscribed")
	require.Equal(t, int64(400), rep.Succeeded.Added, "subscribed")
	require.Equal(t, int64(changed), rep.Succeeded.Changed)
	require.Equal(t, emailsOf(next), h.emu.ListMembers(h.key, id), "the list's members equal the model again")
	require.Len(t, h.emu.Users(h.key), profiles, "still no profile created")
	st = h.emu.Stats(h.key)
	require.Equal(t, 400, st.MembersRemoved-before.MembersRemoved)
	require.Equal(t, 400, st.MembersAdded-before.MembersAdded)
	require.Zero(t, st.ChannelUnsubscribes, "leaving a list never unsubscribes from a channel")
	for _, u := range []user{next[0], next[len(next)-1]} {
		s, _ := h.emu.User(h.key, u.email, "")
		require.EqualValues(t, u.score, s.DataFields["score"], "user %s", u.id)
	}
	require.Zero(t, h.run(act).Planned.Total(), "nothing left to do")
}

// A member whose identifier changes (same key, another email) moves: the new profile is
// subscribed and the old one unsubscribed, unless another key now carries it.
func TestListMemberWhoseEmailChangesMoves(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(100)
	moved := user{id: "6", email: "renamed6@example.com", name: us[5].name, score: us[5].score}
	h.seed(append(append([]user(nil), us...), moved), false) // every profile exists
	h.writeModel(us)
	act := h.listSpec()
	rep := h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	id := rep.List.ID
	require.Equal(t, emailsOf(us), h.emu.ListMembers(h.key, id))

	// User 6 changes email; user 8's email moves to key 500 (the person stays a member).
	next := append([]user(nil), us...)
	next[5] = moved
	next[7] = user{id: "500", email: us[7].email, name: us[7].name, score: us[7].score}
	h.writeModel(next)
	rep = h.runInput(workflows.RunInput{Spec: act})
	require.Equal(t, workflows.StateCompleted, rep.State, "%+v", rep.Pauses)
	require.Equal(t, emailsOf(next), h.emu.ListMembers(h.key, id), "the list's members equal the model")
	require.Zero(t, h.emu.Stats(h.key).ChannelUnsubscribes)
	require.Zero(t, h.runInput(workflows.RunInput{Spec: act}).Planned.Total(), "committed: nothing left to do")
}
