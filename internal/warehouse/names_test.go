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
