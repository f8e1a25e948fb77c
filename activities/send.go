package activities

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"go.temporal.io/sdk/activity"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

// chunkSender turns plan rows into Iterable users window by window. A window is answered as a
// whole (sent, rejections recorded) before the cursor moves past it.
type chunkSender struct {
	act     spec.Activation
	runID   string
	chunk   int
	client  *iterable.Client
	planner warehouse.Planner
	window  int
	// existence and conflicts come from the workflow (see SyncChunkInput).
	existence string
	conflicts map[string]string
	// metrics counts the rows of every answered window; nil counts nothing.
	metrics Metrics

	rows    []warehouse.Row
	records []iterable.Record
	local   []warehouse.Rejection // refused or skipped before sending
	noop    []int                 // rows that need no request (removals kept in Iterable)

	mu   sync.Mutex
	prog ChunkProgress
}

func (s *chunkSender) progress() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.prog
	p.Result.CreatedFields = append([]string(nil), p.Result.CreatedFields...)
	p.Result.FilteredOutFields = append([]string(nil), p.Result.FilteredOutFields...)
	return p
}

// add turns one row into an Iterable user, or a local rejection, and flushes a full window.
func (s *chunkSender) add(ctx context.Context, r warehouse.Row) error {
	idx := len(s.rows)
	s.rows = append(s.rows, r)
	user, rej := s.user(r)
	if rej == nil && user != nil && s.existence == ExistenceExport && !r.Known {
		rej = s.notInIterable(r, "not in the project's exported identifiers")
	}
	switch {
	case rej != nil:
		s.local = append(s.local, *rej)
	case user == nil:
		s.noop = append(s.noop, idx)
	default:
		s.records = append(s.records, iterable.Record{Index: idx, User: *user})
	}
	if len(s.rows) >= s.window {
		return s.flush(ctx)
	}
	return nil
}

// user builds what Iterable receives for a row: every mapped field for an add, the changed
// fields for a change, nulls (or nothing) for a removal.
func (s *chunkSender) user(r warehouse.Row) (*iterable.User, *warehouse.Rejection) {
	d := s.act.Destination
	reject := func(field, reason string) *warehouse.Rejection {
		return &warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeRejected, Field: field, Reason: reason}
	}
	if r.Op == warehouse.OpRemove && d.OnRemoved != "clear" {
		return nil, nil
	}
	id, ok := identifierString(r.Identifier)
	if !ok {
		return nil, reject(d.Identifier.Column, fmt.Sprintf("identifier column %s is NULL or empty", d.Identifier.Column))
	}
	u := &iterable.User{DataFields: map[string]any{}}
	if d.Identifier.Field == "userId" {
		if err := iterable.CheckUserID(id); err != nil {
			return nil, reject(d.Identifier.Column, fmt.Sprintf("invalid userId in column %s: %v", d.Identifier.Column, err))
		}
		u.UserID = id
		if d.Mode != spec.ModeUpdate {
			// In email-based projects Iterable creates a profile for an unknown userId only
			// when asked; in update mode it must not (ExistenceNative relies on it).
			yes := true
			u.PreferUserID = &yes
		}
	} else {
		if err := iterable.CheckEmail(id); err != nil {
			return nil, reject(d.Identifier.Column, fmt.Sprintf("invalid email in column %s: %v", d.Identifier.Column, err))
		}
		u.Email = id
	}
	switch r.Op {
	case warehouse.OpRemove:
		for _, f := range d.Fields {
			u.DataFields[f.Field] = nil
		}
	default:
		for _, name := range r.Changed {
			raw := r.Values[name]
			if raw == nil && d.IgnoresNulls() {
				continue
			}
			if reason, conflict := s.conflicts[name]; conflict {
				return nil, reject(name, reason)
			}
			v, err := iterable.Value(raw)
			if err != nil {
				return nil, reject(name, fmt.Sprintf("field %s: %v", name, err))
			}
			u.DataFields[name] = v
		}
	}
	if len(u.DataFields) == 0 {
		return nil, nil
	}
	return u, nil
}

// notInIterable skips a row in update mode: it is not committed and is looked at again next run.
func (s *chunkSender) notInIterable(r warehouse.Row, why string) *warehouse.Rejection {
	return &warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeSkipped,
		Reason: "skipped: not in Iterable (" + why + "); update mode never creates profiles"}
}

// dropUnknown removes, in lookup mode, the records whose user Iterable does not have.
func (s *chunkSender) dropUnknown(ctx context.Context) ([]warehouse.Rejection, error) {
	field := s.act.Destination.Identifier.Field
	ids := make([]string, len(s.records))
	for i, rec := range s.records {
		ids[i] = rec.User.Email
		if field == "userId" {
			ids[i] = rec.User.UserID
		}
	}
	found, err := s.client.Exists(ctx, field, ids)
	if err != nil {
		return nil, fmt.Errorf("look up %d users: %w", len(ids), err)
	}
	var skipped []warehouse.Rejection
	kept := s.records[:0]
	for i, rec := range s.records {
		if found[ids[i]] {
			kept = append(kept, rec)
			continue
		}
		skipped = append(skipped, *s.notInIterable(s.rows[rec.Index], "lookup found no such user"))
	}
	s.records = kept
	return skipped, nil
}

// flush sends the window's users, records its rejections in the warehouse, then moves the cursor.
func (s *chunkSender) flush(ctx context.Context) error {
	if len(s.rows) == 0 {
		return nil
	}
	var res ChunkResult
	rejections := append([]warehouse.Rejection(nil), s.local...)
	if s.existence == ExistenceLookup && len(s.records) > 0 {
		skipped, err := s.dropUnknown(ctx)
		if err != nil {
			return err
		}
		rejections = append(rejections, skipped...)
	}
	for _, rj := range rejections {
		if rj.Outcome == warehouse.OutcomeSkipped {
			res.Skipped.inc(rj.Op, 1)
			continue
		}
		res.Rejected.inc(rj.Op, 1)
		res.Attempted.inc(rj.Op, 1)
	}
	for _, i := range s.noop {
		res.Attempted.inc(s.rows[i].Op, 1)
		res.Succeeded.inc(s.rows[i].Op, 1)
	}
	if len(s.records) > 0 {
		batches, oversize, err := s.client.Pack(s.records, s.act.Destination.CreatesNewFields())
		if err != nil {
			return fmt.Errorf("pack: %w", err)
		}
		for _, i := range oversize {
			r := s.rows[i]
			res.Attempted.inc(r.Op, 1)
			res.Rejected.inc(r.Op, 1)
			rejections = append(rejections, warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeRejected,
				Reason: "user is larger than Iterable's 4 MB request limit on its own"})
		}
		for bi, b := range batches {
			br, err := s.client.SendBatch(ctx, b)
			res.Requests += int64(br.Requests)
			res.RateLimited += int64(br.RateLimited)
			if err != nil {
				// Rows already answered in this window stay unrecorded: the retry resends the window,
				// which Iterable treats as the same update.
				s.addStats(res.Requests, res.RateLimited)
				return fmt.Errorf("batch %d of window after seq %d: %w", bi, s.prog.AfterSeq, err)
			}
			for _, i := range br.Accepted {
				res.Attempted.inc(s.rows[i].Op, 1)
				res.Succeeded.inc(s.rows[i].Op, 1)
			}
			for _, rj := range br.Rejected {
				r := s.rows[rj.Index]
				res.Attempted.inc(r.Op, 1)
				if s.act.Destination.Mode == spec.ModeUpdate && strings.HasPrefix(rj.Category, "notFound") {
					// Iterable refused to create the profile, as update mode asked.
					res.Skipped.inc(r.Op, 1)
					rejections = append(rejections, *s.notInIterable(r, "failedUpdates."+rj.Category))
					continue
				}
				res.Rejected.inc(r.Op, 1)
				rejections = append(rejections, warehouse.Rejection{Key: r.Key, Op: r.Op,
					Outcome: warehouse.OutcomeRejected, Reason: rj.Reason})
			}
			res.CreatedFields = mergeNames(res.CreatedFields, br.CreatedFields)
			res.FilteredOutFields = mergeNames(res.FilteredOutFields, br.FilteredOutFields)
		}
	}
	if len(rejections) > 0 {
		if err := s.planner.RecordRejections(ctx, s.act.ID, s.runID, rejections); err != nil {
			return fmt.Errorf("record %d rejections: %w", len(rejections), err)
		}
	}
	s.recordMetrics(ctx, res)
	last := s.rows[len(s.rows)-1].Seq
	s.mu.Lock()
	s.prog.AfterSeq = last
	s.prog.Result.Merge(res)
	p := s.prog
	s.mu.Unlock()
	if activity.IsActivity(ctx) {
		activity.RecordHeartbeat(ctx, p)
	}
	s.rows, s.records, s.local, s.noop = s.rows[:0], s.records[:0], s.local[:0], s.noop[:0]
	return nil
}

// recordMetrics counts the rows of an answered window by operation and outcome. A window is
// counted once per attempt that answers it: one resent after a crash counts again, as it was
// sent again.
func (s *chunkSender) recordMetrics(ctx context.Context, res ChunkResult) {
	if s.metrics == nil {
		return
	}
	for _, o := range []struct {
		outcome string
		counts  OpCounts
	}{{"succeeded", res.Succeeded}, {"rejected", res.Rejected}, {"skipped", res.Skipped}} {
		for _, op := range []struct {
			name string
			n    int64
		}{{"added", o.counts.Added}, {"changed", o.counts.Changed}, {"removed", o.counts.Removed}} {
			if op.n > 0 {
				s.metrics.Records(ctx, s.act.ID, op.name, o.outcome, op.n)
			}
		}
	}
}

// addStats keeps request counts of a failed window so the report shows the traffic it caused.
func (s *chunkSender) addStats(requests, rateLimited int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prog.Result.Requests += requests
	s.prog.Result.RateLimited += rateLimited
}

func identifierString(v any) (string, bool) {
	var s string
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		s = x
	case []byte:
		s = string(x)
	case int64:
		s = strconv.FormatInt(x, 10)
	case int32:
		s = strconv.FormatInt(int64(x), 10)
	case int:
		s = strconv.Itoa(x)
	default:
		s = fmt.Sprint(x)
	}
	return s, s != ""
}
