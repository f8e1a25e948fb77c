package iterable_test

import (
	"database/sql"
	"encoding/json"
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/duckdb/duckdb-go/v2"
	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
)

type myInt int16

type decimalText string

func (d decimalText) String() string { return string(d) }

type printer struct{ secret string }

func (p printer) String() string { return p.secret }

func TestValue(t *testing.T) {
	uuid := duckdb.UUID{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	const uuidText = "123e4567-e89b-12d3-a456-426614174000"
	huge, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	ts := time.Date(2023, 2, 5, 21, 42, 10, 999, time.FixedZone("CET", 3600))
	var nilTime *time.Time
	var nilBig *big.Int

	tests := []struct {
		name    string
		in      any
		want    any
		wantErr string // substring of the error; "" = no error
	}{
		{name: "nil", in: nil, want: nil},
		{name: "string", in: "héllo", want: "héllo"},
		{name: "bool", in: true, want: true},
		{name: "int", in: 42, want: int64(42)},
		{name: "int8", in: int8(-8), want: int64(-8)},
		{name: "int16", in: int16(16), want: int64(16)},
		{name: "int32", in: int32(-32), want: int64(-32)},
		{name: "int64", in: int64(math.MinInt64), want: int64(math.MinInt64)},
		{name: "uint8", in: uint8(255), want: int64(255)},
		{name: "uint16", in: uint16(65535), want: int64(65535)},
		{name: "uint32", in: uint32(math.MaxUint32), want: int64(math.MaxUint32)},
		{name: "uint64 max int64", in: uint64(math.MaxInt64), want: int64(math.MaxInt64)},
		{name: "uint64 overflow", in: uint64(math.MaxInt64) + 1, wantErr: "exceeds"},
		{name: "uint overflow", in: uint(math.MaxUint64), wantErr: "exceeds"},
		{name: "named int", in: myInt(7), want: int64(7)},
		{name: "float64", in: 1.5, want: 1.5},
		{name: "float32", in: float32(0.25), want: 0.25},
		{name: "NaN", in: math.NaN(), wantErr: "NaN"},
		{name: "+Inf", in: math.Inf(1), wantErr: "infinite"},
		{name: "-Inf float32", in: float32(math.Inf(-1)), wantErr: "infinite"},
		{name: "bytes utf8", in: []byte("abc"), want: "abc"},
		{name: "bytes invalid", in: []byte{0xff, 0xfe}, wantErr: "UTF-8"},
		{name: "time in UTC", in: ts, want: "2023-02-05 20:42:10 +00:00"},
		{name: "nil *time.Time", in: nilTime, want: nil},
		{name: "*time.Time", in: &ts, want: "2023-02-05 20:42:10 +00:00"},
		{name: "big.Int small", in: big.NewInt(-12), want: int64(-12)},
		{name: "big.Int huge", in: huge, want: json.Number("123456789012345678901234567890")},
		{name: "nil big.Int", in: nilBig, want: nil},
		{name: "duckdb.Decimal", in: duckdb.Decimal{Width: 10, Scale: 2, Value: big.NewInt(12345)}, want: 123.45},
		{name: "duckdb.UUID", in: uuid, want: uuidText},
		{name: "*duckdb.UUID", in: &uuid, want: uuidText},
		{name: "[16]byte", in: [16]byte(uuid), want: uuidText},
		{name: "list", in: []any{int32(1), "a", nil, []any{true}}, want: []any{int64(1), "a", nil, []any{true}}},
		{name: "typed list", in: []int32{1, 2}, want: []any{int64(1), int64(2)}},
		{name: "map", in: map[string]any{"a": int8(1), "b": map[string]any{"c": float32(0.5)}},
			want: map[string]any{"a": int64(1), "b": map[string]any{"c": 0.5}}},
		{name: "duckdb.Map", in: duckdb.Map{int32(1): "x", "k": uint16(2)}, want: map[string]any{"1": "x", "k": int64(2)}},
		{name: "sql.NullString valid", in: sql.NullString{String: "s", Valid: true}, want: "s"},
		{name: "sql.NullInt64 null", in: sql.NullInt64{}, want: nil},
		{name: "decimal stringer", in: decimalText("-12.50"), want: "-12.50"},
		{name: "json.Number", in: json.Number("1e3"), want: json.Number("1e3")},
		{name: "list with bad element", in: []any{1, math.NaN()}, wantErr: "list element 1"},
		{name: "map with bad value", in: map[string]any{"secret-key": struct{}{}}, wantErr: "unsupported type struct {}"},
		{name: "unknown struct", in: duckdb.Interval{Days: 1}, wantErr: "unsupported type duckdb.Interval"},
		{name: "chan", in: make(chan int), wantErr: "unsupported type chan int"},
		{name: "stringer that is not a number", in: printer{secret: "alice@example.com"}, wantErr: "unsupported type iterable_test.printer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := iterable.Value(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				require.Contains(t, err.Error(), tt.wantErr)
				require.NotContains(t, err.Error(), "alice")
				require.NotContains(t, err.Error(), "secret-key")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			// Whatever Value returns must encode as JSON.
			_, err = json.Marshal(got)
			require.NoError(t, err)
		})
	}
}

// A decimal that only prints itself becomes a float64, like duckdb.Decimal.
type printedDecimal struct{ v string }

func (d printedDecimal) String() string { return d.v }

func TestValueDecimalStringer(t *testing.T) {
	got, err := iterable.Value(printedDecimal{"-12.50"})
	require.NoError(t, err)
	require.Equal(t, -12.5, got)
}
