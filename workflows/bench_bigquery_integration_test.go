//go:build integration

package workflows_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
)

// Targets of the BigQuery-mode worker (issue 11): the worker does no warehouse work of its own,
// so it should stay small and cheap.
const (
	bigQueryTargetPeakMiB  = 150
	bigQueryTargetCPUPerM  = 10
	bigQueryBenchProject   = "bench-proj"
	bigQueryBenchDataset   = "activations_bench"
	bigQueryBenchChunkRows = 10_000
)

// BenchmarkBigQueryWorker sends a BigQuery plan of 1,000,000 added users through the whole
// engine: the real worker program (a child process) with a BigQuery state (storageRead: true),
// the dev server, bqfake in this process answering the plan script with a synthetic summary and
// serving every chunk's seq range through the Storage Read API (Arrow rows generated on the fly),
// and an emulator with no rate limit. It reports the worker's CPU seconds per 1,000,000 records
// (the whole run; the plan's share and the send pipeline's, split at the end of the plan) and
// its peak resident memory (VmHWM at the run's end; the shutdown sampled), against the targets of 10 CPU-seconds and 150 MiB. The worker
// process does no DuckDB work: the diff is BigQuery's (here, canned). BENCH_ROWS overrides the
// size; BENCH_CPUPROFILE=path and BENCH_MEMPROFILE=path write the worker's pprof profiles
// (suffixed with the size).
//
//	go test -tags integration -run '^$' -bench BigQueryWorker -benchtime 1x -timeout 30m ./workflows/
func BenchmarkBigQueryWorker(b *testing.B) {
	bin := buildWorker(b)
	for _, rows := range benchSizes([]int{1_000_000}) {
		b.Run(sizeName(rows), func(b *testing.B) { benchBigQueryWorker(b, bin, rows) })
	}
}

func benchBigQueryWorker(b *testing.B, bin string, rows int) {
	for i := 0; i < b.N; i++ {
		fake := bqfake.New(b)
		storageAddr := fake.StartStorage(b)
		fake.ServeSyntheticPlan(bqfake.SyntheticPlan{Rows: int64(rows)})
		emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
		key, keyEnv := "bench-key", "BENCH_ITERABLE_KEY"
		emu.AddProject(key, iterabletest.ProjectHybrid)
		queue := fmt.Sprintf("bench-bq-%d", time.Now().UnixNano())
		env := []string{"ACTIVATIONS_BIGQUERY_ENDPOINT=" + fake.URL(), "ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT=" + storageAddr,
			"ACTIVATIONS_HTTP_ADDR=127.0.0.1:0"}
		for _, p := range []struct{ bench, worker string }{{"BENCH_CPUPROFILE", "ACTIVATIONS_CPU_PROFILE"},
			{"BENCH_MEMPROFILE", "ACTIVATIONS_MEM_PROFILE"}} {
			if path := os.Getenv(p.bench); path != "" {
				env = append(env, p.worker+"="+path+"."+sizeName(rows))
			}
		}
		w := startBigQueryWorker(b, bin, queue, keyEnv, key, env...)
		pid := w.cmd.Process.Pid
		samples := sampleProcess(pid, 100*time.Millisecond)
		rep := runBench(b, bigQuerySpec(emu.URL(), keyEnv), queue)
		ended := time.Now()
		runPeak := vmHWM(b, pid) // the largest resident set until the run's end, before shutdown
		// Not the rusage's ru_maxrss: Linux counts in it the memory of the test process that
		// forked the worker (vfork shares its address space until exec), which holds the
		// emulator's users of earlier iterations.
		cpu, _ := w.stop(b)
		series := samples()
		st := emu.Stats(key)
		for _, n := range []int64{1, int64(rows) / 2, int64(rows)} {
			u, ok := emu.User(key, bqfake.SyntheticEmail(n), "")
			require.True(b, ok, "user %d reached the emulator", n)
			require.Equal(b, bqfake.SyntheticValue(bqfake.SyntheticField{Field: "name", Type: "STRING"}, n), u.DataFields["name"])
		}
		emu.Close()
		require.Equal(b, int64(rows), rep.Succeeded.Added, w.logs.String())
		require.Equal(b, rows, st.UsersUpdated, "the emulator received every user")
		require.Equal(b, int64(rows), rep.Committed)
		require.Equal(b, int64(rows), fake.SyntheticRowsRead(), "every row came through the Storage Read API")
		require.Equal(b, (rows+bigQueryBenchChunkRows-1)/bigQueryBenchChunkRows, fake.ReadSessions(), "one read session per chunk")

		cpuPerM, peak := reportWorkerRun(b, rows, cpu, runPeak, series, rep, ended)
		b.ReportMetric(cpuPerM/bigQueryTargetCPUPerM, "cpu-of-target")
		b.ReportMetric(peak/bigQueryTargetPeakMiB, "peak-of-target")
	}
}

// bigQuerySpec is the activation of the benchmark: a BigQuery model of the synthetic plan's
// columns, read with the Storage Read API, mapped as the DuckDB benchmark's (benchSpec).
func bigQuerySpec(url, keyEnv string) spec.Activation {
	act := spec.Activation{
		ID: "bench-bq-users",
		Source: spec.Source{Type: "bigquery", PrimaryKey: "user_id",
			Query: "SELECT user_id, email, name, score, active, signed_up_at FROM `bench-proj.crm.users`"},
		State: spec.State{BigQuery: &spec.BigQueryState{Project: bigQueryBenchProject, Dataset: bigQueryBenchDataset,
			Location: "US", StorageRead: true}},
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: url, APIKey: spec.SecretRef{Env: keyEnv}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields: []spec.Field{{Column: "name", Field: "name"}, {Column: "score", Field: "score"},
				{Column: "active", Field: "active"}, {Column: "signed_up_at", Field: "signedUpAt"}},
		},
	}
	act.Sync.ChunkRows = bigQueryBenchChunkRows
	act.Sync.RequestsPerSecond = 1000
	return act
}

// buildWorker builds the worker program once for the benchmark's sizes.
func buildWorker(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(b, err, string(out))
	return bin
}

// startBigQueryWorker is startWorkerProcess of the binary bin, with more environment (the
// BigQuery emulator).
func startBigQueryWorker(b *testing.B, bin, queue, keyEnv, key string, env ...string) *workerProcess {
	b.Helper()
	w := &workerProcess{cmd: exec.Command(bin)}
	w.cmd.Env = append(append(os.Environ(), "TEMPORAL_ADDRESS="+dev.HostPort, "ACTIVATIONS_TASK_QUEUE="+queue,
		keyEnv+"="+key, "LOG_LEVEL=warn"), env...)
	w.cmd.Stdout, w.cmd.Stderr = &w.logs, &w.logs
	require.NoError(b, w.cmd.Start())
	return w
}

// vmHWM is the process's peak resident set so far (VmHWM of /proc/PID/status), in MiB.
func vmHWM(b *testing.B, pid int) float64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(b, err)
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			require.NoError(b, err)
			return kb / 1024
		}
	}
	b.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
