package iterable_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

func typeCases() []struct {
	name string
	in   any
	want string
} {
	when := time.Date(2023, 2, 5, 20, 42, 10, 0, time.UTC)
	return []struct {
		name string
		in   any
		want string
	}{
		{name: "null", in: nil, want: ""},
		{name: "string", in: "pro", want: iterable.TypeString},
		{name: "date-shaped string", in: "2023-02-05 20:42:10 +00:00", want: iterable.TypeDate},
		{name: "ISO string", in: "2023-02-05T20:42:10Z", want: iterable.TypeString},
		{name: "time", in: when, want: iterable.TypeDate},
		{name: "bool", in: true, want: iterable.TypeBoolean},
		{name: "int64", in: int64(5), want: iterable.TypeLong},
		{name: "int32", in: int32(5), want: iterable.TypeLong},
		{name: "fractional float", in: 2.5, want: iterable.TypeDouble},
		{name: "integral float is a double (sent as 5.0)", in: 5.0, want: iterable.TypeDouble},
		{name: "float32", in: float32(1), want: iterable.TypeDouble},
		{name: "json integer", in: json.Number("12"), want: iterable.TypeLong},
		{name: "json fraction", in: json.Number("1.5"), want: iterable.TypeDouble},
		{name: "json exponent", in: json.Number("1e3"), want: iterable.TypeDouble},
		{name: "big integer in range", in: big.NewInt(1 << 40), want: iterable.TypeLong},
		{name: "big integer beyond long", in: new(big.Int).Lsh(big.NewInt(1), 70), want: iterable.TypeDouble},
		{name: "object", in: map[string]any{"a": int64(1)}, want: iterable.TypeObject},
		{name: "array", in: []any{"a", "b"}, want: iterable.TypeArray},
		{name: "typed list", in: []string{"a"}, want: iterable.TypeArray},
		{name: "unsupported", in: make(chan int), want: ""},
	}
}

func TestIterableTypeOf(t *testing.T) {
	for _, tt := range typeCases() {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, iterable.IterableTypeOf(tt.in))
		})
	}
}

// The type IterableTypeOf predicts is the one the emulator locks the field to, through Value,
// Pack and getFields.
func TestIterableTypeOfMatchesGetFields(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectEmail, iterabletest.Options{}, iterable.Config{})
	want := map[string]string{}
	fields := map[string]any{}
	for i, tt := range typeCases() {
		if tt.want == "" {
			continue
		}
		v, err := iterable.Value(tt.in)
		require.NoError(t, err, tt.name)
		name := fmt.Sprintf("f%d", i)
		fields[name] = v
		want[name] = tt.want
	}
	_, err := e.send(t, true, iterable.User{Email: "types@example.com", DataFields: fields})
	require.NoError(t, err)
	got, err := e.client.GetFields(context.Background())
	require.NoError(t, err)
	for name, typ := range want {
		require.Equal(t, typ, got[name], name)
	}
}

func TestFieldTypeAccepts(t *testing.T) {
	tests := []struct {
		field, value string
		want         bool
	}{
		{iterable.TypeString, iterable.TypeString, true},
		{iterable.TypeString, iterable.TypeDate, true},
		{iterable.TypeDate, iterable.TypeString, false},
		{iterable.TypeDouble, iterable.TypeLong, true},
		{iterable.TypeLong, iterable.TypeDouble, false},
		{iterable.TypeLong, iterable.TypeString, false},
		{iterable.TypeBoolean, iterable.TypeBoolean, true},
		{iterable.TypeObject, iterable.TypeArray, false},
		{iterable.TypeLong, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.field+"/"+tt.value, func(t *testing.T) {
			require.Equal(t, tt.want, iterable.FieldTypeAccepts(tt.field, tt.value))
		})
	}
}
