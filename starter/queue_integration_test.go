//go:build integration

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

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/workflows"
)

// TestOperatorVerbsWithAQueuedRun: while one run of an activation sends (slowly) and a second
// waits for it in the lock's queue, `status` shows the activation running (the sending run wins
// over the queued one) and lists the queued run; `resume` leaves the queued run be; `abort`
// ends both, the queued one at once.
func TestOperatorVerbsWithAQueuedRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := startDevServer(ctx, t, "starter-queue-it")
	t.Setenv("STARTER_QUEUE_KEY", "slow-key")

	// One bulk request a second, 20 users each: 1,000 users take about 50 s to send.
	emu := iterabletest.NewServer(iterabletest.Options{BulkUpdateRPS: 1})
	t.Cleanup(emu.Close)
	emu.AddProject("slow-key", iterabletest.ProjectHybrid)
	startWorker(t, srv.Client(), "starter-queue-it")

	dir := t.TempDir()
	var csv strings.Builder
	csv.WriteString("user_id,email,name\n")
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&csv, "%d,u%d@example.com,User %d\n", i, i, i)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "users.csv"), []byte(csv.String()), 0o600))
	body := fmt.Sprintf(specTemplate, "slow", emu.URL(), "STARTER_QUEUE_KEY",
		"sync: {chunkRows: 200, usersPerRequest: 20, requestsPerSecond: 1, concurrency: 1}\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "slow.yaml"), []byte(body), 0o600))
	cmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, args, &out, slog.New(slog.DiscardHandler))
		return out.String(), err
	}
	status := func() activationStatus {
		out, err := cmd("status", "slow", "--json")
		require.NoError(t, err)
		var all []activationStatus
		require.NoError(t, json.Unmarshal([]byte(out), &all))
		require.Len(t, all, 1)
		return all[0]
	}

	_, err := cmd("run", "slow", "-f", dir)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return status().Phase == workflows.StateRunning }, time.Minute, 200*time.Millisecond,
		"the first run sends")
	time.Sleep(5 * time.Millisecond) // distinct workflow ids (millisecond timestamps)
	_, err = cmd("run", "slow", "-f", dir)
	require.NoError(t, err)

	var st activationStatus
	require.Eventually(t, func() bool {
		st = status()
		queued := 0
		for _, r := range st.LastRuns {
			if r.State == workflows.StateQueued {
				queued++
			}
		}
		return queued == 1 && len(st.LastRuns) == 2
	}, time.Minute, 200*time.Millisecond, "status lists the queued run")
	require.Equal(t, "running", st.State)
	require.Equal(t, workflows.StateRunning, st.Phase, "the sending run, not the queued one, gives the activation's state")
	out, err := cmd("status", "slow")
	require.NoError(t, err)
	require.Contains(t, out, "queued", "the text status shows the queued run")

	out, err = cmd("resume", "slow", "--reason", "nothing is paused")
	require.NoError(t, err)
	require.Contains(t, out, "is queued behind another run of slow: nothing to resume")
	require.Contains(t, out, "refused to resume: the run is not paused")

	out, err = cmd("abort", "slow", "--reason", "stop both")
	require.NoError(t, err, out)
	require.Equal(t, 2, strings.Count(out, "aborts"), out)
	require.Eventually(t, func() bool {
		st = status()
		if len(st.LastRuns) != 2 {
			return false
		}
		for _, r := range st.LastRuns {
			if r.Status != "completed" || r.State != workflows.StateAborted {
				return false
			}
		}
		return true
	}, time.Minute, 200*time.Millisecond, "both runs end Aborted")
	require.Equal(t, "aborted", st.State)
	require.Less(t, emu.Stats("slow-key").UsersReceived, 1000, "the first run stopped before the end")
}
