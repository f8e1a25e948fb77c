package duckdb_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// The planner benchmarks run each measured case in a child process (this test binary, sent to
// runPlanChild by TestMain), so that its peak memory is the planner's alone: the parent's
// generator database, the test framework and earlier cases do not count.
//
// Peak memory is the kernel's peak resident set size of the child (VmHWM), reset before each
// phase by writing 5 to /proc/self/clear_refs, so every phase reports its own peak: everything the
// process holds (DuckDB's buffer pool and its allocations outside it, the Go heap, the code).
// CPU is the child's user+system time during the phase (getrusage), which load on a shared
// machine inflates much less than wall time. Spill is the largest size of DuckDB's temporary
// directory seen during the phase (sampled every 50 ms).
const planChildEnv = "DUCKDB_BENCH_PLAN_CHILD"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(planChildEnv); cfg != "" {
		if err := runPlanChild(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "plan benchmark child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// BenchmarkPlan diffs a Parquet model of 1,000,000 and 10,000,000 users (key, email and five
// mapped fields) against an empty state (every row an add), commits the plan, then diffs the
// model with 2% of the rows changed in one field, reads those rows back as the sync does and
// commits them. DuckDB runs with the planner's settings (ACTIVATIONS_DUCKDB_* or the defaults).
//
//	go test -run '^$' -bench 'BenchmarkPlan$' -benchtime 1x -timeout 60m ./internal/warehouse/duckdb/
//	go test -run '^$' -bench 'BenchmarkPlan$/1M' -benchtime 1x ./internal/warehouse/duckdb/
func BenchmarkPlan(b *testing.B) {
	for _, rows := range []int{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("%dM", rows/1_000_000), func(b *testing.B) { benchPlan(b, rows) })
	}
}

// planChildConfig tells the child what to measure.
type planChildConfig struct {
	Rows  int    `json:"rows"`
	Model string `json:"model"` // Parquet file of the model
	Dir   string `json:"dir"`   // holds the state database
}

// phaseResult is one measured step of the child.
type phaseResult struct {
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpuSeconds"`
	PeakMiB    float64 `json:"peakMiB"`
	SpillMiB   float64 `json:"spillMiB"`
}

type planChildResult struct {
	Phases      map[string]phaseResult `json:"phases"`
	StateMiB    float64                `json:"stateMiB"`
	MemoryLimit string                 `json:"memoryLimit"`
	Threads     string                 `json:"threads"`
}

// phases in the order the child runs them.
var planPhases = []string{"plan-add", "commit-add", "plan-change", "read-change", "commit-change"}

func benchPlan(b *testing.B, rows int) {
	dir := b.TempDir()
	model := filepath.Join(dir, "model.parquet")
	writeBenchModel(b, model, rows)
	sum := map[string]phaseResult{}
	var last planChildResult
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg, err := json.Marshal(planChildConfig{Rows: rows, Model: model, Dir: filepath.Join(dir, fmt.Sprint("run", i))})
		require.NoError(b, err)
		res := runPlanChildProcess(b, string(cfg))
		for name, ph := range res.Phases {
			s := sum[name]
			s.Seconds += ph.Seconds
			s.CPUSeconds += ph.CPUSeconds
			s.PeakMiB = max(s.PeakMiB, ph.PeakMiB)
			s.SpillMiB = max(s.SpillMiB, ph.SpillMiB)
			sum[name] = s
		}
		last = res
	}
	b.StopTimer()
	n := float64(b.N)
	peak := 0.0
	for _, name := range planPhases {
		ph := sum[name]
		b.ReportMetric(ph.Seconds/n, name+"-s")
		b.ReportMetric(ph.CPUSeconds/n, name+"-cpu-s")
		b.ReportMetric(ph.PeakMiB, name+"-peak-MiB")
		if ph.SpillMiB > 0 {
			b.ReportMetric(ph.SpillMiB, name+"-spill-MiB")
		}
		peak = max(peak, ph.PeakMiB)
	}
	b.ReportMetric(float64(rows)*n/sum["plan-add"].Seconds, "plan-add-rows/s")
	b.ReportMetric(float64(rows)*n/sum["plan-change"].Seconds, "plan-change-rows/s")
	b.ReportMetric(peak, "peak-MiB")
	b.ReportMetric(last.StateMiB, "state-file-MiB")
	b.Logf("%d rows: memory_limit=%s threads=%s", rows, last.MemoryLimit, last.Threads)
}

// writeBenchModel writes the model to Parquet with a separate in-memory DuckDB (in the parent,
// so the child's memory is the planner's only).
func writeBenchModel(b testing.TB, path string, rows int) {
	b.Helper()
	db, err := sql.Open("duckdb", "")
	require.NoError(b, err)
	defer db.Close()
	_, err = db.Exec(fmt.Sprintf(`COPY (
		SELECT range AS id, 'user' || range || '@example.com' AS email, 'Name ' || range AS name,
			CAST(range %% 90 AS INTEGER) AS age, CASE WHEN range %% 3 = 0 THEN 'pro' ELSE 'free' END AS plan,
			range * 1.5 AS score, DATE '2020-01-01' + CAST(range %% 1000 AS INTEGER) AS signup
		FROM range(%d)) TO '%s' (FORMAT parquet)`, rows, strings.ReplaceAll(path, "'", "''")))
	require.NoError(b, err)
}

func runPlanChildProcess(b *testing.B, cfg string) planChildResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), planChildEnv+"="+cfg)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if testing.Verbose() { // -v shows each phase as it ends, and the planner's debug log
		cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
		cmd.Env = append(cmd.Env, planChildEnv+"_VERBOSE=1")
	}
	require.NoError(b, cmd.Run(), "child: %s", stderr.String())
	var res planChildResult
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if js, ok := strings.CutPrefix(sc.Text(), "PLAN-RESULT "); ok {
			require.NoError(b, json.Unmarshal([]byte(js), &res))
			return res
		}
	}
	b.Fatalf("child printed no result: %s %s", stdout.String(), stderr.String())
	return res
}

var benchFields = []warehouse.Field{{Column: "name", Field: "firstName"}, {Column: "age", Field: "age"},
	{Column: "plan", Field: "plan"}, {Column: "score", Field: "score"}, {Column: "signup", Field: "signupDate"}}

// runPlanChild is the measured process.
func runPlanChild(cfgJSON string) error {
	var cfg planChildConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return err
	}
	ctx := context.Background()
	statePath := filepath.Join(cfg.Dir, "state.duckdb")
	var log *slog.Logger
	if os.Getenv(planChildEnv+"_VERBOSE") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := duckdb.Open(ctx, duckdb.Options{Path: statePath, Logger: log})
	if err != nil {
		return err
	}
	defer p.Close()
	tempDir := os.Getenv(duckdb.EnvTempDirectory)
	if tempDir == "" {
		tempDir = statePath + ".tmp"
	}
	res := planChildResult{Phases: map[string]phaseResult{}, MemoryLimit: os.Getenv(duckdb.EnvMemoryLimit),
		Threads: os.Getenv(duckdb.EnvThreads)}
	if res.MemoryLimit == "" {
		res.MemoryLimit = duckdb.DefaultMemoryLimit
	}
	if res.Threads == "" {
		res.Threads = "default"
	}
	measure := func(name string, fn func() error) error {
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			return fmt.Errorf("reset peak RSS: %w", err)
		}
		spill := watchDirSize(tempDir)
		cpu0, start := cpuSeconds(), time.Now()
		err := fn()
		ph := phaseResult{Seconds: time.Since(start).Seconds(), CPUSeconds: cpuSeconds() - cpu0,
			PeakMiB: peakRSSMiB(), SpillMiB: spill()}
		res.Phases[name] = ph
		fmt.Fprintf(os.Stderr, "%s: %.1f s, %.1f CPU-s, peak %.0f MiB, spill %.0f MiB\n",
			name, ph.Seconds, ph.CPUSeconds, ph.PeakMiB, ph.SpillMiB)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	modelLit := "'" + strings.ReplaceAll(cfg.Model, "'", "''") + "'"
	req := warehouse.PlanRequest{ActivationID: "bench", RunID: "run-1", PrimaryKey: "id", Identifier: "email",
		Fields: benchFields, Query: "SELECT * FROM read_parquet(" + modelLit + ")"}
	var plan warehouse.Plan
	if err := measure("plan-add", func() (err error) { plan, err = p.Plan(ctx, req); return err }); err != nil {
		return err
	}
	if plan.Counts.Added != int64(cfg.Rows) {
		return fmt.Errorf("first plan: %+v, want %d adds", plan.Counts, cfg.Rows)
	}
	if err := measure("commit-add", func() error { return commitEvery(ctx, p, req, plan) }); err != nil {
		return err
	}
	if err := p.DropPlan(ctx, plan.Table); err != nil {
		return err
	}

	req.RunID = "run-2"
	req.Query = "SELECT * REPLACE (CASE WHEN id % 50 = 0 THEN 'Renamed ' || id ELSE name END AS name) FROM read_parquet(" + modelLit + ")"
	if err := measure("plan-change", func() (err error) { plan, err = p.Plan(ctx, req); return err }); err != nil {
		return err
	}
	want := warehouse.Counts{ModelRows: int64(cfg.Rows), Changed: int64(cfg.Rows / 50), Unchanged: int64(cfg.Rows - cfg.Rows/50)}
	if plan.Counts != want {
		return fmt.Errorf("second plan: %+v, want %+v", plan.Counts, want)
	}
	read := 0
	if err := measure("read-change", func() error {
		for _, c := range plan.Chunks {
			err := p.ReadChunk(ctx, warehouse.ChunkRequest{ActivationID: req.ActivationID, Table: plan.Table,
				Fields: req.Fields, Chunk: c}, func(r warehouse.Row) error {
				if len(r.Changed) != 1 {
					return fmt.Errorf("row %s: changed %v, want [firstName]", r.Key, r.Changed)
				}
				read++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if read != cfg.Rows/50 {
		return fmt.Errorf("read %d changed rows, want %d", read, cfg.Rows/50)
	}
	if err := measure("commit-change", func() error { return commitEvery(ctx, p, req, plan) }); err != nil {
		return err
	}
	if err := p.DropPlan(ctx, plan.Table); err != nil {
		return err
	}
	if err := p.Close(); err != nil {
		return err
	}
	if st, err := os.Stat(statePath); err == nil {
		res.StateMiB = float64(st.Size()) / (1 << 20)
	}
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println("PLAN-RESULT " + string(out))
	return nil
}

func commitEvery(ctx context.Context, p *duckdb.Planner, req warehouse.PlanRequest, plan warehouse.Plan) error {
	chunks := make([]int, len(plan.Chunks))
	for i, c := range plan.Chunks {
		chunks[i] = c.Index
	}
	_, err := p.Commit(ctx, warehouse.CommitRequest{ActivationID: req.ActivationID, RunID: req.RunID,
		Table: plan.Table, Chunks: chunks})
	return err
}

// cpuSeconds is the process's user and system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// peakRSSMiB reads the process's peak resident set size since the last reset (VmHWM).
func peakRSSMiB() float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// watchDirSize samples the total size of the files in dir until the returned function is called,
// which returns the largest size seen, in MiB.
func watchDirSize(dir string) (stop func() float64) {
	var (
		mu   sync.Mutex
		peak int64
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	sample := func() {
		var total int64
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if info, err := e.Info(); err == nil && !info.IsDir() {
				total += info.Size()
			}
		}
		mu.Lock()
		peak = max(peak, total)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() float64 {
		close(done)
		wg.Wait()
		sample()
		mu.Lock()
		defer mu.Unlock()
		return float64(peak) / (1 << 20)
	}
}
