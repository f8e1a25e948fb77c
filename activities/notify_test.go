package activities

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// A webhook that fails a few times is retried until it takes the event; one that keeps failing
// ends as a warning that does not quote its URL (a credential) and never as an error.
func TestNotifyRetriesAndNeverFailsTheRun(t *testing.T) {
	notifyBackoff = []time.Duration{time.Millisecond}
	var flakyCalls, deadCalls atomic.Int32
	var got []map[string]any
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if flakyCalls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var doc map[string]any
		b, _ := io.ReadAll(r.Body)
		require.NoError(t, json.Unmarshal(b, &doc))
		got = append(got, doc)
	}))
	defer flaky.Close()
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadCalls.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer dead.Close()
	t.Setenv("FLAKY_HOOK", flaky.URL+"/hook?token=s3cret")
	t.Setenv("DEAD_HOOK", dead.URL+"/hook?token=s3cret")
	t.Setenv(EnvUIURL, "https://temporal.example.com/")
	act := spec.Activation{ID: "crm", Notify: []spec.Notify{
		{Webhook: spec.Webhook{URL: spec.SecretRef{Env: "FLAKY_HOOK"}}},
		{Webhook: spec.Webhook{URL: spec.SecretRef{Env: "DEAD_HOOK"}}, On: []string{spec.EventPaused}},
		{Webhook: spec.Webhook{URL: spec.SecretRef{Env: "FLAKY_HOOK"}}, On: []string{spec.EventResumed}},
	}}
	a := &Activities{HTTPClient: http.DefaultClient}
	res, err := a.Notify(context.Background(), NotifyInput{Spec: act, Event: NotifyEvent{Event: spec.EventPaused, ActivationID: "crm",
		RunID: "r1", WorkflowID: "activation-crm-manual-1", Cause: "rejections", Reason: "rejections: 60 of 500 rows",
		TopRejections: []warehouse.ReasonCount{{Outcome: "rejected", Reason: "invalid email in column email", Count: 60}}}})
	require.NoError(t, err, "a failing webhook never fails the activity")
	require.Equal(t, 1, res.Sent, "the third webhook did not ask for pauses")
	require.Len(t, res.Warnings, 1)
	require.Contains(t, res.Warnings[0], "notify[1] (env:DEAD_HOOK, paused): gave up: the webhook answered HTTP 500")
	require.NotContains(t, res.Warnings[0], "s3cret")
	require.NotContains(t, res.Warnings[0], dead.URL)
	require.Equal(t, int32(notifyAttempts), deadCalls.Load())
	require.Equal(t, int32(3), flakyCalls.Load())
	require.Len(t, got, 1)
	require.Equal(t, "paused", got[0]["event"])
	require.Equal(t, "https://temporal.example.com/namespaces/default/workflows/activation-crm-manual-1", got[0]["link"])
}

func TestSlackNotificationSaysWhatToDo(t *testing.T) {
	deadline := time.Date(2026, 12, 11, 9, 0, 0, 0, time.UTC)
	b, err := notificationBody("slack", NotifyEvent{Event: spec.EventPaused, ActivationID: "crm", RunID: "r1",
		Cause: "rejections", Reason: "rejections: 60 of 500 rows", Deadline: &deadline, Planned: 500, Attempted: 500, Rejected: 60,
		Commands: []string{"starter resume crm --reason TEXT", "starter abort crm --reason TEXT"}, Link: "https://ui/x"})
	require.NoError(t, err)
	var msg struct {
		Text   string `json:"text"`
		Blocks []struct {
			Type string `json:"type"`
			Text struct {
				Type, Text string
			} `json:"text"`
		} `json:"blocks"`
	}
	require.NoError(t, json.Unmarshal(b, &msg))
	require.Len(t, msg.Blocks, 1)
	require.Equal(t, "mrkdwn", msg.Blocks[0].Text.Type)
	for _, want := range []string{"Activation *crm* paused", "*rejections*: rejections: 60 of 500 rows", "rejected 60",
		"Waits until 2026-12-11T09:00:00Z", "`starter resume crm --reason TEXT`", "`starter abort crm --reason TEXT`", "<https://ui/x|"} {
		require.True(t, strings.Contains(msg.Text, want), "%q in %s", want, msg.Text)
	}
}
