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

// BatchResult is what happened to the records of one batch.
type BatchResult struct {
	Accepted          []int // record indices Iterable accepted
	Rejected          []RecordRejection
	Requests          int // HTTP requests made (including retries and splits)
	RateLimited       int // 429 answers received
	CreatedFields     []string
	FilteredOutFields []string
}

// RecordRejection says why Iterable refused one record. Category is the failedUpdates list that
// named the record (e.g. "invalidEmails") or Iterable's error code when a request holding only
// this record was refused; Reason is a sentence without user data.
type RecordRejection struct {
	Index    int
	Category string
	Reason   string
}

// Categories of RecordRejection besides failedUpdates lists and Iterable error codes.
const (
	CategoryTooLarge = "BodyTooLarge" // a single user exceeds MaxBodyBytes; never sent
)

// TooLargeReason is the Reason of records that Pack returned as oversize.
const TooLargeReason = "the user's JSON exceeds Iterable's bulkUpdate body limit on its own and was not sent"

const opBulkUpdate = "POST /api/users/bulkUpdate"

// SendBatch sends one packed batch with POST /api/users/bulkUpdate. It waits on the project's
// budget, retries transient failures, and on a 400 that is not fatal splits the batch in halves,
// recursively, until every record is accepted or rejected on its own. Every record ends in
// exactly one of Accepted or Rejected unless an error is returned.
//
// A fatal answer (bad key, project-level refusal) is returned as an error wrapping *APIError
// with Fatal() true, without retrying; use errors.As. On any error the result holds the counts
// so far, and the batch as a whole must be treated as not sent.
func (c *Client) SendBatch(ctx context.Context, b Batch) (BatchResult, error) {
	var res BatchResult
	if len(b.Records) == 0 {
		return res, nil
	}
	if b.Body == nil {
		packed, over, err := pack(b.Records, b.CreateNewFields, len(b.Records), int(^uint(0)>>1))
		if err != nil {
			return res, fmt.Errorf("bulkUpdate: %w", err)
		}
		if len(over) > 0 || len(packed) != 1 {
			return res, fmt.Errorf("bulkUpdate: batch could not be encoded as one body")
		}
		b = packed[0]
	}
	created := map[string]struct{}{}
	filtered := map[string]struct{}{}
	err := c.send(ctx, b, 0, &res, created, filtered)
	res.CreatedFields = sortedKeys(created)
	res.FilteredOutFields = sortedKeys(filtered)
	return res, err
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

// send sends b, splitting it on a non-fatal 4xx. depth is the split level, for logs.
func (c *Client) send(ctx context.Context, b Batch, depth int, res *BatchResult, created, filtered map[string]struct{}) error {
	switch {
	case len(b.Body) > c.maxBodyBytes && len(b.Records) == 1:
		res.Rejected = append(res.Rejected, RecordRejection{Index: b.Records[0].Index, Category: CategoryTooLarge, Reason: TooLargeReason})
		return nil
	case len(b.Body) > c.maxBodyBytes:
		// Only a hand-built batch gets here: split it rather than earn a certain refusal.
	default:
		st := attemptStats{}
		resp, err := c.do(ctx, c.bulk, "POST", opBulkUpdate, "/api/users/bulkUpdate", b.Body, &st)
		res.Requests += st.requests
		res.RateLimited += st.rateLimited
		if err == nil {
			return c.mapResponse(ctx, b, resp.body, res, created, filtered)
		}
		var apiErr *APIError
		if !errors.As(err, &apiErr) || !apiErr.splittable() {
			return fmt.Errorf("bulkUpdate of %d users: %w", len(b.Records), err)
		}
		if len(b.Records) == 1 {
			res.Rejected = append(res.Rejected, singleRejection(b.Records[0], apiErr))
			return nil
		}
		c.log.LogAttrs(ctx, slog.LevelInfo, "iterable refused a batch; splitting it in halves",
			slog.Int("status", apiErr.Status), slog.String("code", apiErr.Code),
			slog.Int("users", len(b.Records)), slog.Int("depth", depth))
	}
	left, right, err := b.halves()
	if err != nil {
		return fmt.Errorf("bulkUpdate split: %w", err)
	}
	if err := c.send(ctx, left, depth+1, res, created, filtered); err != nil {
		return err
	}
	return c.send(ctx, right, depth+1, res, created, filtered)
}

// singleRejection turns the refusal of a one-user request into that record's rejection.
func singleRejection(r Record, e *APIError) RecordRejection {
	cat := e.Code
	if cat == "" {
		cat = "HTTP" + strconv.Itoa(e.Status)
	}
	secrets := []string{r.User.Email, r.User.UserID}
	for _, v := range r.User.DataFields {
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
	if msg := sanitizeMsg(e.rawMsg, r.User.DataFields, secrets...); msg != "" {
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

// mapResponse assigns every record of b to Accepted or to the failedUpdates list naming it.
func (c *Client) mapResponse(ctx context.Context, b Batch, body []byte, res *BatchResult, created, filtered map[string]struct{}) error {
	var r bulkResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("bulkUpdate: decoding the response: %w", jsonErr(err))
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

	// Fast path: nothing failed.
	failed := 0
	for _, l := range r.FailedUpdates {
		failed += len(l)
	}
	if failed == 0 {
		for _, rec := range b.Records {
			res.Accepted = append(res.Accepted, rec.Index)
		}
		c.checkCounts(ctx, r, len(b.Records), 0)
		return nil
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
		switch {
		case strings.HasSuffix(cat, "Emails"):
			for _, e := range r.FailedUpdates[cat] {
				k := strings.ToLower(e)
				if _, ok := byEmail[k]; !ok {
					byEmail[k] = cat
				}
			}
		case strings.HasSuffix(cat, "UserIds"):
			for _, id := range r.FailedUpdates[cat] {
				if _, ok := byUserID[id]; !ok {
					byUserID[id] = cat
				}
			}
		default:
			c.log.LogAttrs(ctx, slog.LevelWarn, "iterable answered an unknown failedUpdates category; ignored",
				slog.String("category", cat), slog.Int("entries", len(r.FailedUpdates[cat])))
		}
	}
	rejected := 0
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
			res.Accepted = append(res.Accepted, rec.Index)
			continue
		}
		rejected++
		res.Rejected = append(res.Rejected, RecordRejection{Index: rec.Index, Category: cat, Reason: CategoryReason(cat)})
	}
	c.checkCounts(ctx, r, len(b.Records)-rejected, rejected)
	return nil
}

// checkCounts logs when Iterable's counts disagree with the lists; the lists are the truth, since
// only they say which record failed.
func (c *Client) checkCounts(ctx context.Context, r bulkResponse, accepted, rejected int) {
	if r.SuccessCount != accepted || r.FailCount != rejected {
		c.log.LogAttrs(ctx, slog.LevelWarn, "iterable bulkUpdate counts disagree with failedUpdates; trusting the lists",
			slog.Int("successCount", r.SuccessCount), slog.Int("failCount", r.FailCount),
			slog.Int("accepted", accepted), slog.Int("rejected", rejected))
	}
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
