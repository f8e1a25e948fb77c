package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/activation-engine/activations/deploy/monitoring"
)

// The alerts and dashboard of deploy/monitoring (docs/telemetry.md, "Alerts and dashboard").
// What they select is checked here against monitoring.Metrics, the allow-list that
// internal/telemetry's scrape test (-tags integration) finds in a real /metrics.

const monitoringDir = "monitoring"

// requiredAlerts are the alerts of issue 13 §3, in its order.
var requiredAlerts = []string{
	"ActivationPaused",               // (1) paused for more than 15 minutes
	"ActivationRunFailed",            // (2) a run failed
	"ActivationRejectionRateHigh",    // (3) rejection rate above the threshold
	"ActivationsIterableRateLimited", // (4) Iterable 429 share above 5%
	"ActivationsNoWorkerPolling",     // (5) no worker polling the task queue
	"ActivationRunSlow",              // (6) a run taking three times its usual time
}

// operatorAlerts need a person at a paused run: their description gives the exact commands.
var operatorAlerts = []string{"ActivationPaused", "ActivationRejectionRateHigh"}

// safeLabels are the labels annotations may print: ids, routes, fixed words. Never a user's
// email, userId or a field value (no metric carries one; this keeps it so).
var safeLabels = []string{"activation", "endpoint", "status_code", "task_queue", "poller_type", "operation", "step", "workflow_type", "activity_type"}

// knownValues are the values the worker gives these labels (docs/telemetry.md, the Temporal SDK).
var knownValues = map[string][]string{
	"outcome":       {"succeeded", "rejected", "skipped", "failed", "stopped", "canceled"},
	"operation":     {"added", "changed", "removed", "PollWorkflowTaskQueue", "PollActivityTaskQueue"},
	"workflow_type": {"ActivationWorkflow", "ActivationLockWorkflow"},
	"poller_type":   {"workflow_task", "workflow_sticky_task", "activity_task"},
	// How a run ended (activations_runs_total, activations_run_duration_seconds).
	"state": {"Completed", "Failed", "Aborted", "DryRun"},
	// Iterable's HTTP status (the Temporal SDK's status_code is a gRPC code).
	"activations_*/status_code": {"0", "200", "400", "401", "403", "404", "408", "409", "413", "429", "500", "502", "503", "504"},
}

// labelReplaceDst finds the destination label of label_replace(v, dst, replacement, src, regex).
var labelReplaceDst = regexp.MustCompile(`"([a-zA-Z_][a-zA-Z0-9_]*)"\s*,\s*"[^"]*"\s*,\s*"[^"]*"\s*,\s*"[^"]*"\s*\)`)

// keptLabels are the labels an expression's result may carry: its grouping labels, its
// equality matchers (absent() keeps those), label_replace destinations, and those of the
// recorded series it reads.
func keptLabels(expr string, recorded map[string][]string) []string {
	p, err := monitoring.Parse(expr)
	if err != nil {
		return nil
	}
	kept := slices.Clone(p.Grouping)
	for _, s := range p.Selectors {
		kept = append(kept, recorded[s.Metric]...)
		for _, m := range s.Matchers {
			kept = append(kept, m.Label)
		}
	}
	for _, m := range labelReplaceDst.FindAllStringSubmatch(expr, -1) {
		kept = append(kept, m[1])
	}
	return kept
}

// operatorDuration is prometheus-operator's pattern for durations (for, interval, ...).
var operatorDuration = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)

var labelRef = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

func loadPrometheusRule(t *testing.T) *monitoring.PrometheusRule {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoringDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, monitoring.PrometheusRuleYAML) {
		t.Fatal("monitoring.PrometheusRuleYAML differs from the file: rebuild")
	}
	pr, err := monitoring.DecodePrometheusRule(data)
	if err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	return pr
}

func loadDashboard(t *testing.T) *monitoring.Dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(monitoringDir, "activations-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := monitoring.DecodeDashboard(data)
	if err != nil {
		t.Fatalf("activations-dashboard.json: %v", err)
	}
	return d
}

func TestMonitoringPromQLReader(t *testing.T) {
	tests := []struct {
		expr     string
		metrics  []string
		grouping []string
		matchers map[string][]string // metric → "label op value"
		err      bool
	}{
		{expr: `sum by (activation, outcome) (rate(activations_records_total{activation=~"$activation", outcome="rejected"}[$__rate_interval]))`,
			metrics: []string{"activations_records_total"}, grouping: []string{"activation", "outcome"},
			matchers: map[string][]string{"activations_records_total": {`activation=~$activation`, `outcome=rejected`}}},
		{expr: `histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="b,c}"}[5m])))`, metrics: []string{"x_bucket"}, grouping: []string{"le"},
			matchers: map[string][]string{"x_bucket": {`a=b,c}`}}},
		{expr: "(increase(a_total[1h]) and a_total offset 1h) or (a_total unless a_total offset 1h)", metrics: []string{"a_total"}},
		{expr: `max_over_time(rec:a:b{outcome="stopped"}[1d]) > on (activation) group_left (x) time() - 900`, metrics: []string{"rec:a:b"}, grouping: []string{"activation", "x"}},
		{expr: `label_replace(sum without (pod) (m), "step", "plan", "", "") # a comment naming not_a_metric`, metrics: []string{"m"}, grouping: []string{"pod"}},
		{expr: `absent(g{task_queue="activations"}) or vector(0) * count(h) + 1e3 * inf`, metrics: []string{"g", "h"}},
		{expr: `rate(m[1h:5m] @ start())`, metrics: []string{"m"}},
		{expr: `{__name__="m"}`, err: true},
		{expr: `m{a="unterminated}`, err: true},
		{expr: `m{a}`, err: true},
	}
	for _, tt := range tests {
		p, err := monitoring.Parse(tt.expr)
		if tt.err {
			if err == nil {
				t.Errorf("%s: want an error", tt.expr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.expr, err)
			continue
		}
		if got := p.Metrics(); !slices.Equal(got, tt.metrics) {
			t.Errorf("%s: metrics %v, want %v", tt.expr, got, tt.metrics)
		}
		if !slices.Equal(p.Grouping, tt.grouping) {
			t.Errorf("%s: grouping %v, want %v", tt.expr, p.Grouping, tt.grouping)
		}
		for metric, want := range tt.matchers {
			var got []string
			for _, s := range p.Selectors {
				if s.Metric == metric {
					for _, m := range s.Matchers {
						got = append(got, m.Label+m.Op+m.Value)
					}
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: %s matchers %v, want %v", tt.expr, metric, got, want)
			}
		}
	}
}

// TestMonitoringPrometheusRule checks the rule as prometheus-operator and operators need it.
func TestMonitoringPrometheusRule(t *testing.T) {
	pr := loadPrometheusRule(t)
	if pr.Metadata.Name == "" {
		t.Error("metadata.name is empty")
	}
	if len(pr.Spec.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	alerts := map[string]monitoring.Rule{}
	names := map[string]bool{}
	recordedLabels := map[string][]string{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recordedLabels[r.Record] = keptLabels(r.Expr, recordedLabels)
			}
		}
	}
	for _, g := range pr.Spec.Groups {
		if g.Name == "" || names["group "+g.Name] {
			t.Errorf("group name %q empty or repeated", g.Name)
		}
		names["group "+g.Name] = true
		for _, d := range []string{g.Interval, g.QueryOffset} {
			if d != "" && !operatorDuration.MatchString(d) {
				t.Errorf("group %s: duration %q", g.Name, d)
			}
		}
		for _, r := range g.Rules {
			where := fmt.Sprintf("group %s, rule %s", g.Name, r.Name())
			switch {
			case (r.Alert == "") == (r.Record == ""):
				t.Errorf("%s: set exactly one of alert and record", where)
				continue
			case strings.TrimSpace(r.Expr) == "":
				t.Errorf("%s: no expr", where)
			}
			for _, d := range []string{r.For, r.KeepFiringFor} {
				if d != "" && !operatorDuration.MatchString(d) {
					t.Errorf("%s: duration %q", where, d)
				}
			}
			if r.Record != "" {
				if !regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*$`).MatchString(r.Record) {
					t.Errorf("%s: a recorded name is level:metric:operations (with colons, which no exported metric has)", where)
				}
				if names[r.Record] {
					t.Errorf("%s: recorded twice", where)
				}
				names[r.Record] = true
				if len(r.Annotations) > 0 || r.For != "" {
					t.Errorf("%s: a recording rule has no annotations or for", where)
				}
				continue
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("%s: alert defined twice", where)
			}
			alerts[r.Alert] = r
			checkAlert(t, where, r, recordedLabels)
		}
	}
	for _, name := range requiredAlerts {
		if _, ok := alerts[name]; !ok {
			t.Errorf("alert %s is missing", name)
		}
	}
	for _, name := range operatorAlerts {
		desc := alerts[name].Annotations["description"]
		for _, cmd := range []string{"starter resume {{ $labels.activation }} --reason", "starter abort {{ $labels.activation }} --reason",
			"starter status {{ $labels.activation }}"} {
			if !strings.Contains(desc, cmd) {
				t.Errorf("alert %s: the description does not give the next step `%s …`", name, cmd)
			}
		}
	}
}

func checkAlert(t *testing.T, where string, r monitoring.Rule, recorded map[string][]string) {
	t.Helper()
	switch r.Labels["severity"] {
	case "critical", "warning", "info":
	default:
		t.Errorf("%s: severity label %q, want critical, warning or info", where, r.Labels["severity"])
	}
	for k := range r.Labels {
		if k != "severity" {
			t.Errorf("%s: label %s: alerts carry only severity (routing labels belong to overlays)", where, k)
		}
	}
	for k := range r.Annotations {
		if k != "summary" && k != "description" && k != "runbook_url" {
			t.Errorf("%s: annotation %s: use summary, description, runbook_url", where, k)
		}
	}
	p, err := monitoring.Parse(r.Expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	kept := keptLabels(r.Expr, recorded)
	for _, key := range []string{"summary", "description"} {
		text := r.Annotations[key]
		if strings.TrimSpace(text) == "" {
			t.Errorf("%s: annotation %s is empty", where, key)
			continue
		}
		for _, m := range labelRef.FindAllStringSubmatch(text, -1) {
			if !slices.Contains(safeLabels, m[1]) {
				t.Errorf("%s: %s prints label %s, not one of %v", where, key, m[1], safeLabels)
			}
			if !slices.Contains(kept, m[1]) {
				t.Errorf("%s: %s prints label %s, which the expression does not keep", where, key, m[1])
			}
		}
		if strings.Contains(text, "$externalLabels") || strings.Contains(text, "query \"") {
			t.Errorf("%s: %s runs queries or prints external labels", where, key)
		}
		if slices.Contains(p.Grouping, "activation") && !strings.Contains(text, "{{ $labels.activation }}") {
			t.Errorf("%s: %s does not name the activation ({{ $labels.activation }})", where, key)
		}
	}
}

// TestMonitoringQueriesUseExportedMetrics checks every expression of the rules and the
// dashboard (and the promtool tests' input series) against the allow-list.
func TestMonitoringQueriesUseExportedMetrics(t *testing.T) {
	pr := loadPrometheusRule(t)
	d := loadDashboard(t)
	queries := pr.Queries()
	dq, err := d.Queries()
	if err != nil {
		t.Fatal(err)
	}
	queries = append(queries, dq...)
	for _, f := range promtoolTestFiles(t) {
		for i, tc := range readPromtoolTests(t, f).Tests {
			for _, s := range tc.InputSeries {
				queries = append(queries, monitoring.Query{Where: fmt.Sprintf("%s: test %d input series", f, i+1), Expr: s.Series})
			}
		}
	}
	series := monitoring.Series()
	recorded := pr.Recorded()
	var allLabels []string
	for _, ls := range series {
		allLabels = append(allLabels, ls...)
	}
	used := map[string]bool{}
	for _, q := range queries {
		p, err := monitoring.Parse(q.Expr)
		if err != nil {
			t.Errorf("%s: %v", q.Where, err)
			continue
		}
		if len(p.Selectors) == 0 {
			t.Errorf("%s: selects no metric", q.Where)
		}
		for _, s := range p.Selectors {
			labels, ok := series[s.Metric]
			switch {
			case recorded[s.Metric]:
				used[s.Metric] = true
				labels = allLabels
			case !ok:
				t.Errorf("%s: %s is not in monitoring.Metrics: the worker does not export it (or add it there, and make the scrape test find it)", q.Where, s.Metric)
				continue
			}
			used[s.Metric] = true
			for _, m := range s.Matchers {
				if !slices.Contains(labels, m.Label) && !(strings.Contains(q.Where, "input series") && m.Label != "le") {
					t.Errorf("%s: %s has no label %s (allowed: %v)", q.Where, s.Metric, m.Label, labels)
				}
				checkValues(t, q.Where, s.Metric, m)
			}
		}
		for _, l := range p.Grouping {
			if !slices.Contains(allLabels, l) && l != "step" {
				t.Errorf("%s: groups on label %s, which no allowed metric has", q.Where, l)
			}
		}
	}
	for _, m := range monitoring.Metrics {
		found := used[m.Name]
		if m.Type == "histogram" {
			found = used[m.Name+"_bucket"] || used[m.Name+"_sum"] || used[m.Name+"_count"]
		}
		if !found {
			t.Errorf("monitoring.Metrics lists %s, which neither the rules nor the dashboard use: remove it", m.Name)
		}
	}
	for name := range recorded {
		if !used[name] {
			t.Errorf("recording rule %s is not used", name)
		}
	}
}

// checkValues checks equality and simple alternation matchers against the values the worker
// gives a label.
func checkValues(t *testing.T, where, metric string, m monitoring.Matcher) {
	t.Helper()
	known, ok := knownValues[m.Label]
	if m.Label == "status_code" && strings.HasPrefix(metric, "activations_") {
		known, ok = knownValues["activations_*/status_code"], true
	}
	if !ok || strings.Contains(m.Value, "$") {
		return
	}
	var values []string
	switch m.Op {
	case "=", "!=":
		values = []string{m.Value}
	case "=~", "!~":
		if strings.ContainsAny(m.Value, `.*+?()[]{}\^$`) {
			return // a real pattern: not a list of values
		}
		values = strings.Split(m.Value, "|")
	}
	for _, v := range values {
		if !slices.Contains(known, v) {
			t.Errorf("%s: %s{%s%s%q}: %q is not a value the worker gives %s (%v)", where, metric, m.Label, m.Op, m.Value, v, m.Label, known)
		}
	}
}

func TestMonitoringDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	if !slices.Contains(vars, "datasource") {
		t.Error("no datasource variable: the dashboard would be bound to one Grafana's data source uid")
	}
	ids := map[int]bool{}
	for _, p := range d.AllPanels() {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d repeated", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v does not fit 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
		}
		if p.Description == "" {
			t.Errorf("panel %q: no description", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q, query %s: datasource %+v, want uid ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
		}
	}
	// What issue 13 §3 asks the dashboard to show, by the metric that shows it.
	dq, err := d.Queries()
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, q := range dq {
		all.WriteString(q.Expr + "\n")
	}
	for topic, metric := range map[string]string{
		"runs":                       "temporal_workflow_failed_total",
		"runs by activation and end": "activations_runs_total",
		"run duration":               "activations_run_duration_seconds_",
		"records by outcome":         "activations_records_total",
		"Iterable latency":           "activations_iterable_request_duration_seconds_bucket",
		"Iterable 429s":              `status_code="429"`,
		"rate-budget waits":          "activations_iterable_ratelimit_wait_seconds_sum",
		"plan duration":              "activations_plan_duration_seconds_bucket",
		"chunk duration":             "activations_chunk_duration_seconds_bucket",
		"commit duration":            "activations_commit_duration_seconds_bucket",
		"worker pollers":             "temporal_num_pollers",
		"rejection rate (rejected)":  `outcome="rejected"`,
	} {
		if !strings.Contains(all.String(), metric) {
			t.Errorf("the dashboard does not show %s (%s)", topic, metric)
		}
	}
}

// TestMonitoringKustomization reads deploy/monitoring/kustomization.yaml strictly, checks what
// it lists, that no file of deploy/monitoring is left out, and what `kubectl kustomize` renders
// when kubectl is installed.
func TestMonitoringKustomization(t *testing.T) {
	kfile := filepath.Join(monitoringDir, "kustomization.yaml")
	data, err := os.ReadFile(kfile)
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := decodeStrict(data, &k); err != nil {
		t.Fatalf("%s: %v", kfile, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s: apiVersion/kind %s/%s", kfile, k.APIVersion, k.Kind)
	}
	used := map[string]string{kfile: "kustomization"}
	for _, r := range k.Resources {
		p := filepath.Join(monitoringDir, r)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: resource %s: %v", kfile, r, err)
			continue
		}
		used[p] = "resource"
		if _, err := monitoring.DecodePrometheusRule(data); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	var dashboardCM string
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			_, rel, ok := strings.Cut(f, "=")
			if !ok {
				rel = f
			}
			p := filepath.Join(monitoringDir, rel)
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s: configMapGenerator %s: %v", kfile, g.Name, err)
			}
			used[p] = "data"
			if rel == "activations-dashboard.json" {
				dashboardCM = g.Name
				if g.Options == nil || g.Options.Labels["grafana_dashboard"] != "1" {
					t.Errorf("%s: configMapGenerator %s needs the label grafana_dashboard: \"1\" for Grafana's sidecar", kfile, g.Name)
				}
			}
		}
	}
	if dashboardCM == "" {
		t.Errorf("%s: no configMapGenerator ships activations-dashboard.json", kfile)
	}
	for _, g := range k.SecretGenerator {
		t.Errorf("%s: secretGenerator %s: no Secrets here", kfile, g.Name)
	}
	err = filepath.WalkDir(monitoringDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch {
		case used[p] != "":
		case filepath.Dir(p) == filepath.Join(monitoringDir, "tests") && strings.HasSuffix(p, ".yaml"):
		case strings.HasSuffix(p, ".go"):
		default:
			t.Errorf("%s is neither used by the kustomization nor a promtool test (tests/*.yaml): list it or delete it", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("kubectl is not on PATH: `kubectl kustomize deploy/monitoring` is not checked")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", monitoringDir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", monitoringDir, err, stderr.String())
	}
	var rules, dashboards int
	for i, doc := range bytes.Split(stdout.Bytes(), []byte("\n---\n")) {
		var tm struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("rendered document %d: %v", i+1, err)
		}
		switch tm.Kind {
		case "PrometheusRule":
			rules++
			pr, err := monitoring.DecodePrometheusRule(doc)
			if err != nil {
				t.Errorf("rendered PrometheusRule: %v", err)
				continue
			}
			if pr.Metadata.Labels["app.kubernetes.io/part-of"] != "activations" {
				t.Errorf("rendered PrometheusRule labels %v", pr.Metadata.Labels)
			}
		case "ConfigMap":
			dashboards++
			var cm corev1.ConfigMap
			if err := decodeStrict(doc, &cm); err != nil {
				t.Errorf("rendered ConfigMap: %v", err)
				continue
			}
			if cm.Name != dashboardCM || cm.Labels["grafana_dashboard"] != "1" {
				t.Errorf("rendered ConfigMap %s labels %v", cm.Name, cm.Labels)
			}
			if cm.Data["activations.json"] != string(monitoring.DashboardJSON) {
				t.Error("the rendered ConfigMap does not hold activations-dashboard.json as it is")
			}
		default:
			t.Errorf("rendered document %d: unexpected kind %q", i+1, tm.Kind)
		}
	}
	if rules != 1 || dashboards != 1 {
		t.Errorf("kubectl kustomize %s: %d PrometheusRules and %d ConfigMaps, want 1 and 1", monitoringDir, rules, dashboards)
	}
}

// promtoolTestFile is a promtool unit test file, decoded strictly.
type promtoolTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval,omitempty"`
	GroupEvalOrder     []string `json:"group_eval_order,omitempty"`
	Tests              []struct {
		Name           string            `json:"name,omitempty"`
		Interval       string            `json:"interval,omitempty"`
		ExternalLabels map[string]string `json:"external_labels,omitempty"`
		InputSeries    []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTests []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test,omitempty"`
		PromQLExprTests []struct {
			Expr       string `json:"expr"`
			EvalTime   string `json:"eval_time"`
			ExpSamples []struct {
				Labels string  `json:"labels"`
				Value  float64 `json:"value"`
			} `json:"exp_samples"`
		} `json:"promql_expr_test,omitempty"`
	} `json:"tests"`
}

// promtoolRuleFile is the name the test files give the rule file: the PrometheusRule's spec,
// which this test writes next to a copy of them.
const promtoolRuleFile = "rules.yaml"

func promtoolTestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(monitoringDir, "tests", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no promtool tests in %s/tests", monitoringDir)
	}
	sort.Strings(files)
	return files
}

func readPromtoolTests(t *testing.T, file string) promtoolTestFile {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var f promtoolTestFile
	if err := decodeStrict(data, &f); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if !slices.Equal(f.RuleFiles, []string{promtoolRuleFile}) {
		t.Errorf("%s: rule_files %v, want [%s]", file, f.RuleFiles, promtoolRuleFile)
	}
	return f
}

// TestMonitoringPromtoolTestsCoverEveryAlert checks that each alert has a test where it fires
// and one where it must not.
func TestMonitoringPromtoolTestsCoverEveryAlert(t *testing.T) {
	pr := loadPrometheusRule(t)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range promtoolTestFiles(t) {
		for _, tc := range readPromtoolTests(t, f).Tests {
			for _, at := range tc.AlertRuleTests {
				if len(at.ExpAlerts) > 0 {
					fires[at.Alertname] = true
				} else {
					quiet[at.Alertname] = true
				}
			}
		}
	}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if !fires[r.Alert] {
				t.Errorf("alert %s: no promtool test where it fires", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("alert %s: no promtool test where it must not fire", r.Alert)
			}
		}
	}
}

// findPromtool returns promtool from PROMTOOL or PATH. Without it the test skips, except with
// CI=true, where it fails.
func findPromtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PROMTOOL=%s: %v", p, err)
		}
		return p
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	const msg = "promtool is not installed: the alerting rules are not checked or unit-tested. " +
		"Install it with `apt-get install prometheus` (Debian's package ships promtool) or set PROMTOOL=/path/to/promtool"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// TestMonitoringPromtool runs `promtool check rules` on the PrometheusRule's spec and
// `promtool test rules` on deploy/monitoring/tests.
func TestMonitoringPromtool(t *testing.T) {
	promtool := findPromtool(t)
	pr := loadPrometheusRule(t)
	rules, err := pr.RuleFile()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, promtoolRuleFile), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	var tests []string
	for _, f := range promtoolTestFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, filepath.Base(f))
	}
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
	run("check", "rules", promtoolRuleFile)
	run(append([]string{"test", "rules"}, tests...)...)
}
