//go:build integration

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/codec"
	"github.com/activation-engine/activations/internal/devserver"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/schedules"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

const specTemplate = `id: %s
source:
  type: duckdb
  query: SELECT * FROM read_csv('users.csv', header=true)
  primaryKey: user_id
state:
  duckdb: {path: state.duckdb}
destination:
  type: iterable
  iterable: {region: us, baseURL: %q, apiKey: {env: %s}, projectType: hybrid}
  mode: upsert
  identifier: {column: email, field: email}
  fields:
    - {column: name, field: name}
%s`

// TestOperatorCommands drives the CLI as an operator would, against a real dev server.
func TestOperatorCommands(t *testing.T) {
	ctx := context.Background()
	srv := startDevServer(ctx, t, "starter-it")
	t.Setenv("STARTER_IT_KEY", "good-key")
	// Payload encryption on, for the worker and every command: apply must still recognise its
	// schedules (encrypted memo and action) and status must read a paused run's (encrypted) memo.
	key := make([]byte, 32)
	_, err := rand.Read(key)
	require.NoError(t, err)
	t.Setenv("ACTIVATIONS_CODEC_KEYS", "it1:"+base64.StdEncoding.EncodeToString(key))

	emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
	t.Cleanup(emu.Close)
	emu.AddProject("good-key", iterabletest.ProjectHybrid)

	wc, _, err := temporalclient.Dial(ctx, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(wc.Close)
	startWorker(t, wc, "starter-it")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "users.csv"),
		[]byte("user_id,email,name\n1,a@example.com,Ann\n2,b@example.com,Bob\n"), 0o600))
	writeSpec := func(id, keyEnv, schedule string) {
		body := fmt.Sprintf(specTemplate, id, emu.URL(), keyEnv, schedule)
		require.NoError(t, os.WriteFile(filepath.Join(dir, id+".yaml"), []byte(body), 0o600))
	}
	writeSpec("hourly", "STARTER_IT_KEY", "schedule: {every: 1h}\n")
	writeSpec("manual", "STARTER_IT_KEY", "")
	logger := slog.New(slog.DiscardHandler)
	cmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, args, &out, logger)
		return out.String(), err
	}

	out, err := cmd("validate", "-f", dir)
	require.NoError(t, err)
	require.Contains(t, out, "ok  hourly")

	out, err = cmd("apply", "-f", dir)
	require.NoError(t, err)
	require.Contains(t, out, "created   activation-hourly")
	require.Contains(t, out, "created   activation-manual")
	out, err = cmd("apply", "-f", dir)
	require.NoError(t, err)
	require.Contains(t, out, "unchanged activation-hourly")
	require.Contains(t, out, "unchanged activation-manual")
	// What the server stores is encrypted: the schedule's memo and its action's spec.
	raw, err := srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("hourly")).Describe(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, raw.Memo.GetFields())
	for k, p := range raw.Memo.GetFields() {
		require.True(t, codec.IsEncrypted(p), "memo %s is encrypted", k)
	}
	rawAction := raw.Schedule.Action.(*client.ScheduleWorkflowAction)
	require.True(t, codec.IsEncrypted(rawAction.Args[0].(*commonpb.Payload)), "the action's spec is encrypted")

	// The manual-only schedule never fires by itself; its action carries the whole spec.
	desc, err := srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("manual")).Describe(ctx)
	require.NoError(t, err)
	require.Empty(t, desc.Info.NextActionTimes)
	desc, err = srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("hourly")).Describe(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, desc.Info.NextActionTimes)

	writeSpec("hourly", "STARTER_IT_KEY", "schedule: {every: 2h}\n")
	out, err = cmd("apply", "-f", dir, "--dry-run")
	require.NoError(t, err)
	require.Contains(t, out, "updated   activation-hourly")
	out, err = cmd("apply", "-f", dir)
	require.NoError(t, err)
	require.Contains(t, out, "updated   activation-hourly")
	require.Contains(t, out, "unchanged activation-manual")

	// A run through the CLI, waited for.
	out, err = cmd("run", "manual", "-f", dir, "--wait")
	require.NoError(t, err, out)
	require.Contains(t, out, "state Completed")
	_, found := emu.User("good-key", "b@example.com", "")
	require.True(t, found)

	// A run whose key names no project pauses at once (a fatal destination error waits for a
	// person): --wait prints why and what to do, and exits 3. The key never shows.
	writeSpec("badkey", "STARTER_IT_BAD_KEY", "")
	t.Setenv("STARTER_IT_BAD_KEY", "unknown-key")
	out, err = cmd("run", "badkey", "-f", dir, "--wait")
	var ee *exitError
	require.ErrorAs(t, err, &ee, out)
	require.Equal(t, 3, ee.code, "paused, waiting for an operator")
	require.Contains(t, out, "is paused (fatal)")
	require.Contains(t, out, "BadApiKey")
	require.Contains(t, out, "starter resume badkey --reason")
	require.Contains(t, out, "state Paused")
	require.NotContains(t, out+err.Error(), "unknown-key", "the API key never shows")
	_, err = cmd("resume", "badkey")
	require.ErrorContains(t, err, "--reason is required")

	// status shows the paused run and why (visibility is eventually consistent).
	require.Eventually(t, func() bool {
		out, err = cmd("status", "badkey", "--json")
		return err == nil && strings.Contains(out, `"state": "paused"`)
	}, 20*time.Second, 300*time.Millisecond, out)
	var badkey []activationStatus
	require.NoError(t, json.Unmarshal([]byte(out), &badkey))
	require.Contains(t, badkey[0].PauseReason, "BadApiKey")
	require.NotNil(t, badkey[0].Pause)
	out, err = cmd("status", "badkey")
	require.NoError(t, err)
	require.Contains(t, out, "badkey  PAUSED  no schedule")
	require.Contains(t, out, "paused (fatal)")

	// abort ends it cleanly.
	out, err = cmd("abort", "badkey", "--reason", "wrong key in the spec")
	require.NoError(t, err, out)
	require.Contains(t, out, "aborts after its in-flight chunks")
	require.Eventually(t, func() bool {
		out, err = cmd("status", "badkey", "--json")
		return err == nil && strings.Contains(out, `"state": "aborted"`)
	}, 20*time.Second, 300*time.Millisecond, out)

	// pause and resume an activation without a live run: only its schedule.
	out, err = cmd("pause", "hourly", "--reason", "Iterable maintenance")
	require.NoError(t, err, out)
	require.Contains(t, out, "schedule activation-hourly paused")
	require.Contains(t, out, "no live run")
	out, err = cmd("status", "hourly", "--json")
	require.NoError(t, err)
	var hourly []activationStatus
	require.NoError(t, json.Unmarshal([]byte(out), &hourly))
	require.Equal(t, "paused", hourly[0].State)
	require.Contains(t, hourly[0].PauseReason, "Iterable maintenance")
	out, err = cmd("resume", "hourly", "--reason", "maintenance over")
	require.NoError(t, err, out)
	require.Contains(t, out, "schedule activation-hourly unpaused")
	desc, err = srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("hourly")).Describe(ctx)
	require.NoError(t, err)
	require.False(t, desc.Schedule.State.Paused)

	// trigger runs an activation now through its schedule.
	out, err = cmd("trigger", "manual")
	require.NoError(t, err, out)
	require.Contains(t, out, "schedule activation-manual triggered")
	var triggered string
	require.Eventually(t, func() bool {
		desc, err := srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("manual")).Describe(ctx)
		if err != nil || len(desc.Info.RecentActions) == 0 {
			return false
		}
		triggered = desc.Info.RecentActions[0].StartWorkflowResult.WorkflowID
		return true
	}, 20*time.Second, 300*time.Millisecond, "the schedule started a run")
	var triggeredReport workflows.RunReport
	require.NoError(t, wc.GetWorkflow(ctx, triggered, "").Get(ctx, &triggeredReport))
	require.Equal(t, workflows.StateCompleted, triggeredReport.State)
	_, err = cmd("trigger", "nosuch")
	require.ErrorContains(t, err, "no schedule activation-nosuch")

	// status --json: one entry per managed schedule, with the state of its last run.
	require.Eventually(t, func() bool {
		out, err = cmd("status", "--json")
		if err != nil {
			t.Logf("status: %v", err)
		}
		return err == nil && strings.Contains(out, `"completed"`)
	}, 20*time.Second, 500*time.Millisecond)
	var sts []activationStatus
	require.NoError(t, json.Unmarshal([]byte(out), &sts))
	states := map[string]string{}
	for _, s := range sts {
		states[s.ID] = s.State
	}
	require.Equal(t, map[string]string{"hourly": "idle", "manual": "completed"}, states)

	// Prune deletes the schedule whose spec file is gone.
	require.NoError(t, os.Remove(filepath.Join(dir, "manual.yaml")))
	require.NoError(t, os.Remove(filepath.Join(dir, "badkey.yaml")))
	out, err = cmd("apply", "-f", dir, "--prune")
	require.NoError(t, err)
	require.Contains(t, out, "deleted   activation-manual")
	_, err = srv.Client().ScheduleClient().GetHandle(ctx, schedules.ID("manual")).Describe(ctx)
	require.True(t, schedules.IsNotFound(err), "%v", err)

	// Invalid specs: every problem, with file and line.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("id: Bad_Id\nsource: {type: oracle}\n"), 0o600))
	_, err = cmd("validate", "-f", dir)
	require.Error(t, err)
	require.Contains(t, err.Error(), "broken.yaml:1: id:")
	require.Contains(t, err.Error(), "broken.yaml:2: source.type")
}

// startDevServer starts a dev server for the test and points the commands at it (and at queue).
func startDevServer(ctx context.Context, t *testing.T, queue string) *devserver.Server {
	t.Helper()
	cli, ok := devserver.FindCLI("../bin")
	require.True(t, ok, "integration tests need the Temporal CLI: run `make temporal-cli` or set TEMPORAL_CLI")
	srv, err := devserver.Start(ctx, devserver.Options{CLIPath: cli, SearchAttributes: workflows.SearchAttributes()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	t.Setenv("TEMPORAL_ADDRESS", srv.HostPort)
	t.Setenv("TEMPORAL_NAMESPACE", "default")
	t.Setenv("ACTIVATIONS_TASK_QUEUE", queue)
	return srv
}

// startWorker runs an in-process worker on queue until the test ends.
func startWorker(t *testing.T, c client.Client, queue string) {
	t.Helper()
	acts := activities.New(slog.New(slog.DiscardHandler))
	acts.Temporal = c
	w := worker.New(c, queue, worker.Options{})
	workflows.Register(w, acts)
	require.NoError(t, w.Start())
	t.Cleanup(func() { w.Stop(); _ = acts.Close() })
}

// TestDemo runs the demo end to end on a small model, in a copy of examples/.
func TestDemo(t *testing.T) {
	cli, ok := devserver.FindCLI("../bin")
	require.True(t, ok, "integration tests need the Temporal CLI")
	dir := t.TempDir()
	for _, name := range []string{"users-to-iterable.yaml", "vip-users.yaml"} {
		b, err := os.ReadFile("../examples/" + name)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	t.Setenv("TEMPORAL_CLI", cli)
	t.Setenv("ACTIVATIONS_TASK_QUEUE", "demo-it")

	var out bytes.Buffer
	err := run(context.Background(), []string{"demo", "--rows", "3000", "--dir", dir,
		"--port", freePort(t), "--ui-port", freePort(t), "--codec-port", freePort(t)}, &out, slog.New(slog.DiscardHandler))
	require.NoError(t, err, out.String())
	s := out.String()
	require.Contains(t, s, "payloads encrypted with AES-256-GCM (a key generated for this demo)")
	// First run: 3000 users, 3 malformed emails rejected, duplicate and NULL keys never sent.
	require.Contains(t, s, "model rows         3002   unchanged 0, NULL keys 1, duplicate-key rows 2")
	require.Contains(t, s, "rejected      3  invalid email in column email: invalid email: it has no @")
	// Second run: 60 users changed, one attribute each; the 3 malformed emails are known: held
	// back, neither checked nor sent again.
	require.Contains(t, s, "Iterable received in the second run: 1 requests, 60 users, 60 field values (1.00 per user); 3 rows rejected last run before sending are still rejected (unchanged, not sent again), 0 rejected again (0 known)")
	require.Contains(t, s, "3 rows still rejected: refused before sending by an earlier run and unchanged since")
	// 3000 users minus 3 malformed emails minus the duplicated key (both rows).
	require.Contains(t, s, "2996 profiles in the project")
	// The VIP list: created, then users whose plan changed enter and leave it.
	require.Regexp(t, `list "VIP users" \(id \d+\) now has \d+ members`, s)
	require.Regexp(t, `\n   [1-9]\d* users entered the list \(subscribed\), [1-9]\d* left it \(unsubscribed, 0 channel unsubscribes\); it has \d+ members`, s)
	require.Contains(t, s, "The dev server and its UI stop with the demo", "no link to a stopped UI")
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
