package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

func TestValidateBigQueryColumns(t *testing.T) {
	act := spec.Activation{ID: "bq", File: "bq.yaml",
		Source: spec.Source{PrimaryKey: "id"},
		Destination: spec.Destination{Identifier: spec.Identifier{Column: "email"},
			Fields: []spec.Field{{Column: "plan", Field: "plan"}, {Column: "vec", Field: "vec"}}}}
	tests := []struct {
		name string
		res  bigquery.DryRunResult
		want []string
	}{
		{"all there", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "email"}, {Name: "plan"}, {Name: "vec"}}}, nil},
		{"missing columns", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "vec"}}},
			[]string{`destination.identifier.column: column "email" is not in the model`, `destination.fields[0].column: column "plan" is not in the model`}},
		{"unsupported mapped type", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "email"}, {Name: "plan"}, {Name: "vec"}},
			Unsupported: []string{"column vec: VECTOR cannot be sent", "column other: X cannot be sent"}},
			[]string{"destination.fields[1].column: column vec: VECTOR cannot be sent"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkModelColumns(act, tc.res)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), "bq.yaml: activation bq")
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			require.NotContains(t, err.Error(), "column other")
		})
	}
	require.Equal(t, "4.0 GiB", humanBytes(4<<30))
}

func TestValidateDuckDBColumns(t *testing.T) {
	act := spec.Activation{ID: "dk", File: "dk.yaml",
		Source: spec.Source{PrimaryKey: "id"},
		Destination: spec.Destination{Identifier: spec.Identifier{Column: "email"},
			Fields: []spec.Field{{Column: "plan", Field: "plan"}, {Column: "geo", Field: "geo"}}}}
	geo := duckdb.ModelColumn{Name: "geo", Type: "GEOMETRY", Unsupported: "GEOMETRY values arrive as WKB bytes"}
	tests := []struct {
		name string
		cols []duckdb.ModelColumn
		want []string
	}{
		{"all there", []duckdb.ModelColumn{{Name: "id"}, {Name: "email"}, {Name: "plan"}, {Name: "geo", Type: "VARCHAR"}}, nil},
		{"missing columns", []duckdb.ModelColumn{{Name: "id"}, {Name: "geo"}},
			[]string{`destination.identifier.column: column "email" is not in the model`, `destination.fields[0].column: column "plan" is not in the model`}},
		{"unsupported mapped type", []duckdb.ModelColumn{{Name: "id"}, {Name: "email"}, {Name: "plan"}, geo,
			{Name: "other", Type: "VARIANT", Unsupported: "cannot read VARIANT"}},
			[]string{"destination.fields[1].column: column geo: GEOMETRY cannot be sent: GEOMETRY values arrive as WKB bytes"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkDuckDBColumns(act, tc.cols)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), "dk.yaml: activation dk")
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			require.NotContains(t, err.Error(), "column other", "an unmapped column is not a problem")
		})
	}
}

const duckSpec = `id: %s
source:
  type: duckdb
  query: |
    SELECT *, CAST('POINT(1 2)' AS GEOMETRY) AS geo, MAP {CAST(id AS VARCHAR): CAST(1 AS VARIANT)} AS attrs
    FROM read_csv('data/users.csv', header = true)
  primaryKey: id
state:
  duckdb: {path: .state/state.duckdb}
destination:
  type: iterable
  iterable: {region: us, apiKey: {env: ITERABLE_API_KEY}, projectType: hybrid}
  mode: upsert
  identifier: {column: email, field: email}
  fields:
%s`

// TestValidateDuckDBModels runs validate's DESCRIBE of DuckDB models from spec files: relative
// paths resolve against the spec's folder, and mapped columns that cannot be sent are named.
func TestValidateDuckDBModels(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data", "users.csv"), []byte("id,email,name\n1,a@example.com,Ann\n"), 0o600))
	write := func(id, fields string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, id+".yaml"), []byte(fmt.Sprintf(duckSpec, id, fields)), 0o600))
	}
	write("good", "    - {column: name, field: firstName}\n")
	write("bad", "    - {column: name, field: firstName}\n    - {column: geo, field: location}\n"+
		"    - {column: attrs, field: attrs}\n    - {column: missing, field: missing}\n")
	acts, err := spec.Load(dir)
	require.NoError(t, err)
	require.Len(t, acts, 2)

	var out bytes.Buffer
	err = dryRunModels(context.Background(), acts, &out)
	require.Error(t, err)
	msg := err.Error()
	for _, w := range []string{
		filepath.Join(dir, "bad.yaml") + ": activation bad: ",
		"destination.fields[1].column: column geo: GEOMETRY cannot be sent: GEOMETRY values arrive as WKB bytes",
		"destination.fields[2].column: column attrs: MAP(VARCHAR, VARIANT) cannot be sent: it holds VARIANT: DuckDB's Go driver cannot read VARIANT values",
		`destination.fields[3].column: column "missing" is not in the model`,
	} {
		require.Contains(t, msg, w)
	}
	require.NotContains(t, msg, "activation good")
	require.Equal(t, "    good: columns: id BIGINT, email VARCHAR, name VARCHAR, geo GEOMETRY, attrs MAP(VARCHAR, VARIANT)\n", out.String())
	_, err = os.Stat(filepath.Join(dir, ".state"))
	require.True(t, os.IsNotExist(err), "validate creates no state file")

	// A model that does not bind is reported with its activation.
	acts[0].Source.Query = "SELECT * FROM read_csv('data/nope.csv')"
	err = dryRunModels(context.Background(), acts[:1], &out)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "activation "+acts[0].ID+": DuckDB DESCRIBE: describe model: invalid model:"), err.Error())
}

// validate asks Iterable whether a list given by id exists and is static, when the key is here.
func TestValidateListsByID(t *testing.T) {
	emu := iterabletest.NewServer(iterabletest.Options{})
	defer emu.Close()
	emu.AddProject("list-key", iterabletest.ProjectHybrid)
	static := emu.AddList("list-key", "VIP", false)
	dynamic := emu.AddList("list-key", "Dyn", true)
	t.Setenv("VALIDATE_LIST_KEY", "list-key")
	act := func(id int64, env string) spec.Activation {
		return spec.Activation{ID: fmt.Sprintf("l%d", id), File: "a.yaml", Destination: spec.Destination{
			Iterable: spec.Iterable{Region: "us", BaseURL: emu.URL(), APIKey: spec.SecretRef{Env: env}},
			List:     &spec.List{ID: id}}}
	}
	var out bytes.Buffer
	require.NoError(t, checkLists(context.Background(), []spec.Activation{act(static, "VALIDATE_LIST_KEY")}, &out))
	require.Contains(t, out.String(), "is a static list")
	err := checkLists(context.Background(), []spec.Activation{act(dynamic, "VALIDATE_LIST_KEY"), act(static+dynamic+7, "VALIDATE_LIST_KEY")}, &out)
	require.Error(t, err)
	require.Contains(t, err.Error(), "is a Dynamic list")
	require.Contains(t, err.Error(), "has no list")
	out.Reset()
	require.NoError(t, checkLists(context.Background(), []spec.Activation{act(static, "NO_SUCH_KEY_VAR")}, &out))
	require.Contains(t, out.String(), "not checked: the API key")
}
