package iterable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
)

// BatchResult is what happened to the records of one batch. Unless SendBatch returns an error,
// every record of the batch is in exactly one of Accepted, Rejected and Unconfirmed.
type BatchResult struct {
	Accepted []int // record indices Iterable's answer confirmed as updated
	Rejected []RecordRejection
	// Unconfirmed holds the records that Iterable's answer did not account for even when the
	// record was sent alone (Category CategoryUnconfirmed): Iterable may or may not have applied
	// them. They must not be committed as synced; send them again on the next run.
	Unconfirmed       []RecordRejection
	Requests          int // HTTP requests made (including retries and splits)
	RateLimited       int // 429 answers received
	CreatedFields     []string
	FilteredOutFields []string
}

// RecordRejection says why Iterable refused one record, or why its fate is unknown. Category is the
// failedUpdates list that named the record (e.g. "invalidEmails"), Iterable's error code when a
// request holding only this record was refused, or one of the Category constants; Reason is a
// sentence without user data.
type RecordRejection struct {
	Index    int
	Category string
	Reason   string
}

// Categories of RecordRejection besides failedUpdates lists and Iterable error codes.
const (
	CategoryTooLarge = "BodyTooLarge" // a single user exceeds MaxBodyBytes; never sent
	// CategoryUnconfirmed is the Category of BatchResult.Unconfirmed: Iterable's answer to a
	// request holding only this record did not account for it.
	CategoryUnconfirmed = "unconfirmed"
)

// TooLargeReason is the Reason of records that Pack, PackSubscribe or PackUnsubscribe returned as
// oversize.
const TooLargeReason = "the user's JSON exceeds Iterable's request body limit on its own and was not sent"

const opBulkUpdate = "POST /api/users/bulkUpdate"

// SendBatch sends one packed batch with POST /api/users/bulkUpdate. It waits on the project's
// budget, retries transient failures, and on a 400 that is not fatal splits the batch in halves,
// recursively, until every record is accepted or rejected on its own. An answer that does not
// account for every record of its request (an entry in a failedUpdates category this package
// does not know, an entry naming no record of the request, or successCount / failCount that
// disagree with the lists) is split the same way: only an answer that accounts for each record
// is trusted, and a record that is still not accounted for when sent alone ends in Unconfirmed.
// Every record ends in exactly one of Accepted, Rejected or Unconfirmed unless an error is
// returned.
//
// A fatal answer (bad key, project-level refusal) is returned as an error wrapping *APIError
// with Fatal() true, without retrying; use errors.As. On any error the result holds the counts
// so far, and the batch as a whole must be treated as not sent.
func (c *Client) SendBatch(ctx context.Context, b Batch) (BatchResult, error) {
	if len(b.Records) == 0 {
		return BatchResult{}, nil
	}
	if b.env.kind != kindBulkUpdate {
		// Its body would go to bulkUpdate as a list request: a programming error.
		return BatchResult{}, fmt.Errorf("bulkUpdate: the batch was packed for a list request; send it with Subscribe or Unsubscribe")
	}
	if b.Body == nil {
		packed, over, err := pack(b.Records, bulkEnvelope(b.CreateNewFields), len(b.Records), int(^uint(0)>>1))
		if err != nil {
			return BatchResult{}, fmt.Errorf("bulkUpdate: %w", err)
		}
		if len(over) > 0 || len(packed) != 1 {
			return BatchResult{}, fmt.Errorf("bulkUpdate: batch could not be encoded as one body")
		}
		b = packed[0]
	}
	s := c.newSender(c.endpointOf(b.envelope()))
	err := s.send(ctx, b, 0)
	return s.result(), err
}

// endpoint is what send needs to know of the endpoint a batch goes to.
type endpoint struct {
	name   string // for errors and logs: "bulkUpdate", "subscribe", "unsubscribe"
	op     string // APIError.Op and Observer endpoint
	path   string
	budget *Budget
	listID int64 // lists: the list the request names
	// reason describes a failedUpdates category without naming the value.
	reason func(cat string) string
}

func (c *Client) endpointOf(env envelope) endpoint {
	switch env.kind {
	case kindSubscribe:
		return endpoint{name: "subscribe", op: opSubscribe, path: "/api/lists/subscribe", budget: c.subscribe,
			listID: env.listID, reason: subscribeReason}
	case kindUnsubscribe:
		return endpoint{name: "unsubscribe", op: opUnsubscribe, path: "/api/lists/unsubscribe", budget: c.unsubscribe,
			listID: env.listID, reason: unsubscribeReason}
	}
	return endpoint{name: "bulkUpdate", op: opBulkUpdate, path: "/api/users/bulkUpdate", budget: c.bulk, reason: CategoryReason}
}

// sender sends the batches of one call, splitting them as needed, and collects their answers.
type sender struct {
	c                 *Client
	ep                endpoint
	res               BatchResult
	created, filtered map[string]struct{}
	// listChecked: a list request was refused and the list was found to exist and accept
	// members, so later refusals concern the records.
	listChecked bool
}

func (c *Client) newSender(ep endpoint) *sender {
	return &sender{c: c, ep: ep, created: map[string]struct{}{}, filtered: map[string]struct{}{}}
}

func (s *sender) result() BatchResult {
	res := s.res
	res.CreatedFields = sortedKeys(s.created)
	res.FilteredOutFields = sortedKeys(s.filtered)
	return res
}

func sortedKeys(m map[string]struct{}) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// send sends b, splitting it on a non-fatal 4xx or an answer that does not account for every
// record. depth is the split level, for logs.
func (s *sender) send(ctx context.Context, b Batch, depth int) error {
	c, ep, res := s.c, s.ep, &s.res
	switch {
	case len(b.Body) > c.maxBodyBytes && len(b.Records) == 1:
		res.Rejected = append(res.Rejected, RecordRejection{Index: b.Records[0].Index, Category: CategoryTooLarge, Reason: TooLargeReason})
		return nil
	case len(b.Body) > c.maxBodyBytes:
		// Only a hand-built batch gets here: split it rather than earn a certain refusal.
	default:
		st := attemptStats{}
		resp, err := c.do(ctx, ep.budget, "POST", ep.op, ep.path, b.Body, &st)
		res.Requests += st.requests
		res.RateLimited += st.rateLimited
		if err == nil {
			gap, err := s.mapResponse(b, resp.body)
			if err != nil || gap == nil {
				return err
			}
			if len(b.Records) == 1 {
				res.Unconfirmed = append(res.Unconfirmed, RecordRejection{Index: b.Records[0].Index,
					Category: CategoryUnconfirmed, Reason: gap.reason()})
				return nil
			}
			// Re-sending is safe (bulkUpdate sets fields, it does not add to them; joining or
			// leaving a list twice is joining or leaving it once), and smaller requests narrow
			// down which records the answer failed to account for.
			c.log.LogAttrs(ctx, slog.LevelWarn, "iterable's "+ep.name+" answer does not account for every user; splitting it in halves",
				slog.Int("successCount", gap.successCount), slog.Int("failCount", gap.failCount),
				slog.Int("accepted", gap.accepted), slog.Int("rejected", gap.rejected), slog.Int("unknownEntries", gap.unknownEntries()),
				slog.String("unknownCategories", strings.Join(gap.unknownNames(), ",")),
				slog.Int("unmatchedEntries", gap.unmatched), slog.Int("users", len(b.Records)), slog.Int("depth", depth))
			break
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && ep.listID != 0 && !s.listChecked && (apiErr.splittable() || apiErr.Status == 404) {
			// A refused list request may be about the list, not the records: splitting would
			// then reject every record one by one. Ask Iterable which lists exist first.
			if lerr := s.checkList(ctx, apiErr); lerr != nil {
				return fmt.Errorf("%s of %d users: %w", ep.name, len(b.Records), lerr)
			}
		}
		if apiErr == nil || !apiErr.splittable() {
			return fmt.Errorf("%s of %d users: %w", ep.name, len(b.Records), err)
		}
		if len(b.Records) == 1 {
			res.Rejected = append(res.Rejected, singleRejection(b.Records[0], apiErr))
			return nil
		}
		c.log.LogAttrs(ctx, slog.LevelInfo, "iterable refused a batch; splitting it in halves",
			slog.String("endpoint", ep.name), slog.Int("status", apiErr.Status), slog.String("code", apiErr.Code),
			slog.Int("users", len(b.Records)), slog.Int("depth", depth))
	}
	left, right, err := b.halves()
	if err != nil {
		return fmt.Errorf("%s split: %w", ep.name, err)
	}
	if err := s.send(ctx, left, depth+1); err != nil {
		return err
	}
	return s.send(ctx, right, depth+1)
}

// singleRejection turns the refusal of a one-user request into that record's rejection.
func singleRejection(r Record, e *APIError) RecordRejection {
	cat := e.Code
	if cat == "" {
		cat = "HTTP" + strconv.Itoa(e.Status)
	}
	secrets := []string{r.User.Email, r.User.UserID}
	fields := r.User.FieldMap()
	for _, v := range fields {
		switch x := v.(type) {
		case string:
			secrets = append(secrets, x)
		case json.Number:
			secrets = append(secrets, string(x))
		}
	}
	reason := fmt.Sprintf("Iterable refused a request holding only this user with HTTP %d", e.Status)
	if e.Code != "" {
		reason += " " + e.Code
	}
	if msg := sanitizeMsg(e.rawMsg, fields, secrets...); msg != "" {
		reason += ": " + msg
	}
	return RecordRejection{Index: r.Index, Category: cat, Reason: reason}
}

type bulkResponse struct {
	SuccessCount      int                 `json:"successCount"`
	FailCount         int                 `json:"failCount"`
	CreatedFields     []string            `json:"createdFields"`
	FilteredOutFields []string            `json:"filteredOutFields"`
	FailedUpdates     map[string][]string `json:"failedUpdates"`
	// Deprecated top-level lists, used when failedUpdates is absent.
	InvalidEmails  []string `json:"invalidEmails"`
	InvalidUserIds []string `json:"invalidUserIds"`
}

// knownCategory reports the failedUpdates lists of Iterable's bulkUpdate answer.
func knownCategory(cat string) bool {
	switch cat {
	case "invalidEmails", "invalidUserIds", "conflictEmails", "conflictUserIds", "forgottenEmails",
		"forgottenUserIds", "invalidDataEmails", "invalidDataUserIds", "notFoundEmails", "notFoundUserIds":
		return true
	}
	return false
}

// answerGap describes, without values, how a bulkUpdate answer failed to account for the records
// of its request.
type answerGap struct {
	successCount, failCount int
	accepted, rejected      int            // records the lists leave accepted / name
	unknown                 []categorySize // non-empty unknown categories, sorted by name
	unmatched               int            // entries of known categories that name no record
	named                   string         // the known category naming a lone record, if any
}

type categorySize struct {
	name    string
	entries int
}

func (g *answerGap) unknownEntries() int {
	n := 0
	for _, u := range g.unknown {
		n += u.entries
	}
	return n
}

func (g *answerGap) unknownNames() []string {
	out := make([]string, len(g.unknown))
	for i, u := range g.unknown {
		out[i] = categoryName(u.name)
	}
	return out
}

// reason is the Reason of a record left unconfirmed by this answer.
func (g *answerGap) reason() string {
	parts := []string{fmt.Sprintf("successCount %d, failCount %d", g.successCount, g.failCount)}
	for _, u := range g.unknown {
		parts = append(parts, fmt.Sprintf("%d %s in unknown failedUpdates category %s",
			u.entries, plural(u.entries, "entry", "entries"), categoryName(u.name)))
	}
	if g.unmatched > 0 {
		parts = append(parts, fmt.Sprintf("%d failedUpdates %s naming no user of the request",
			g.unmatched, plural(g.unmatched, "entry", "entries")))
	}
	if g.named != "" {
		parts = append(parts, "the user is named in failedUpdates."+g.named)
	}
	return "Iterable's answer did not account for this user (" + strings.Join(parts, "; ") +
		"); not committed, sent again next run"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// categoryName shows a category name Iterable sent only when it looks like one: a JSON key of an
// unknown answer is not trusted to hold no data.
func categoryName(s string) string {
	if s == "" || len(s) > 64 {
		return "<unnamed>"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return "<unnamed>"
		}
	}
	return s
}

// mapResponse assigns every record of b to Accepted or to the failedUpdates list naming it, when
// the answer accounts for every record; otherwise it changes nothing but the field lists and
// returns how the answer falls short.
func (s *sender) mapResponse(b Batch, body []byte) (*answerGap, error) {
	res, created, filtered := &s.res, s.created, s.filtered
	var r bulkResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s: decoding the response: %w", s.ep.name, jsonErr(err))
	}
	for _, f := range r.CreatedFields {
		created[f] = struct{}{}
	}
	for _, f := range r.FilteredOutFields {
		filtered[f] = struct{}{}
	}
	if r.FailedUpdates == nil && (len(r.InvalidEmails) > 0 || len(r.InvalidUserIds) > 0) {
		r.FailedUpdates = map[string][]string{"invalidEmails": r.InvalidEmails, "invalidUserIds": r.InvalidUserIds}
	}
	gap := &answerGap{successCount: r.SuccessCount, failCount: r.FailCount}

	// Fast path: nothing failed.
	failed := 0
	for _, l := range r.FailedUpdates {
		failed += len(l)
	}
	if failed == 0 {
		if r.SuccessCount != len(b.Records) || r.FailCount != 0 {
			gap.accepted = len(b.Records)
			return gap, nil
		}
		for _, rec := range b.Records {
			res.Accepted = append(res.Accepted, rec.Index)
		}
		return nil, nil
	}

	// The identifiers of the records, as the lists name them: an entry matching none of them
	// means the answer speaks of something this request did not send (or in a form we cannot
	// map), so none of its lists can be trusted to be complete.
	emails := make(map[string]struct{}, len(b.Records))
	userIDs := make(map[string]struct{}, len(b.Records))
	for _, rec := range b.Records {
		u := rec.User
		if u.Email != "" || u.UserID == "" {
			emails[strings.ToLower(u.Email)] = struct{}{}
		}
		if u.UserID != "" {
			userIDs[u.UserID] = struct{}{}
		}
	}

	// Email lists match case-insensitively, userId lists exactly. Categories are visited in a
	// fixed order so a record named twice always lands in the same one.
	byEmail := map[string]string{}
	byUserID := map[string]string{}
	cats := make([]string, 0, len(r.FailedUpdates))
	for cat := range r.FailedUpdates {
		cats = append(cats, cat)
	}
	slices.Sort(cats)
	for _, cat := range cats {
		list := r.FailedUpdates[cat]
		switch {
		case len(list) == 0:
		case !knownCategory(cat):
			gap.unknown = append(gap.unknown, categorySize{name: cat, entries: len(list)})
		case strings.HasSuffix(cat, "Emails"):
			for _, e := range list {
				k := strings.ToLower(e)
				if _, ok := emails[k]; !ok {
					gap.unmatched++
					continue
				}
				if _, ok := byEmail[k]; !ok {
					byEmail[k] = cat
				}
			}
		default:
			for _, id := range list {
				if _, ok := userIDs[id]; !ok {
					gap.unmatched++
					continue
				}
				if _, ok := byUserID[id]; !ok {
					byUserID[id] = cat
				}
			}
		}
	}
	accepted := make([]int, 0, len(b.Records))
	var rejected []RecordRejection
	for _, rec := range b.Records {
		cat, ok := "", false
		u := rec.User
		if u.Email != "" || u.UserID == "" {
			cat, ok = byEmail[strings.ToLower(u.Email)]
		}
		if !ok && u.UserID != "" {
			cat, ok = byUserID[u.UserID]
		}
		if !ok {
			accepted = append(accepted, rec.Index)
			continue
		}
		rejected = append(rejected, RecordRejection{Index: rec.Index, Category: cat, Reason: s.ep.reason(cat)})
	}
	gap.accepted, gap.rejected = len(accepted), len(rejected)
	if len(gap.unknown) > 0 || gap.unmatched > 0 || r.SuccessCount != len(accepted) || r.FailCount != len(rejected) {
		if len(b.Records) == 1 && len(rejected) == 1 {
			gap.named = rejected[0].Category
		}
		return gap, nil
	}
	res.Accepted = append(res.Accepted, accepted...)
	res.Rejected = append(res.Rejected, rejected...)
	return nil, nil
}

// CategoryReason describes a failedUpdates category without naming the value.
func CategoryReason(cat string) string {
	var what string
	switch cat {
	case "invalidEmails":
		what = "Iterable rejected the email as invalid"
	case "invalidUserIds":
		what = "Iterable rejected the userId as invalid (empty, over 52 characters, non-printable or non-ASCII, or with a trailing space)"
	case "conflictEmails":
		what = "the email already belongs to another user profile, so Iterable could not update the identity"
	case "conflictUserIds":
		what = "the userId already belongs to another user profile, so Iterable could not update the identity"
	case "forgottenEmails":
		what = "the user was GDPR-forgotten in Iterable (by email) and cannot be updated"
	case "forgottenUserIds":
		what = "the user was GDPR-forgotten in Iterable (by userId) and cannot be updated"
	case "invalidDataEmails", "invalidDataUserIds":
		what = "Iterable rejected the user's data fields, e.g. a value whose type differs from the field's type in the project"
	case "notFoundEmails":
		what = "no user with this email exists in Iterable and none was created"
	case "notFoundUserIds":
		what = "no user with this userId exists in Iterable and none was created (update only: preferUserId is not set)"
	default:
		what = "Iterable did not update the user"
	}
	return what + " (failedUpdates." + cat + ")"
}

// jsonErr drops json.SyntaxError/UnmarshalTypeError details that could quote the body.
func jsonErr(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at offset %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("unexpected JSON %s for %s", te.Value, te.Field)
	}
	return err
}
