//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// benchRows is the model size of BenchmarkSyncAtTheRateLimit (BENCH_ROWS overrides it).
func benchRows() int {
	if sizes := benchSizes(nil); len(sizes) > 0 {
		return sizes[0]
	}
	return 1_000_000
}

// benchSizes are the model sizes of BenchmarkWorkerCPUPerMillion: BENCH_ROWS, a comma-separated
// list (e.g. "1000000,10000000"), overrides def.
func benchSizes(def []int) []int {
	var sizes []int
	for _, f := range strings.Split(os.Getenv("BENCH_ROWS"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err == nil && n > 0 {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 0 {
		return def
	}
	return sizes
}

// sizeName names a sub-benchmark by its model size: 1M, 10M, 250k.
func sizeName(rows int) string {
	if rows%1_000_000 == 0 {
		return fmt.Sprintf("%dM", rows/1_000_000)
	}
	if rows%1000 == 0 {
		return fmt.Sprintf("%dk", rows/1000)
	}
	return strconv.Itoa(rows)
}

// workerProcess runs the real worker program, so CPU time and peak memory are the worker's own.
type workerProcess struct {
	cmd  *exec.Cmd
	logs bytes.Buffer
}

func startWorkerProcess(b *testing.B, queue, keyEnv, key string) *workerProcess {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(b, err, string(out))
	w := &workerProcess{cmd: exec.Command(bin)}
	w.cmd.Env = append(os.Environ(), "TEMPORAL_ADDRESS="+dev.HostPort, "ACTIVATIONS_TASK_QUEUE="+queue,
		keyEnv+"="+key, "LOG_LEVEL=warn")
	w.cmd.Stdout, w.cmd.Stderr = &w.logs, &w.logs
	require.NoError(b, w.cmd.Start())
	return w
}

// stop ends the worker and returns its CPU seconds and peak resident memory in MiB (the
// kernel's accounting of the whole process: Go heap, DuckDB, code).
func (w *workerProcess) stop(b *testing.B) (cpu float64, peakMiB float64) {
	require.NoError(b, w.cmd.Process.Signal(syscall.SIGTERM))
	_ = w.cmd.Wait()
	st := w.cmd.ProcessState
	ru := st.SysUsage().(*syscall.Rusage)
	return (st.UserTime() + st.SystemTime()).Seconds(), float64(ru.Maxrss) / 1024
}

// procSample is the worker's CPU seconds so far and resident memory at one moment.
type procSample struct {
	at     time.Time
	cpu    float64
	rssMiB float64
}

// sampleProcess reads /proc/PID/stat and /proc/PID/status every interval until stop is called,
// so a run's CPU and memory can be split at the end of its plan.
func sampleProcess(pid int, interval time.Duration) (stop func() []procSample) {
	var (
		samples []procSample
		done    = make(chan struct{})
		wg      sync.WaitGroup
	)
	read := func() (procSample, bool) {
		s := procSample{at: time.Now()}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return s, false
		}
		// Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			return s, false
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		s.cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return s, false
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				s.rssMiB = kb / 1024
			}
		}
		return s, true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if s, ok := read(); ok {
				samples = append(samples, s)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() []procSample {
		close(done)
		wg.Wait()
		return samples
	}
}

// phaseUsage is the worker's CPU seconds and largest sampled resident memory in one phase.
type phaseUsage struct{ cpu, peakMiB float64 }

// splitAt divides the samples at the given moments: phase i ends at ends[i], the last phase
// takes the rest.
func splitAt(samples []procSample, ends ...time.Time) []phaseUsage {
	out := make([]phaseUsage, len(ends)+1)
	if len(samples) == 0 {
		return out
	}
	phase, prev := 0, samples[0].cpu
	for _, s := range samples {
		for phase < len(ends) && s.at.After(ends[phase]) {
			phase++
		}
		out[phase].cpu += s.cpu - prev
		out[phase].peakMiB = max(out[phase].peakMiB, s.rssMiB)
		prev = s.cpu
	}
	return out
}

func benchSpec(dir, url, keyEnv string, rows int) spec.Activation {
	return spec.Activation{
		// One activation per size: a run's lock workflow lives on the task queue of the worker
		// that asked for it, and each size stops its worker right after its run. With one id,
		// the next size could find the lock still held on a queue nobody polls, and wait forever
		// (a 10M run did, after the 1M run's worker stopped before the lock saw the release).
		ID: fmt.Sprintf("bench-users-%d", rows), BaseDir: dir,
		Source: spec.Source{Type: "duckdb", PrimaryKey: "user_id", Query: fmt.Sprintf(`SELECT i AS user_id,
			'user' || i || '@example.com' AS email, 'Name ' || i AS name, i %% 1000 AS score,
			i %% 3 = 0 AS active, TIMESTAMP '2024-01-01 00:00:00' + to_seconds(i) AS signed_up_at
			FROM range(1, %d) t(i)`, rows+1)},
		State: spec.State{DuckDB: &spec.DuckDBState{Path: filepath.Join(dir, "state.duckdb")}},
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: url, APIKey: spec.SecretRef{Env: keyEnv}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields: []spec.Field{{Column: "name", Field: "name"}, {Column: "score", Field: "score"},
				{Column: "active", Field: "active"}, {Column: "signed_up_at", Field: "signedUpAt"}},
		},
	}
}

func runBench(b *testing.B, act spec.Activation, queue string) workflows.RunReport {
	b.Helper()
	return runBenchInput(b, workflows.RunInput{Spec: act}, queue)
}

func runBenchInput(b *testing.B, in workflows.RunInput, queue string) workflows.RunReport {
	b.Helper()
	run, err := dev.Client().ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: fmt.Sprintf("bench-%d", time.Now().UnixNano()), TaskQueue: queue,
	}, workflows.WorkflowName, in)
	require.NoError(b, err)
	var rep workflows.RunReport
	require.NoError(b, run.Get(context.Background(), &rep))
	require.Equal(b, workflows.StateCompleted, rep.State)
	return rep
}

// BenchmarkSyncAtTheRateLimit sends a model of changed users (1,000,000 by default) through the
// whole engine to an emulator enforcing Iterable's 5 bulkUpdate requests/s, and reports how
// close the sync phase comes to the physical limit: users/s ÷ (5 × 1,000). The worker process
// then stops, a new one starts (a restart, a deploy) and a full resync sends every user again:
// ratio-after-restart is that run's, which knows the good rate the first run recorded in the run
// log. Both start at 98% of the ceiling (issue 14).
//
//	go test -tags integration -run '^$' -bench SyncAtTheRateLimit -benchtime 1x -timeout 30m ./workflows/
func BenchmarkSyncAtTheRateLimit(b *testing.B) {
	for i := 0; i < b.N; i++ {
		rows := benchRows()
		emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 5})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		// One queue for both processes: the activation's lock workflow lives on it.
		queue := fmt.Sprintf("bench-rate-%d", time.Now().UnixNano())
		act := benchSpec(b.TempDir(), emu.URL(), keyEnv, rows)
		w := startWorkerProcess(b, queue, keyEnv, key)
		rep := runBench(b, act, queue)
		cpu, peak := w.stop(b)
		st := emu.Stats(key)
		require.Equal(b, int64(rows), rep.Succeeded.Added)
		require.Greater(b, rep.SendRate, 4.5, "the run learnt the project's rate")

		w = startWorkerProcess(b, queue, keyEnv, key)
		again := runBenchInput(b, workflows.RunInput{Spec: act, FullResync: true}, queue)
		w.stop(b)
		st2 := emu.Stats(key)
		emu.Close()
		require.Equal(b, int64(rows), again.Succeeded.Total())
		ratio := func(r workflows.RunReport) float64 {
			return float64(r.Succeeded.Total()) / r.SyncDuration.Seconds() / (5 * 1000)
		}
		b.ReportMetric(ratio(rep)*5*1000, "users/s")
		b.ReportMetric(ratio(rep), "ratio-to-limit")
		b.ReportMetric(100*float64(st.RateLimited)/float64(st.BulkRequests), "%429")
		b.ReportMetric(rep.PlanDuration.Seconds(), "plan-s")
		b.ReportMetric(rep.SyncDuration.Seconds(), "sync-s")
		b.ReportMetric(cpu, "worker-cpu-s")
		b.ReportMetric(peak, "worker-peak-MiB")
		b.ReportMetric(ratio(again), "ratio-after-restart")
		// The wire's span, from the first request's arrival to the last answer: what the budget
		// paced, without the Temporal tasks that start the first chunk and record the last.
		span := st.LastBulkAt.Sub(st.FirstBulkAt)
		b.ReportMetric(float64(rows)/span.Seconds()/(5*1000), "wire-ratio")
		b.ReportMetric((rep.SyncDuration - span).Seconds(), "sync-overhead-s")
		b.ReportMetric(100*float64(st2.RateLimited-st.RateLimited)/float64(st2.BulkRequests-st.BulkRequests), "%429-after-restart")
	}
}

// BenchmarkWorkerCPUPerMillion sends a model of 1,000,000 and of 10,000,000 new users through
// the whole engine (the real worker program, the dev server, DuckDB) to an emulator with no rate
// limit, so the worker is the only bottleneck, and reports the worker process's CPU seconds per
// 1,000,000 records (the whole run, and split at the end of the plan into the planner's share and
// the send pipeline's: read, convert, pack, send, commit) and its peak resident memory, which
// should not grow with the model: DuckDB works within its memory limit and the send pipeline holds
// a few chunks. BENCH_ROWS="250000,1000000" runs other sizes.
//
//	go test -tags integration -run '^$' -bench WorkerCPUPerMillion -benchtime 1x -timeout 90m ./workflows/
//	go test -tags integration -run '^$' -bench 'WorkerCPUPerMillion/1M' -benchtime 1x -timeout 30m ./workflows/
func BenchmarkWorkerCPUPerMillion(b *testing.B) {
	for _, rows := range benchSizes([]int{1_000_000, 10_000_000}) {
		b.Run(sizeName(rows), func(b *testing.B) { benchWorkerCPU(b, rows) })
	}
}

func benchWorkerCPU(b *testing.B, rows int) {
	for i := 0; i < b.N; i++ {
		emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		queue := fmt.Sprintf("bench-cpu-%d", time.Now().UnixNano())
		w := startWorkerProcess(b, queue, keyEnv, key)
		samples := sampleProcess(w.cmd.Process.Pid, 100*time.Millisecond)
		act := benchSpec(b.TempDir(), emu.URL(), keyEnv, rows)
		act.Sync.RequestsPerSecond = 1000
		rep := runBench(b, act, queue)
		ended := time.Now()
		// The peak is the worker's VmHWM at the run's end, then its shutdown (DuckDB checkpoints
		// on close) sampled every 100 ms. Not the rusage's ru_maxrss: Linux counts in it the
		// memory of the test process that forked the worker (vfork shares its address space
		// until exec), which holds the emulator's users of earlier sizes.
		runPeak := vmHWM(b, w.cmd.Process.Pid)
		cpu, _ := w.stop(b)
		series := samples()
		emu.Close()
		// The worker logs warnings and errors only: a retried activity shows here, and explains
		// a slow phase.
		if logs := w.logs.String(); logs != "" {
			b.Logf("worker's warnings:\n%s", logs[max(0, len(logs)-8000):])
		}
		require.Equal(b, int64(rows), rep.Succeeded.Added)
		// Phases: the plan (from the run's start), the sync (every chunk, commit, report), the
		// worker's shutdown. The send pipeline's CPU is the sync phase's.
		reportWorkerRun(b, rows, cpu, runPeak, series, rep, ended)
	}
}

// reportWorkerRun reports a worker benchmark's run: CPU per 1,000,000 records, split at the end
// of the plan and at the run's end (the plan, the send pipeline, the shutdown), and the peak
// memory: the worker's VmHWM at the run's end (runPeak), then its shutdown sampled every 100 ms.
// It returns the CPU per 1,000,000 records and the peak, for the callers' own targets.
func reportWorkerRun(b *testing.B, rows int, cpu, runPeak float64, series []procSample, rep workflows.RunReport, ended time.Time) (cpuPerM, peak float64) {
	ph := splitAt(series, rep.StartedAt.Add(rep.PlanDuration), ended)
	peak = max(runPeak, ph[2].peakMiB)
	perM := 1e6 / float64(rows)
	b.ReportMetric(cpu*perM, "worker-cpu-s/1M")
	b.ReportMetric(ph[0].cpu*perM, "plan-cpu-s/1M")
	b.ReportMetric(ph[1].cpu*perM, "send-cpu-s/1M")
	b.ReportMetric(peak, "worker-peak-MiB")
	b.ReportMetric(runPeak, "run-peak-MiB")
	b.ReportMetric(ph[0].peakMiB, "plan-peak-MiB")
	b.ReportMetric(ph[1].peakMiB, "send-peak-MiB")
	b.ReportMetric(ph[2].peakMiB, "shutdown-peak-MiB")
	b.ReportMetric(float64(rows)/rep.SyncDuration.Seconds(), "users/s")
	b.ReportMetric(rep.PlanDuration.Seconds(), "plan-s")
	b.ReportMetric(rep.SyncDuration.Seconds(), "sync-s")
	b.ReportMetric(rep.Duration.Seconds(), "run-s")
	return cpu * perM, peak
}
