package warehousetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
)

// RunLogSuite is the conformance suite of warehouse.RunLog. newLog returns a run log on a fresh
// state (each subtest calls it once).
func RunLogSuite(t *testing.T, newLog func(t *testing.T) warehouse.RunLog) {
	tests := []struct {
		name string
		run  func(t *testing.T, l warehouse.RunLog)
	}{
		{"a pause then the end, newest first, every field kept", testRunPauseThenEnd},
		{"a retried write adds no row", testRunRetried},
		{"limit", testRunLimit},
		{"other activations' records are not returned", testRunOtherActivations},
		{"invalid records are refused", testRunInvalid},
		{"the last send rate of a budget, whichever activation recorded it", testRunLastSendRate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newLog(t)) })
	}
}

// runStart is a time with nanoseconds, which the warehouses truncate to microseconds, in a zone
// other than UTC, which they store as UTC.
var runStart = time.Date(2025, 3, 14, 9, 26, 53, 589793238, time.FixedZone("CET", 3600))

// pauseRecord is a pause of run run of activation id, with a distinct value in every field.
func pauseRecord(id, run string) warehouse.RunRecord {
	return warehouse.RunRecord{
		ActivationID: id, RunID: run, WorkflowID: "activation-" + id + "-manual-20250314T082653.589",
		Event: warehouse.RunEventPaused, At: runStart.Add(90 * time.Second), Trigger: warehouse.TriggerManual,
		StartedAt: runStart, State: warehouse.RunStatePaused,
		ModelRows: 100001, Unchanged: 90002, NullKeys: 3, DuplicateKeys: 4, DuplicateIdentifiers: 5,
		Planned:       warehouse.OpCounts{Added: 6001, Changed: 2002, Removed: 1003},
		Attempted:     warehouse.OpCounts{Added: 3001, Changed: 1002, Removed: 503},
		Succeeded:     warehouse.OpCounts{Added: 2001, Changed: 902, Removed: 403},
		Rejected:      warehouse.OpCounts{Added: 801, Changed: 82, Removed: 83},
		KnownRejected: warehouse.OpCounts{Added: 11, Changed: 12, Removed: 13},
		Skipped:       warehouse.OpCounts{Added: 21, Changed: 22, Removed: 23},
		StillRejected: warehouse.OpCounts{Added: 31, Changed: 32, Removed: 33},
		Unconfirmed:   warehouse.OpCounts{Added: 41, Changed: 42, Removed: 43},
		Committed:     3306,
		PauseCauses:   []string{"rejections"},
		PauseReason:   "966 of 4506 attempted rows (21.4%) were rejected, over thresholds.maxRejectedPercent 5%",
		Requests:      45, RateLimited: 7, PlanSeconds: 12.25, SyncSeconds: 61.5, BytesBilled: 1 << 33, ListID: 4242,
	}
}

// endRecord is the end of the same run, after an automatic resume and a second pause.
func endRecord(id, run string) warehouse.RunRecord {
	r := pauseRecord(id, run)
	r.Event, r.State = warehouse.RunEventEnded, warehouse.RunStateCompleted
	r.At = runStart.Add(10 * time.Minute)
	r.EndedAt = r.At
	r.PauseCauses = []string{"rejections", "transient"}
	r.PauseReason = ""
	r.Attempted.Added += 3000
	r.Succeeded.Added += 2990
	r.Committed += 2990
	r.Requests, r.RateLimited, r.SyncSeconds, r.BytesBilled = 91, 9, 300.125, 1<<34+1
	r.ListID = 0
	r.SendRate = 4.875 // the pause has none (NULL)
	r.SendBudget = strings.Repeat("ab", 32) + "/bulkUpdate"
	return r
}

// stored is r as the run log returns it.
func stored(t *testing.T, r warehouse.RunRecord) warehouse.RunRecord {
	t.Helper()
	s, err := warehouse.CheckRunRecord(r)
	require.NoError(t, err)
	return s
}

func record(t *testing.T, l warehouse.RunLog, rs ...warehouse.RunRecord) {
	t.Helper()
	for _, r := range rs {
		require.NoError(t, l.RecordRun(context.Background(), r))
	}
}

func runs(t *testing.T, l warehouse.RunLog, id string, limit int) []warehouse.RunRecord {
	t.Helper()
	out, err := l.Runs(context.Background(), id, limit)
	require.NoError(t, err)
	return out
}

func testRunPauseThenEnd(t *testing.T, l warehouse.RunLog) {
	pause, end := pauseRecord("runs-a", "run-1"), endRecord("runs-a", "run-1")
	record(t, l, pause, end)
	got := runs(t, l, "runs-a", 0)
	require.Equal(t, []warehouse.RunRecord{stored(t, end), stored(t, pause)}, got, "newest first, every field kept")
	require.Equal(t, time.UTC, got[0].At.Location(), "times come back in UTC")
	require.Equal(t, runStart.Add(10*time.Minute).Truncate(time.Microsecond).UTC(), got[0].At,
		"truncated to the microsecond")
	require.True(t, got[1].EndedAt.IsZero(), "a pause has no end")
	require.Zero(t, got[0].ListID, "0 for an attribute activation")
	require.Equal(t, int64(1<<34+1), got[0].BytesBilled, "the caller's bytes billed are kept")

	// A pause of another run, later: it comes first.
	later := pauseRecord("runs-a", "run-2")
	later.At, later.StartedAt = runStart.Add(time.Hour), runStart.Add(59*time.Minute)
	later.PauseCauses, later.PauseReason, later.WorkflowID = nil, "", ""
	later.Trigger = warehouse.TriggerSchedule
	record(t, l, later)
	got = runs(t, l, "runs-a", 0)
	require.Equal(t, []warehouse.RunRecord{stored(t, later), stored(t, end), stored(t, pause)}, got)
	require.Nil(t, got[0].PauseCauses)
	require.Empty(t, got[0].WorkflowID)
}

func testRunRetried(t *testing.T, l warehouse.RunLog) {
	end := endRecord("runs-b", "run-1")
	record(t, l, end, end)
	// The same event of the same run at the same time is the same record, whatever it says:
	// the first write wins.
	again := end
	again.Committed, again.Requests = 1, 1
	again.At = end.At.Add(300 * time.Nanosecond) // the same microsecond
	record(t, l, again)
	require.Equal(t, []warehouse.RunRecord{stored(t, end)}, runs(t, l, "runs-b", 0))

	// Another event, or another time, is another record.
	pause := pauseRecord("runs-b", "run-1")
	pause.At = end.At
	pause.EndedAt = time.Time{}
	other := end
	other.At = end.At.Add(time.Microsecond)
	record(t, l, pause, other)
	require.Len(t, runs(t, l, "runs-b", 0), 3)
}

func testRunLimit(t *testing.T, l warehouse.RunLog) {
	const n = warehouse.DefaultRunsLimit + 2
	for i := range n {
		r := endRecord("runs-c", fmt.Sprintf("run-%02d", i))
		r.At = runStart.Add(time.Duration(i) * time.Minute)
		r.EndedAt, r.StartedAt = r.At, r.At.Add(-30*time.Second)
		r.Committed = int64(i)
		record(t, l, r)
	}
	committed := func(rs []warehouse.RunRecord) []int64 {
		var out []int64
		for _, r := range rs {
			out = append(out, r.Committed)
		}
		return out
	}
	require.Equal(t, []int64{21, 20, 19}, committed(runs(t, l, "runs-c", 3)))
	all := runs(t, l, "runs-c", 0)
	require.Len(t, all, warehouse.DefaultRunsLimit, "limit <= 0 means %d", warehouse.DefaultRunsLimit)
	require.Equal(t, int64(n-1), all[0].Committed)
	require.Equal(t, int64(2), all[len(all)-1].Committed)
	require.Len(t, runs(t, l, "runs-c", -1), warehouse.DefaultRunsLimit)
	require.Len(t, runs(t, l, "runs-c", 100), n)
}

func testRunOtherActivations(t *testing.T, l warehouse.RunLog) {
	record(t, l, endRecord("runs-d", "run-1"), endRecord("runs-e", "run-1"), pauseRecord("runs-e", "run-1"))
	got := runs(t, l, "runs-d", 0)
	require.Equal(t, []warehouse.RunRecord{stored(t, endRecord("runs-d", "run-1"))}, got)
	require.Len(t, runs(t, l, "runs-e", 0), 2)
	require.Empty(t, runs(t, l, "runs-f", 0), "an activation without runs")
	_, err := l.Runs(context.Background(), "Not An Id", 0)
	require.Error(t, err)
}

func testRunInvalid(t *testing.T, l warehouse.RunLog) {
	ok := endRecord("runs-g", "run-1")
	tests := []struct {
		name string
		mod  func(r *warehouse.RunRecord)
		want string
	}{
		{"activation id", func(r *warehouse.RunRecord) { r.ActivationID = "Bad Id" }, "activation id"},
		{"run id", func(r *warehouse.RunRecord) { r.RunID = "" }, "run id is empty"},
		{"event", func(r *warehouse.RunRecord) { r.Event = "started" }, `event "started"`},
		{"time", func(r *warehouse.RunRecord) { r.At = time.Time{} }, "time of the ended event is not set"},
		{"trigger", func(r *warehouse.RunRecord) { r.Trigger = "cron" }, `trigger "cron"`},
		{"state of an end", func(r *warehouse.RunRecord) { r.State = warehouse.RunStatePaused }, `state "Paused"`},
		{"state of a pause", func(r *warehouse.RunRecord) { r.Event = warehouse.RunEventPaused; r.EndedAt = time.Time{} },
			`a pause has state "Completed"`},
		{"end of a pause", func(r *warehouse.RunRecord) { r.Event, r.State = warehouse.RunEventPaused, warehouse.RunStatePaused },
			"a pause has no end time"},
		{"pause cause", func(r *warehouse.RunRecord) { r.PauseCauses = []string{"rejections, too many"} }, "pause cause"},
		{"negative duration", func(r *warehouse.RunRecord) { r.SyncSeconds = -1 }, "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.mod(&r)
			err := l.RecordRun(context.Background(), r)
			require.ErrorIs(t, err, warehouse.ErrInvalidRunRecord)
			require.ErrorContains(t, err, tc.want)
		})
	}
	require.Empty(t, runs(t, l, "runs-g", 0), "nothing was written")

	// A pause reason too long is cut, at a character boundary, rather than refused.
	long := pauseRecord("runs-g", "run-2")
	long.PauseReason = strings.Repeat("é", warehouse.MaxPauseReasonBytes)
	record(t, l, long)
	got := runs(t, l, "runs-g", 0)
	require.Len(t, got, 1)
	require.LessOrEqual(t, len(got[0].PauseReason), warehouse.MaxPauseReasonBytes)
	require.True(t, utf8.ValidString(got[0].PauseReason))
	require.True(t, strings.HasSuffix(got[0].PauseReason, "é…"), "cut whole characters, marked")
	require.Equal(t, stored(t, long), got[0])
}

func testRunLastSendRate(t *testing.T, l warehouse.RunLog) {
	ctx := context.Background()
	bulk, subscribe := strings.Repeat("0f", 32)+"/bulkUpdate", strings.Repeat("0f", 32)+"/listSubscribe"
	other := strings.Repeat("e1", 32) + "/bulkUpdate"
	at := func(d time.Duration) time.Time { return runStart.Add(d) }
	rec := func(id, run string, t time.Time, budget string, rate float64) warehouse.RunRecord {
		r := endRecord(id, run)
		r.At, r.EndedAt, r.SendBudget, r.SendRate = t, t, budget, rate
		return r
	}
	last := func(budget string, since time.Time) float64 {
		t.Helper()
		rate, err := l.LastSendRate(ctx, budget, since)
		require.NoError(t, err)
		return rate
	}
	require.Zero(t, last(bulk, at(-time.Hour)), "no record")
	record(t, l,
		rec("rate-a", "run-1", at(0), bulk, 4.5),
		rec("rate-b", "run-1", at(time.Hour), bulk, 3.25), // another activation of the project, later
		rec("rate-a", "run-2", at(2*time.Hour), bulk, 0),  // a run that learnt no rate
		rec("rate-c", "run-1", at(3*time.Hour), subscribe, 4.75),
		rec("rate-d", "run-1", at(4*time.Hour), other, 2.5),
	)
	require.Equal(t, 3.25, last(bulk, at(-time.Hour)), "the newest with a rate, whichever activation")
	require.Equal(t, 3.25, last(bulk, at(time.Hour)), "since is inclusive")
	require.Zero(t, last(bulk, at(time.Hour+time.Second)), "nothing as recent")
	require.Equal(t, 4.75, last(subscribe, at(-time.Hour)), "each endpoint its own")
	require.Equal(t, 2.5, last(other, at(-time.Hour)), "each project its own")
	require.Zero(t, last(strings.Repeat("77", 32)+"/bulkUpdate", at(-time.Hour)))
}
