package iterable

import (
	"encoding/json"
	"maps"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func stdEncode(t *testing.T, v any) string {
	t.Helper()
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(v))
	return strings.TrimSuffix(sb.String(), "\n")
}

// The hand-written encoder must produce encoding/json's bytes, integral floats aside.
func TestUserEncoderMatchesEncodingJSON(t *testing.T) {
	yes := false
	users := []User{
		{},
		{Email: "a@example.com"},
		{UserID: "id", PreferUserID: &yes, DataFields: map[string]any{}},
		{Email: "x", DataFields: map[string]any{
			"s":       "quote \" backslash \\ slash / <tag> & amp",
			"ctl":     "\x00\x01\b\f\n\r\t\x1f\x7f",
			"utf8":    "héllo wörld ✓ 😀 \u2028 \u2029",
			"invalid": "a\xffb\xc3",
			"i":       int64(math.MinInt64),
			"int":     42,
			"i32":     int32(-7),
			"f":       1.25,
			"tiny":    1.5e-7,
			"huge":    1.5e22,
			"neg":     -0.001,
			"f32":     float32(0.1),
			"b":       true,
			"n":       nil,
			"num":     json.Number("-12.5e+3"),
			"list":    []any{1.5, "x", nil, []any{}, map[string]any{"z": false, "a": "b"}},
			"nested":  map[string]any{"k\"ey": map[string]any{"deep": []any{int64(1)}}},
			"typed":   []string{"fallback"},
			"big":     big.NewInt(12),
			"time":    time.Date(2023, 1, 2, 3, 4, 5, 0, time.UTC),
			"nilMap":  map[string]any(nil),
			"nilList": []any(nil),
			"":        "empty key",
		}},
	}
	r := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		users = append(users, User{Email: string(b), DataFields: map[string]any{string(b): string(b), "f": r.NormFloat64()}})
	}
	enc := newUserEncoder()
	for _, u := range users {
		got, err := enc.appendUser(nil, &u)
		require.NoError(t, err)
		require.Equal(t, stdEncode(t, u), string(got))
		// The same user with its fields as names and values (what a warehouse row gives) is
		// written byte for byte the same.
		if u.DataFields == nil {
			continue
		}
		asFields := u
		asFields.DataFields = nil
		for _, name := range slices.Sorted(maps.Keys(u.DataFields)) {
			asFields.Fields.Names = append(asFields.Fields.Names, name)
			asFields.Fields.Values = append(asFields.Fields.Values, u.DataFields[name])
		}
		got, err = enc.appendUser(nil, &asFields)
		require.NoError(t, err)
		require.Equal(t, stdEncode(t, u), string(got), "as Fields")
		if len(u.DataFields) > 0 {
			require.Equal(t, u.FieldMap(), asFields.FieldMap())
		}
		require.Equal(t, len(u.DataFields), asFields.FieldCount())
	}
}

// Fields whose names are out of order, repeated or not one per value are refused, not written
// as JSON Iterable would read differently.
func TestUserEncoderRefusesMalformedFields(t *testing.T) {
	tests := []struct {
		name string
		f    Fields
	}{
		{name: "unsorted", f: Fields{Names: []string{"b", "a"}, Values: []any{1, 2}}},
		{name: "repeated", f: Fields{Names: []string{"a", "a"}, Values: []any{1, 2}}},
		{name: "more values", f: Fields{Names: []string{"a"}, Values: []any{1, 2}}},
		{name: "more names", f: Fields{Names: []string{"a", "b"}, Values: []any{1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newUserEncoder().appendUser(nil, &User{Email: "a@example.com", Fields: tt.f})
			require.ErrorContains(t, encodeError(err), "dataFields")
		})
	}
}

func TestUserEncoderIntegralFloats(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{0.0, "0.0"},
		{5.0, "5.0"},
		{-3.0, "-3.0"},
		{float32(2), "2.0"},
		{1e20, "100000000000000000000.0"},
		{1e21, "1e+21"},
		{1e-7, "1e-7"},
		{2.5, "2.5"},
		{int64(5), "5"},
	}
	enc := newUserEncoder()
	for _, tt := range tests {
		got, err := enc.appendValue(nil, tt.in, 0)
		require.NoError(t, err)
		require.Equal(t, tt.want, string(got))
	}
}

func TestUserEncoderErrors(t *testing.T) {
	cyclic := map[string]any{}
	cyclic["self"] = cyclic
	tests := []struct {
		name string
		v    any
		want string
	}{
		{name: "NaN", v: math.NaN(), want: "NaN"},
		{name: "Inf", v: float32(math.Inf(1)), want: "infinite"},
		{name: "bad number", v: json.Number("12abc"), want: "not a number"},
		{name: "cycle", v: cyclic, want: "nested too deeply"},
		{name: "chan", v: make(chan int), want: "unsupported type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newUserEncoder().appendUser(nil, &User{Email: "secret@example.com", DataFields: map[string]any{"f": tt.v}})
			require.ErrorContains(t, encodeError(err), tt.want)
			require.NotContains(t, encodeError(err).Error(), "secret")
		})
	}
}

func TestValidNumber(t *testing.T) {
	for _, ok := range []string{"0", "-0", "1", "-12.5", "1e3", "1E+3", "1.5e-7", "123456789012345678901234567890"} {
		require.True(t, validNumber(ok), ok)
	}
	for _, bad := range []string{"", "-", "01", "1.", ".5", "1e", "1e+", "+1", "NaN", "Inf", "0x10", "1_000", "true", `"1"`, "1 "} {
		require.False(t, validNumber(bad), bad)
	}
}
