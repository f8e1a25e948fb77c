package duckdb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

const (
	testUUID  = "0189d5b6-3f7a-7c3e-9a6b-1234567890ab"
	nanOrInf  = "float is NaN or infinite, which JSON cannot carry"
	geometry  = "duckdb.unsendable.Value: GEOMETRY values arrive as WKB bytes, which Iterable cannot read; cast the column to VARCHAR in the model (WKT)"
	deadBytes = "3q0=" // base64 of 0xDEAD
)

// TestValueTypeMatrix pins, for every DuckDB type, what Iterable receives: one model row with a
// column per case goes through Plan and ReadChunk (the plan table keeps the model's types) and
// then through iterable.Value, as the sync sends it.
func TestValueTypeMatrix(t *testing.T) {
	tests := []struct {
		name    string
		expr    string
		typ     string // the type Plan reports
		want    any
		wantErr string // iterable.Value's error, instead of want
	}{
		{"BOOLEAN", "true", "BOOLEAN", true, ""},
		{"TINYINT", "CAST(-8 AS TINYINT)", "TINYINT", int64(-8), ""},
		{"SMALLINT", "CAST(-300 AS SMALLINT)", "SMALLINT", int64(-300), ""},
		{"INTEGER", "CAST(70000 AS INTEGER)", "INTEGER", int64(70000), ""},
		{"BIGINT", "CAST(-9223372036854775808 AS BIGINT)", "BIGINT", int64(-9223372036854775808), ""},
		{"HUGEINT in int64", "CAST(42 AS HUGEINT)", "HUGEINT", int64(42), ""},
		{"HUGEINT beyond int64", "CAST('-170141183460469231731687303715884105728' AS HUGEINT)", "HUGEINT",
			json.Number("-170141183460469231731687303715884105728"), ""},
		{"UTINYINT", "CAST(255 AS UTINYINT)", "UTINYINT", int64(255), ""},
		{"USMALLINT", "CAST(65535 AS USMALLINT)", "USMALLINT", int64(65535), ""},
		{"UINTEGER", "CAST(4294967295 AS UINTEGER)", "UINTEGER", int64(4294967295), ""},
		{"UBIGINT in int64", "CAST(9223372036854775807 AS UBIGINT)", "UBIGINT", int64(9223372036854775807), ""},
		{"UBIGINT beyond int64", "CAST(18446744073709551615 AS UBIGINT)", "UBIGINT", nil,
			"unsigned integer exceeds Iterable's long range"},
		{"UHUGEINT beyond int64", "CAST('340282366920938463463374607431768211455' AS UHUGEINT)", "UHUGEINT",
			json.Number("340282366920938463463374607431768211455"), ""},
		{"BIGNUM", "CAST('123456789012345678901234567890' AS BIGNUM)", "BIGNUM", json.Number("123456789012345678901234567890"), ""},
		{"FLOAT", "CAST(1.5 AS FLOAT)", "FLOAT", 1.5, ""},
		{"FLOAT widened", "CAST(0.1 AS FLOAT)", "FLOAT", float64(float32(0.1)), ""},
		{"DOUBLE", "CAST(2.25 AS DOUBLE)", "DOUBLE", 2.25, ""},
		{"DOUBLE NaN", "CAST('NaN' AS DOUBLE)", "DOUBLE", nil, nanOrInf},
		{"DOUBLE Inf", "CAST('Infinity' AS DOUBLE)", "DOUBLE", nil, nanOrInf},
		{"FLOAT -Inf", "CAST('-Infinity' AS FLOAT)", "FLOAT", nil, nanOrInf},
		{"DOUBLE NaN in a list", "[CAST('NaN' AS DOUBLE)]", "DOUBLE[]", nil, "list element 0: " + nanOrInf},
		{"DECIMAL(4,1)", "CAST(123.4 AS DECIMAL(4,1))", "DECIMAL(4,1)", 123.4, ""},
		{"DECIMAL(18,3)", "CAST(123456789012345.678 AS DECIMAL(18,3))", "DECIMAL(18,3)", 123456789012345.678, ""},
		{"DECIMAL(38,10) beyond float64", "CAST('1234567890123456789012345678.0123456789' AS DECIMAL(38,10))", "DECIMAL(38,10)",
			1.2345678901234568e27, ""},
		{"VARCHAR", "'héllo'", "VARCHAR", "héllo", ""},
		{"BLOB", "unhex('DEAD')", "BLOB", deadBytes, ""},
		{"BLOB of text", "CAST('abc' AS BLOB)", "BLOB", "YWJj", ""},
		{"UUID", "CAST('" + testUUID + "' AS UUID)", "UUID", testUUID, ""},
		{"UUID NULL", "CAST(NULL AS UUID)", "UUID", nil, ""},
		{"DATE", "DATE '2024-02-29'", "DATE", "2024-02-29 00:00:00 +00:00", ""},
		{"TIME", "TIME '13:45:10'", "TIME", "13:45:10", ""},
		{"TIME with fraction", "TIME '13:45:10.250001'", "TIME", "13:45:10.250001", ""},
		{"TIMETZ", "CAST('13:45:10+02:30' AS TIMETZ)", "TIME WITH TIME ZONE", "13:45:10+02:30", ""},
		{"TIMETZ negative", "CAST('13:45:10.5-05' AS TIMETZ)", "TIME WITH TIME ZONE", "13:45:10.5-05:00", ""},
		{"TIMETZ UTC", "CAST('13:45:10+00' AS TIMETZ)", "TIME WITH TIME ZONE", "13:45:10+00:00", ""},
		{"TIMESTAMP", "TIMESTAMP '2024-02-03 04:05:06.789'", "TIMESTAMP", "2024-02-03 04:05:06 +00:00", ""},
		{"TIMESTAMP_S", "CAST('2024-02-03 04:05:06' AS TIMESTAMP_S)", "TIMESTAMP_S", "2024-02-03 04:05:06 +00:00", ""},
		{"TIMESTAMP_MS", "CAST('2024-02-03 04:05:06.789' AS TIMESTAMP_MS)", "TIMESTAMP_MS", "2024-02-03 04:05:06 +00:00", ""},
		{"TIMESTAMP_NS", "CAST('2024-02-03 04:05:06.123456789' AS TIMESTAMP_NS)", "TIMESTAMP_NS", "2024-02-03 04:05:06 +00:00", ""},
		{"TIMESTAMPTZ", "TIMESTAMPTZ '2024-02-03 04:05:06+02'", "TIMESTAMP WITH TIME ZONE", "2024-02-03 02:05:06 +00:00", ""},
		{"INTERVAL", "INTERVAL '1 year 2 months 3 days 04:05:06.5'", "INTERVAL", "P1Y2M3DT4H5M6.5S", ""},
		{"INTERVAL negative", "INTERVAL '-90 minutes'", "INTERVAL", "PT-1H-30M", ""},
		{"INTERVAL mixed signs", "INTERVAL '1 month' - INTERVAL '2 days'", "INTERVAL", "P1M-2D", ""},
		{"INTERVAL zero", "INTERVAL '0 seconds'", "INTERVAL", "PT0S", ""},
		{"ENUM", `CAST('c)' AS ENUM('a,b', 'c)', 'd''e'))`, `ENUM('a,b', 'c)', 'd''e')`, "c)", ""},
		{"BIT", "CAST('0101' AS BIT)", "BIT", "0101", ""},
		{"JSON", `CAST('{"a": [1, true, null], "b": "x"}' AS JSON)`, "JSON",
			map[string]any{"a": []any{float64(1), true, nil}, "b": "x"}, ""},
		{"JSON integer beyond float64", `CAST('12345678901234567890' AS JSON)`, "JSON", float64(12345678901234567890), ""},
		{"LIST", "[1, 2]", "INTEGER[]", []any{int64(1), int64(2)}, ""},
		{"LIST of UUID with NULL", "[CAST('" + testUUID + "' AS UUID), NULL]", "UUID[]", []any{testUUID, nil}, ""},
		{"ARRAY", "CAST([1, 2, 3] AS INTEGER[3])", "INTEGER[3]", []any{int64(1), int64(2), int64(3)}, ""},
		{"ARRAY of BLOB", "CAST([unhex('DEAD'), NULL] AS BLOB[2])", "BLOB[2]", []any{deadBytes, nil}, ""},
		{"nested LIST", "[[TIME '01:02:03']]", "TIME[][]", []any{[]any{"01:02:03"}}, ""},
		{"STRUCT", "{'a': CAST('" + testUUID + "' AS UUID), 'b': [unhex('DEAD')], 'n': 1}",
			"STRUCT(a UUID, b BLOB[], n INTEGER)", map[string]any{"a": testUUID, "b": []any{deadBytes}, "n": int64(1)}, ""},
		{"STRUCT with quoted names", `{'a b': 1, 'c"d': unhex('DEAD'), 'e,f': INTERVAL '1 day'}`,
			`STRUCT("a b" INTEGER, "c""d" BLOB, "e,f" INTERVAL)`, map[string]any{"a b": int64(1), `c"d`: deadBytes, "e,f": "P1D"}, ""},
		{"STRUCT in ARRAY", "CAST([{'t': TIMETZ '01:02:03+01'}] AS STRUCT(t TIMETZ)[1])", "STRUCT(t TIME WITH TIME ZONE)[1]",
			[]any{map[string]any{"t": "01:02:03+01:00"}}, ""},
		{"MAP(VARCHAR, UUID)", "MAP {'k': CAST('" + testUUID + "' AS UUID)}", "MAP(VARCHAR, UUID)",
			map[string]any{"k": testUUID}, ""},
		{"MAP(INTEGER, VARCHAR)", "MAP {1: 'x', 20: 'y'}", "MAP(INTEGER, VARCHAR)", map[string]any{"1": "x", "20": "y"}, ""},
		{"MAP(DOUBLE, BLOB[])", "MAP {1.5::DOUBLE: [unhex('DEAD')]}", "MAP(DOUBLE, BLOB[])", map[string]any{"1.5": []any{deadBytes}}, ""},
		{"MAP(DATE, TIME)", "MAP {DATE '2024-01-02': TIME '01:02:03'}", "MAP(DATE, TIME)", map[string]any{"2024-01-02": "01:02:03"}, ""},
		{"MAP(TIMESTAMPTZ, BOOLEAN)", "MAP {TIMESTAMPTZ '2024-01-02 03:04:05.5+01': true}", "MAP(TIMESTAMP WITH TIME ZONE, BOOLEAN)",
			map[string]any{"2024-01-02 02:04:05.5+00:00": true}, ""},
		{"MAP(TIME, INTEGER)", "MAP {TIME '01:02:03': 1}", "MAP(TIME, INTEGER)", map[string]any{"01:02:03": int64(1)}, ""},
		{"MAP(DECIMAL, INTEGER)", "MAP {CAST(1.50 AS DECIMAL(4,2)): 1}", "MAP(DECIMAL(4,2), INTEGER)", map[string]any{"1.5": int64(1)}, ""},
		{"MAP(HUGEINT, INTEGER)", "MAP {CAST('170141183460469231731687303715884105727' AS HUGEINT): 1}", "MAP(HUGEINT, INTEGER)",
			map[string]any{"170141183460469231731687303715884105727": int64(1)}, ""},
		{"MAP(ENUM, INTEGER)", "MAP {CAST('a' AS ENUM('a')): 1}", "MAP(ENUM('a'), INTEGER)", map[string]any{"a": int64(1)}, ""},
		{"MAP(INTERVAL, INTEGER)", "MAP {INTERVAL '1 day': 1}", "MAP(INTERVAL, INTEGER)", map[string]any{"P1D": int64(1)}, ""},
		{"MAP with NaN value", "MAP {'k': CAST('NaN' AS DOUBLE)}", "MAP(VARCHAR, DOUBLE)", nil, "map value: " + nanOrInf},
		{"UNION", "CAST(union_value(num := 2) AS UNION(num INTEGER, str VARCHAR))", "UNION(num INTEGER, str VARCHAR)", int64(2), ""},
		{"UNION other member", "CAST(union_value(str := 'x') AS UNION(num INTEGER, str VARCHAR))", "UNION(num INTEGER, str VARCHAR)", "x", ""},
		{"UNION converted member", `CAST(union_value("b lob" := unhex('DEAD')) AS UNION(u UUID, "b lob" BLOB))`,
			`UNION(u UUID, "b lob" BLOB)`, deadBytes, ""},
		{"MAP of UNION", "MAP {'k': CAST(union_value(u := CAST('" + testUUID + "' AS UUID)) AS UNION(u UUID, n INTEGER))}",
			"MAP(VARCHAR, UNION(u UUID, n INTEGER))", map[string]any{"k": testUUID}, ""},
		{"STRUCT of MAP", "{'m': MAP {1: 2}}", "STRUCT(m MAP(INTEGER, INTEGER))", map[string]any{"m": map[string]any{"1": int64(2)}}, ""},
		{"GEOMETRY", "CAST('POINT(1 2)' AS GEOMETRY)", "GEOMETRY", nil, geometry},
	}
	var sel []string
	var fields []warehouse.Field
	for i, tc := range tests {
		col, field := fmt.Sprintf("c%d", i), fmt.Sprintf("f%d", i)
		sel = append(sel, tc.expr+" AS "+col)
		fields = append(fields, warehouse.Field{Column: col, Field: field})
	}
	p := open(t, duckdb.Options{})
	req := baseRequest("types", "SELECT 1 AS id, 'a@example.com' AS email, "+strings.Join(sel, ", "))
	req.Fields = fields
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	types := map[string]string{}
	for _, c := range plan.Columns {
		types[c.Field] = c.Type
	}
	rows := readAll(t, p, req, plan)
	require.Len(t, rows, 1)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field := fields[i].Field
			require.Equal(t, tc.typ, types[field])
			raw, _ := rows[0].Values.Get(field)
			got, err := iterable.Value(raw)
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// TestDescribeModelTypes checks what `starter validate` learns about a DuckDB model: every
// column with its type, and why the ones Iterable cannot receive cannot be sent.
func TestDescribeModelTypes(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "users.csv"), []byte("id,email\n1,a@example.com\n"), 0o600))
	src := filepath.Join(dir, "src.duckdb")
	writeDB(t, src, `CREATE TABLE extra AS SELECT 1 AS id, CAST('`+testUUID+`' AS UUID) AS u`)
	query := `SELECT u.id, u.email, x.u AS uid, unhex('DEAD') AS bytes,
		{'a b': TIME '01:02:03', 'c"d': MAP {'k': [1]}} AS st,
		CAST(union_value(n := 1) AS UNION(n INTEGER, s VARCHAR)) AS un,
		CAST('x' AS ENUM('a,b', 'c)', 'x')) AS en,
		CAST(1 AS VARIANT) AS va, CAST('12:00:00' AS TIME_NS) AS tn, CAST('POINT(1 2)' AS GEOMETRY) AS geo,
		MAP {x.u: 1} AS uuid_keys, MAP {unhex('AA'): 'v'} AS blob_keys, [{'v': CAST(1 AS VARIANT)}] AS deep
		FROM read_csv('users.csv') AS u JOIN extra AS x USING (id) -- a trailing comment`
	cols, err := duckdb.DescribeModel(context.Background(), duckdb.Options{SourcePath: src}, dir, query)
	require.NoError(t, err)
	require.Equal(t, []duckdb.ModelColumn{
		{Name: "id", Type: "BIGINT"},
		{Name: "email", Type: "VARCHAR"},
		{Name: "uid", Type: "UUID"},
		{Name: "bytes", Type: "BLOB"},
		{Name: "st", Type: `STRUCT("a b" TIME, "c""d" MAP(VARCHAR, INTEGER[]))`},
		{Name: "un", Type: "UNION(n INTEGER, s VARCHAR)"},
		{Name: "en", Type: `ENUM('a,b', 'c)', 'x')`},
		{Name: "va", Type: "VARIANT", Unsupported: "DuckDB's Go driver cannot read VARIANT values; cast the column in the model (e.g. to JSON or VARCHAR)"},
		{Name: "tn", Type: "TIME_NS", Unsupported: "DuckDB's Go driver cannot read TIME_NS values; cast the column in the model to TIME (or to VARCHAR to keep nanoseconds)"},
		{Name: "geo", Type: "GEOMETRY", Unsupported: "GEOMETRY values arrive as WKB bytes, which Iterable cannot read; cast the column to VARCHAR in the model (WKT)"},
		{Name: "uuid_keys", Type: "MAP(UUID, INTEGER)", Unsupported: "DuckDB's Go driver cannot read MAP keys of type UUID; cast the column in the model (e.g. to MAP(VARCHAR, INTEGER))"},
		{Name: "blob_keys", Type: "MAP(BLOB, VARCHAR)", Unsupported: "DuckDB's Go driver cannot read MAP keys of type BLOB; cast the column in the model (e.g. to MAP(VARCHAR, VARCHAR))"},
		{Name: "deep", Type: "STRUCT(v VARIANT)[]", Unsupported: "it holds STRUCT(v VARIANT): it holds VARIANT: DuckDB's Go driver cannot read VARIANT values; cast the column in the model (e.g. to JSON or VARCHAR)"},
	}, cols)
}

func TestDescribeModelTypeErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, baseDir, query, want string
	}{
		{"syntax", dir, "SELEC 1", "Parser Error"},
		{"missing file", dir, "SELECT * FROM read_csv('nope.csv')", "nope.csv"},
		{"missing table", dir, "SELECT * FROM users", "users"},
		{"empty", dir, " ;", "the query is empty"},
		{"comma in folder", "/tmp/a,b", "SELECT 1", "contains a comma"},
		// Binding read the file (JSON schema detection): the message about its data is withheld.
		{"bad data", dir, "SELECT * FROM read_json('bad.json')", "Invalid Input Error while reading the model's files (details withheld"},
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.json"), []byte("{\"a\": 1}\nsecret-value\n"), 0o600))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := duckdb.DescribeModel(context.Background(), duckdb.Options{}, tc.baseDir, tc.query)
			require.ErrorIs(t, err, warehouse.ErrInvalidModel)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "secret-value")
		})
	}
}
