package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// cmdHistory prints an activation's run log: the runs table of its state (one record per run
// when it ends, one per pause when it starts), newest first. It reads the warehouse, not
// Temporal: the records outlive Temporal's retention.
func cmdHistory(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("history")
	file := fs.String("f", "", "activation spec file or folder")
	n := fs.Int("n", warehouse.DefaultRunsLimit, "number of records to show, newest first")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: starter history ID -f PATH [-n 20] [--json]")
	}
	if err := requireFile(*file); err != nil {
		return err
	}
	act, err := spec.LoadOne(*file, pos[0])
	if err != nil {
		return err
	}
	recs, err := runHistory(ctx, act, *n, logger)
	if err != nil {
		return err
	}
	if *asJSON {
		if recs == nil {
			recs = []warehouse.RunRecord{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(recs)
	}
	printHistory(out, act.ID, recs)
	return nil
}

// runHistory opens the activation's state the way the worker does and reads its run log.
func runHistory(ctx context.Context, act spec.Activation, n int, logger *slog.Logger) ([]warehouse.RunRecord, error) {
	pool := activities.NewPlannerPool(logger)
	defer func() {
		if err := pool.Close(); err != nil {
			logger.WarnContext(ctx, "closing the warehouse connection failed", "activation", act.ID, "error", err)
		}
	}()
	pl, err := pool.Planner(ctx, act)
	if err != nil {
		if act.Source.Type == "duckdb" && strings.Contains(err.Error(), "lock") {
			return nil, fmt.Errorf("history of %s: %w (DuckDB lets one process open a state file: "+
				"stop the worker that holds it, or query its runs table from that process)", act.ID, err)
		}
		return nil, fmt.Errorf("history of %s: %w", act.ID, err)
	}
	log, ok := pl.(warehouse.RunLog)
	if !ok {
		return nil, fmt.Errorf("history of %s: the %s warehouse keeps no run log", act.ID, act.Source.Type)
	}
	recs, err := log.Runs(ctx, act.ID, n)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", act.ID, err)
	}
	return recs, nil
}

// printHistory writes the records as a table, then the reasons of the pauses.
func printHistory(out io.Writer, id string, recs []warehouse.RunRecord) {
	if len(recs) == 0 {
		fmt.Fprintf(out, "no runs recorded for %s\n", id)
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "AT\tEVENT\tSTATE\tTRIGGER\tPLANNED\tSUCCEEDED\tREJECTED (KNOWN)\tSKIPPED\tSTILL REJECTED\t"+
		"UNCONFIRMED\tREQUESTS/429S\tPLAN S\tSYNC S\tPAUSE CAUSES")
	for _, r := range recs {
		causes := warehouse.PauseCausesText(r.PauseCauses)
		if causes == "" {
			causes = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d (%d)\t%d\t%d\t%d\t%d/%d\t%.1f\t%.1f\t%s\n",
			historyTime(r.At), r.Event, r.State, r.Trigger, r.Planned.Total(), r.Succeeded.Total(),
			r.Rejected.Total(), r.KnownRejected.Total(), r.Skipped.Total(), r.StillRejected.Total(),
			r.Unconfirmed.Total(), r.Requests, r.RateLimited, r.PlanSeconds, r.SyncSeconds, causes)
	}
	_ = w.Flush()
	first := true
	for _, r := range recs {
		if r.Event != warehouse.RunEventPaused || r.PauseReason == "" {
			continue
		}
		if first {
			fmt.Fprintln(out, "\npauses:")
			first = false
		}
		cause := "-"
		if len(r.PauseCauses) > 0 {
			cause = r.PauseCauses[len(r.PauseCauses)-1]
		}
		fmt.Fprintf(out, "  %s  run %s  %s: %s\n", historyTime(r.At), r.RunID, cause, r.PauseReason)
	}
}

// historyTime shows a time of the run log as `starter status` does: local, to the second.
func historyTime(t time.Time) string { return t.Local().Format(time.RFC3339) }
