package bigquery

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenRequest is a representative plan request, with names that need quoting and escaping.
func goldenRequest() warehouse.PlanRequest {
	return warehouse.PlanRequest{
		ActivationID: "crm-users", RunID: "run-1",
		Query:      "SELECT * FROM `acme-prod.crm.users` WHERE NOT deleted -- the model\n;\n",
		PrimaryKey: "user_id", Identifier: "email", IdentifierLowerCase: true,
		Fields: []warehouse.Field{
			{Column: "first_name", Field: "firstName"},
			{Column: "age", Field: "age"},
			{Column: "we`ird col", Field: `a/b~c"d'e`},
			{Column: "ünï", Field: "ünï cödé"},
		},
		ChunkRows: 500,
	}
}

func TestGoldenSQL(t *testing.T) {
	req := goldenRequest()
	fields, err := checkPlanRequest(req)
	require.NoError(t, err)
	bare := req
	bare.Identifier, bare.Fields, bare.FullResync, bare.IdentifierLowerCase = "", nil, true, false
	p := &Planner{project: "acme-prod", dataset: "activations"}
	id := req.ActivationID
	plan, state, rej := p.qualified(warehouse.PlanTable(id, req.RunID)), p.qualified(warehouse.StateTable(id)), p.qualified(RejectionsTable)
	week := int64(DefaultPlanExpiration.Seconds())
	tests := []struct {
		file string
		sql  string
	}{
		{"plan_validate.sql", snapshotSelect(req, fields)},
		{"plan.sql", planScript(req, fields, plan, state, rej, req.ChunkRows, week)},
		{"plan_full_resync_no_fields.sql", planScript(bare, nil, plan, state, rej, 10000, week)},
		{"read.sql", readChunkSQL(plan, "", false, fields)},
		{"read_known.sql", readChunkSQL(plan, p.qualified(warehouse.KnownTable(id, req.RunID)), true, fields)},
		{"commit.sql", commitScript(plan, state, rej)},
		{"rejections.sql", insertRejectionsSQL(rej)},
		{"rejections_upgrade.sql", upgradeRejectionsSQL(rej)},
		{"top_reasons.sql", topReasonsSQL(rej, true)},
		{"known.sql", knownScript(p.qualified(warehouse.KnownTable(id, req.RunID)), p.qualified(warehouse.KnownTable(id, req.RunID)+"_staging"), true, week)},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			got := tc.sql + "\n"
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err, "run go test -update to create it")
			require.Equal(t, string(want), got)
		})
	}
}

func TestEscape(t *testing.T) {
	tests := []struct{ in, ident, str string }{
		{"plain_name", "`plain_name`", "'plain_name'"},
		{"we`ird", "`we\\`ird`", "'we\\`ird'"},
		{`it's "q"`, "`it\\'s \\\"q\\\"`", `'it\'s \"q\"'`},
		{`back\slash`, "`back\\\\slash`", `'back\\slash'`},
		{"line\nbreak", "`line\\u000abreak`", `'line\u000abreak'`},
		{"ünï 😀", "`\\u00fcn\\u00ef \\U0001f600`", `'\u00fcn\u00ef \U0001f600'`},
		{"x'); DROP TABLE t; --", "`x\\'); DROP TABLE t; --`", `'x\'); DROP TABLE t; --'`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			require.Equal(t, tc.ident, quoteIdent(tc.in))
			require.Equal(t, tc.str, quoteString(tc.in))
		})
	}
}

func TestLabelValue(t *testing.T) {
	tests := []struct{ in, want string }{
		{"crm-users", "crm-users"},
		{"Run/ID:42", "run_id_42"},
		{"0190f7a2-6c3e-7d11-9a3b-1f2e3d4c5b6a", "0190f7a2-6c3e-7d11-9a3b-1f2e3d4c5b6a"},
		{string(make([]byte, 100)), "_______________________________________________________________"},
	}
	for _, tc := range tests {
		got := labelValue(tc.in)
		require.Equal(t, tc.want, got)
		require.LessOrEqual(t, len(got), 63)
	}
}

func TestWithhold(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Query error: Bad int64 value: top-secret at [3:5]", "Bad int64"},
		{`Could not cast literal "top-secret" to type INT64`, "Could not cast literal"},
		{"Division by zero: 42 / 0", "Division by zero"},
		{"Row 12 has value 'top-secret'", "query error"},
		{"", "query error"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, withhold(tc.in), tc.in)
	}
}

// TestPlanNumberingHasNoGlobalSort: an analytic function without PARTITION BY runs on one slot,
// so the plan script may use one only over the per-bucket counts (at most seqBuckets rows);
// ROW_NUMBER runs per bucket over keys only, and the wide planned rows take their seq by a join.
func TestPlanNumberingHasNoGlobalSort(t *testing.T) {
	req := goldenRequest()
	fields, err := checkPlanRequest(req)
	require.NoError(t, err)
	bare := req
	bare.Identifier, bare.Fields, bare.FullResync = "", nil, true
	p := &Planner{project: "acme-prod", dataset: "activations"}
	id := req.ActivationID
	plan, state, rej := p.qualified(warehouse.PlanTable(id, req.RunID)), p.qualified(warehouse.StateTable(id)), p.qualified(RejectionsTable)
	for name, script := range map[string]string{
		"fields":                 planScript(req, fields, plan, state, rej, 500, 3600),
		"no fields, full resync": planScript(bare, nil, plan, state, rej, 500, 3600),
	} {
		t.Run(name, func(t *testing.T) {
			over := regexp.MustCompile(`(?s)(\w+)\(([^()]*)\)\s+OVER\s*\(([^()]*)\)`)
			calls := over.FindAllStringSubmatch(script, -1)
			require.Len(t, calls, 2, "two analytic functions: the bucket offsets and the row numbers")
			for _, c := range calls {
				fn, window := c[1], c[3]
				if strings.HasPrefix(window, "PARTITION BY ") {
					require.Equal(t, "ROW_NUMBER", fn)
					require.Equal(t, "PARTITION BY keyed.bucket ORDER BY keyed.key", window)
					continue
				}
				require.Equal(t, "SUM(n) OVER (ORDER BY bucket)", c[0], "the only window without PARTITION BY")
			}
			require.Contains(t, script, "SUM(n) OVER (ORDER BY bucket) - n AS base\n  FROM (SELECT bucket, COUNT(*) AS n FROM keyed GROUP BY bucket)",
				"the unpartitioned window sees one row per bucket")
			require.Contains(t, script, "WITH keyed AS (\n  SELECT key, ABS(MOD(FARM_FINGERPRINT(key), 1024)) AS bucket\n  FROM "+
				plannedTable+" WHERE op <> 'refresh'\n)", "only keys are numbered, refreshed rows are not")
			require.Contains(t, script, "SELECT keyed.key, offsets.base + ROW_NUMBER() OVER (PARTITION BY keyed.bucket ORDER BY keyed.key) AS seq\n"+
				"FROM keyed JOIN offsets USING (bucket);", "seq = the bucket's offset + the row's number in its bucket")
			require.Contains(t, script, "FROM "+plannedTable+" AS n\nLEFT JOIN "+seqTable+" AS q ON q.key = n.key\n",
				"the wide rows take their seq by key")
			require.Contains(t, script, "SELECT q.seq, DIV(q.seq - 1, 500) AS chunk,")
			require.NotContains(t, script, "ROW_NUMBER() OVER (PARTITION BY op", "no longer one partition per op")
		})
	}
}
