package spec_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/spec"
)

const valid = `id: users-to-iterable
source:
  type: duckdb
  query: SELECT 1 AS user_id, 'a@example.com' AS email, 'Ann' AS first_name
  primaryKey: user_id
state:
  duckdb: {path: .state/a.duckdb}
destination:
  type: iterable
  iterable:
    region: us
    apiKey: {env: ITERABLE_API_KEY}
    projectType: hybrid
  mode: upsert
  identifier: {column: email, field: email}
  fields:
    - {column: first_name, field: firstName}
schedule: {every: 4h}
`

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestLoadValid(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "a.yaml", valid)
	acts, err := spec.Load(p)
	require.NoError(t, err)
	require.Len(t, acts, 1)
	a := acts[0]
	require.Equal(t, "users-to-iterable", a.ID)
	require.Equal(t, filepath.Join(dir, ".state/a.duckdb"), a.StatePath(), "relative paths resolve against the spec's folder")
	require.Equal(t, dir, a.BaseDir)
	require.True(t, a.Destination.CreatesNewFields())
	require.NoError(t, a.Validate())
}

func TestExampleSpecIsValid(t *testing.T) {
	acts, err := spec.Load("../../examples")
	require.NoError(t, err)
	require.NotEmpty(t, acts)
}

func TestProblemsNameFileLineAndPath(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(string) string
		wantAll []string
	}{
		{"bad id", func(s string) string { return strings.Replace(s, "id: users-to-iterable", "id: Users_To", 1) },
			[]string{"a.yaml:1: id:", "must match"}},
		{"unknown key", func(s string) string {
			return strings.Replace(s, "  primaryKey: user_id", "  primaryKey: user_id\n  primary_key: x", 1)
		},
			[]string{"a.yaml:6: source.primary_key: unknown key", "allowed here: type, query, primaryKey, duckdb"}},
		{"eu email project", func(s string) string {
			return strings.Replace(strings.Replace(s, "region: us", "region: eu", 1), "projectType: hybrid", "projectType: email", 1)
		}, []string{"destination.iterable.projectType", "EU data center"}},
		{"api key value inline", func(s string) string { return strings.Replace(s, "{env: ITERABLE_API_KEY}", "abc123", 1) },
			[]string{"destination.iterable.apiKey"}},
		{"bad mode", func(s string) string { return strings.Replace(s, "mode: upsert", "mode: insert", 1) },
			[]string{"a.yaml:14: destination.mode", `"insert" is not allowed (one of: upsert, update)`}},
		{"bad nulls", func(s string) string { return strings.Replace(s, "mode: upsert", "mode: update\n  nulls: skip", 1) },
			[]string{"a.yaml:15: destination.nulls", `"skip" is not allowed (one of: clear, ignore)`}},
		{"reserved field", func(s string) string { return strings.Replace(s, "field: firstName", "field: email", 1) },
			[]string{"destination.fields[0].field", "identifies the user"}},
		{"bad cron", func(s string) string { return strings.Replace(s, "{every: 4h}", `{cron: "* * *"}`, 1) },
			[]string{"schedule.cron", "needs 5 fields"}},
		{"cron minute out of range", func(s string) string { return strings.Replace(s, "{every: 4h}", `{cron: "61 * * * *"}`, 1) },
			[]string{"a.yaml:18: schedule.cron", "minute 61 is not in range [0-59]"}},
		{"cron backwards range", func(s string) string { return strings.Replace(s, "{every: 4h}", `{cron: "0 9-5 * * MON-FRI"}`, 1) },
			[]string{"schedule.cron", "hour range 9-5 is backwards"}},
		{"cron month name", func(s string) string { return strings.Replace(s, "{every: 4h}", `{cron: "0 0 1 FOO *"}`, 1) },
			[]string{"schedule.cron", `month "FOO" is not a number`}},
		{"cron zero step", func(s string) string { return strings.Replace(s, "{every: 4h}", `{cron: "*/0 * * * *"}`, 1) },
			[]string{"schedule.cron", "minute step"}},
		{"bad every", func(s string) string { return strings.Replace(s, "4h", "soon", 1) },
			[]string{"schedule.every", "not an interval"}},
		{"bad onRemoved", func(s string) string {
			return strings.Replace(s, "mode: upsert", "mode: upsert\n  onRemoved: erase", 1)
		},
			[]string{"a.yaml:15: destination.onRemoved", `"erase" is not allowed (one of: keep, clear, delete)`}},
		{"short rejections retention", func(s string) string {
			return strings.Replace(s, "state:\n", "state:\n  rejectionsRetention: 10m\n", 1)
		}, []string{"state.rejectionsRetention", "too short"}},
		{"list with name and id", func(s string) string {
			return strings.Replace(s, "mode: upsert", "mode: upsert\n  list: {name: VIP, id: 12}", 1)
		}, []string{"a.yaml:15: destination.list", "either name or id"}},
		{"list without name or id", func(s string) string {
			return strings.Replace(s, "mode: upsert", "mode: upsert\n  list: {onLeave: keep}", 1)
		}, []string{"destination.list", "set name"}},
		{"list onLeave", func(s string) string {
			return strings.Replace(s, "mode: upsert", "mode: upsert\n  list: {name: VIP, onLeave: delete}", 1)
		}, []string{"destination.list.onLeave", `"delete" is not allowed (one of: unsubscribe, keep)`}},
		{"list with onRemoved", func(s string) string {
			return strings.Replace(s, "mode: upsert", "mode: upsert\n  onRemoved: clear\n  list: {name: VIP}", 1)
		}, []string{"destination.onRemoved", "list.onLeave"}},
		{"notify url inline", func(s string) string {
			return s + "notify:\n  - webhook: {url: {}}\n    format: teams\n    on: [paused, exploded]\n"
		}, []string{"notify[0].webhook.url", "never the URL itself", `notify[0].format: "teams" is not allowed (one of: json, slack)`,
			`notify[0].on[1]: "exploded" is not allowed`}},
		{"userId project with email", func(s string) string { return strings.Replace(s, "projectType: hybrid", "projectType: userId", 1) },
			[]string{"destination.identifier.field", "userId-based projects"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, t.TempDir(), "a.yaml", tc.edit(valid))
			_, err := spec.Load(p)
			require.Error(t, err)
			var ps spec.Problems
			require.ErrorAs(t, err, &ps)
			for _, w := range tc.wantAll {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestEveryProblemReportedAtOnce(t *testing.T) {
	body := strings.NewReplacer("type: duckdb", "type: oracle", "primaryKey: user_id", "primaryKey: \"\"",
		"mode: upsert", "mode: sometimes").Replace(valid)
	_, err := spec.Load(write(t, t.TempDir(), "a.yaml", body))
	var ps spec.Problems
	require.ErrorAs(t, err, &ps)
	require.Len(t, ps, 3, err.Error())
}

func TestFolderDuplicateIDs(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", valid)
	write(t, dir, "b.yml", valid)
	acts, err := spec.Load(dir)
	require.ErrorContains(t, err, "already declared in")
	require.Len(t, acts, 1, "the first declaration stays usable")
}

func TestSecretRef(t *testing.T) {
	t.Setenv("SPEC_TEST_KEY", " k1 \n")
	v, err := spec.SecretRef{Env: "SPEC_TEST_KEY"}.Resolve()
	require.NoError(t, err)
	require.Equal(t, "k1", v)
	_, err = spec.SecretRef{Env: "SPEC_TEST_MISSING"}.Resolve()
	require.ErrorContains(t, err, "SPEC_TEST_MISSING is not set")
	p := write(t, t.TempDir(), "key", "k2\n")
	v, err = spec.SecretRef{File: p}.Resolve()
	require.NoError(t, err)
	require.Equal(t, "k2", v)
	require.Equal(t, "env:SPEC_TEST_KEY", spec.SecretRef{Env: "SPEC_TEST_KEY"}.String())
}

func TestParseEvery(t *testing.T) {
	for in, ok := range map[string]bool{"15m": true, "4h": true, "1d": true, "30s": false, "x": false} {
		_, err := spec.ParseEvery(in)
		require.Equal(t, ok, err == nil, in)
	}
}

func TestBigQuerySpecs(t *testing.T) {
	bq := strings.NewReplacer("type: duckdb", "type: bigquery",
		"  duckdb: {path: .state/a.duckdb}", "  bigquery: {project: my-project, dataset: activations_state, location: US, maximumBytesBilled: 1000000000}").Replace(valid)
	acts, err := spec.Load(write(t, t.TempDir(), "a.yaml", bq))
	require.NoError(t, err)
	require.Equal(t, "activations_state", acts[0].State.BigQuery.Dataset)

	tests := []struct {
		name, from, to, want string
	}{
		{"missing state", "  bigquery: {project: my-project, dataset: activations_state, location: US, maximumBytesBilled: 1000000000}", "  duckdb: {path: x.duckdb}", "state.bigquery: is required"},
		{"bad dataset", "dataset: activations_state", "dataset: activations-state", "state.bigquery.dataset"},
		{"bad project", "project: my-project", "project: X", "state.bigquery.project"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := spec.Load(write(t, t.TempDir(), "a.yaml", strings.Replace(bq, tc.from, tc.to, 1)))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestFolderMountedConfigMap: a ConfigMap mounted by Kubernetes holds each key as a symlink to
// a hidden "..<timestamp>" directory (through "..data"); its specs load once, not twice.
func TestFolderMountedConfigMap(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_11_28_12_00_00.000000001")
	require.NoError(t, os.Mkdir(ts, 0o755))
	write(t, ts, "a.yaml", valid)
	require.NoError(t, os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink(filepath.Join("..data", "a.yaml"), filepath.Join(dir, "a.yaml")))
	write(t, dir, ".hidden.yaml", "not: a spec")
	acts, err := spec.Load(dir)
	require.NoError(t, err)
	require.Len(t, acts, 1)
	require.Equal(t, "users-to-iterable", acts[0].ID)
}

// A list activation needs no mapped fields and is in update mode unless it says otherwise.
func TestListActivationDefaults(t *testing.T) {
	src := strings.Replace(valid, "  mode: upsert\n", "  list: {name: VIP users}\n", 1)
	src = strings.Replace(src, "  fields:\n    - {column: first_name, field: firstName}\n", "", 1)
	acts, err := spec.Load(write(t, t.TempDir(), "a.yaml", src))
	require.NoError(t, err, src)
	d := acts[0].Destination
	require.Equal(t, spec.ModeUpdate, d.Mode)
	require.Equal(t, "VIP users", d.List.Name)
	require.True(t, d.List.Unsubscribes())
	require.Empty(t, d.Fields)
}

func TestCronAccepted(t *testing.T) {
	for _, c := range []string{"*/15 * * * *", "0 9-17 * * MON-FRI", "30 2 1,15 JAN-JUN 0", "0 0 L * ?", "5 4 * * 7", "0 */2 * * 1-5/2"} {
		src := strings.Replace(valid, "{every: 4h}", `{cron: "`+c+`"}`, 1)
		_, err := spec.Load(write(t, t.TempDir(), "a.yaml", src))
		require.NoError(t, err, c)
	}
}

// A key written in place of its reference is refused without printing any part of it.
func TestInlineAPIKeyIsNotEchoed(t *testing.T) {
	src := strings.Replace(valid, "{env: ITERABLE_API_KEY}", "sk_live_abcdef123", 1)
	_, err := spec.Load(write(t, t.TempDir(), "a.yaml", src))
	require.Error(t, err)
	require.Contains(t, err.Error(), "a.yaml:12: cannot decode a string into spec.SecretRef")
	require.Contains(t, err.Error(), "destination.iterable.apiKey")
	require.NotContains(t, err.Error(), "sk_")
	require.NotContains(t, err.Error(), "abcdef")
}
