package iterable

import (
	"encoding/json"
	"strings"
	"time"
)

// Type names of Iterable user fields, as GET /api/users/getFields reports them in
// {"fields": {name: type}}. Iterable fixes a field's type with the first non-null value it ever
// receives, project-wide; a later value of another type is refused (the user lands in
// failedUpdates.invalidData*, or the request in a 400 RequestFieldsTypesMismatched). The
// emulator uses exactly these names; the real API may report others (e.g. for geo-location
// fields), which no converted value matches.
const (
	TypeString  = "string"
	TypeLong    = "long"
	TypeDouble  = "double"
	TypeBoolean = "boolean"
	TypeDate    = "date"
	TypeObject  = "object"
	TypeArray   = "array"
)

// IterableTypeOf returns the Iterable type a field would get from v as its first value: v is what
// Value returns (anything else goes through Value first). It returns "" for nil, which creates no
// field and locks no type, and for a value Value refuses.
//
//   - string: "date" when in DateLayout (what Value makes of a time.Time), else "string".
//     Iterable may also type other date-shaped strings as dates; only this one is certain.
//   - bool: "boolean"; int64: "long"; float64: "double", integral or not (the body carries
//     5.0, never 5, precisely so that a DOUBLE column does not lock its field to long);
//     json.Number: "long" when an integer in the int64 range, else "double".
//   - map[string]any: "object"; []any: "array".
func IterableTypeOf(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		if isDate(x) {
			return TypeDate
		}
		return TypeString
	case bool:
		return TypeBoolean
	case int64:
		return TypeLong
	case float64:
		return TypeDouble
	case json.Number:
		if _, err := x.Int64(); err == nil && !strings.ContainsAny(string(x), ".eE") {
			return TypeLong
		}
		return TypeDouble
	case map[string]any:
		return TypeObject
	case []any:
		return TypeArray
	}
	c, err := Value(v)
	if err != nil {
		return ""
	}
	switch c.(type) {
	case nil, string, bool, int64, float64, json.Number, map[string]any, []any:
		return IterableTypeOf(c)
	}
	return ""
}

// FieldTypeAccepts reports whether a field locked to fieldType (a getFields type name) takes a
// value of valueType (from IterableTypeOf) without a type conflict: the same type, a long in a
// double field (a JSON integer is a valid double), or a date in a string field (a date-shaped
// string is still a string). An empty valueType (null) is always accepted. This is the rule the
// emulator applies; Iterable documents only that a field's type is fixed.
func FieldTypeAccepts(fieldType, valueType string) bool {
	switch {
	case valueType == "" || fieldType == valueType:
		return true
	case fieldType == TypeDouble && valueType == TypeLong:
		return true
	case fieldType == TypeString && valueType == TypeDate:
		return true
	}
	return false
}

// isDate recognises DateLayout, Iterable's canonical "yyyy-MM-dd HH:mm:ss ZZ".
func isDate(s string) bool {
	if len(s) != len(DateLayout) {
		return false
	}
	_, err := time.Parse(DateLayout, s)
	return err == nil
}
