package bigquery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

// TestGoldenRunsSQL pins the run log's SQL (go test -update rewrites the files).
func TestGoldenRunsSQL(t *testing.T) {
	p := &Planner{project: "acme-prod", dataset: "activations"}
	runs := p.qualified(RunsTable)
	for file, sql := range map[string]string{
		"runs_record.sql":    recordRunSQL(runs),
		"runs_select.sql":    runsSQL(runs),
		"runs_upgrade.sql":   upgradeRunsSQL(runs, addedRunColumns()),
		"runs_send_rate.sql": lastSendRateSQL(runs),
	} {
		t.Run(file, func(t *testing.T) {
			path := filepath.Join("testdata", file)
			got := sql + "\n"
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err, "run go test -update to create it")
			require.Equal(t, string(want), got)
		})
	}
}

// TestRunParams: one typed parameter per column, named like it, NULL where the record has no
// value, so the MERGE inserts exactly the columns the table has.
func TestRunParams(t *testing.T) {
	sql := recordRunSQL("`p`.`d`.`runs`")
	cols := warehouse.RunColumns()
	params := runParams(warehouse.RunRecord{ActivationID: "a", RunID: "r", Event: warehouse.RunEventPaused})
	require.Len(t, params, len(cols))
	for i, c := range cols {
		require.Equal(t, c.Name, params[i].Name)
		require.Regexp(t, `\(@`+c.Name+`,|\s@`+c.Name+`[,)]`, sql, "the value of %s", c.Name)
	}
	require.Equal(t, len(cols)+4, strings.Count(sql, "@"), "each column once, and the four key columns in ON")
	require.Len(t, runsSchema, len(cols))
}

func TestBillingKey(t *testing.T) {
	run := warehouse.PlanTable("crm-users", "run-1")
	tests := []struct {
		name string
		j    job
		want string
	}{
		{"plan", job{step: "plan", activationID: "crm-users", runID: "run-1", table: run}, run},
		{"a read names the plan table only", job{step: "read", activationID: "crm-users", table: run}, run},
		{"rejections", job{step: "rejections", activationID: "crm-users", runID: "run-1"}, run},
		{"known identifiers", job{step: "load-identifiers", activationID: "crm-users", runID: "run-1",
			table: warehouse.KnownTable("crm-users", "run-1")}, run},
		{"commit under a pseudo-run id", job{step: "commit", activationID: "crm-users", runID: "run-1/operator-skip",
			table: run}, run},
		{"the run log's own jobs", job{step: stepRecordRun, activationID: "crm-users", runID: "run-1"}, ""},
		{"runs", job{step: stepRuns, activationID: "crm-users"}, ""},
		{"no activation", job{step: "upgrade"}, ""},
		{"another activation's table", job{step: "read", activationID: "crm-users", table: warehouse.PlanTable("other", "run-1")}, ""},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, billingKey(tc.j), tc.name)
	}
}

func TestBilledRunsBounded(t *testing.T) {
	var b billedRuns
	for i := range maxBilledRuns + 10 {
		b.add(warehouse.PlanTable("crm-users", string(rune('a'+i%26))+strings.Repeat("x", i)), 1)
		if i == 0 {
			b.add(warehouse.PlanTable("crm-users", "kept"), 5)
		}
		if i%100 == 0 {
			b.add(warehouse.PlanTable("crm-users", "kept"), 1) // touched: never the oldest
		}
	}
	require.Len(t, b.runs, maxBilledRuns)
	require.Equal(t, int64(5+11), b.get(warehouse.PlanTable("crm-users", "kept")))
	require.Zero(t, b.get(warehouse.PlanTable("crm-users", "a")), "the least recently billed run was forgotten")
	b.forget(warehouse.PlanTable("crm-users", "kept"))
	require.Zero(t, b.get(warehouse.PlanTable("crm-users", "kept")))
	var none *billedRuns
	none.add("x", 1)
	require.Zero(t, none.get("x"))
}

// addedRunColumns are the run log's columns an earlier version's table lacks.
func addedRunColumns() []warehouse.RunColumn {
	var out []warehouse.RunColumn
	for _, c := range warehouse.RunColumns() {
		if c.Added {
			out = append(out, c)
		}
	}
	return out
}
