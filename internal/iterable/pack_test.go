package iterable_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
)

const (
	prefixTrue = `{"createNewFields":true,"users":[`
	suffix     = `]}`
)

// userOfSize returns a user whose JSON encoding is exactly n bytes.
func userOfSize(t testing.TB, i, n int) iterable.User {
	t.Helper()
	u := iterable.User{Email: fmt.Sprintf("u%06d@example.com", i), DataFields: map[string]any{"pad": ""}}
	base, err := json.Marshal(u)
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, len(base))
	u.DataFields["pad"] = strings.Repeat("x", n-len(base))
	return u
}

func mustClient(t testing.TB, cfg iterable.Config) *iterable.Client {
	t.Helper()
	if cfg.BaseURL == "" {
		cfg.BaseURL = "http://127.0.0.1:1"
	}
	if cfg.APIKey == "" {
		cfg.APIKey = "key"
	}
	c, err := iterable.New(cfg)
	require.NoError(t, err)
	return c
}

func TestPack(t *testing.T) {
	const max = 4 * 1024 * 1024
	overhead := len(prefixTrue) + len(suffix)
	// Two users that fill a body to exactly max bytes: overhead + a + ',' + b.
	half := (max - overhead - 1) / 2
	rest := max - overhead - 1 - half

	tests := []struct {
		name         string
		perRequest   int
		sizes        []int // encoded size of each user
		wantBatches  [][]int
		wantOversize []int
	}{
		{name: "exactly the limit in one batch", sizes: []int{half, rest}, wantBatches: [][]int{{0, 1}}},
		{name: "one byte more splits", sizes: []int{half, rest + 1}, wantBatches: [][]int{{0}, {1}}},
		{name: "single user exactly at the limit", sizes: []int{max - overhead}, wantBatches: [][]int{{0}}},
		{name: "single user one byte over is oversize", sizes: []int{100, max - overhead + 1, 100},
			wantBatches: [][]int{{0, 2}}, wantOversize: []int{1}},
		{name: "users per request", perRequest: 2, sizes: []int{60, 60, 60, 60, 60},
			wantBatches: [][]int{{0, 1}, {2, 3}, {4}}},
		{name: "no records", sizes: nil, wantBatches: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustClient(t, iterable.Config{UsersPerRequest: tt.perRequest})
			var recs []iterable.Record
			for i, n := range tt.sizes {
				recs = append(recs, iterable.Record{Index: i, User: userOfSize(t, i, n)})
			}
			batches, oversize, err := c.Pack(recs, true)
			require.NoError(t, err)
			require.Equal(t, tt.wantOversize, oversize)
			var got [][]int
			for _, b := range batches {
				require.LessOrEqual(t, len(b.Body), max)
				var idx []int
				for _, r := range b.Records {
					idx = append(idx, r.Index)
				}
				got = append(got, idx)
				requireBodyMatches(t, b)
			}
			require.Equal(t, tt.wantBatches, got)
		})
	}
}

// requireBodyMatches checks that Body is exactly the documented request for Records.
func requireBodyMatches(t *testing.T, b iterable.Batch) {
	t.Helper()
	users := make([]iterable.User, len(b.Records))
	for i, r := range b.Records {
		users[i] = r.User
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(struct {
		CreateNewFields bool            `json:"createNewFields"`
		Users           []iterable.User `json:"users"`
	}{b.CreateNewFields, users}))
	require.Equal(t, strings.TrimSuffix(sb.String(), "\n"), string(b.Body))
}

func TestPackCreateNewFieldsAndEscaping(t *testing.T) {
	c := mustClient(t, iterable.Config{})
	yes := true
	recs := []iterable.Record{
		{Index: 7, User: iterable.User{UserID: "u<1>&", PreferUserID: &yes, DataFields: map[string]any{"b": 1, "a": nil}}},
		{Index: 3, User: iterable.User{Email: "x@example.com"}},
	}
	batches, oversize, err := c.Pack(recs, false)
	require.NoError(t, err)
	require.Empty(t, oversize)
	require.Len(t, batches, 1)
	require.False(t, batches[0].CreateNewFields)
	require.Equal(t,
		`{"createNewFields":false,"users":[{"userId":"u<1>&","preferUserId":true,"dataFields":{"a":null,"b":1}},{"email":"x@example.com"}]}`,
		string(batches[0].Body))
	requireBodyMatches(t, batches[0])
}

func TestPackEncodeErrorHasNoValue(t *testing.T) {
	c := mustClient(t, iterable.Config{})
	_, _, err := c.Pack([]iterable.Record{{Index: 5, User: iterable.User{Email: "alice@example.com", DataFields: map[string]any{"f": make(chan int)}}}}, true)
	require.Error(t, err)
	require.Contains(t, err.Error(), "record 5")
	require.NotContains(t, err.Error(), "alice")
}

func TestPackSeparatesRepeatedIdentifiers(t *testing.T) {
	c := mustClient(t, iterable.Config{})
	recs := []iterable.Record{
		{Index: 0, User: iterable.User{Email: "a@example.com"}},
		{Index: 1, User: iterable.User{UserID: "x"}},
		{Index: 2, User: iterable.User{Email: "A@Example.com"}}, // same user as 0
		{Index: 3, User: iterable.User{Email: "b@example.com", UserID: "x"}},
		{Index: 4, User: iterable.User{}},
		{Index: 5, User: iterable.User{}},
	}
	batches, _, err := c.Pack(recs, true)
	require.NoError(t, err)
	var got [][]int
	for _, b := range batches {
		var idx []int
		for _, r := range b.Records {
			idx = append(idx, r.Index)
		}
		got = append(got, idx)
	}
	require.Equal(t, [][]int{{0, 1}, {2, 3, 4, 5}}, got)
}
