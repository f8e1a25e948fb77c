package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

const historySpec = `id: history-users
source:
  type: duckdb
  query: SELECT 1 AS id, 'a@example.com' AS email, 'pro' AS plan
  primaryKey: id
state:
  duckdb: {path: .state/state.duckdb}
destination:
  type: iterable
  iterable: {region: us, apiKey: {env: ITERABLE_API_KEY}, projectType: hybrid}
  mode: upsert
  identifier: {column: email, field: email}
  fields:
    - {column: plan, field: plan}
`

// TestHistory records a run that paused then completed, and a later failed run, with a DuckDB
// planner on the spec's state file, and reads them back with `starter history`.
func TestHistory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "history.yaml")
	require.NoError(t, os.WriteFile(file, []byte(historySpec), 0o644))

	start := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	pause := warehouse.RunRecord{ActivationID: "history-users", RunID: "run-1", WorkflowID: "activation-history-users-manual-1",
		Event: warehouse.RunEventPaused, At: start.Add(2 * time.Minute), Trigger: warehouse.TriggerManual, StartedAt: start,
		State: warehouse.RunStatePaused, ModelRows: 100000,
		Planned:   warehouse.OpCounts{Added: 90000, Changed: 2000, Removed: 10},
		Succeeded: warehouse.OpCounts{Added: 40000}, Rejected: warehouse.OpCounts{Added: 3000, Changed: 12},
		KnownRejected: warehouse.OpCounts{Added: 3}, PauseCauses: []string{"rejections"},
		PauseReason: "3012 of 43012 attempted rows (7.0%) were rejected, over maxRejectedPercent 5%",
		Requests:    44, RateLimited: 2, PlanSeconds: 3.25}
	end := pause
	end.Event, end.State, end.At, end.EndedAt = warehouse.RunEventEnded, warehouse.RunStateCompleted,
		start.Add(20*time.Minute), start.Add(20*time.Minute)
	end.Succeeded = warehouse.OpCounts{Added: 86990, Changed: 1988, Removed: 10}
	end.Skipped, end.StillRejected, end.Unconfirmed = warehouse.OpCounts{Changed: 5}, warehouse.OpCounts{Added: 7},
		warehouse.OpCounts{Added: 1}
	end.PauseReason, end.Requests, end.RateLimited, end.SyncSeconds = "", 95, 4, 118.04
	failed := warehouse.RunRecord{ActivationID: "history-users", RunID: "run-2", Event: warehouse.RunEventEnded,
		At: start.Add(time.Hour), Trigger: warehouse.TriggerSchedule, StartedAt: start.Add(59 * time.Minute),
		EndedAt: start.Add(time.Hour), State: warehouse.RunStateFailed, PauseCauses: []string{"warehouse", "transient"}}
	other := failed
	other.ActivationID = "someone-else"

	p, err := duckdb.Open(ctx, duckdb.Options{Path: filepath.Join(dir, ".state", "state.duckdb")})
	require.NoError(t, err)
	for _, r := range []warehouse.RunRecord{pause, end, failed, other} {
		require.NoError(t, p.RecordRun(ctx, r))
	}
	require.NoError(t, p.Close()) // the worker's handle is gone: DuckDB lets one process open the file

	logger := slog.New(slog.DiscardHandler)
	history := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, run(ctx, append([]string{"history"}, args...), &out, logger))
		return out.String()
	}

	out := history("history-users", "-f", file)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 7, out)
	require.Regexp(t, `^AT +EVENT +STATE +TRIGGER +PLANNED +SUCCEEDED +REJECTED \(KNOWN\) +SKIPPED +STILL REJECTED +`+
		`UNCONFIRMED +REQUESTS/429S +PLAN S +SYNC S +PAUSE CAUSES$`, lines[0])
	local := func(t time.Time) string { return t.Local().Format(time.RFC3339) }
	fields := func(line string) []string { return strings.Fields(line) }
	require.Equal(t, []string{local(failed.At), "ended", "Failed", "schedule", "0", "0", "0", "(0)", "0", "0", "0", "0/0",
		"0.0", "0.0", "warehouse,transient"}, fields(lines[1]), "newest first")
	require.Equal(t, []string{local(end.At), "ended", "Completed", "manual", "92010", "88988", "3012", "(3)", "5", "7", "1",
		"95/4", "3.2", "118.0", "rejections"}, fields(lines[2]))
	require.Equal(t, []string{local(pause.At), "paused", "Paused", "manual", "92010", "40000", "3012", "(3)", "0", "0", "0",
		"44/2", "3.2", "0.0", "rejections"}, fields(lines[3]))
	require.Equal(t, "", lines[4])
	require.Equal(t, "pauses:", lines[5])
	require.Equal(t, fmt.Sprintf("  %s  run run-1  rejections: %s", local(pause.At), pause.PauseReason), lines[6])
	require.Equal(t, strings.Index(lines[0], "EVENT"), strings.Index(lines[1], "ended"), "aligned columns")

	t.Run("-n and --json", func(t *testing.T) {
		var got []warehouse.RunRecord
		require.NoError(t, json.Unmarshal([]byte(history("history-users", "-f", file, "-n", "2", "--json")), &got))
		want := []warehouse.RunRecord{failed, end}
		for i := range want {
			want[i], err = warehouse.CheckRunRecord(want[i])
			require.NoError(t, err)
		}
		require.Equal(t, want, got)
	})
	t.Run("no records", func(t *testing.T) {
		other := strings.Replace(historySpec, "id: history-users", "id: history-none", 1)
		f := filepath.Join(dir, "none.yaml")
		require.NoError(t, os.WriteFile(f, []byte(other), 0o644))
		require.Equal(t, "no runs recorded for history-none\n", history("history-none", "-f", f))
		require.Equal(t, "[]\n", history("history-none", "-f", f, "--json"))
	})
	t.Run("usage", func(t *testing.T) {
		require.ErrorContains(t, run(ctx, []string{"history", "-f", file}, &bytes.Buffer{}, logger),
			"usage: starter history ID -f PATH")
		require.ErrorContains(t, run(ctx, []string{"history", "history-users"}, &bytes.Buffer{}, logger), "-f PATH is required")
		require.ErrorContains(t, run(ctx, []string{"history", "nope", "-f", file}, &bytes.Buffer{}, logger), "nope")
	})
}
