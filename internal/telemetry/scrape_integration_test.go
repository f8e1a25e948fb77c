//go:build integration

package telemetry_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/deploy/monitoring"
	"github.com/activation-engine/activations/internal/devserver"
	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/workflows"
)

// TestScrapeHasWhatAlertsAndDashboardUse starts what the worker starts for its metrics
// (telemetry.Setup, the HTTP server on /metrics, the Temporal client's SDK metrics handler, a
// Temporal worker with the real workflows and activities), drives it — a run that sends rows to
// the Iterable emulator (429s included), rejects one and continues as new, a run that fails, a
// stopped chunk recorded through telemetry.Metrics as SyncChunk records it, then Temporal going
// away under the polling worker — and scrapes /metrics over HTTP. The two runs' ends are what the
// workflow records on the SDK's handler: activations_runs_total and
// activations_run_duration_seconds, once per run (Completed, Failed), not per execution. Every series of
// deploy/monitoring's allow-list must be there with its labels, and every metric the alerting
// rules and the Grafana dashboard select, with the labels and label values they match on.
func TestScrapeHasWhatAlertsAndDashboardUse(t *testing.T) {
	ctx := context.Background()
	// The dev server first: it reads OTEL_* itself and refuses empty values, which the
	// t.Setenv below would hand down to it.
	cli, ok := devserver.FindCLI("../../bin")
	if !ok {
		t.Fatal("the Temporal CLI is missing: run `make temporal-cli` or set TEMPORAL_CLI")
	}
	dev, err := devserver.Start(ctx, devserver.Options{CLIPath: cli, SearchAttributes: workflows.SearchAttributes()})
	require.NoError(t, err)
	devStopped := false
	defer func() {
		if !devStopped {
			_ = dev.Stop()
		}
	}()
	for _, v := range []string{"OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"} {
		t.Setenv(v, "")
	}

	// As worker/main.go does.
	logger := slog.New(telemetry.TraceHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	tel, err := telemetry.Setup(ctx, logger, "activations-scrape-it")
	require.NoError(t, err)
	defer func() { _ = tel.Shutdown(ctx) }()
	srv, err := telemetry.Serve(ctx, logger, "127.0.0.1:0", tel.Handler(telemetry.NewProbes(nil)))
	require.NoError(t, err)
	defer func() { _ = srv.Shutdown(ctx) }()
	opts, err := tel.TemporalClientOptions(client.Options{HostPort: dev.HostPort, Logger: sdklog.NewStructuredLogger(logger)}, logger)
	require.NoError(t, err)
	c, err := client.DialContext(ctx, opts)
	require.NoError(t, err)
	defer c.Close()

	const key = "scrape-it-key"
	emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 2}) // below the spec's rate: 429s
	defer emu.Close()
	emu.AddProject(key, iterabletest.ProjectHybrid)
	t.Setenv("SCRAPE_IT_KEY", key)
	dir := t.TempDir()
	var csv strings.Builder
	csv.WriteString("user_id,email,name\n")
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&csv, "%d,person%d@example.com,Name%d\n", i, i, i)
	}
	csv.WriteString("31,not-an-email,Name31\n") // rejected before sending
	require.NoError(t, os.WriteFile(filepath.Join(dir, "users.csv"), []byte(csv.String()), 0o600))
	act := spec.Activation{
		ID: "scrape-it", BaseDir: dir,
		Source: spec.Source{Type: "duckdb", PrimaryKey: "user_id",
			Query: "SELECT * FROM read_csv('users.csv', header=true, columns={'user_id':'BIGINT','email':'VARCHAR','name':'VARCHAR'})"},
		State: spec.State{DuckDB: &spec.DuckDBState{Path: filepath.Join(dir, "state.duckdb")}},
		Destination: spec.Destination{
			Type: "iterable", Mode: "upsert",
			Iterable:   spec.Iterable{Region: "us", BaseURL: emu.URL(), APIKey: spec.SecretRef{Env: "SCRAPE_IT_KEY"}, ProjectType: "hybrid"},
			Identifier: spec.Identifier{Column: "email", Field: "email"},
			Fields:     []spec.Field{{Column: "name", Field: "name"}},
		},
		Sync: spec.SyncSettings{ChunkRows: 10, UsersPerRequest: 5, RequestsPerSecond: 20},
	}

	acts := activities.New(logger)
	defer func() { _ = acts.Close() }()
	acts.Temporal = c
	acts.Tracer = tel.Tracer()
	acts.Metrics = tel.Metrics
	acts.IterableObserver = tel.Metrics
	acts.HTTPClient.Transport = telemetry.HTTPTransport(acts.HTTPClient.Transport, tel.TracerProvider, nil, iterable.Route)
	const queue = "scrape-it"
	w := worker.New(c, queue, worker.Options{})
	workflows.Register(w, acts)
	require.NoError(t, w.Start())
	defer w.Stop()

	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	run, err := c.ExecuteWorkflow(rctx, client.StartWorkflowOptions{ID: "scrape-it-sends", TaskQueue: queue},
		workflows.WorkflowName, workflows.RunInput{Spec: act, ChunksPerExecution: 2})
	require.NoError(t, err)
	var rep workflows.RunReport
	require.NoError(t, run.Get(rctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(1), rep.Rejected.Total(), "%+v", rep)
	require.Greater(t, rep.Executions, 1, "the run continued as new")
	// Not applied: LoadSpec finds no schedule, the run fails.
	run, err = c.ExecuteWorkflow(rctx, client.StartWorkflowOptions{ID: "scrape-it-fails", TaskQueue: queue},
		workflows.WorkflowName, workflows.RunInput{ActivationID: "not-applied"})
	require.NoError(t, err)
	require.Error(t, run.Get(rctx, nil))

	// What a run that pauses records (a chunk that stopped), and a 429, through the same type.
	tel.Metrics.ChunkDone(ctx, act.ID, activities.OutcomeStopped, time.Second)
	tel.Metrics.IterableRequest(ctx, "POST /api/users/bulkUpdate", http.StatusTooManyRequests, time.Millisecond)

	// Temporal goes away under the polling worker: its long polls fail.
	require.NoError(t, dev.Stop())
	devStopped = true
	var fams map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		fams = scrape(t, "http://"+srv.Addr().String()+telemetry.PathMetrics)
		return fams["temporal_long_request_failure_total"] != nil
	}, time.Minute, 500*time.Millisecond, "no failed long poll after the dev server stopped")

	// The run metrics: one run per activation and end state, however many executions it took.
	runs := map[string]float64{}
	for _, m := range fams["activations_runs_total"].GetMetric() {
		runs[ptrValue(labelValue(m, "activation"))+"/"+ptrValue(labelValue(m, "state"))] += m.GetCounter().GetValue()
		require.Equal(t, workflows.WorkflowName, ptrValue(labelValue(m, "workflow_type")), "%v", m.GetLabel())
		require.Equal(t, queue, ptrValue(labelValue(m, "task_queue")), "%v", m.GetLabel())
	}
	require.Equal(t, map[string]float64{"scrape-it/" + workflows.StateCompleted: 1, "not-applied/" + workflows.StateFailed: 1}, runs)
	var durations int
	for _, m := range fams["activations_run_duration_seconds"].GetMetric() {
		if ptrValue(labelValue(m, "activation")) == "scrape-it" && ptrValue(labelValue(m, "state")) == workflows.StateCompleted {
			durations++
			require.Equal(t, uint64(1), m.GetHistogram().GetSampleCount())
			require.InDelta(t, rep.Duration.Seconds(), m.GetHistogram().GetSampleSum(), 1e-6, "the run's whole duration")
		}
	}
	require.Equal(t, 1, durations, "activations_run_duration_seconds of the completed run")

	// Series name → family, with a histogram's _bucket, _sum and _count.
	byName := map[string]*dto.MetricFamily{}
	for name, f := range fams {
		byName[name] = f
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				byName[name+s] = f
			}
		}
	}

	// The allow-list, family by family: type and labels on every sample.
	for _, m := range monitoring.Metrics {
		f := fams[m.Name]
		if f == nil {
			t.Errorf("%s (allow-listed) is not in the scrape", m.Name)
			continue
		}
		if got := strings.ToLower(f.GetType().String()); got != m.Type {
			t.Errorf("%s is a %s, the allow-list says %s", m.Name, got, m.Type)
		}
		for _, l := range m.Labels {
			for _, s := range f.GetMetric() {
				if labelValue(s, l) == nil {
					t.Errorf("%s: a sample has no label %s: %v", m.Name, l, s.GetLabel())
					break
				}
			}
		}
	}

	// Every selector of the rules and of the dashboard.
	pr, err := monitoring.DecodePrometheusRule(monitoring.PrometheusRuleYAML)
	require.NoError(t, err)
	d, err := monitoring.DecodeDashboard(monitoring.DashboardJSON)
	require.NoError(t, err)
	queries := pr.Queries()
	dq, err := d.Queries()
	require.NoError(t, err)
	queries = append(queries, dq...)
	recorded := pr.Recorded()
	var checked []string
	for _, q := range queries {
		p, err := monitoring.Parse(q.Expr)
		require.NoError(t, err, q.Where)
		for _, sel := range p.Selectors {
			if recorded[sel.Metric] {
				continue
			}
			f := byName[sel.Metric]
			if f == nil {
				t.Errorf("%s: %s is not in the scrape", q.Where, sel.Metric)
				continue
			}
			if !slices.Contains(checked, sel.Metric) {
				checked = append(checked, sel.Metric)
			}
			for _, m := range sel.Matchers {
				values := sampleValues(f, m.Label)
				if len(values) == 0 {
					t.Errorf("%s: %s has no label %s", q.Where, sel.Metric, m.Label)
					continue
				}
				// Values the worker itself decides (not the task queue or activation names).
				switch m.Label {
				case "outcome", "status_code", "workflow_type", "poller_type", "operation", "state":
				default:
					continue
				}
				var want []string
				switch {
				case m.Op == "=":
					want = []string{m.Value}
				case m.Op == "=~" && !strings.ContainsAny(m.Value, `.*+?()[]{}\^$`):
					want = strings.Split(m.Value, "|")
				}
				for _, v := range want {
					if !slices.Contains(values, v) {
						t.Errorf("%s: %s{%s%s%q}: no sample has %s=%q (the scrape has %v)", q.Where, sel.Metric, m.Label, m.Op, m.Value, m.Label, v, values)
					}
				}
			}
		}
	}
	sort.Strings(checked)
	t.Logf("the rules and the dashboard select %d series, all in the scrape: %s", len(checked), strings.Join(checked, ", "))
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

func ptrValue(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func labelValue(m *dto.Metric, name string) *string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			v := l.GetValue()
			return &v
		}
	}
	return nil
}

// sampleValues lists the values label takes in a family (le for a histogram's buckets).
func sampleValues(f *dto.MetricFamily, label string) []string {
	var out []string
	for _, m := range f.GetMetric() {
		if label == "le" && m.GetHistogram() != nil {
			out = append(out, "le")
			continue
		}
		if v := labelValue(m, label); v != nil && !slices.Contains(out, *v) {
			out = append(out, *v)
		}
	}
	return out
}
