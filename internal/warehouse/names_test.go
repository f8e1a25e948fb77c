package warehouse

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValueColumn(t *testing.T) {
	valid := regexp.MustCompile(`^v_[0-9a-f]{16}$`)
	names := []string{"", "a", "A", "email", "Email", "EMAIL", "first name", "ünï cödé", "emoji 😀", "new\nline",
		strings.Repeat("f", 149), strings.Repeat("f", 150), strings.Repeat("long", 250), strings.Repeat("é", 5000)}
	seen := map[string]string{}
	for _, n := range names {
		col := ValueColumn(n)
		require.Regexp(t, valid, col, "a short column name of safe characters, whatever the field name (%d bytes)", len(n))
		require.LessOrEqual(t, len(col), 300, "BigQuery's column name limit")
		require.Equal(t, col, ValueColumn(n), "deterministic: another worker reads the plan by it")
		// Both warehouses match column names case-insensitively: names differing only in case
		// must not meet there.
		folded := strings.ToLower(col)
		other, dup := seen[folded]
		require.False(t, dup, "%q and %q share the column %s", other, n, col)
		seen[folded] = n
	}
	// Pinned: plan tables written by a worker of this version are read by the next one.
	require.Equal(t, "v_82244417f956ac7c", ValueColumn("email"))
}

func TestCheckPlanRequestValueColumns(t *testing.T) {
	req := PlanRequest{ActivationID: "a", RunID: "r", Query: "SELECT 1", PrimaryKey: "id",
		Fields: []Field{{Column: "e", Field: "email"}, {Column: "E", Field: "Email"}}}
	fields, err := CheckPlanRequest(req)
	require.NoError(t, err, "fields differing only in case are distinct")
	require.Len(t, fields, 2)
}

func TestValues(t *testing.T) {
	v := ValuesOf(map[string]any{"b": int64(2), "a": "x", "c": nil})
	require.Equal(t, []string{"a", "b", "c"}, v.Names, "names sorted, as a reader gives them")
	require.Equal(t, []any{"x", int64(2), nil}, v.Vals)
	require.Equal(t, 3, v.Len())
	tests := []struct {
		name   string
		want   any
		wantOK bool
	}{
		{"a", "x", true}, {"b", int64(2), true}, {"c", nil, true}, {"d", nil, false}, {"", nil, false},
	}
	for _, tt := range tests {
		got, ok := v.Get(tt.name)
		require.Equal(t, tt.wantOK, ok, tt.name)
		require.Equal(t, tt.want, got, tt.name)
	}
	require.Equal(t, map[string]any{"a": "x", "b": int64(2), "c": nil}, v.Map())
	require.Equal(t, Values{}, ValuesOf(nil))
	require.Equal(t, map[string]any{}, Values{}.Map())
	_, ok := Values{}.Get("a")
	require.False(t, ok)
}
