package duckdb

import (
	"context"
	"strconv"
)

// NumberWithWindow makes p's plans number their rows with the window, the fallback for row ids
// that are not dense.
func NumberWithWindow(p *Planner) { p.numberWithWindow = true }

// DeletePlanRowsAfter deletes a plan table's rows past seq, as if they had never been planned:
// a test sees by it when a reader reads them.
func DeletePlanRowsAfter(ctx context.Context, p *Planner, table string, seq int64) error {
	_, err := p.db.ExecContext(ctx, `DELETE FROM `+p.qualified(table)+` WHERE seq > `+strconv.FormatInt(seq, 10))
	return err
}
