//go:build integration

// Integration tests: a real Temporal dev server (the CLI in bin/ or $TEMPORAL_CLI), real DuckDB,
// the Iterable emulator, and workers in this process or in child processes.
package workflows_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"google.golang.org/protobuf/proto"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/devserver"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

var (
	dev      *devserver.Server
	queueSeq atomic.Int64
)

func TestMain(m *testing.M) {
	cli, ok := devserver.FindCLI("../bin")
	if !ok {
		fmt.Fprintln(os.Stderr, "integration tests need the Temporal CLI: run `make temporal-cli` or set TEMPORAL_CLI")
		os.Exit(1)
	}
	var err error
	dev, err = devserver.Start(context.Background(), devserver.Options{CLIPath: cli, SearchAttributes: workflows.SearchAttributes()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = dev.Stop()
	os.Exit(code)
}

const apiKeyEnv = "INTEGRATION_ITERABLE_API_KEY"

// harness is one test's world: an emulator project, a model file, a state file, a task queue.
type harness struct {
	t     *testing.T
	emu   *iterabletest.Server
	key   string
	dir   string
	queue string
	c     client.Client
}

func newHarness(t *testing.T, opts iterabletest.Options) *harness {
	t.Helper()
	h := newProject(t, opts)
	t.Setenv(apiKeyEnv, h.key)
	return h
}

// newProject is newHarness without the API key in the environment (parallel tests).
func newProject(t *testing.T, opts iterabletest.Options) *harness {
	t.Helper()
	opts.KeepReceived = true
	h := &harness{t: t, emu: iterabletest.NewServer(opts), key: "key-" + t.Name(), dir: t.TempDir(),
		queue: fmt.Sprintf("it-%d", queueSeq.Add(1)), c: dev.Client()}
	t.Cleanup(h.emu.Close)
	h.emu.AddProject(h.key, iterabletest.ProjectHybrid)
	return h
}

// startWorker runs a worker in this process until the test ends (or stop is called).
func (h *harness) startWorker() (stop func()) {
	acts := activities.New(slog.New(slog.DiscardHandler))
	acts.Temporal = h.c
	w := worker.New(h.c, h.queue, worker.Options{})
	workflows.Register(w, acts)
	require.NoError(h.t, w.Start())
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		w.Stop()
		_ = acts.Close()
	}
	h.t.Cleanup(stop)
	return stop
}

type user struct {
	id, email, name string
	score           int
}

func (h *harness) writeModel(users []user) {
	h.t.Helper()
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write([]string{"user_id", "email", "name", "score"})
	for _, u := range users {
		_ = w.Write([]string{u.id, u.email, u.name, strconv.Itoa(u.score)})
	}
	w.Flush()
	require.NoError(h.t, os.WriteFile(filepath.Join(h.dir, "users.csv"), b.Bytes(), 0o600))
}

func (h *harness) spec() spec.Activation {
	return spec.Activation{
		// One activation id per test: each test has its own task queue, and so its own lock workflow.
		ID: "it-users-" + h.queue, BaseDir: h.dir,
		Source: spec.Source{Type: "duckdb", PrimaryKey: "user_id",
			Query: "SELECT * FROM read_csv('users.csv', header=true, columns={'user_id':'BIGINT','email':'VARCHAR','name':'VARCHAR','score':'INTEGER'})"},
		State: spec.State{DuckDB: &spec.DuckDBState{Path: filepath.Join(h.dir, "state.duckdb")}},
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: h.emu.URL(), APIKey: spec.SecretRef{Env: apiKeyEnv}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "name", Field: "name"}, {Column: "score", Field: "score"}},
		},
		Sync: spec.SyncSettings{ChunkRows: 500, UsersPerRequest: 100, RequestsPerSecond: 50},
	}
}

func (h *harness) start(act spec.Activation) client.WorkflowRun {
	h.t.Helper()
	run, err := h.c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: fmt.Sprintf("it-%s-%d", h.queue, time.Now().UnixNano()), TaskQueue: h.queue,
	}, workflows.WorkflowName, workflows.RunInput{Spec: act})
	require.NoError(h.t, err)
	return run
}

func (h *harness) run(act spec.Activation) workflows.RunReport {
	h.t.Helper()
	run := h.start(act)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(h.t, run.Get(ctx, &rep))
	return rep
}

func users(n int) []user {
	us := make([]user, n)
	for i := range us {
		us[i] = user{id: strconv.Itoa(i + 1), email: fmt.Sprintf("person%05d@example.com", i+1), name: fmt.Sprintf("Name %d", i+1), score: i}
	}
	return us
}

// requireIterableEqualsModel checks that every model user is in Iterable with the model's values.
func (h *harness) requireIterableEqualsModel(us []user) {
	h.t.Helper()
	stored := h.emu.Users(h.key)
	byEmail := map[string]iterabletest.StoredUser{}
	for _, s := range stored {
		byEmail[s.Email] = s
	}
	require.Len(h.t, stored, len(us))
	for _, u := range us {
		s, ok := byEmail[u.email]
		require.True(h.t, ok, "user %s missing in Iterable", u.id)
		require.Equal(h.t, u.name, s.DataFields["name"], "user %s", u.id)
		require.EqualValues(h.t, u.score, s.DataFields["score"], "user %s", u.id)
	}
}

func TestFirstRunSendsAllThenUnchangedModelSendsNothing(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(1200)
	h.writeModel(us)

	rep := h.run(h.spec())
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(1200), rep.Planned.Added)
	require.Equal(t, int64(1200), rep.Succeeded.Added)
	require.Equal(t, int64(1200), rep.Committed)
	require.Equal(t, 3, rep.Chunks)
	h.requireIterableEqualsModel(us)

	before := h.emu.Stats(h.key).BulkRequests
	rep = h.run(h.spec())
	require.Zero(t, rep.Planned.Total())
	require.Equal(t, int64(1200), rep.Unchanged)
	require.Zero(t, rep.Requests)
	require.Equal(t, before, h.emu.Stats(h.key).BulkRequests, "an unchanged model sends zero requests")
}

func TestChangedRowsSendOnlyTheChangedAttributes(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(300)
	h.writeModel(us)
	h.run(h.spec())

	for i := 0; i < 30; i++ {
		us[i*10].score += 1000
	}
	us[5].name = "Renamed"
	h.writeModel(us)
	mark := len(h.emu.Received(h.key))
	rep := h.run(h.spec())
	require.Equal(t, int64(31), rep.Planned.Changed)
	require.Equal(t, int64(31), rep.Succeeded.Changed)
	got := h.emu.Received(h.key)[mark:]
	require.Len(t, got, 31, "only the changed users are sent")
	for _, u := range got {
		require.Len(t, u.DataFields, 1, "only the changed attribute of %s is sent", u.Email)
	}
	h.requireIterableEqualsModel(us)
}

func TestRejectedRowIsReportedNotCommittedAndRetried(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(50)
	us[7].email = "not-an-email"         // refused before sending: never reaches Iterable
	h.emu.Forget(h.key, us[9].email, "") // GDPR-forgotten: Iterable refuses the update
	h.writeModel(us)

	rep := h.run(h.spec())
	require.Equal(t, int64(48), rep.Succeeded.Added)
	require.Equal(t, int64(2), rep.Rejected.Added)
	require.Equal(t, int64(48), rep.Committed, "rejected rows are not committed")
	reasons := map[string]int64{}
	for _, r := range rep.TopRejections {
		reasons[r.Reason] = r.Count
	}
	require.Len(t, reasons, 2, "%+v", rep.TopRejections)
	var local, remote bool
	for reason, n := range reasons {
		require.Equal(t, int64(1), n)
		local = local || strings.Contains(reason, "invalid email in column email")
		remote = remote || strings.Contains(reason, "forgottenEmails")
	}
	require.True(t, local && remote, "%+v", reasons)
	_, found := h.emu.User(h.key, "not-an-email", "")
	require.False(t, found)

	mark := len(h.emu.Received(h.key))
	rep = h.run(h.spec())
	require.Equal(t, int64(2), rep.Planned.Added, "the rejected rows are planned again")
	require.Equal(t, int64(1), rep.Rejected.Added, "the row Iterable refused is sent and refused again")
	require.Equal(t, int64(1), rep.KnownRejected.Added, "for the same reason: a known rejection")
	require.Equal(t, int64(1), rep.StillRejected.Added, "the malformed row is held back, not checked again")
	require.Len(t, h.emu.Received(h.key)[mark:], 1, "the row Iterable refused is sent again; the malformed one is not")

	us[7].email = "fixed@example.com"
	h.writeModel(us)
	rep = h.run(h.spec())
	require.Equal(t, int64(1), rep.Succeeded.Added)
	require.Equal(t, int64(1), rep.Rejected.Added, "the forgotten user stays refused")
	require.Equal(t, int64(1), h.run(h.spec()).Planned.Total(), "and keeps being tried, never committed")
}

func TestDuplicateAndNullKeysAreReportedAndNeverSent(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(20)
	dup := us[3]
	dup.email = "twin@example.com"
	model := append(append([]user{}, us...), dup, user{id: "", email: "nokey@example.com", name: "x"})
	h.writeModel(model)

	rep := h.run(h.spec())
	require.Equal(t, int64(2), rep.DuplicateKeys, "both rows of the duplicated key")
	require.Equal(t, int64(1), rep.NullKeys)
	require.Equal(t, int64(19), rep.Succeeded.Added)
	for _, email := range []string{us[3].email, "twin@example.com", "nokey@example.com"} {
		_, found := h.emu.User(h.key, email, "")
		require.False(t, found, "%s must never be sent", email)
	}
	var dupReason bool
	for _, r := range rep.TopRejections {
		dupReason = dupReason || strings.Contains(r.Reason, "duplicate primary key")
	}
	require.True(t, dupReason, "the duplicate key is reported: %+v", rep.TopRejections)
}

func TestHistoryHoldsNoModelData(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(700)
	us[1].email = "rejected-address"
	h.writeModel(us)
	run := h.start(h.spec())
	var rep workflows.RunReport
	require.NoError(t, run.Get(context.Background(), &rep))
	require.Equal(t, int64(699), rep.Succeeded.Added)

	var all bytes.Buffer
	it := h.c.GetWorkflowHistory(context.Background(), run.GetID(), run.GetRunID(), false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		b, err := proto.Marshal(ev)
		require.NoError(t, err)
		all.Write(b)
	}
	// Control: the scan does see payload contents.
	require.Contains(t, all.String(), "it-users")
	require.Contains(t, all.String(), "read_csv")
	for _, needle := range []string{"@example.com", "rejected-address", "Name 1", h.key} {
		require.NotContains(t, all.String(), needle)
	}
}

// TestWorkerKilledMidSyncAnotherFinishes kills a worker process with SIGKILL in the middle of a
// sync and starts another: Iterable must end equal to the model, with few rows sent twice.
func TestWorkerKilledMidSyncAnotherFinishes(t *testing.T) {
	h := newHarness(t, iterabletest.Options{BulkUpdateRPS: 5})
	bin := filepath.Join(t.TempDir(), "worker")
	build := exec.Command("go", "build", "-o", bin, "../worker")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	us := users(6000)
	h.writeModel(us)
	act := h.spec()
	// Two chunks of 3000 rows run at once; the kill comes when about 2500 rows were sent.
	act.Sync = spec.SyncSettings{ChunkRows: 3000, UsersPerRequest: 100, RequestsPerSecond: 5, Concurrency: 2,
		HeartbeatTimeout: spec.Duration(3 * time.Second)}

	startProc := func() *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+dev.HostPort, "ACTIVATIONS_TASK_QUEUE="+h.queue,
			apiKeyEnv+"="+h.key, "LOG_LEVEL=warn")
		logs := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		require.NoError(t, cmd.Start())
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
			if t.Failed() {
				t.Logf("worker %d logs:\n%s", cmd.Process.Pid, logs.String())
			}
		})
		return cmd
	}
	first := startProc()
	run := h.start(act)
	require.Eventually(t, func() bool { return h.emu.Stats(h.key).UsersReceived >= 2500 }, 2*time.Minute, 50*time.Millisecond)
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	_, _ = first.Process.Wait()
	sentBeforeKill := h.emu.Stats(h.key).UsersReceived
	require.Less(t, sentBeforeKill, len(us), "the kill happened mid-sync")

	startProc()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	h.requireIterableEqualsModel(us)
	require.Equal(t, 2, rep.ResumedChunks, "both running chunks were taken over mid-way")
	resent := h.emu.Stats(h.key).UsersReceived - len(us)
	require.GreaterOrEqual(t, resent, 0)
	// The SDK sends heartbeats at most every 0.8 × heartbeatTimeout, so the windows answered in
	// the last 2.4 s before the kill (≤ 12 requests at 5/s, plus the ones in flight) are sent again.
	// Restarting the chunks from their start would resend about 2500.
	maxResent := (int(0.8*3*5) + act.Sync.Concurrency) * act.Sync.UsersPerRequest
	require.LessOrEqual(t, resent, maxResent, "a retried chunk resumes at its heartbeat cursor")
	t.Logf("sent before the kill: %d, sent twice: %d (bound %d)", sentBeforeKill, resent, maxResent)
	require.Zero(t, h.run(act).Planned.Total(), "everything was committed")
}

// syncBuffer is a bytes.Buffer a child process may write while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
