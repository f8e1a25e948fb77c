package bigquery

import (
	"math/big"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/civil"
	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

// TestTypeConversion pins, for every BigQuery type, the value the client returns, the plain Go
// value a Row carries, the type name Plan reports and its kind.
func TestTypeConversion(t *testing.T) {
	f := func(typ bigquery.FieldType) *bigquery.FieldSchema { return &bigquery.FieldSchema{Name: "c", Type: typ} }
	rat := func(s string) *big.Rat { r, _ := new(big.Rat).SetString(s); return r }
	record := &bigquery.FieldSchema{Name: "c", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
		{Name: "a", Type: bigquery.IntegerFieldType},
		{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
		{Name: "d", Type: bigquery.DateFieldType},
	}}
	repeated := &bigquery.FieldSchema{Name: "c", Type: bigquery.StringFieldType, Repeated: true}
	repeatedRecord := &bigquery.FieldSchema{Name: "c", Type: bigquery.RecordFieldType, Repeated: true,
		Schema: bigquery.Schema{{Name: "n", Type: bigquery.NumericFieldType}}}
	rangeOf := func(typ bigquery.FieldType) *bigquery.FieldSchema {
		return &bigquery.FieldSchema{Name: "c", Type: bigquery.RangeFieldType, RangeElementType: &bigquery.RangeElementType{Type: typ}}
	}
	ts := time.Date(2024, 2, 3, 4, 5, 6, 789000000, time.UTC)
	tests := []struct {
		name     string
		fs       *bigquery.FieldSchema
		in       bigquery.Value
		want     any
		typeName string
		kind     warehouse.Kind
	}{
		{"INT64", f(bigquery.IntegerFieldType), int64(42), int64(42), "INT64", warehouse.KindInteger},
		{"FLOAT64", f(bigquery.FloatFieldType), 1.5, 1.5, "FLOAT64", warehouse.KindFloat},
		{"NUMERIC", f(bigquery.NumericFieldType), rat("12.34"), 12.34, "NUMERIC", warehouse.KindFloat},
		{"BIGNUMERIC beyond float precision", f(bigquery.BigNumericFieldType), rat("12345678901234567890.123456789"),
			1.2345678901234567e19, "BIGNUMERIC", warehouse.KindFloat},
		{"BOOL", f(bigquery.BooleanFieldType), true, true, "BOOL", warehouse.KindBoolean},
		{"STRING", f(bigquery.StringFieldType), "text", "text", "STRING", warehouse.KindString},
		{"BYTES", f(bigquery.BytesFieldType), []byte{0xff, 0x00, 'a'}, "/wBh", "BYTES", warehouse.KindString},
		{"TIME", f(bigquery.TimeFieldType), civil.Time{Hour: 15, Minute: 4, Second: 5}, "15:04:05", "TIME", warehouse.KindString},
		{"TIME with fraction", f(bigquery.TimeFieldType), civil.Time{Hour: 1, Minute: 2, Second: 3, Nanosecond: 250000000},
			"01:02:03.25", "TIME", warehouse.KindString},
		{"GEOGRAPHY", f(bigquery.GeographyFieldType), "POINT(1 2)", "POINT(1 2)", "GEOGRAPHY", warehouse.KindString},
		{"INTERVAL", f(bigquery.IntervalFieldType), &bigquery.IntervalValue{Years: 1, Months: 2, Days: 3, Hours: 4},
			"1-2 3 4:0:0", "INTERVAL", warehouse.KindString},
		{"DATE", f(bigquery.DateFieldType), civil.Date{Year: 2024, Month: 2, Day: 3},
			time.Date(2024, 2, 3, 0, 0, 0, 0, time.UTC), "DATE", warehouse.KindTimestamp},
		{"DATETIME", f(bigquery.DateTimeFieldType), civil.DateTimeOf(ts), ts, "DATETIME", warehouse.KindTimestamp},
		{"TIMESTAMP", f(bigquery.TimestampFieldType), ts.In(time.FixedZone("CET", 3600)), ts, "TIMESTAMP", warehouse.KindTimestamp},
		{"JSON", f(bigquery.JSONFieldType), `{"x":[1,true,"s",1.5,null],"big":9007199254740993}`,
			map[string]any{"x": []any{int64(1), true, "s", 1.5, nil}, "big": int64(9007199254740993)}, "JSON", warehouse.KindOther},
		{"JSON scalar", f(bigquery.JSONFieldType), `"s"`, "s", "JSON", warehouse.KindOther},
		{"STRUCT", record, []bigquery.Value{int64(1), []bigquery.Value{"x", "y"}, civil.Date{Year: 2020, Month: 1, Day: 2}},
			map[string]any{"a": int64(1), "tags": []any{"x", "y"}, "d": time.Date(2020, 1, 2, 0, 0, 0, 0, time.UTC)},
			"STRUCT<a INT64, tags ARRAY<STRING>, d DATE>", warehouse.KindObject},
		{"ARRAY", repeated, []bigquery.Value{"a", "b"}, []any{"a", "b"}, "ARRAY<STRING>", warehouse.KindArray},
		{"empty ARRAY", repeated, []bigquery.Value{}, []any{}, "ARRAY<STRING>", warehouse.KindArray},
		{"ARRAY of STRUCT", repeatedRecord, []bigquery.Value{[]bigquery.Value{rat("0.5")}},
			[]any{map[string]any{"n": 0.5}}, "ARRAY<STRUCT<n NUMERIC>>", warehouse.KindArray},
		{"RANGE<DATE>", rangeOf(bigquery.DateFieldType),
			&bigquery.RangeValue{Start: civil.Date{Year: 2024, Month: 1, Day: 1}},
			map[string]any{"start": time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), "end": nil}, "RANGE<DATE>", warehouse.KindObject},
		{"RANGE<TIMESTAMP>", rangeOf(bigquery.TimestampFieldType), &bigquery.RangeValue{Start: ts, End: ts},
			map[string]any{"start": ts, "end": ts}, "RANGE<TIMESTAMP>", warehouse.KindObject},
		{"NULL", f(bigquery.StringFieldType), nil, nil, "STRING", warehouse.KindString},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, normalize(tc.in, tc.fs))
			require.Equal(t, tc.typeName, typeName(tc.fs))
			kind, ok := kindOf(tc.fs)
			require.True(t, ok)
			require.Equal(t, tc.kind, kind)
			require.Empty(t, unsupported("column c", tc.fs))
		})
	}
}

func TestUnknownTypeIsUnsupported(t *testing.T) {
	fs := &bigquery.FieldSchema{Name: "s", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
		{Name: "ok", Type: bigquery.StringFieldType}, {Name: "odd", Type: "VECTOR", Repeated: true}}}
	require.Equal(t, []string{"column s.odd: ARRAY<VECTOR> cannot be sent: unknown BigQuery type (cast it in the model, e.g. to STRING)"},
		unsupported("column s", fs))
	kind, ok := kindOf(&bigquery.FieldSchema{Type: "VECTOR"})
	require.False(t, ok)
	require.Equal(t, warehouse.KindOther, kind)
}
