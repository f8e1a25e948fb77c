//go:build integration

package workflows_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// A run that pauses at the rejection threshold, is resumed and completes tells its webhooks
// each event once, as it happens, with counts, reasons and commands and no row data; a webhook
// that is down never blocks the run and ends as a warning.
func TestNotificationsOfAPausedRun(t *testing.T) {
	var (
		mu     sync.Mutex
		events []map[string]any
		bodies []string
	)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var doc map[string]any
		if json.Unmarshal(b, &doc) == nil {
			mu.Lock()
			events, bodies = append(events, doc), append(bodies, string(b))
			mu.Unlock()
		}
	}))
	defer receiver.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer down.Close()
	t.Setenv("IT_HOOK", receiver.URL+"/hook")
	t.Setenv("IT_DOWN_HOOK", down.URL+"/hook")

	h := newHarness(t, iterabletest.Options{})
	h.startWorker()
	us := users(1000)
	for i := 0; i < 200; i += 2 {
		us[i].email = fmt.Sprintf("bad-%d", i) // 100 malformed in the first two chunks: one pause
	}
	h.writeModel(us)
	act := h.spec()
	act.Sync.ChunkRows, act.Sync.Concurrency = 100, 1
	act.Notify = []spec.Notify{
		{Webhook: spec.Webhook{URL: spec.SecretRef{Env: "IT_HOOK"}},
			On: []string{spec.EventPaused, spec.EventResumed, spec.EventFailed, spec.EventCompletedWithRejections}},
		{Webhook: spec.Webhook{URL: spec.SecretRef{Env: "IT_DOWN_HOOK"}}, Format: "slack"},
	}
	maxRejected := 10.0
	act.Thresholds = &spec.Thresholds{MaxRejectedPercent: &maxRejected, MinAttempted: 200}
	run := h.start(act)
	p := h.untilPausedOrDone(run)
	require.Equal(t, workflows.StatePaused, p.State)
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var names []string
		for _, e := range events {
			names = append(names, e["event"].(string))
		}
		return names
	}
	require.Eventually(t, func() bool { return len(got()) == 1 }, 30*time.Second, 50*time.Millisecond, "the pause is told at once")
	mu.Lock()
	paused := events[0]
	mu.Unlock()
	require.Equal(t, "paused", paused["event"])
	require.Equal(t, "rejections", paused["cause"])
	require.NotEmpty(t, paused["deadline"])
	require.Contains(t, fmt.Sprint(paused["commands"]), "starter resume "+act.ID+" --reason TEXT")
	require.Contains(t, fmt.Sprint(paused["topRejections"]), "invalid email in column email")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h2, err := h.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateResume, Args: []any{workflows.ResumeInput{Reason: "known bad rows, accepted"}},
		WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.NoError(t, h2.Get(ctx, nil))
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep), "the run completes after one pause")
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, []string{"paused", "resumed", "completed-with-rejections"}, got(), "each event once")

	var downWarning bool
	for _, w := range rep.Warnings {
		downWarning = downWarning || strings.Contains(w, "notify[1] (env:IT_DOWN_HOOK, paused): gave up: the webhook answered HTTP 502")
		require.NotContains(t, w, down.URL, "warnings never quote a webhook URL")
	}
	require.True(t, downWarning, "%v", rep.Warnings)
	mu.Lock()
	defer mu.Unlock()
	all := strings.Join(bodies, "\n")
	for _, secret := range []string{"@example.com", "bad-", "Name ", h.key} {
		require.NotContains(t, all, secret, "no row data or key in any notification")
	}
	require.Contains(t, all, act.ID, "control: the scan sees the documents")
}
