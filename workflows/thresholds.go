package workflows

import (
	"errors"
	"fmt"

	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// volumeGuard checks a plan against thresholds.maxChangedPercent and maxRemovedPercent before
// anything is sent, and returns why the run must pause ("" when it may go on). It applies only
// when the state is not empty (rows were synced before; a first run adds everything) and not on
// a full resync (which plans every model row as an add on purpose, so the counts cannot tell
// what changed).
func volumeGuard(c warehouse.Counts, l spec.Limits, fullResync bool) string {
	synced := c.Unchanged + c.Changed + c.Removed // rows previously synced
	if synced == 0 || fullResync {
		return ""
	}
	// Rows held back by earlier runs are planned as adds again; they are not new volume.
	if changed := c.Added - c.Retried + c.Changed; c.ModelRows > 0 && changed > 0 {
		if pct := percent(changed, c.ModelRows); pct > l.MaxChangedPercent {
			return fmt.Sprintf("volume guard: the plan adds or changes %d of the model's %d rows (%.1f%%, above thresholds.maxChangedPercent %g%%; %d rows held back by earlier runs not counted); nothing was sent",
				changed, c.ModelRows, pct, l.MaxChangedPercent, c.Retried)
		}
	}
	if c.Removed > 0 {
		if pct := percent(c.Removed, synced); pct > l.MaxRemovedPercent {
			return fmt.Sprintf("volume guard: the plan removes %d of the %d rows previously synced (%.1f%%, above thresholds.maxRemovedPercent %g%%); nothing was sent",
				c.Removed, synced, pct, l.MaxRemovedPercent)
		}
	}
	return ""
}

// rejectionGuard checks the rows attempted since the run started (or last resumed) against
// thresholds.maxRejectedPercent, once at least minAttempted rows were attempted. Rows rejected
// before sending (invalid identifiers, type conflicts, oversize users) count as rejected.
func rejectionGuard(attempted, rejected int64, l spec.Limits) string {
	if attempted == 0 || attempted < l.MinAttempted {
		return ""
	}
	pct := percent(rejected, attempted)
	if pct <= l.MaxRejectedPercent {
		return ""
	}
	return fmt.Sprintf("rejections: %d of %d rows attempted since the run started or resumed were rejected (%.1f%%, above thresholds.maxRejectedPercent %g%%)",
		rejected, attempted, pct, l.MaxRejectedPercent)
}

func percent(n, of int64) float64 { return 100 * float64(n) / float64(of) }

// pauseCause classifies an activity error that reached the workflow: "" when the run must fail
// (a spec or model the operator has to fix in git, a cancelled workflow), CauseFatal when
// Iterable refused the project, CauseTransient otherwise: IterableUnavailable, and any error
// whose retries ran out (timeouts, 5xx, 429 storms, a warehouse that did not answer).
func pauseCause(err error) string {
	if err == nil {
		return ""
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		return ""
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		switch appErr.Type() {
		case activities.ErrTypeIterableFatal:
			return CauseFatal
		case activities.ErrTypeIterableUnavailable:
			return CauseTransient
		case activities.ErrTypeInvalidSpec, activities.ErrTypeInvalidModel, activities.ErrTypeNoTemporalClient:
			return ""
		}
	}
	return CauseTransient
}
