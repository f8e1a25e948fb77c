//go:build integration

// Fault drills: runs on the real Temporal dev server while things go wrong (worker processes
// killed with SIGKILL, Iterable answering 5xx and 429 bursts, Iterable unreachable). Each drill
// ends with Iterable equal to the model and the run's report checked against the emulator.
package workflows_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// drill is a harness whose activation reads the Iterable API key from a file instead of the
// environment, so drills can run in parallel (t.Setenv forbids it) and child worker processes
// find the key without it being in their environment.
type drill struct {
	*harness
	keyFile string
}

func newDrill(t *testing.T, opts iterabletest.Options) *drill {
	t.Helper()
	h := newProject(t, opts)
	d := &drill{harness: h, keyFile: filepath.Join(h.dir, "iterable.key")}
	require.NoError(t, os.WriteFile(d.keyFile, []byte(h.key), 0o600))
	return d
}

func (d *drill) spec() spec.Activation {
	act := d.harness.spec()
	act.Destination.Iterable.APIKey = spec.SecretRef{File: d.keyFile}
	return act
}

// wait waits for the run's report, within timeout.
func (d *drill) wait(run client.WorkflowRun, timeout time.Duration) workflows.RunReport {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(d.t, run.Get(ctx, &rep))
	return rep
}

func (d *drill) progress(run client.WorkflowRun) (workflows.Progress, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p workflows.Progress
	v, err := d.c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.QueryProgress)
	if err == nil {
		err = v.Get(&p)
	}
	return p, err
}

func (d *drill) status(run client.WorkflowRun) enums.WorkflowExecutionStatus {
	d.t.Helper()
	desc, err := d.c.DescribeWorkflowExecution(context.Background(), run.GetID(), run.GetRunID())
	require.NoError(d.t, err)
	return desc.GetWorkflowExecutionInfo().GetStatus()
}

// sends counts what Iterable received per user email, in every bulkUpdate body.
func (d *drill) sends() map[string]int {
	n := map[string]int{}
	for _, u := range d.emu.Received(d.key) {
		n[u.Email]++
	}
	return n
}

// requireEverySentOnce checks that every model user reached Iterable and nothing else did, and
// returns how many sends were repeats and how many users were sent more than once.
func (d *drill) requireEverySentOnce(us []user) (resent, usersResent int) {
	d.t.Helper()
	sends := d.sends()
	lost := 0
	for _, u := range us {
		n := sends[u.email]
		if n == 0 {
			lost++
			continue
		}
		resent += n - 1
		if n > 1 {
			usersResent++
		}
		delete(sends, u.email)
	}
	require.Zero(d.t, lost, "model users never sent to Iterable")
	require.Empty(d.t, sends, "users sent that are not in the model")
	return resent, usersResent
}

// drillSeed is DRILL_SEED when set (to replay a failure), else a fresh seed; it is logged.
func drillSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DRILL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "DRILL_SEED")
		seed = v
	}
	t.Logf("seed %d (replay with DRILL_SEED=%d)", seed, seed)
	return seed
}

// drillWorker is a worker running as a child process (the worker program), so that it can be
// killed with SIGKILL like a crashed pod.
type drillWorker struct {
	cmd  *exec.Cmd
	logs string
}

func buildDrillWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

func (d *drill) startWorkerProcess(bin string, i int) *drillWorker {
	d.t.Helper()
	logs := filepath.Join(d.dir, fmt.Sprintf("worker-%d.log", i))
	f, err := os.Create(logs)
	require.NoError(d.t, err)
	defer f.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+dev.HostPort, "ACTIVATIONS_TASK_QUEUE="+d.queue, "LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(d.t, cmd.Start())
	w := &drillWorker{cmd: cmd, logs: logs}
	d.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill() // this exact child, started above
			_ = cmd.Wait()
		}
		if d.t.Failed() {
			d.t.Logf("worker %d (pid %d) log tail:\n%s", i, cmd.Process.Pid, drillLogTail(logs, 15))
		}
	})
	return w
}

// kill sends SIGKILL to the worker process and reaps it.
func (w *drillWorker) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGKILL))
	err := w.cmd.Wait()
	require.Error(t, err, "the worker died of the signal")
	require.Contains(t, err.Error(), "killed")
}

func drillLogTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// TestDrillWorkerKilledThreeTimes kills the only worker process with SIGKILL three times at
// seeded random points of a 200,000-row sync, starting a new one after each kill. Iterable must
// end equal to the model, every row sent, at most kills × chunkRows rows sent twice (the
// chunks resume at their heartbeated cursor), and the report must count every row once.
func TestDrillWorkerKilledThreeTimes(t *testing.T) {
	const (
		rows  = 200_000
		kills = 3
	)
	began := time.Now()
	rnd := rand.New(rand.NewPCG(drillSeed(t), 6))
	// The emulator's limit is above the activation's budget: no 429 muddles the count.
	d := newDrill(t, iterabletest.Options{BulkUpdateRPS: 100})
	bin := buildDrillWorker(t)
	us := users(rows)
	d.writeModel(us)
	act := d.spec()
	// 8 chunks, 4 at a time, at 16 requests of 500 users per second (8,000 rows/s, ~25 s of
	// sending). The SDK sends heartbeats at most every 0.8 × 2 s, so a kill resends what was
	// answered in about the last 1.6 s (~13,000 rows) plus the requests in flight: measured
	// 6,500–10,000 rows per kill, below one chunk (25,000).
	act.Sync = spec.SyncSettings{ChunkRows: 25_000, Concurrency: 4, UsersPerRequest: 500, RequestsPerSecond: 16,
		HeartbeatTimeout: spec.Duration(2 * time.Second)}
	t.Logf("setup (model, worker build): %s", time.Since(began).Round(time.Millisecond))

	worker := d.startWorkerProcess(bin, 0)
	started := time.Now()
	run := d.start(act)
	received := func() int { return d.emu.Stats(d.key).UsersReceived }

	type killRecord struct {
		at                  time.Duration
		received, distinct  int
		target              int
		recoveredAfter      time.Duration
		pid                 int
		randomDelayAfterHit time.Duration
	}
	var history []killRecord
	for k := 0; k < kills; k++ {
		// Kill k comes once [10k, 50k] + k × 60k users were received, then after 0–300 ms more.
		target := rows/20 + k*rows*3/10 + rnd.IntN(rows/5)
		delay := time.Duration(rnd.IntN(300)) * time.Millisecond
		deadline := time.Now().Add(3 * time.Minute)
		for i := 1; received() < target; i++ {
			require.True(t, time.Now().Before(deadline), "kill %d: Iterable received %d of the %d users awaited", k+1, received(), target)
			if i%25 == 0 {
				require.Equal(t, enums.WORKFLOW_EXECUTION_STATUS_RUNNING, d.status(run), "the run ended before kill %d", k+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(delay)
		pid := worker.cmd.Process.Pid
		worker.kill(t)
		at := time.Since(started)
		got := received()
		distinct := len(d.sends())
		require.Less(t, distinct, rows, "kill %d landed mid-sync", k+1)
		require.Equal(t, enums.WORKFLOW_EXECUTION_STATUS_RUNNING, d.status(run), "kill %d landed mid-run", k+1)
		if k > 0 {
			require.Greater(t, distinct, history[k-1].distinct, "the sync progressed between kills %d and %d", k, k+1)
		}
		killed := time.Now()
		worker = d.startWorkerProcess(bin, k+1)
		// How long until the new worker sends again (heartbeat timeout, retry backoff, start-up).
		for received() == got {
			require.True(t, time.Since(killed) < 2*time.Minute, "nothing sent after kill %d", k+1)
			time.Sleep(20 * time.Millisecond)
		}
		history = append(history, killRecord{at: at, received: got, distinct: distinct, target: target,
			recoveredAfter: time.Since(killed), pid: pid, randomDelayAfterHit: delay})
	}

	rep := d.wait(run, 5*time.Minute)
	elapsed := time.Since(started)
	for i, k := range history {
		t.Logf("kill %d: pid %d at %s, %d users received (%d distinct; target %d + %s), sending again after %s",
			i+1, k.pid, k.at.Round(time.Millisecond), k.received, k.distinct, k.target, k.randomDelayAfterHit, k.recoveredAfter.Round(time.Millisecond))
	}

	require.Equal(t, workflows.StateCompleted, rep.State, "error: %s", rep.Error)
	require.Equal(t, int64(rows), rep.ModelRows)
	require.Equal(t, int64(rows), rep.Planned.Added)
	require.Equal(t, int64(rows), rep.Attempted.Added, "a resumed chunk counts each row once")
	require.Equal(t, int64(rows), rep.Succeeded.Added)
	require.Zero(t, rep.Rejected.Total())
	require.Zero(t, rep.Skipped.Total())
	require.Equal(t, int64(rows), rep.Committed)
	require.Equal(t, 8, rep.Chunks)
	require.Equal(t, 8, rep.ChunksDone)
	require.Empty(t, rep.Pauses)
	require.GreaterOrEqual(t, rep.ResumedChunks, 1, "chunks were taken over at their cursor")
	st := d.emu.Stats(d.key)
	require.LessOrEqual(t, rep.Requests, int64(st.BulkRequests), "the report counts no request Iterable did not get")
	require.GreaterOrEqual(t, rep.Requests, int64(rows/act.Sync.UsersPerRequest))

	d.requireIterableEqualsModel(us)
	resent, usersResent := d.requireEverySentOnce(us)
	require.Equal(t, st.UsersReceived-rows, resent)
	bound := kills * act.Sync.ChunkRows
	require.LessOrEqual(t, resent, bound, "rows sent twice ≤ kills × chunkRows")
	t.Logf("run %s: %d rows, %d kills, %d rows sent twice (%d users; bound %d), %d resumed chunks, "+
		"%d requests (report) / %d (Iterable), %d rate limited", elapsed.Round(time.Millisecond), rows, kills, resent,
		usersResent, bound, rep.ResumedChunks, rep.Requests, st.BulkRequests, st.RateLimited)

	require.Zero(t, d.wait(d.start(act), 3*time.Minute).Planned.Total(), "everything was committed")
	t.Logf("drill total %s", time.Since(began).Round(time.Millisecond))
}

// TestDrillIterableErrorsAndRateLimitBursts: Iterable answers 20% of bulkUpdate requests 500
// and, every 30 requests, a burst of three 429s (every other burst with Retry-After: 1). The run
// completes without pausing, Iterable equals the model, and the report's counts (rows,
// requests, 429s) match what Iterable saw.
func TestDrillIterableErrorsAndRateLimitBursts(t *testing.T) {
	const rows = 10_000
	began := time.Now()
	// No rate limit in the emulator: every 429 is an injected one.
	d := newDrill(t, iterabletest.Options{Unlimited: true})
	d.startWorker()
	us := users(rows)
	d.writeModel(us)
	act := d.spec()
	// Each 429 halves the project's budget, which then climbs back by ceiling × (0.002·t +
	// 0.00005·t²) after t seconds: with bursts every 30 requests the budget settles where the
	// bursts come every few seconds. A high ceiling keeps that at several requests per second.
	act.Sync = spec.SyncSettings{ChunkRows: 1000, Concurrency: 4, UsersPerRequest: 100, RequestsPerSecond: 200}
	d.emu.InjectFaults(iterabletest.Faults{Error5xxRate: 0.2, Burst429Every: 30, Burst429Length: 3,
		Burst429RetryAfters: []time.Duration{time.Second, 0}})

	rep := d.wait(d.start(act), 5*time.Minute)
	st := d.emu.Stats(d.key)
	require.Equal(t, workflows.StateCompleted, rep.State, "error: %s", rep.Error)
	require.Empty(t, rep.Pauses, "the retries absorbed the faults (thresholds.maxConsecutiveFailedRequests is 20)")
	require.Equal(t, int64(rows), rep.Planned.Added)
	require.Equal(t, int64(rows), rep.Attempted.Added)
	require.Equal(t, int64(rows), rep.Succeeded.Added)
	require.Zero(t, rep.Rejected.Total())
	require.Equal(t, int64(rows), rep.Committed)
	require.Equal(t, rep.Chunks, rep.ChunksDone)

	// The faults were injected, both kinds of bursts included.
	require.Positive(t, st.Errors5xx)
	require.Positive(t, st.Bursts429)
	require.Positive(t, st.Burst429RetryAfter)
	require.Less(t, st.Burst429RetryAfter, st.RateLimited, "bursts without Retry-After too")
	served := st.BulkRequests - st.RateLimited // the requests that reached the 5xx draw
	require.InDelta(t, 0.2, float64(st.Errors5xx)/float64(served), 0.1, "about 20%% answered 500")
	// The report counts every request and every 429 Iterable saw.
	require.Equal(t, int64(st.BulkRequests), rep.Requests)
	require.Equal(t, int64(st.RateLimited), rep.RateLimited)
	require.Equal(t, rows, st.UsersUpdated)

	d.requireIterableEqualsModel(us)
	resent, _ := d.requireEverySentOnce(us)
	require.Zero(t, resent, "a request answered 429 or 500 applied nothing, and an accepted one is never sent again")
	t.Logf("%d rows in %s: %d requests, %d answered 500, %d answered 429 in %d bursts (%d with Retry-After); drill total %s",
		rows, rep.Duration.Round(time.Millisecond), st.BulkRequests, st.Errors5xx, st.RateLimited, st.Bursts429,
		st.Burst429RetryAfter, time.Since(began).Round(time.Millisecond))
}

// TestDrillIterableUnreachablePausesAndResumes makes Iterable unreachable in the middle of a run,
// in three ways. The chunks give up after maxConsecutiveFailedRequests (3 here) failed requests
// in a row, the run pauses as transient (state Paused, in the progress query and the
// ActivationState search attribute) and, once Iterable is back, its probe (30 s after the pause)
// succeeds and the run resumes by itself and completes with Iterable equal to the model.
func TestDrillIterableUnreachablePausesAndResumes(t *testing.T) {
	tests := []struct {
		name     string
		down, up func(d *drill)
	}{
		{"connections refused", func(d *drill) { d.emu.GoOffline() }, func(d *drill) { require.NoError(d.t, d.emu.GoOnline()) }},
		{"connections dropped", func(d *drill) { d.emu.InjectFaults(iterabletest.Faults{Outage: iterabletest.OutageDropConnections}) },
			func(d *drill) { d.emu.InjectFaults(iterabletest.Faults{}) }},
		{"every request 503", func(d *drill) { d.emu.InjectFaults(iterabletest.Faults{Outage: iterabletest.OutageServiceUnavailable}) },
			func(d *drill) { d.emu.InjectFaults(iterabletest.Faults{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits ~30 s for the probe
			const (
				rows = 12_000
				// Iterable stays down this long after the run is seen paused: it comes back
				// before the first probe (30 s after the pause).
				heldDown = 5 * time.Second
			)
			began := time.Now()
			d := newDrill(t, iterabletest.Options{BulkUpdateRPS: 100})
			d.startWorker()
			us := users(rows)
			d.writeModel(us)
			act := d.spec()
			act.Sync = spec.SyncSettings{ChunkRows: 1000, Concurrency: 2, UsersPerRequest: 100, RequestsPerSecond: 20}
			act.Thresholds = &spec.Thresholds{MaxConsecutiveFailedRequests: 3}
			run := d.start(act)

			require.Eventually(t, func() bool { return d.emu.Stats(d.key).UsersReceived >= 3000 }, 2*time.Minute, 20*time.Millisecond)
			tt.down(d)
			down := time.Now()
			receivedAtOutage := d.emu.Stats(d.key).UsersReceived
			require.Less(t, receivedAtOutage, rows, "the outage began mid-sync")

			var p workflows.Progress
			require.Eventually(t, func() bool {
				var err error
				p, err = d.progress(run)
				return err == nil && p.State == workflows.StatePaused
			}, 2*time.Minute, 100*time.Millisecond, "the run pauses")
			paused := time.Now()
			require.NotNil(t, p.Pause)
			require.Equal(t, workflows.CauseTransient, p.Pause.Cause)
			require.True(t, p.Pause.AutoResume)
			require.Contains(t, p.Pause.Reason, "consecutive requests failed")
			require.Contains(t, p.Pause.NextStep, "resumes by itself")
			require.Less(t, p.ChunksDone, p.Chunks)

			query := fmt.Sprintf(`WorkflowId = '%s' AND ActivationState = 'Paused'`, run.GetID())
			require.Eventually(t, func() bool {
				resp, err := d.c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{Namespace: "default", Query: query})
				return err == nil && len(resp.GetExecutions()) == 1
			}, time.Minute, 200*time.Millisecond, "visibility finds the run Paused")

			time.Sleep(time.Until(paused.Add(heldDown)))
			p, err := d.progress(run)
			require.NoError(t, err)
			require.Equal(t, workflows.StatePaused, p.State, "still paused while Iterable is down")
			probesBefore := d.emu.Stats(d.key).GetFieldsRequests
			tt.up(d)
			up := time.Now()

			rep := d.wait(run, 4*time.Minute)
			done := time.Now()
			require.Equal(t, workflows.StateCompleted, rep.State, "error: %s", rep.Error)
			require.Len(t, rep.Pauses, 1)
			pause := rep.Pauses[0]
			require.Equal(t, workflows.CauseTransient, pause.Cause)
			require.NotNil(t, pause.EndedAt)
			require.Contains(t, pause.EndedBy, "automatic resume")
			require.False(t, pause.EndedAt.Before(up.Add(-time.Second)), "resumed after Iterable came back")
			require.Greater(t, d.emu.Stats(d.key).GetFieldsRequests, probesBefore, "the probe reached Iterable")
			require.Equal(t, int64(rows), rep.Planned.Added)
			require.Equal(t, int64(rows), rep.Succeeded.Added)
			require.Zero(t, rep.Rejected.Total())
			require.Equal(t, int64(rows), rep.Committed)
			require.Equal(t, rep.Chunks, rep.ChunksDone)
			d.requireIterableEqualsModel(us)
			resent, _ := d.requireEverySentOnce(us)
			// A chunk that stopped on IterableUnavailable hands its cursor to its next activity, so
			// after the resume only requests whose answer was lost can be sent again: at most one
			// request per chunk in flight (measured: 0), not whole chunks (1,000 before the fix).
			require.LessOrEqual(t, resent, act.Sync.Concurrency*act.Sync.WithDefaults().UsersPerRequest)
			t.Logf("outage (%s) after %d users: paused %s after it began, Iterable back %s later, resumed %s after the pause (%s after Iterable was back), "+
				"completed %s after the resume; %d rows sent twice, %d requests answered by the outage; drill total %s",
				tt.name, receivedAtOutage, paused.Sub(down).Round(time.Millisecond), up.Sub(paused).Round(time.Millisecond),
				pause.EndedAt.Sub(pause.Since).Round(time.Millisecond), pause.EndedAt.Sub(up).Round(time.Millisecond),
				done.Sub(*pause.EndedAt).Round(time.Millisecond), resent, d.emu.OutageAnswers(), time.Since(began).Round(time.Millisecond))
		})
	}
}
