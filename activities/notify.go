package activities

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// EnvUIURL is the Temporal Web UI's base URL (e.g. https://temporal.example.com); when set,
// notifications link to the run.
const EnvUIURL = "ACTIVATIONS_UI_URL"

// NotifyEvent is what a webhook is told about a run: counts, causes and reason categories,
// commands and a link. Like everything that reaches Temporal, it holds no row data: no value,
// email, key or identifier.
type NotifyEvent struct {
	Event        string    `json:"event"` // spec.Event*, or "test" for `starter notify-test`
	ActivationID string    `json:"activationId"`
	RunID        string    `json:"runId"`
	WorkflowID   string    `json:"workflowId"`
	State        string    `json:"state"`
	At           time.Time `json:"at"`
	// Cause, Reason, Since, Deadline and AutoResume describe a pause (Cause and Reason also a
	// failure); Deadline is when the paused run fails if nobody acts (thresholds.pauseTimeout).
	Cause      string     `json:"cause,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	Deadline   *time.Time `json:"deadline,omitempty"`
	AutoResume bool       `json:"autoResume,omitempty"`
	// Counts of the run so far, by outcome (all operations).
	Planned       int64                   `json:"planned"`
	Attempted     int64                   `json:"attempted"`
	Succeeded     int64                   `json:"succeeded"`
	Rejected      int64                   `json:"rejected"`
	KnownRejected int64                   `json:"knownRejected"`
	Skipped       int64                   `json:"skipped"`
	StillRejected int64                   `json:"stillRejected"`
	Unconfirmed   int64                   `json:"unconfirmed"`
	TopRejections []warehouse.ReasonCount `json:"topRejections,omitempty"`
	// Commands an operator runs next (`starter resume …`, `starter abort …`).
	Commands []string `json:"commands,omitempty"`
	// Link is the run in the Temporal UI (set by the worker from ACTIVATIONS_UI_URL).
	Link string `json:"link,omitempty"`
}

// NotifyInput asks to tell the activation's webhooks about an event.
type NotifyInput struct {
	Spec  spec.Activation `json:"spec"`
	Event NotifyEvent     `json:"event"`
}

// NotifyResult lists the webhooks that could not be told, for the run report's warnings.
type NotifyResult struct {
	Sent     int      `json:"sent"`
	Warnings []string `json:"warnings,omitempty"`
}

// notifyAttempts and notifyBackoff bound how long a webhook that keeps failing is tried
// (about 15 s): a notification never fails or blocks a run.
const (
	notifyAttempts = 4
	notifyTimeout  = 10 * time.Second
)

var notifyBackoff = []time.Duration{time.Second, 3 * time.Second, 7 * time.Second}

// notificationMetrics is implemented by telemetry.Metrics.
type notificationMetrics interface {
	Notification(ctx context.Context, activationID, event, outcome string)
}

// Notify posts the event to every webhook of the activation that asked for it, retrying 429,
// 5xx and network failures with backoff. It never returns an error for a webhook that keeps
// failing: the failure is logged, counted and returned as a warning (without the URL, which is a
// credential), so that a broken webhook never fails or blocks the run.
func (a *Activities) Notify(ctx context.Context, in NotifyInput) (NotifyResult, error) {
	var res NotifyResult
	ev := in.Event
	if base := strings.TrimRight(os.Getenv(EnvUIURL), "/"); base != "" && ev.Link == "" && ev.WorkflowID != "" {
		ns := "default"
		if activity.IsActivity(ctx) {
			ns = activity.GetInfo(ctx).WorkflowNamespace
		}
		ev.Link = fmt.Sprintf("%s/namespaces/%s/workflows/%s", base, url.PathEscape(ns), url.PathEscape(ev.WorkflowID))
	}
	log := a.baseLogger().With("activation_id", ev.ActivationID, "run_id", ev.RunID, "event", ev.Event)
	for i, n := range in.Spec.Notify {
		if !n.Wants(ev.Event) && ev.Event != "test" {
			continue
		}
		err := a.deliver(ctx, n, ev)
		outcome := "sent"
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			outcome = "failed"
			w := fmt.Sprintf("notify[%d] (%s, %s): %v", i, n.Webhook.URL, ev.Event, err)
			res.Warnings = append(res.Warnings, w)
			log.Warn("notification failed", "notify", i, "error", err)
		} else {
			res.Sent++
		}
		if m, ok := a.Metrics.(notificationMetrics); ok {
			m.Notification(ctx, ev.ActivationID, ev.Event, outcome)
		}
	}
	return res, nil
}

// deliver posts one notification; its errors never quote the URL.
func (a *Activities) deliver(ctx context.Context, n spec.Notify, ev NotifyEvent) error {
	target, err := n.Webhook.URL.Resolve()
	if err != nil {
		return fmt.Errorf("webhook URL: %w", err)
	}
	body, err := notificationBody(n.Format, ev)
	if err != nil {
		return err
	}
	hc := a.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	var last error
	for attempt := 0; attempt < notifyAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(notifyBackoff[min(attempt-1, len(notifyBackoff)-1)]):
			}
		}
		retry, err := post(ctx, hc, target, body)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
		if activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, attempt)
		}
	}
	return fmt.Errorf("gave up: %w", last)
}

// post sends one request; it says whether a failure is worth another try.
func post(ctx context.Context, hc *http.Client, target string, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, notifyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("the webhook URL is not a valid URL")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		// The error of a failed request quotes the URL: keep only what kind of failure it was.
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return true, errors.New("the webhook did not answer in time")
		}
		return true, errors.New("the webhook could not be reached")
	}
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("the webhook answered HTTP %d", resp.StatusCode)
	}
	return false, fmt.Errorf("the webhook refused the notification with HTTP %d", resp.StatusCode)
}

// notificationBody is the event document (json) or a Slack message whose text says the same.
func notificationBody(format string, ev NotifyEvent) ([]byte, error) {
	if format != "slack" {
		return json.Marshal(ev)
	}
	text := slackText(ev)
	return json.Marshal(map[string]any{
		"text": text,
		"blocks": []any{map[string]any{"type": "section",
			"text": map[string]any{"type": "mrkdwn", "text": text}}},
	})
}

func slackText(ev NotifyEvent) string {
	var b strings.Builder
	title := map[string]string{
		spec.EventPaused: ":double_vertical_bar: Activation *%s* paused", spec.EventFailed: ":x: Activation *%s* failed",
		spec.EventResumed: ":arrow_forward: Activation *%s* resumed", spec.EventCompletedWithRejections: ":warning: Activation *%s* completed with rejections",
	}[ev.Event]
	if title == "" {
		title = "Activation *%s*: " + ev.Event
	}
	fmt.Fprintf(&b, title, ev.ActivationID)
	fmt.Fprintf(&b, " (run `%s`)\n", ev.RunID)
	if ev.Cause != "" || ev.Reason != "" {
		fmt.Fprintf(&b, "*%s*: %s\n", ev.Cause, ev.Reason)
	}
	fmt.Fprintf(&b, "planned %d · attempted %d · succeeded %d · rejected %d (%d known) · skipped %d · still rejected %d · unconfirmed %d\n",
		ev.Planned, ev.Attempted, ev.Succeeded, ev.Rejected, ev.KnownRejected, ev.Skipped, ev.StillRejected, ev.Unconfirmed)
	for _, r := range ev.TopRejections {
		fmt.Fprintf(&b, "• %d %s: %s\n", r.Count, r.Outcome, r.Reason)
	}
	if ev.Deadline != nil {
		fmt.Fprintf(&b, "Waits until %s, then fails.", ev.Deadline.UTC().Format(time.RFC3339))
		if ev.AutoResume {
			b.WriteString(" It resumes by itself once the cause clears.")
		}
		b.WriteString("\n")
	}
	for _, c := range ev.Commands {
		fmt.Fprintf(&b, "`%s`\n", c)
	}
	if ev.Link != "" {
		fmt.Fprintf(&b, "<%s|Open the run in the Temporal UI>\n", ev.Link)
	}
	return strings.TrimRight(b.String(), "\n")
}
