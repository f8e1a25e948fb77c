package warehouse

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestRunColumnsRoundTrip(t *testing.T) {
	r := RunRecord{ActivationID: "a", RunID: "r", Event: RunEventEnded, At: time.Unix(10, 0).UTC(), Trigger: TriggerUI,
		State: RunStateCompleted, Planned: OpCounts{Added: 1, Changed: 2, Removed: 3}, PauseCauses: []string{"volume"},
		PlanSeconds: 0.5, ListID: 9, SendRate: 4.9}
	cells := r.Values()
	require.Len(t, cells, len(RunColumns()))
	names := map[string]bool{}
	for i, c := range RunColumns() {
		require.False(t, names[c.Name], "column %s twice", c.Name)
		names[c.Name] = true
		if c.Required {
			require.NotNil(t, cells[i], c.Name)
		}
	}
	back, err := RunRecordFrom(cells)
	require.NoError(t, err)
	require.Equal(t, r, back)

	empty := RunRecord{Event: RunEventPaused}.Values()
	for i, c := range RunColumns() {
		switch c.Name {
		case "workflow_id", "started_at", "ended_at", "pause_reason", "list_id", "at", "send_rate":
			require.Nil(t, empty[i], "%s is NULL when unset", c.Name)
		case "pause_causes":
			require.Equal(t, []string{}, empty[i], "an empty list, never NULL")
		}
	}

	// Drivers' forms: []any lists, narrower integers, NULLs.
	for i, c := range RunColumns() {
		switch {
		case c.Type == RunStrings:
			cells[i] = []any{"volume"}
		case c.Name == "list_id":
			cells[i] = int32(9)
		case c.Name == "send_rate":
			cells[i] = float32(4.5) // exact in float32
			r.SendRate = 4.5
		}
	}
	back, err = RunRecordFrom(cells)
	require.NoError(t, err)
	require.Equal(t, r, back)
	_, err = RunRecordFrom(cells[1:])
	require.ErrorContains(t, err, "columns")
	cells[0] = 42
	_, err = RunRecordFrom(cells)
	require.ErrorContains(t, err, "column activation_id: got a int, want a string")
}

func TestCutText(t *testing.T) {
	require.Equal(t, "short", cutText("short", 10))
	got := cutText(strings.Repeat("é", 10), 9) // 20 bytes
	require.True(t, utf8.ValidString(got))
	require.LessOrEqual(t, len(got), 9)
	require.Equal(t, "ééé…", got)
	require.Equal(t, "éé…", cutText(strings.Repeat("é", 10), 8), "never half a character")
	require.Equal(t, "abcdefg…", cutText(strings.Repeat("abcdefgh", 3), 10))
}

func TestRunsLimit(t *testing.T) {
	require.Equal(t, DefaultRunsLimit, RunsLimit(0))
	require.Equal(t, DefaultRunsLimit, RunsLimit(-3))
	require.Equal(t, 7, RunsLimit(7))
	require.Equal(t, MaxRunsLimit, RunsLimit(MaxRunsLimit+1))
}
