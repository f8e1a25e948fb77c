// Package monitoring holds the activations worker's alerts (prometheusrule.yaml, a PrometheusRule
// for prometheus-operator), their promtool unit tests (tests/) and a Grafana dashboard
// (activations-dashboard.json), and what the tests that keep them honest share: the files
// embedded, the allow-list of the series they may use, and a reader of the metric selectors in
// a PromQL expression.
//
// deploy/monitoring_test.go decodes the rule strictly, runs promtool and checks that every
// expression selects only allow-listed series and labels; internal/telemetry's scrape test
// (-tags integration) finds every allow-listed series, with its labels, in a real /metrics.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// PrometheusRuleYAML is prometheusrule.yaml.
//
//go:embed prometheusrule.yaml
var PrometheusRuleYAML []byte

// DashboardJSON is the Grafana dashboard, activations-dashboard.json.
//
//go:embed activations-dashboard.json
var DashboardJSON []byte

// Metric is a metric family of the worker's /metrics that the rules or the dashboard use, with
// the labels they may match or group on.
type Metric struct {
	Name   string // as scraped: activations_records_total, temporal_num_pollers
	Type   string // counter, gauge or histogram
	Labels []string
}

// Metrics is the allow-list. The engine's metrics are docs/telemetry.md's; the Temporal SDK's
// are those the worker exports through its OpenTelemetry handler (internal/telemetry). Every
// entry must be used, and be in a real scrape (internal/telemetry/scrape_integration_test.go).
var Metrics = []Metric{
	// The engine's (internal/telemetry/metrics.go).
	{"activations_records_total", "counter", []string{"activation", "operation", "outcome"}},
	{"activations_chunks_total", "counter", []string{"activation", "outcome"}},
	{"activations_plan_duration_seconds", "histogram", []string{"activation", "outcome"}},
	{"activations_chunk_duration_seconds", "histogram", []string{"activation", "outcome"}},
	{"activations_commit_duration_seconds", "histogram", []string{"activation", "outcome"}},
	{"activations_iterable_request_duration_seconds", "histogram", []string{"endpoint", "status_code"}},
	{"activations_iterable_ratelimit_wait_seconds", "histogram", []string{"endpoint"}},
	// The engine's, recorded by the workflow when a run ends (workflows/notify.go) on the
	// workflow's metrics handler: the Temporal SDK's meter, with the SDK's tags besides these.
	{"activations_runs_total", "counter", []string{"activation", "state"}},
	{"activations_run_duration_seconds", "histogram", []string{"activation", "state"}},
	// The Temporal SDK's (meter temporal-sdk-go). Their `namespace` label is left out on
	// purpose: Kubernetes service discovery renames it to exported_namespace.
	{"temporal_workflow_completed_total", "counter", []string{"workflow_type", "task_queue"}},
	{"temporal_workflow_failed_total", "counter", []string{"workflow_type", "task_queue"}},
	{"temporal_workflow_continue_as_new_total", "counter", []string{"workflow_type", "task_queue"}},
	{"temporal_workflow_endtoend_latency_seconds", "histogram", []string{"workflow_type", "task_queue"}},
	{"temporal_num_pollers", "gauge", []string{"task_queue", "poller_type"}},
	{"temporal_worker_task_slots_available", "gauge", []string{"task_queue", "worker_type"}},
	{"temporal_long_request_total", "counter", []string{"operation"}},
	{"temporal_long_request_failure_total", "counter", []string{"operation", "status_code"}},
	{"temporal_activity_schedule_to_start_latency_seconds", "histogram", []string{"activity_type", "workflow_type", "task_queue"}},
	{"temporal_activity_execution_failed_total", "counter", []string{"activity_type", "workflow_type", "task_queue"}},
}

// Series maps every series name the allow-list permits to its labels: a histogram family is
// selected as name_bucket (with le), name_sum and name_count.
func Series() map[string][]string {
	out := map[string][]string{}
	for _, m := range Metrics {
		if m.Type != "histogram" {
			out[m.Name] = m.Labels
			continue
		}
		out[m.Name+"_bucket"] = append(slices.Clone(m.Labels), "le")
		out[m.Name+"_sum"] = m.Labels
		out[m.Name+"_count"] = m.Labels
	}
	return out
}

// PrometheusRule is prometheus-operator's monitoring.coreos.com/v1 PrometheusRule, with the
// fields of its CRD (v0.8x).
type PrometheusRule struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Metadata   metav1.ObjectMeta  `json:"metadata"`
	Spec       PrometheusRuleSpec `json:"spec"`
}

// PrometheusRuleSpec is what Prometheus gets as a rule file.
type PrometheusRuleSpec struct {
	Groups []RuleGroup `json:"groups"`
}

// RuleGroup is a group of rules evaluated together, in order.
type RuleGroup struct {
	Name                    string            `json:"name"`
	Labels                  map[string]string `json:"labels,omitempty"`
	Interval                string            `json:"interval,omitempty"`
	QueryOffset             string            `json:"query_offset,omitempty"`
	Rules                   []Rule            `json:"rules"`
	PartialResponseStrategy string            `json:"partial_response_strategy,omitempty"`
	Limit                   *int              `json:"limit,omitempty"`
}

// Rule is a recording rule (Record) or an alerting rule (Alert).
type Rule struct {
	Record        string            `json:"record,omitempty"`
	Alert         string            `json:"alert,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Name is the alert's or the recorded series' name.
func (r Rule) Name() string {
	if r.Alert != "" {
		return r.Alert
	}
	return r.Record
}

// DecodePrometheusRule decodes a PrometheusRule the way the API server would: unknown and
// duplicate fields, and fields in the wrong case, are errors.
func DecodePrometheusRule(data []byte) (*PrometheusRule, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, err
	}
	var pr PrometheusRule
	strict, err := kjson.UnmarshalStrict(j, &pr)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(strict...); err != nil {
		return nil, err
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		return nil, fmt.Errorf("apiVersion/kind %s/%s, want monitoring.coreos.com/v1/PrometheusRule", pr.APIVersion, pr.Kind)
	}
	return &pr, nil
}

// RuleFile is the rule's spec as a Prometheus rule file (what promtool reads).
func (pr *PrometheusRule) RuleFile() ([]byte, error) {
	return yaml.Marshal(pr.Spec)
}

// Query is one PromQL expression of the rules or the dashboard, and where it is.
type Query struct {
	Where string
	Expr  string
}

// Queries lists the expression of every rule.
func (pr *PrometheusRule) Queries() []Query {
	var out []Query
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			out = append(out, Query{Where: fmt.Sprintf("group %s, rule %s", g.Name, r.Name()), Expr: r.Expr})
		}
	}
	return out
}

// Recorded lists the names of the recording rules.
func (pr *PrometheusRule) Recorded() map[string]bool {
	out := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out[r.Record] = true
			}
		}
	}
	return out
}

// Dashboard is the part of a Grafana dashboard the tests read.
type Dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

// Panel is a dashboard panel (rows hold their collapsed panels).
type Panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Datasource  *DataSourceRef `json:"datasource,omitempty"`
	Targets     []Target       `json:"targets,omitempty"`
	Panels      []Panel        `json:"panels,omitempty"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
}

// DataSourceRef names a data source (here always the ${datasource} variable).
type DataSourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Target is one query of a panel.
type Target struct {
	RefID      string         `json:"refId"`
	Datasource *DataSourceRef `json:"datasource,omitempty"`
	Expr       string         `json:"expr"`
	Legend     string         `json:"legendFormat,omitempty"`
	Range      bool           `json:"range,omitempty"`
	Instant    bool           `json:"instant,omitempty"`
}

// Variable is a templating variable; Query is a string or {"query": "..."}.
type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition,omitempty"`
	Datasource *DataSourceRef  `json:"datasource,omitempty"`
}

// DecodeDashboard reads the dashboard JSON.
func DecodeDashboard(data []byte) (*Dashboard, error) {
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// AllPanels lists the panels, those inside rows included.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(?:(.*?)\s*,\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// Queries lists the expressions of the panels' targets and of the query variables. A
// variable's label_values(selector, label) is given as `group by (label) (selector)`.
func (d *Dashboard) Queries() ([]Query, error) {
	var out []Query
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			out = append(out, Query{Where: fmt.Sprintf("panel %q, query %s", p.Title, t.RefID), Expr: t.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("variable %s: query is neither a string nor {query}: %w", v.Name, err)
			}
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil || m[1] == "" {
			return nil, fmt.Errorf("variable %s: query %q: want label_values(selector, label)", v.Name, q)
		}
		out = append(out, Query{Where: "variable " + v.Name, Expr: fmt.Sprintf("group by (%s) (%s)", m[2], m[1])})
	}
	return out, nil
}

// Matcher is one label matcher of a selector.
type Matcher struct {
	Label, Op, Value string
}

// Selector is a metric selector: name{matchers}.
type Selector struct {
	Metric   string
	Matchers []Matcher
}

// Parsed is what Parse finds in an expression.
type Parsed struct {
	Selectors []Selector
	// Grouping are the labels of by, without, on, ignoring, group_left and group_right.
	Grouping []string
}

// Metrics lists the selected metric names, sorted, once each.
func (p Parsed) Metrics() []string {
	var out []string
	for _, s := range p.Selectors {
		if !slices.Contains(out, s.Metric) {
			out = append(out, s.Metric)
		}
	}
	sort.Strings(out)
	return out
}

// Words of PromQL that are not metric names: keywords, aggregations (which may be followed by
// by/without rather than a parenthesis) and literals.
var reserved = map[string]bool{
	"and": true, "or": true, "unless": true, "offset": true, "bool": true, "atan2": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true, "inf": true, "nan": true, "Inf": true, "NaN": true,
}

// Keywords followed by a list of label names.
var labelLists = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdent(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Parse finds the metric selectors of a PromQL expression (the dashboard's may hold Grafana
// variables such as $__rate_interval and "$activation"). It is a tokenizer, not a parser: it
// skips strings, comments, ranges and numbers, takes an identifier followed by "(" for a
// function, and any other identifier that is not a keyword for a metric name. A selector
// without a name ({__name__=...}) is refused: the tests could not check it.
func Parse(expr string) (Parsed, error) {
	var p Parsed
	s := expr
	n := len(s)
	skipSpace := func(i int) int {
		for i < n && isSpace(s[i]) {
			i++
		}
		return i
	}
	// readString returns the unquoted string at s[i] (a quote) and the index after it.
	readString := func(i int) (string, int, error) {
		q := s[i]
		var b strings.Builder
		for j := i + 1; j < n; j++ {
			switch {
			case s[j] == '\\' && q != '`' && j+1 < n:
				j++
				b.WriteByte(s[j])
			case s[j] == q:
				return b.String(), j + 1, nil
			default:
				b.WriteByte(s[j])
			}
		}
		return "", n, fmt.Errorf("unterminated string at offset %d", i)
	}
	readIdent := func(i int) (string, int) {
		j := i
		for j < n && isIdent(s[j]) {
			j++
		}
		return s[i:j], j
	}
	for i := 0; i < n; {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '#':
			for i < n && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			_, j, err := readString(i)
			if err != nil {
				return p, err
			}
			i = j
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return p, fmt.Errorf("unterminated range at offset %d", i)
			}
			i += j + 1
		case c == '{':
			return p, fmt.Errorf("selector without a metric name at offset %d: name the metric", i)
		case c == '$':
			i++
			if i < n && s[i] == '{' {
				j := strings.IndexByte(s[i:], '}')
				if j < 0 {
					return p, fmt.Errorf("unterminated variable at offset %d", i)
				}
				i += j + 1
				continue
			}
			_, i = readIdent(i)
		case c >= '0' && c <= '9' || c == '.':
			for i < n && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			word, j := readIdent(i)
			k := skipSpace(j)
			switch {
			case labelLists[word] && k < n && s[k] == '(':
				end := strings.IndexByte(s[k:], ')')
				if end < 0 {
					return p, fmt.Errorf("unterminated %s list at offset %d", word, k)
				}
				for _, l := range strings.Split(s[k+1:k+end], ",") {
					if l = strings.TrimSpace(l); l != "" {
						p.Grouping = append(p.Grouping, l)
					}
				}
				i = k + end + 1
			case reserved[word]:
				i = j
			case k < n && s[k] == '(':
				i = j // a function
			default:
				sel := Selector{Metric: word}
				if k < n && s[k] == '{' {
					ms, after, err := readMatchers(s, k, readString)
					if err != nil {
						return p, fmt.Errorf("%s: %w", word, err)
					}
					sel.Matchers, j = ms, after
				}
				p.Selectors = append(p.Selectors, sel)
				i = j
			}
		default:
			i++
		}
	}
	return p, nil
}

// readMatchers reads {label op "value", ...} starting at s[i] == '{'.
func readMatchers(s string, i int, readString func(int) (string, int, error)) ([]Matcher, int, error) {
	n := len(s)
	var out []Matcher
	i++
	for {
		for i < n && (isSpace(s[i]) || s[i] == ',') {
			i++
		}
		if i >= n {
			return nil, n, errors.New("unterminated label matchers")
		}
		if s[i] == '}' {
			return out, i + 1, nil
		}
		j := i
		for j < n && isIdent(s[j]) {
			j++
		}
		if j == i {
			return nil, n, fmt.Errorf("bad label matcher at offset %d", i)
		}
		m := Matcher{Label: s[i:j]}
		for j < n && isSpace(s[j]) {
			j++
		}
		for _, op := range []string{"=~", "!~", "!=", "="} {
			if strings.HasPrefix(s[j:], op) {
				m.Op = op
				break
			}
		}
		if m.Op == "" {
			return nil, n, fmt.Errorf("label %s: no matching operator", m.Label)
		}
		j += len(m.Op)
		for j < n && isSpace(s[j]) {
			j++
		}
		if j >= n || (s[j] != '"' && s[j] != '\'' && s[j] != '`') {
			return nil, n, fmt.Errorf("label %s: value is not a string", m.Label)
		}
		v, after, err := readString(j)
		if err != nil {
			return nil, n, err
		}
		m.Value = v
		out = append(out, m)
		i = after
	}
}
