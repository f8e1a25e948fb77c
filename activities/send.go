package activities

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

	// removalExistence is how removals avoid creating profiles (see SyncChunkInput).
	removalExistence string

	rows    []warehouse.Row
	records []iterable.Record
	local   []warehouse.Rejection // refused or skipped before sending
	noop    []int                 // rows that need no request (removals kept in Iterable)
	held    []int                 // rows a known rejection holds back: neither sent nor recorded
	deletes []int                 // removals to delete (onRemoved: delete)

	// A list activation's list, how its subscribes avoid creating profiles (ListExistence*),
	// and the window's members to subscribe and unsubscribe.
	listID        int64
	listExistence string
	subs, unsubs  []iterable.Record

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
	if warehouse.HeldByPrior(r.Prior, s.conflicts) {
		// Rejected before sending, for a reason that still holds, and unchanged since: known.
		s.held = append(s.held, idx)
		return s.flushIfFull(ctx)
	}
	if l := s.act.Destination.List; l != nil && (r.Op != warehouse.OpChange || r.PreviousIdentifier != nil) {
		return s.addMember(ctx, idx, r)
	}
	user, rej := s.user(r)
	if rej == nil && user != nil && s.existenceOf(r) == ExistenceExport && !r.Known {
		rej = s.notInIterable(r, "not in the project's exported identifiers")
	}
	switch {
	case rej != nil:
		s.local = append(s.local, *rej)
	case r.Op == warehouse.OpRemove && user != nil && s.act.Destination.OnRemoved == "delete":
		s.deletes = append(s.deletes, idx)
	case user == nil:
		s.noop = append(s.noop, idx)
	default:
		s.records = append(s.records, iterable.Record{Index: idx, User: *user})
	}
	return s.flushIfFull(ctx)
}

// addMember turns a list activation's add into a subscriber (with its mapped fields) and its
// removal into an unsubscribe of the identifier it was last synced with. A removal whose person
// another key now carries stays a member; with list.onLeave keep, every leaving row does.
func (s *chunkSender) addMember(ctx context.Context, idx int, r warehouse.Row) error {
	l := s.act.Destination.List
	if r.Op == warehouse.OpRemove {
		if !l.Unsubscribes() || r.KeepProfile {
			s.noop = append(s.noop, idx)
			return s.flushIfFull(ctx)
		}
		id, ok := identifierString(r.Identifier)
		if !ok {
			s.local = append(s.local, warehouse.Rejection{Key: r.Key, Op: warehouse.OpUnsubscribe, Outcome: warehouse.OutcomeSkipped,
				Class:  warehouse.ClassNoIdentifier,
				Reason: "skipped: the state holds no identifier for this leaving key (it was synced before identifiers were kept); not unsubscribed"})
			return s.flushIfFull(ctx)
		}
		s.unsubs = append(s.unsubs, iterable.Record{Index: idx, User: s.identityOf(id)})
		return s.flushIfFull(ctx)
	}
	// An add, or a member whose identifier changed (another profile now: it moves, with every
	// field, and its old profile leaves the list unless another key carries it).
	user, rej := s.user(r)
	if rej == nil && s.listExistence == ExistenceExport && !r.Known {
		rej = s.notInIterable(r, "not in the project's exported identifiers")
	}
	if rej != nil {
		if rej.Op == warehouse.OpAdd {
			rej.Op = warehouse.OpSubscribe
		}
		s.local = append(s.local, *rej)
		return s.flushIfFull(ctx)
	}
	if user == nil { // a change without fields to send still moves its member
		user = &iterable.User{}
		if id, ok := identifierString(r.Identifier); ok {
			*user = s.identityOf(id)
		}
	}
	s.subs = append(s.subs, iterable.Record{Index: idx, User: *user})
	if old, ok := identifierString(r.PreviousIdentifier); ok && r.Op == warehouse.OpChange && l.Unsubscribes() && !r.KeepProfile {
		s.unsubs = append(s.unsubs, iterable.Record{Index: idx, User: s.identityOf(old)})
	}
	return s.flushIfFull(ctx)
}

// identityOf is a user that only names itself, by the activation's identifier field.
func (s *chunkSender) identityOf(id string) iterable.User {
	if s.act.Destination.Identifier.Field == "userId" {
		return iterable.User{UserID: id}
	}
	return iterable.User{Email: id}
}

func (s *chunkSender) flushIfFull(ctx context.Context) error {
	if len(s.rows) >= s.window {
		return s.flush(ctx)
	}
	return nil
}

// existenceOf is how the row avoids creating a profile: the run's strategy in update mode, and
// for removals (which must never create one) the removals' strategy.
func (s *chunkSender) existenceOf(r warehouse.Row) string {
	if r.Op == warehouse.OpRemove {
		return s.removalExistence
	}
	return s.existence
}

// user builds what Iterable receives for a row: every mapped field for an add, the changed
// fields for a change, nulls (or nothing) for a removal. A removal names the profile it was
// last synced with; one whose profile another key now carries needs nothing.
func (s *chunkSender) user(r warehouse.Row) (*iterable.User, *warehouse.Rejection) {
	d := s.act.Destination
	reject := func(class warehouse.Class, field, reason string) *warehouse.Rejection {
		return &warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeRejected, Class: class,
			Field: field, Reason: reason, RowHash: r.RowHash}
	}
	if r.Op == warehouse.OpRemove && (d.OnRemoved != "clear" && d.OnRemoved != "delete" || r.KeepProfile) {
		return nil, nil
	}
	id, ok := identifierString(r.Identifier)
	if !ok && r.Op == warehouse.OpRemove {
		// The state was written before it kept identifiers: there is no profile to name.
		return nil, &warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeSkipped, Class: warehouse.ClassNoIdentifier,
			Reason: "skipped: the state holds no identifier for this removed key (it was synced before identifiers were kept); its profile was left as it is"}
	}
	if !ok {
		return nil, reject(warehouse.ClassIdentifier, d.Identifier.Column, fmt.Sprintf("identifier column %s is NULL or empty", d.Identifier.Column))
	}
	u := &iterable.User{}
	if d.Identifier.Field == "userId" {
		if err := iterable.CheckUserID(id); err != nil {
			return nil, reject(warehouse.ClassIdentifier, d.Identifier.Column, fmt.Sprintf("invalid userId in column %s: %v", d.Identifier.Column, err))
		}
		u.UserID = id
		if d.Mode != spec.ModeUpdate && r.Op != warehouse.OpRemove {
			// In email-based projects Iterable creates a profile for an unknown userId only
			// when asked; in update mode, and for removals, it must not (ExistenceNative).
			yes := true
			u.PreferUserID = &yes
		}
	} else {
		if err := iterable.CheckEmail(id); err != nil {
			return nil, reject(warehouse.ClassIdentifier, d.Identifier.Column, fmt.Sprintf("invalid email in column %s: %v", d.Identifier.Column, err))
		}
		u.Email = id
	}
	switch {
	case r.Op == warehouse.OpRemove:
		u.DataFields = make(map[string]any, len(d.Fields))
		for _, f := range d.Fields {
			u.DataFields[f.Field] = nil
		}
		if d.OnRemoved == "delete" {
			return u, nil // deleted, not updated: it carries no fields
		}
	default:
		// An add's own values become the user's fields: they are converted in place (the row's
		// values are not read again; value i is read before slot i is written) and keep the
		// chunk's shared sorted names, which saves a slice and a map per user. The NULLs a spec
		// ignores are dropped; the user then has its own names.
		inPlace := changesEveryValue(r)
		names := r.Changed
		vals := r.Values.Vals[:0]
		if !inPlace {
			if !slices.IsSorted(names) { // the encoder writes fields in sorted order
				names = slices.Sorted(slices.Values(names))
			}
			vals = make([]any, 0, len(names))
		}
		var kept []string // the names once a NULL was dropped; until then names[:len(vals)]
		for i, name := range names {
			var raw any
			if inPlace {
				raw = r.Values.Vals[i]
			} else {
				raw, _ = r.Values.Get(name)
			}
			if raw == nil && d.IgnoresNulls() {
				if kept == nil {
					kept = slices.Clone(names[:i])
				}
				continue
			}
			if reason, conflict := s.conflicts[name]; conflict {
				return nil, reject(warehouse.ClassType, name, reason)
			}
			v, err := iterable.Value(raw)
			if err != nil {
				return nil, reject(warehouse.ClassValue, name, fmt.Sprintf("field %s: %v", name, err))
			}
			vals = append(vals, v)
			if kept != nil {
				kept = append(kept, name)
			}
		}
		if kept != nil {
			names = kept
		}
		u.Fields = iterable.Fields{Names: names, Values: vals}
	}
	if u.FieldCount() == 0 && (d.List == nil || r.Op != warehouse.OpAdd) {
		return nil, nil // a subscriber needs no field: joining the list is the update
	}
	return u, nil
}

// changesEveryValue says whether the row's changed fields are exactly the fields of its values
// (an add): its values can then be the user's fields.
func changesEveryValue(r warehouse.Row) bool {
	return r.Values.Len() > 0 && len(r.Values.Names) == r.Values.Len() && slices.Equal(r.Changed, r.Values.Names)
}

// notInIterable skips a row in update mode: it is not committed and is looked at again next run.
func (s *chunkSender) notInIterable(r warehouse.Row, why string) *warehouse.Rejection {
	never := "update mode never creates profiles"
	if r.Op == warehouse.OpRemove {
		never = "nothing to clear or delete; a removal never creates a profile"
	}
	return &warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeSkipped, Class: warehouse.ClassNotInIterable,
		Reason: "skipped: not in Iterable (" + why + "); " + never, RowHash: r.RowHash}
}

// dropUnknown removes, in lookup mode, the records whose user Iterable does not have.
func (s *chunkSender) dropUnknown(ctx context.Context, recs *[]iterable.Record, lookup func(warehouse.Row) bool, op warehouse.Op) ([]warehouse.Rejection, error) {
	field := s.act.Destination.Identifier.Field
	ids := make([]string, len(*recs))
	var ask []string
	for i, rec := range *recs {
		ids[i] = rec.User.Email
		if field == "userId" {
			ids[i] = rec.User.UserID
		}
		if lookup(s.rows[rec.Index]) {
			ask = append(ask, ids[i])
		}
	}
	if len(ask) == 0 {
		return nil, nil
	}
	found, err := s.client.Exists(ctx, field, ask)
	if err != nil {
		return nil, fmt.Errorf("look up %d users: %w", len(ask), err)
	}
	var skipped []warehouse.Rejection
	kept := (*recs)[:0]
	for i, rec := range *recs {
		if !lookup(s.rows[rec.Index]) || found[ids[i]] {
			kept = append(kept, rec)
			continue
		}
		rj := *s.notInIterable(s.rows[rec.Index], "lookup found no such user")
		if op != "" {
			rj.Op = op
		}
		skipped = append(skipped, rj)
	}
	*recs = kept
	return skipped, nil
}

// flush sends the window's users, records its rejections in the warehouse, then moves the cursor.
func (s *chunkSender) flush(ctx context.Context) error {
	if len(s.rows) == 0 {
		return nil
	}
	var res ChunkResult
	rejections := append([]warehouse.Rejection(nil), s.local...)
	if len(s.records) > 0 && (s.existence == ExistenceLookup || s.removalExistence == ExistenceLookup) {
		skipped, err := s.dropUnknown(ctx, &s.records, func(r warehouse.Row) bool { return s.existenceOf(r) == ExistenceLookup }, "")
		if err != nil {
			return err
		}
		rejections = append(rejections, skipped...)
	}
	if len(s.subs) > 0 && s.listExistence == ExistenceLookup {
		skipped, err := s.dropUnknown(ctx, &s.subs, func(warehouse.Row) bool { return true }, warehouse.OpSubscribe)
		if err != nil {
			return err
		}
		rejections = append(rejections, skipped...)
	}
	for _, i := range s.held {
		res.StillRejected.inc(s.rows[i].Op, 1)
	}
	for _, i := range s.noop {
		res.Attempted.inc(s.rows[i].Op, 1)
		res.Succeeded.inc(s.rows[i].Op, 1)
	}
	if err := s.sendDeletes(ctx, &res, &rejections); err != nil {
		return err
	}
	for _, g := range []struct {
		op   warehouse.Op // "" is bulkUpdate: each row records its own operation
		recs []iterable.Record
	}{{"", s.records}, {warehouse.OpSubscribe, s.subs}, {warehouse.OpUnsubscribe, s.unsubs}} {
		if err := s.send(ctx, g.op, g.recs, &res, &rejections); err != nil {
			return err
		}
	}
	s.count(&res, rejections)
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
	s.rows, s.records, s.local, s.noop, s.held, s.deletes = s.rows[:0], s.records[:0], s.local[:0], s.noop[:0], s.held[:0], s.deletes[:0]
	s.subs, s.unsubs = s.subs[:0], s.unsubs[:0]
	return nil
}

// send packs records (at most usersPerRequest and 4 MB a request, each endpoint on its own
// budget) and sends them with bulkUpdate (op "") or, for a list activation's members, subscribe
// or unsubscribe, then maps Iterable's answer per record. A user Iterable does not know is
// skipped: in update mode or for a removal (nothing to clear or unsubscribe) it was never
// created; a moved member's old profile that is gone needs no unsubscribe.
func (s *chunkSender) send(ctx context.Context, op warehouse.Op, recs []iterable.Record, res *ChunkResult, rejections *[]warehouse.Rejection) error {
	if len(recs) == 0 {
		return nil
	}
	existingOnly := s.listExistence == ListExistenceFlag
	// Errors and reasons name bulkUpdate's records as they did before lists came.
	who, what, packed := "user", "batch", "pack"
	if op != "" {
		who, what, packed = "subscriber", string(op)+" batch", "pack "+string(op)
	}
	var (
		batches  []iterable.Batch
		oversize []int
		err      error
	)
	switch op {
	case warehouse.OpSubscribe:
		batches, oversize, err = s.client.PackSubscribe(recs, s.listID, existingOnly)
	case warehouse.OpUnsubscribe:
		batches, oversize, err = s.client.PackUnsubscribe(recs, s.listID)
	default:
		batches, oversize, err = s.client.Pack(recs, s.act.Destination.CreatesNewFields())
	}
	if err != nil {
		return fmt.Errorf("%s: %w", packed, err)
	}
	recOp := func(r warehouse.Row) warehouse.Op {
		if op == "" {
			return r.Op
		}
		return op
	}
	for _, i := range oversize {
		r := s.rows[i]
		*rejections = append(*rejections, warehouse.Rejection{Key: r.Key, Op: recOp(r), Outcome: warehouse.OutcomeRejected,
			Class: warehouse.ClassOversize, Reason: who + " is larger than Iterable's 4 MB request limit on its own", RowHash: r.RowHash})
	}
	for bi, b := range batches {
		var br iterable.BatchResult
		switch op {
		case warehouse.OpSubscribe:
			br, err = s.client.Subscribe(ctx, s.listID, b, existingOnly)
		case warehouse.OpUnsubscribe:
			br, err = s.client.Unsubscribe(ctx, s.listID, b)
		default:
			br, err = s.client.SendBatch(ctx, b)
		}
		res.Requests += int64(br.Requests)
		res.RateLimited += int64(br.RateLimited)
		if err != nil {
			// Rows already answered in this window stay unrecorded: the retry resends the window,
			// which Iterable treats as the same update.
			s.addStats(res.Requests, res.RateLimited)
			return fmt.Errorf("%s %d of window after seq %d: %w", what, bi, s.prog.AfterSeq, err)
		}
		moved := func(r warehouse.Row) bool { return op == warehouse.OpUnsubscribe && r.Op == warehouse.OpChange }
		for _, i := range br.Accepted {
			if r := s.rows[i]; !moved(r) { // a moved member: its subscribe is what counts
				res.Attempted.inc(r.Op, 1)
				res.Succeeded.inc(r.Op, 1)
			}
		}
		for _, rj := range br.Rejected {
			r := s.rows[rj.Index]
			notFound := strings.HasPrefix(rj.Category, "notFound")
			switch {
			case notFound && moved(r):
			case notFound && (s.act.Destination.Mode == spec.ModeUpdate || r.Op == warehouse.OpRemove):
				skip := *s.notInIterable(r, "failedUpdates."+rj.Category)
				skip.Op = recOp(r)
				*rejections = append(*rejections, skip)
			default:
				*rejections = append(*rejections, warehouse.Rejection{Key: r.Key, Op: recOp(r), Outcome: warehouse.OutcomeRejected,
					Class: warehouse.ClassIterable, Reason: rj.Reason, RowHash: r.RowHash})
			}
		}
		for _, u := range br.Unconfirmed {
			r := s.rows[u.Index]
			*rejections = append(*rejections, warehouse.Rejection{Key: r.Key, Op: recOp(r), Outcome: warehouse.OutcomeUnconfirmed,
				Class: warehouse.ClassUnconfirmed, Reason: u.Reason, RowHash: r.RowHash})
		}
		res.CreatedFields = mergeNames(res.CreatedFields, br.CreatedFields)
		res.FilteredOutFields = mergeNames(res.FilteredOutFields, br.FilteredOutFields)
	}
	return nil
}

// count adds the window's rejections to res. A skipped row was not attempted. A rejection equal
// to the row's prior one (same row, same class, field and reason) is known: it is reported, but
// the rejection threshold counts new breakage only.
func (s *chunkSender) count(res *ChunkResult, rejections []warehouse.Rejection) {
	if len(rejections) == 0 {
		return
	}
	prior := map[string]*warehouse.Prior{}
	for _, r := range s.rows {
		if r.Prior != nil {
			prior[r.Key] = r.Prior
		}
	}
	for _, rj := range rejections {
		switch rj.Outcome {
		case warehouse.OutcomeSkipped:
			res.Skipped.inc(rj.Op, 1)
			continue
		case warehouse.OutcomeUnconfirmed:
			res.Unconfirmed.inc(rj.Op, 1)
		default:
			res.Rejected.inc(rj.Op, 1)
			if p := prior[rj.Key]; p != nil && p.Outcome == rj.Outcome && p.Class == rj.Class && p.Field == rj.Field && p.Reason == rj.Reason {
				res.Known.inc(rj.Op, 1)
			}
		}
		res.Attempted.inc(rj.Op, 1)
	}
}

// deleteWorkers bounds the DELETE requests of a window in flight at once: the project's budget
// (100 requests/s) paces them, the workers only hide each request's latency.
const deleteWorkers = 8

// sendDeletes deletes the window's removed profiles (onRemoved: delete), at most deleteWorkers
// at a time. A profile Iterable does not have is skipped (and committed: nothing to delete).
func (s *chunkSender) sendDeletes(ctx context.Context, res *ChunkResult, rejections *[]warehouse.Rejection) error {
	if len(s.deletes) == 0 {
		return nil
	}
	field := s.act.Destination.Identifier.Field
	type answer struct {
		dr  iterable.DeleteResult
		err error
	}
	answers := make([]answer, len(s.deletes))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(deleteWorkers, len(s.deletes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				id, _ := identifierString(s.rows[s.deletes[j]].Identifier)
				answers[j].dr, answers[j].err = s.client.DeleteUser(ctx, field, id)
			}
		}()
	}
	for j := range s.deletes {
		work <- j
	}
	close(work)
	wg.Wait()
	var firstErr error
	for j, a := range answers {
		r := s.rows[s.deletes[j]]
		res.Requests += int64(a.dr.Requests)
		res.RateLimited += int64(a.dr.RateLimited)
		var apiErr *iterable.APIError
		switch {
		case a.err == nil && a.dr.NotFound:
			*rejections = append(*rejections, *s.notInIterable(r, "DELETE found no such user"))
		case a.err == nil:
			res.Attempted.inc(r.Op, 1)
			res.Succeeded.inc(r.Op, 1)
		case errors.As(a.err, &apiErr) && !apiErr.Fatal() && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != 429:
			*rejections = append(*rejections, warehouse.Rejection{Key: r.Key, Op: r.Op, Outcome: warehouse.OutcomeRejected,
				Class: warehouse.ClassIterable, Reason: "Iterable refused to delete the user: " + apiErr.Code})
		case firstErr == nil:
			firstErr = a.err
		}
	}
	if firstErr != nil {
		// The window is answered again by the retry; Iterable treats a repeated delete alike.
		s.addStats(res.Requests, res.RateLimited)
		return fmt.Errorf("delete users of window after seq %d: %w", s.prog.AfterSeq, firstErr)
	}
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
