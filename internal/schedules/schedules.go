// Package schedules turns activation specs into Temporal Schedules, one per activation, whose
// action starts ActivationWorkflow with the full spec. Apply is idempotent: it creates what is
// missing, updates what changed, and (with prune) deletes schedules whose spec file is gone.
package schedules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/workflows"
)

// Prefix starts every schedule id and every workflow id of an activation. Runs pause and
// unpause their activation's schedule by this id (workflows.ScheduleID).
const Prefix = workflows.ScheduleIDPrefix

// Memo keys that mark schedules this package manages.
const (
	memoManagedBy = "managedBy"
	managedBy     = "activations-starter"
)

// CatchupWindow bounds how late a missed scheduled run may still start after an outage.
const CatchupWindow = 10 * time.Minute

// ID is the schedule id of an activation.
func ID(activationID string) string { return workflows.ScheduleID(activationID) }

// Change is one thing Apply did (or would do).
type Change struct {
	ScheduleID string `json:"scheduleId"`
	Action     string `json:"action"` // created | updated | unchanged | deleted
}

// Options builds the schedule of an activation.
func Options(act spec.Activation, taskQueue string) (client.ScheduleOptions, error) {
	sp, err := scheduleSpec(act)
	if err != nil {
		return client.ScheduleOptions{}, err
	}
	return client.ScheduleOptions{
		ID:            ID(act.ID),
		Spec:          sp,
		Action:        action(act, taskQueue),
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: CatchupWindow,
		Note:          "managed by `starter apply` from " + act.File,
		Memo:          map[string]any{memoManagedBy: managedBy},
	}, nil
}

func action(act spec.Activation, taskQueue string) *client.ScheduleWorkflowAction {
	return &client.ScheduleWorkflowAction{
		ID:                    Prefix + act.ID,
		Workflow:              workflows.WorkflowName,
		Args:                  []any{workflows.RunInput{Spec: act}},
		TaskQueue:             taskQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.ActivationIDKey.ValueSet(act.ID)),
	}
}

// scheduleSpec maps the spec's schedule; a manual-only activation gets an empty spec, so the
// schedule exists (the UI's Trigger button runs it) but never fires by itself.
func scheduleSpec(act spec.Activation) (client.ScheduleSpec, error) {
	s := act.Schedule
	switch {
	case s == nil:
		return client.ScheduleSpec{}, nil
	case s.Cron != "":
		return client.ScheduleSpec{CronExpressions: []string{s.Cron}}, nil
	default:
		every, err := spec.ParseEvery(s.Every)
		if err != nil {
			return client.ScheduleSpec{}, fmt.Errorf("activation %s: schedule.every: %w", act.ID, err)
		}
		return client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: every}}}, nil
	}
}

// Hash fingerprints what a schedule carries, to tell an unchanged spec from a changed one.
func Hash(act spec.Activation, taskQueue string) (string, error) {
	b, err := json.Marshal(struct {
		Spec  spec.Activation
		Queue string
	}{act, taskQueue})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// ApplyOptions says how Apply works.
type ApplyOptions struct {
	TaskQueue string
	// Prune deletes managed schedules whose activation is not in the list.
	Prune bool
	// DryRun only reports what Apply would change.
	DryRun bool
	// DataConverter reads the memo and action of existing schedules: the client's converter,
	// which encrypts them when payload encryption is on (nil: the SDK's default).
	DataConverter converter.DataConverter
}

// Apply makes the namespace's schedules match the activations.
func Apply(ctx context.Context, c client.Client, acts []spec.Activation, o ApplyOptions) ([]Change, error) {
	taskQueue, prune, dryRun := o.TaskQueue, o.Prune, o.DryRun
	dc := o.DataConverter
	if dc == nil {
		dc = converter.GetDefaultDataConverter()
	}
	sc := c.ScheduleClient()
	existing, err := managed(ctx, sc, dc)
	if err != nil {
		return nil, err
	}
	var changes []Change
	want := map[string]bool{}
	for _, act := range acts {
		opts, err := Options(act, taskQueue)
		if err != nil {
			return changes, err
		}
		h, err := Hash(act, taskQueue)
		if err != nil {
			return changes, err
		}
		want[opts.ID] = true
		oldHash, found := existing[opts.ID]
		switch {
		case !found:
			if !dryRun {
				if _, err := sc.Create(ctx, opts); err != nil {
					return changes, fmt.Errorf("create schedule %s: %w", opts.ID, err)
				}
			}
			changes = append(changes, Change{opts.ID, "created"})
		case oldHash == h:
			changes = append(changes, Change{opts.ID, "unchanged"})
		default:
			if !dryRun {
				if err := update(ctx, sc, opts); err != nil {
					return changes, err
				}
			}
			changes = append(changes, Change{opts.ID, "updated"})
		}
	}
	if prune {
		var gone []string
		for id := range existing {
			if !want[id] {
				gone = append(gone, id)
			}
		}
		sort.Strings(gone)
		for _, id := range gone {
			if !dryRun {
				if err := sc.GetHandle(ctx, id).Delete(ctx); err != nil {
					return changes, fmt.Errorf("delete schedule %s: %w", id, err)
				}
			}
			changes = append(changes, Change{id, "deleted"})
		}
	}
	return changes, nil
}

// update replaces spec and action and the memo hash, keeping the schedule's pause state (an
// operator's pause must survive a deploy).
func update(ctx context.Context, sc client.ScheduleClient, opts client.ScheduleOptions) error {
	h := sc.GetHandle(ctx, opts.ID)
	err := h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		s := in.Description.Schedule
		s.Spec = &opts.Spec
		s.Action = opts.Action
		if s.Policy == nil {
			s.Policy = &client.SchedulePolicies{}
		}
		s.Policy.Overlap = opts.Overlap
		s.Policy.CatchupWindow = opts.CatchupWindow
		return &client.ScheduleUpdate{Schedule: &s}, nil
	}})
	if err != nil {
		return fmt.Errorf("update schedule %s: %w", opts.ID, err)
	}
	return nil
}

// managed lists the schedules this package created (marked in their memo at creation), with
// the hash of what their action carries now.
func managed(ctx context.Context, sc client.ScheduleClient, dc converter.DataConverter) (map[string]string, error) {
	it, err := sc.List(ctx, client.ScheduleListOptions{PageSize: 100})
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	out := map[string]string{}
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("list schedules: %w", err)
		}
		if !strings.HasPrefix(e.ID, Prefix) || e.Memo == nil {
			continue
		}
		var by string
		if p := e.Memo.GetFields()[memoManagedBy]; p == nil || dc.FromPayload(p, &by) != nil || by != managedBy {
			continue
		}
		out[e.ID] = currentHash(ctx, sc, dc, e.ID)
	}
	return out, nil
}

// currentHash decodes the spec a schedule's action carries; "" (so: update it) when unreadable.
func currentHash(ctx context.Context, sc client.ScheduleClient, dc converter.DataConverter, id string) string {
	desc, err := sc.GetHandle(ctx, id).Describe(ctx)
	if err != nil {
		return ""
	}
	act, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok || len(act.Args) != 1 {
		return ""
	}
	p, ok := act.Args[0].(*commonpb.Payload)
	if !ok {
		return ""
	}
	var in workflows.RunInput
	if err := dc.FromPayload(p, &in); err != nil {
		return ""
	}
	h, err := Hash(in.Spec, act.TaskQueue)
	if err != nil {
		return ""
	}
	return h
}

// IsNotFound reports a missing schedule or workflow.
func IsNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}
