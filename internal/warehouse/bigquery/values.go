package bigquery

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/civil"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Column is one column of a query's result, with its GoogleSQL type name.
type Column struct {
	Name string `json:"name"`
	Type string `json:"type"` // e.g. INT64, STRUCT<a INT64, b STRING>, ARRAY<STRING>, RANGE<DATE>
}

// standardTypes maps the REST API's legacy type names to GoogleSQL names.
var standardTypes = map[bigquery.FieldType]string{
	bigquery.IntegerFieldType: "INT64", bigquery.FloatFieldType: "FLOAT64", bigquery.BooleanFieldType: "BOOL",
	bigquery.StringFieldType: "STRING", bigquery.BytesFieldType: "BYTES", bigquery.TimestampFieldType: "TIMESTAMP",
	bigquery.DateFieldType: "DATE", bigquery.TimeFieldType: "TIME", bigquery.DateTimeFieldType: "DATETIME",
	bigquery.NumericFieldType: "NUMERIC", bigquery.BigNumericFieldType: "BIGNUMERIC",
	bigquery.GeographyFieldType: "GEOGRAPHY", bigquery.JSONFieldType: "JSON", bigquery.IntervalFieldType: "INTERVAL",
}

// typeName is the GoogleSQL name of a column's type.
func typeName(fs *bigquery.FieldSchema) string {
	var t string
	switch fs.Type {
	case bigquery.RecordFieldType:
		parts := make([]string, len(fs.Schema))
		for i, sub := range fs.Schema {
			parts[i] = sub.Name + " " + typeName(sub)
		}
		t = "STRUCT<" + strings.Join(parts, ", ") + ">"
	case bigquery.RangeFieldType:
		elem := "?"
		if fs.RangeElementType != nil {
			elem = standardName(fs.RangeElementType.Type)
		}
		t = "RANGE<" + elem + ">"
	default:
		t = standardName(fs.Type)
	}
	if fs.Repeated {
		t = "ARRAY<" + t + ">"
	}
	return t
}

func standardName(t bigquery.FieldType) string {
	if s, ok := standardTypes[t]; ok {
		return s
	}
	return string(t)
}

// kindOf classifies a column in warehouse-neutral terms; ok is false for a type this package
// does not know (a type BigQuery added later), whose values it cannot promise to convert.
func kindOf(fs *bigquery.FieldSchema) (kind warehouse.Kind, ok bool) {
	if fs.Repeated {
		return warehouse.KindArray, true
	}
	switch fs.Type {
	case bigquery.IntegerFieldType:
		return warehouse.KindInteger, true
	case bigquery.FloatFieldType, bigquery.NumericFieldType, bigquery.BigNumericFieldType:
		return warehouse.KindFloat, true
	case bigquery.BooleanFieldType:
		return warehouse.KindBoolean, true
	case bigquery.StringFieldType, bigquery.BytesFieldType, bigquery.TimeFieldType,
		bigquery.GeographyFieldType, bigquery.IntervalFieldType:
		return warehouse.KindString, true
	case bigquery.DateFieldType, bigquery.DateTimeFieldType, bigquery.TimestampFieldType:
		return warehouse.KindTimestamp, true
	case bigquery.RecordFieldType, bigquery.RangeFieldType:
		return warehouse.KindObject, true
	case bigquery.JSONFieldType:
		return warehouse.KindOther, true
	}
	return warehouse.KindOther, false
}

// normalize turns a value of the BigQuery client into plain Go types, so that the destination
// side never sees a BigQuery type:
//
//	INT64 → int64, FLOAT64 → float64, BOOL → bool, STRING and GEOGRAPHY (WKT) → string
//	NUMERIC, BIGNUMERIC (*big.Rat) → the nearest float64 (Iterable stores doubles; cast to
//	  STRING in the model to keep more than ~15 significant digits)
//	BYTES → standard base64 string
//	TIMESTAMP → time.Time in UTC; DATE, DATETIME → time.Time at that wall time in UTC
//	TIME → "15:04:05" with a fraction only when there is one ("15:04:05.25")
//	INTERVAL → its canonical string, e.g. "1-2 3 4:5:6.5"
//	RANGE → map{"start": …, "end": …} (nil for an unbounded end)
//	STRUCT → map[string]any, ARRAY → []any, each element normalised
//	JSON → parsed: map[string]any, []any, string, bool, nil, int64 for integral numbers that
//	  fit, else float64
func normalize(v bigquery.Value, fs *bigquery.FieldSchema) any {
	if v == nil {
		return nil
	}
	if fs != nil && fs.Repeated {
		list, _ := v.([]bigquery.Value)
		elem := *fs
		elem.Repeated = false
		out := make([]any, len(list))
		for i, e := range list {
			out[i] = normalize(e, &elem)
		}
		return out
	}
	switch x := v.(type) {
	case []bigquery.Value: // a STRUCT, with its fields in schema order
		if fs == nil || fs.Type != bigquery.RecordFieldType {
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = normalize(e, nil)
			}
			return out
		}
		m := make(map[string]any, len(fs.Schema))
		for i, sub := range fs.Schema {
			if i < len(x) {
				m[sub.Name] = normalize(x[i], sub)
			}
		}
		return m
	case time.Time:
		return x.UTC()
	case civil.Date:
		return time.Date(x.Year, x.Month, x.Day, 0, 0, 0, 0, time.UTC)
	case civil.DateTime:
		return time.Date(x.Date.Year, x.Date.Month, x.Date.Day, x.Time.Hour, x.Time.Minute, x.Time.Second,
			x.Time.Nanosecond, time.UTC)
	case civil.Time:
		return time.Date(1, 1, 1, x.Hour, x.Minute, x.Second, x.Nanosecond, time.UTC).Format("15:04:05.999999999")
	case *big.Rat:
		f, _ := x.Float64()
		return f
	case []byte:
		return base64.StdEncoding.EncodeToString(x)
	case *bigquery.IntervalValue:
		return x.String()
	case bigquery.IntervalValue:
		return x.String()
	case *bigquery.RangeValue:
		var elem *bigquery.FieldSchema
		if fs != nil && fs.RangeElementType != nil {
			elem = &bigquery.FieldSchema{Type: fs.RangeElementType.Type}
		}
		return map[string]any{"start": normalize(x.Start, elem), "end": normalize(x.End, elem)}
	case string:
		if fs != nil && fs.Type == bigquery.JSONFieldType {
			if parsed, ok := parseJSON(x); ok {
				return parsed
			}
		}
		return x
	}
	return v
}

// parseJSON decodes a JSON value, keeping integers exact when they fit an int64.
func parseJSON(s string) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	return numbers(v), true
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}
