package iterable

import (
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"
)

// DateLayout is Iterable's canonical date format (yyyy-MM-dd HH:mm:ss ZZ); values in it are
// typed "date" by Iterable.
const DateLayout = "2006-01-02 15:04:05 -07:00"

// Value converts a warehouse driver value into what Iterable accepts in dataFields. Errors name
// the Go type, never the value.
func Value(v any) (any, error) {
	// Values that stay as they are return v itself: boxing them again would allocate.
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		return v, nil
	case bool:
		return v, nil
	case int64:
		return v, nil
	case int:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		return uintValue(x)
	case uint:
		return uintValue(uint64(x))
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return floatValue(x)
		}
		return v, nil
	case float32:
		return floatValue(float64(x))
	case time.Time:
		return formatDate(x), nil
	case *time.Time:
		if x == nil {
			return nil, nil
		}
		return formatDate(*x), nil
	case []byte:
		if !utf8.Valid(x) {
			return nil, fmt.Errorf("[]byte value is not valid UTF-8")
		}
		return string(x), nil
	case json.Number:
		// Already JSON; check it is a number so the body stays valid.
		if !validNumber(string(x)) {
			return nil, fmt.Errorf("json.Number value is not a number")
		}
		return x, nil
	case *big.Int:
		if x == nil {
			return nil, nil
		}
		return bigIntValue(x), nil
	case big.Int:
		return bigIntValue(&x), nil
	case *big.Float:
		if x == nil {
			return nil, nil
		}
		f, _ := x.Float64()
		return floatValue(f)
	case []any:
		return listValue(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			c, err := Value(e)
			if err != nil {
				return nil, fmt.Errorf("map value: %w", err)
			}
			out[k] = c
		}
		return out, nil
	case [16]byte:
		return uuidString(x), nil
	case driver.Valuer:
		// sql.Null*, *duckdb.UUID and friends say themselves what they are.
		if rv := reflect.ValueOf(x); rv.Kind() == reflect.Pointer && rv.IsNil() {
			return nil, nil
		}
		dv, err := x.Value()
		if err != nil {
			return nil, fmt.Errorf("%T.Value: %w", v, err)
		}
		if _, same := dv.(driver.Valuer); same {
			return nil, fmt.Errorf("unsupported type %T", v)
		}
		return Value(dv)
	case interface{ Float64() float64 }:
		// duckdb.Decimal and similar fixed-point types.
		return floatValue(x.Float64())
	}
	return reflectValue(v)
}

// formatDate is t.UTC().Format(DateLayout), written without parsing the layout for the years
// 0 to 9999 (the others take Format's path).
func formatDate(t time.Time) string {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.Format(DateLayout)
	}
	hour, minute, sec := t.Clock()
	b := [...]byte{'0', '0', '0', '0', '-', '0', '0', '-', '0', '0', ' ', '0', '0', ':', '0', '0', ':', '0', '0', ' ', '+', '0', '0', ':', '0', '0'}
	b[0], b[1], b[2], b[3] = byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10)
	put2 := func(i, n int) { b[i], b[i+1] = byte('0'+n/10), byte('0'+n%10) }
	put2(5, int(month))
	put2(8, day)
	put2(11, hour)
	put2(14, minute)
	put2(17, sec)
	return string(b[:])
}

func uintValue(x uint64) (any, error) {
	if x > math.MaxInt64 {
		return nil, fmt.Errorf("unsigned integer exceeds Iterable's long range")
	}
	return int64(x), nil
}

func floatValue(f float64) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("float is NaN or infinite, which JSON cannot carry")
	}
	return f, nil
}

func bigIntValue(x *big.Int) any {
	if x.IsInt64() {
		return x.Int64()
	}
	return json.Number(x.String())
}

func listValue(x []any) (any, error) {
	out := make([]any, len(x))
	for i, e := range x {
		c, err := Value(e)
		if err != nil {
			return nil, fmt.Errorf("list element %d: %w", i, err)
		}
		out[i] = c
	}
	return out, nil
}

func uuidString(u [16]byte) string {
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], u[10:])
	return string(buf[:])
}

// reflectValue handles named types by their kind: duckdb.UUID ([16]byte), duckdb.Map
// (map[any]any), typed lists, pointers, and decimal Stringers.
func reflectValue(v any) (any, error) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			return nil, nil
		}
		return Value(rv.Elem().Interface())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return uintValue(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return floatValue(rv.Float())
	case reflect.Bool:
		return rv.Bool(), nil
	case reflect.String:
		if s, ok := v.(fmt.Stringer); ok {
			return s.String(), nil
		}
		return rv.String(), nil
	case reflect.Array:
		if rv.Len() == 16 && rv.Type().Elem().Kind() == reflect.Uint8 {
			var u [16]byte
			reflect.Copy(reflect.ValueOf(&u).Elem(), rv)
			return uuidString(u), nil
		}
		return reflectList(rv)
	case reflect.Slice:
		if rv.IsNil() {
			return nil, nil
		}
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return Value(rv.Bytes())
		}
		return reflectList(rv)
	case reflect.Map:
		if rv.IsNil() {
			return nil, nil
		}
		out := make(map[string]any, rv.Len())
		it := rv.MapRange()
		for it.Next() {
			c, err := Value(it.Value().Interface())
			if err != nil {
				return nil, fmt.Errorf("map value: %w", err)
			}
			k := it.Key().Interface()
			ks, ok := k.(string)
			if !ok {
				ks = fmt.Sprint(k)
			}
			out[ks] = c
		}
		return out, nil
	}
	if s, ok := v.(fmt.Stringer); ok {
		// A fixed-point type that only prints itself (e.g. a decimal): accept it when it is a
		// finite number.
		if f, err := strconv.ParseFloat(s.String(), 64); err == nil {
			return floatValue(f)
		}
	}
	return nil, fmt.Errorf("unsupported type %T", v)
}

func reflectList(rv reflect.Value) (any, error) {
	out := make([]any, rv.Len())
	for i := range out {
		c, err := Value(rv.Index(i).Interface())
		if err != nil {
			return nil, fmt.Errorf("list element %d: %w", i, err)
		}
		out[i] = c
	}
	return out, nil
}
