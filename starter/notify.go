package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
)

// cmdNotifyTest sends a sample event to every webhook of an activation, the way the worker
// does (same body, retries and redaction), so a team can check its Slack channel or receiver.
func cmdNotifyTest(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("notify-test")
	file := fs.String("f", "", "activation spec file or folder")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: starter notify-test ID -f PATH")
	}
	if err := requireFile(*file); err != nil {
		return err
	}
	act, err := spec.LoadOne(*file, pos[0])
	if err != nil {
		return err
	}
	if len(act.Notify) == 0 {
		return fmt.Errorf("activation %s has no notify block", act.ID)
	}
	deadline := time.Now().Add(act.Limits().PauseTimeout).UTC()
	ev := activities.NotifyEvent{Event: "test", ActivationID: act.ID, RunID: "test-run", WorkflowID: "activation-" + act.ID + "-test",
		State: "Paused", At: time.Now().UTC(), Cause: "test", Reason: "a test notification sent by `starter notify-test`",
		Deadline: &deadline, Planned: 1000, Attempted: 1000, Succeeded: 990, Rejected: 10,
		Commands: []string{fmt.Sprintf("starter resume %s --reason TEXT", act.ID), fmt.Sprintf("starter abort %s --reason TEXT", act.ID)}}
	res, err := activities.New(logger).Notify(ctx, activities.NotifyInput{Spec: act, Event: ev})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sent to %d of %d webhooks of %s\n", res.Sent, len(act.Notify), act.ID)
	for _, w := range res.Warnings {
		fmt.Fprintf(out, "  %s\n", w)
	}
	if len(res.Warnings) > 0 {
		return fmt.Errorf("%d webhook(s) of %s did not take the test event", len(res.Warnings), act.ID)
	}
	return nil
}
