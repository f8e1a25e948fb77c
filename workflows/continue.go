package workflows

import (
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
)

// A run whose plan has many chunks continues as new before its history grows large: when
// Temporal suggests it (about 4,096 events or 4 MiB, some 1,000 chunks at 4 chunks in flight),
// or after RunInput.ChunksPerExecution chunks. It stops starting chunks, lets the in-flight
// ones finish, commits them, and hands the rest over in a Continuation: the remaining chunk
// ranges, the counts, and the activation's lock, which the chain holds as a whole.

// defaultChunksPerExecution bounds an execution's chunks when Temporal does not suggest a
// continue-as-new first (a server that does not, or histories of small events): some 4 events
// per chunk keep a history far below Temporal's limits.
const defaultChunksPerExecution = 1000

// shouldContinueAsNew says whether this execution should stop starting chunks and hand over.
func (r *run) shouldContinueAsNew(ctx workflow.Context) bool {
	if r.in.DryRun {
		return false
	}
	n := r.in.ChunksPerExecution
	if n <= 0 {
		n = defaultChunksPerExecution
	}
	if r.startedHere >= n {
		return true
	}
	return workflow.GetInfo(ctx).GetContinueAsNewSuggested()
}

// continueAsNew ends this execution with a continue-as-new carrying the run. Finished chunks
// were committed just before.
func (r *run) continueAsNew(ctx workflow.Context) *ending {
	// Update handlers must finish before the execution closes, or their callers get an error.
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return r.fail(ctx, err)
	}
	c := &Continuation{
		RunID: r.runID, Executions: r.executions + 1, Plan: r.plan, Next: r.next, Redo: r.redo, Tables: r.tables,
		Fields: r.fields, Known: r.known, List: r.list, Report: r.rep, Committed: r.committed, Held: r.held,
		WindowAttempted: r.window.attempted, WindowRejected: r.window.rejected,
		SyncActive: r.syncActive, TransientSince: r.transientSince, SchedulePaused: r.schedulePaused,
		Lock: r.lockReq,
	}
	c.Report.Executions = c.Executions
	for _, i := range r.redo { // in chunk order: no map iteration in workflow code
		if cur := r.cursors[i]; cur != nil {
			c.Cursors = append(c.Cursors, *cur)
		}
	}
	in := r.in
	in.Continued = c
	r.continuing = true
	r.logger.Info("continuing as new", "execution", c.Executions, "chunks_left", r.left(),
		"history_events", workflow.GetInfo(ctx).GetCurrentHistoryLength())
	return &ending{rep: r.rep, err: workflow.NewContinueAsNewError(ctx, WorkflowName, in)}
}

// restore takes over a run from the execution that continued as new.
func (r *run) restore(c *Continuation) {
	r.runID = c.RunID
	r.executions = c.Executions
	r.plan = c.Plan
	r.next, r.redo = c.Next, c.Redo
	r.tables = c.Tables
	r.fields = c.Fields
	r.known = c.Known
	r.list = c.List
	r.rep = c.Report
	r.rep.Executions = c.Executions
	r.committed = c.Committed
	r.held = c.Held
	r.window.attempted, r.window.rejected = c.WindowAttempted, c.WindowRejected
	r.syncActive = c.SyncActive
	r.transientSince = c.TransientSince
	r.schedulePaused = c.SchedulePaused
	r.lockAsked = c.Lock.WorkflowID != ""
	r.lockReq = c.Lock
	for i := range c.Cursors {
		if r.cursors == nil {
			r.cursors = map[int]*activities.ChunkProgress{}
		}
		r.cursors[c.Cursors[i].Result.Chunk] = &c.Cursors[i]
	}
}
