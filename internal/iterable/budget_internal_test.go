package iterable

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Several requests in flight when the project is overloaded all get a 429: the rate must be
// halved once, not once per request.
func TestBudgetHalvesOncePerOverload(t *testing.T) {
	b := NewBudgets().Budget("k", EndpointBulkUpdate, 8)
	ctx := context.Background()
	var epochs []uint64
	for range 3 {
		e, err := b.acquire(ctx)
		require.NoError(t, err)
		epochs = append(epochs, e)
	}
	for _, e := range epochs {
		b.rateLimited(e, 0)
	}
	require.Equal(t, 4.0, b.Rate())

	e, err := b.acquire(ctx)
	require.NoError(t, err)
	b.rateLimited(e, 0)
	require.Equal(t, 2.0, b.Rate(), "a request sent after the decrease decreases again")
}

func TestSanitizeMsg(t *testing.T) {
	tests := []struct {
		name   string
		msg    string
		fields map[string]any
		values []string
		want   string
	}{
		{name: "plain", msg: "Invalid API key", want: "Invalid API key"},
		{name: "email", msg: "Invalid email: alice@example.com.", want: "Invalid email: <email>"},
		{name: "quoted value", msg: `Field "age" got value "forty"`, fields: map[string]any{"age": 1}, want: `Field "age" got value "<value>"`},
		{name: "identifier anywhere", msg: "user USER-42 failed", values: []string{"user-42"}, want: "user <redacted> failed"},
		{name: "long", msg: strings.Repeat("ab ", 150), want: strings.Repeat("ab ", 100) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, sanitizeMsg(tt.msg, tt.fields, tt.values...))
		})
	}
}
