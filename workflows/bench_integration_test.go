//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// benchRows is the model size of the engine benchmarks (BENCH_ROWS overrides it).
func benchRows() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("BENCH_ROWS"), &n); err == nil && n > 0 {
		return n
	}
	return 1_000_000
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

// stop ends the worker and returns its CPU seconds and peak resident memory in MiB.
func (w *workerProcess) stop(b *testing.B) (cpu float64, peakMiB float64) {
	require.NoError(b, w.cmd.Process.Signal(syscall.SIGTERM))
	_ = w.cmd.Wait()
	st := w.cmd.ProcessState
	ru := st.SysUsage().(*syscall.Rusage)
	return (st.UserTime() + st.SystemTime()).Seconds(), float64(ru.Maxrss) / 1024
}

func benchSpec(dir, url, keyEnv string, rows int) spec.Activation {
	return spec.Activation{
		ID: "bench-users", BaseDir: dir,
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
	run, err := dev.Client().ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID: fmt.Sprintf("bench-%d", time.Now().UnixNano()), TaskQueue: queue,
	}, workflows.WorkflowName, workflows.RunInput{Spec: act})
	require.NoError(b, err)
	var rep workflows.RunReport
	require.NoError(b, run.Get(context.Background(), &rep))
	require.Equal(b, workflows.StateCompleted, rep.State)
	return rep
}

// BenchmarkSyncAtTheRateLimit sends a model of changed users (1,000,000 by default) through the
// whole engine to an emulator enforcing Iterable's 5 bulkUpdate requests/s, and reports how
// close the sync phase comes to the physical limit: users/s ÷ (5 × 1,000).
//
//	go test -tags integration -run '^$' -bench SyncAtTheRateLimit -benchtime 1x -timeout 30m ./workflows/
func BenchmarkSyncAtTheRateLimit(b *testing.B) {
	for i := 0; i < b.N; i++ {
		rows := benchRows()
		emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 5})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		queue := fmt.Sprintf("bench-rate-%d", time.Now().UnixNano())
		w := startWorkerProcess(b, queue, keyEnv, key)
		rep := runBench(b, benchSpec(b.TempDir(), emu.URL(), keyEnv, rows), queue)
		cpu, peak := w.stop(b)
		st := emu.Stats(key)
		emu.Close()
		require.Equal(b, int64(rows), rep.Succeeded.Added)
		usersPerSec := float64(rep.Succeeded.Added) / rep.SyncDuration.Seconds()
		b.ReportMetric(usersPerSec, "users/s")
		b.ReportMetric(usersPerSec/(5*1000), "ratio-to-limit")
		b.ReportMetric(100*float64(st.RateLimited)/float64(st.BulkRequests), "%429")
		b.ReportMetric(rep.PlanDuration.Seconds(), "plan-s")
		b.ReportMetric(rep.SyncDuration.Seconds(), "sync-s")
		b.ReportMetric(cpu, "worker-cpu-s")
		b.ReportMetric(peak, "worker-peak-MiB")
	}
}

// BenchmarkWorkerCPUPerMillion sends the same model to an emulator with no rate limit, so the
// worker is the only bottleneck, and reports the worker process's CPU seconds per 1,000,000
// records and its peak memory.
//
//	go test -tags integration -run '^$' -bench WorkerCPUPerMillion -benchtime 1x -timeout 30m ./workflows/
func BenchmarkWorkerCPUPerMillion(b *testing.B) {
	for i := 0; i < b.N; i++ {
		rows := benchRows()
		emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		queue := fmt.Sprintf("bench-cpu-%d", time.Now().UnixNano())
		w := startWorkerProcess(b, queue, keyEnv, key)
		act := benchSpec(b.TempDir(), emu.URL(), keyEnv, rows)
		act.Sync.RequestsPerSecond = 1000
		rep := runBench(b, act, queue)
		cpu, peak := w.stop(b)
		emu.Close()
		require.Equal(b, int64(rows), rep.Succeeded.Added)
		b.ReportMetric(cpu/float64(rows)*1e6, "worker-cpu-s/1M")
		b.ReportMetric(peak, "worker-peak-MiB")
		b.ReportMetric(float64(rows)/rep.SyncDuration.Seconds(), "users/s")
		b.ReportMetric(rep.PlanDuration.Seconds(), "plan-s")
	}
}
