package activities

import (
	"context"
	"fmt"

	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/spec"
)

// A list activation keeps an Iterable static list's members equal to the model, on the same
// spine as attribute activations: the plan's adds are subscribed, its removals unsubscribed
// (list.onLeave: unsubscribe) and its changes sent with bulkUpdate (changed fields only).

// ListInput asks for the activation's list.
type ListInput struct {
	Spec  spec.Activation `json:"spec"`
	RunID string          `json:"runId"`
	// DryRun finds the list but never creates it.
	DryRun bool `json:"dryRun,omitempty"`
}

// ListInfo is the list a run keeps: its id and name (no members).
type ListInfo struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Created bool   `json:"created,omitempty"`
}

// ListExistence values: how a list activation in update mode keeps subscribe from creating
// profiles (see ListExistenceStrategy).
const (
	// ListExistenceFlag: Iterable's updateExistingUsersOnly, honoured by userId-based and
	// hybrid projects.
	ListExistenceFlag = "flag"
)

// ListExistenceStrategy picks how subscribing avoids creating profiles in update mode: Iterable's
// own flag where it honours it, else (email-based projects ignore the flag) a lookup for small
// plans and one export of the project's identifiers for large ones.
func ListExistenceStrategy(act spec.Activation, subscribes int64) string {
	d := act.Destination
	switch {
	case d.List == nil || d.Mode != spec.ModeUpdate || subscribes == 0:
		return ExistenceNone
	case d.Iterable.ProjectType != "email":
		return ListExistenceFlag
	case subscribes <= act.Sync.WithDefaults().LookupMaxRows:
		return ExistenceLookup
	default:
		return ExistenceExport
	}
}

// ResolveList finds the activation's static list: by id (it must exist and be static) or by
// name (GET /api/lists; created with POST /api/lists when no list has the name, except in a dry
// run).
func (a *Activities) ResolveList(ctx context.Context, in ListInput) (ListInfo, error) {
	act := in.Spec
	l := act.Destination.List
	if l == nil {
		return ListInfo{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("activation %s is not a list activation", act.ID), ErrTypeInvalidSpec, nil)
	}
	client, err := a.iterableClient(act, in.RunID)
	if err != nil {
		return ListInfo{}, err
	}
	where := fmt.Sprintf("activation %s run %s: list", act.ID, in.RunID)
	refuse := func(format string, args ...any) (ListInfo, error) {
		return ListInfo{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("activation %s: destination.list: "+format, append([]any{act.ID}, args...)...), ErrTypeInvalidSpec, nil)
	}
	if l.ID != 0 {
		lists, err := client.Lists(ctx)
		if err != nil {
			return ListInfo{}, iterableError(err, where)
		}
		for _, x := range lists {
			if x.ID != l.ID {
				continue
			}
			if !x.Static() {
				return refuse("list %d is a %s list; only static (Standard) lists can be kept equal to a model", l.ID, x.Type)
			}
			return ListInfo{ID: x.ID, Name: x.Name}, nil
		}
		return refuse("the project has no list %d", l.ID)
	}
	found, ok, err := client.FindList(ctx, l.Name)
	if err != nil {
		return ListInfo{}, iterableError(err, where)
	}
	if ok {
		if !found.Static() {
			return refuse("list %q (%d) is a %s list; only static (Standard) lists can be kept equal to a model", l.Name, found.ID, found.Type)
		}
		return ListInfo{ID: found.ID, Name: found.Name}, nil
	}
	if in.DryRun {
		return ListInfo{Name: l.Name}, nil
	}
	id, err := client.CreateList(ctx, l.Name, fmt.Sprintf("Kept equal to the model of activation %s", act.ID))
	if err != nil {
		return ListInfo{}, iterableError(err, where+" create")
	}
	a.logger(act, in.RunID).Info("list created", "list_id", id)
	return ListInfo{ID: id, Name: l.Name, Created: true}, nil
}
