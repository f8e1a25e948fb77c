package iterable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Static lists. A list activation keeps the members of a static ("Standard") list equal to a
// model: added rows are subscribed, removed rows unsubscribed. Subscribe and Unsubscribe send
// packed batches like SendBatch (same splitting, same per-record answer mapping: both answer
// UserBulkUpdateListResponse, whose failedUpdates has the same lists as bulkUpdate's), each
// inside its own per-project budget.

// List types of GET /api/lists (ListDetails.listType).
const (
	// ListTypeStandard is a static list: its members are added and removed by API or upload.
	ListTypeStandard = "Standard"
	// ListTypeDynamic is a list whose members follow a segmentation query: it cannot be
	// subscribed to or unsubscribed from.
	ListTypeDynamic     = "Dynamic"
	ListTypeSuppression = "Suppression"
	ListTypeInternal    = "Internal"
)

// MaxSubscribersPerRequest caps the subscribers of one subscribe or unsubscribe body, whatever
// Config.UsersPerRequest says. Iterable documents no maximum; peers send 1,000.
const MaxSubscribersPerRequest = 1000

// Endpoints of the list calls, as APIError.Op and Observer endpoints.
const (
	opLists       = "GET /api/lists"
	opCreateList  = "POST /api/lists"
	opSubscribe   = "POST /api/lists/subscribe"
	opUnsubscribe = "POST /api/lists/unsubscribe"
	opListUsers   = "GET /api/lists/getUsers"
	opListSize    = "GET /api/lists/{listId}/size"
)

// List is one list of the project, as GET /api/lists describes it.
type List struct {
	ID          int64
	Name        string
	Type        string // a ListType constant; Iterable may add others
	Description string
	CreatedAt   time.Time // zero when Iterable did not say
}

// Static reports a Standard list, the only kind a list activation may manage.
func (l List) Static() bool { return l.Type == ListTypeStandard }

// refusesSubscribers reports list types whose members no API call may change. A Suppression
// list is not among them: Iterable may well accept subscribers to it.
func refusesSubscribers(typ string) bool {
	return typ == ListTypeDynamic || typ == ListTypeInternal
}

// ListError is a list request refused because of the list, not of its records: the project has
// no list with that id, or the list is of a type whose members cannot be changed (Dynamic,
// Internal). Splitting or retrying cannot help, so the whole call fails with it. It wraps
// Iterable's refusal as an *APIError whose Fatal() is true: the activation's configuration is
// wrong, and it should pause.
type ListError struct {
	ListID int64
	// Type is the list's type when the list exists, "" when the project has no such list.
	Type string
	Err  *APIError
}

func (e *ListError) Error() string {
	if e.Type == "" {
		return fmt.Sprintf("iterable list %d does not exist in the project: %v", e.ListID, e.Err)
	}
	return fmt.Sprintf("iterable list %d is a %s list, whose members cannot be changed by API: %v", e.ListID, e.Type, e.Err)
}

func (e *ListError) Unwrap() error { return e.Err }

// Lists returns every list of the project with GET /api/lists (its own budget, 100 requests/s per
// project, Config.ListsRPS), in Iterable's order.
func (c *Client) Lists(ctx context.Context) ([]List, error) {
	var st attemptStats
	resp, err := c.do(ctx, c.lists, http.MethodGet, opLists, "/api/lists", nil, &st)
	if err != nil {
		return nil, fmt.Errorf("get lists: %w", err)
	}
	var body struct {
		Lists *[]struct {
			ID          int64  `json:"id"`
			Name        string `json:"name"`
			Description string `json:"description"`
			ListType    string `json:"listType"`
			CreatedAt   int64  `json:"createdAt"` // epoch milliseconds
		} `json:"lists"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil {
		return nil, fmt.Errorf("get lists: decoding the response: %w", jsonErr(err))
	}
	if body.Lists == nil {
		// Read as "no lists", such an answer would make CreateList duplicate a list.
		return nil, fmt.Errorf("get lists: the answer has no lists array")
	}
	out := make([]List, 0, len(*body.Lists))
	for _, l := range *body.Lists {
		list := List{ID: l.ID, Name: l.Name, Type: l.ListType, Description: l.Description}
		if l.CreatedAt > 0 {
			list.CreatedAt = time.UnixMilli(l.CreatedAt).UTC()
		}
		out = append(out, list)
	}
	return out, nil
}

// FindList returns the list named exactly name (case-sensitive), and whether there is one.
// Iterable allows several lists with one name; FindList then fails rather than guess which one
// the activation means.
func (c *Client) FindList(ctx context.Context, name string) (List, bool, error) {
	lists, err := c.Lists(ctx)
	if err != nil {
		return List{}, false, fmt.Errorf("find list: %w", err)
	}
	var found []List
	for _, l := range lists {
		if l.Name == name {
			found = append(found, l)
		}
	}
	switch len(found) {
	case 0:
		return List{}, false, nil
	case 1:
		return found[0], true, nil
	}
	ids := make([]string, len(found))
	for i, l := range found {
		ids[i] = strconv.FormatInt(l.ID, 10)
	}
	return List{}, false, fmt.Errorf("find list: %d lists of the project have this name (ids %s); name the list by id or rename the others",
		len(found), strings.Join(ids, ", "))
}

// CreateList creates a static list with POST /api/lists {name, description} and returns its id.
//
// Creating is not idempotent: a request that failed without proof that Iterable did not process
// it (a 5xx, a timeout, a dropped connection) is not simply sent again, which could create a
// second list of that name. CreateList notes the ids of the lists of that name before sending,
// and after such a failure looks for a new one before sending again. 429s are retried as usual.
func (c *Client) CreateList(ctx context.Context, name, description string) (int64, error) {
	if strings.TrimSpace(name) == "" {
		return 0, fmt.Errorf("create list: the name is empty")
	}
	body, err := json.Marshal(struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
	}{name, description})
	if err != nil {
		return 0, fmt.Errorf("create list: %w", err)
	}
	before, err := c.listIDsNamed(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("create list: %w", err)
	}
	bo := c.newBackOff()
	for attempt := 1; ; attempt++ {
		var st attemptStats
		resp, err := c.doWith(ctx, c.createList, http.MethodPost, opCreateList, "/api/lists", body, &st, callOpts{noResend: true})
		if err == nil {
			var out struct {
				ListID int64 `json:"listId"`
			}
			if err := json.Unmarshal(resp.body, &out); err != nil {
				return 0, fmt.Errorf("create list: decoding the response: %w", jsonErr(err))
			}
			if out.ListID <= 0 {
				return 0, fmt.Errorf("create list: the answer has no listId")
			}
			return out.ListID, nil
		}
		var apiErr *APIError
		if ctx.Err() != nil || (errors.As(err, &apiErr) && apiErr.Status < 500 && apiErr.Status != http.StatusRequestTimeout) {
			// A refusal (or a 429 retried until MaxElapsed): nothing was created.
			return 0, fmt.Errorf("create list: %w", err)
		}
		after, lerr := c.listIDsNamed(ctx, name)
		if lerr != nil {
			return 0, fmt.Errorf("create list: %w; checking whether it was created anyway: %w", err, lerr)
		}
		var created []int64
		for id := range after {
			if !before[id] {
				created = append(created, id)
			}
		}
		if len(created) > 0 {
			// Iterable created it before failing to answer.
			slices.Sort(created)
			return created[0], nil
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return 0, fmt.Errorf("create list: giving up after %d attempts: %w", attempt, err)
		}
		c.log.LogAttrs(ctx, slog.LevelWarn, "iterable list creation failed and created nothing; it will be sent again",
			slog.Int("attempt", attempt), slog.Duration("delay", d), slog.String("error", err.Error()))
		if err := sleep(ctx, d); err != nil {
			return 0, fmt.Errorf("create list: %w", err)
		}
	}
}

func (c *Client) listIDsNamed(ctx context.Context, name string) (map[int64]bool, error) {
	lists, err := c.Lists(ctx)
	if err != nil {
		return nil, err
	}
	out := map[int64]bool{}
	for _, l := range lists {
		if l.Name == name {
			out[l.ID] = true
		}
	}
	return out, nil
}

// PackSubscribe packs records into POST /api/lists/subscribe bodies
// {"listId":…,"updateExistingUsersOnly":…,"subscribers":[…]} of at most
// min(UsersPerRequest, MaxSubscribersPerRequest) subscribers and MaxBodyBytes bytes, measured on
// the exact body, like Pack: each subscriber is the record's User as given (email and/or userId,
// preferUserId, dataFields). oversize and the one-record-per-identifier rule are Pack's.
func (c *Client) PackSubscribe(records []Record, listID int64, updateExistingUsersOnly bool) (batches []Batch, oversize []int, err error) {
	env := envelope{kind: kindSubscribe, listID: listID, flag: updateExistingUsersOnly}
	if listID <= 0 {
		return nil, nil, fmt.Errorf("pack subscribe: list id %d is not a valid Iterable list id", listID)
	}
	return pack(records, env, c.listPerRequest(), c.maxBodyBytes)
}

// PackUnsubscribe packs records into POST /api/lists/unsubscribe bodies
// {"listId":…,"channelUnsubscribe":false,"subscribers":[…]}, as PackSubscribe. Each subscriber
// carries one identifier only: the userId when the record has no email or sets PreferUserID,
// else the email (Iterable asks for one, not both); the batches' records hold that user.
// channelUnsubscribe is always sent, false: true would unsubscribe the person from the list's
// whole channel. No campaignId is sent: leaving a segment is not an unsubscribe from a campaign.
func (c *Client) PackUnsubscribe(records []Record, listID int64) (batches []Batch, oversize []int, err error) {
	if listID <= 0 {
		return nil, nil, fmt.Errorf("pack unsubscribe: list id %d is not a valid Iterable list id", listID)
	}
	return pack(records, envelope{kind: kindUnsubscribe, listID: listID}, c.listPerRequest(), c.maxBodyBytes)
}

func (c *Client) listPerRequest() int { return min(c.usersPerRequest, MaxSubscribersPerRequest) }

// Subscribe adds the records of b to the static list listID with POST /api/lists/subscribe, in
// the endpoint's own budget (Config.SubscribeRPS). b is normally a batch of
// PackSubscribe(…, listID, updateExistingUsersOnly); any other batch (a Pack batch, one built by
// hand, one packed for another list or flag) has its records packed again for this request.
//
// updateExistingUsersOnly asks Iterable not to create unknown users; Iterable honours it in
// userID-based and hybrid projects only (they land in failedUpdates.notFoundEmails /
// notFoundUserIds, Rejected), while an email-based project creates them and adds them to the
// list. The subscribers' dataFields update the profiles as bulkUpdate would.
//
// The result is SendBatch's: every record ends in exactly one of Accepted (a member of the list),
// Rejected (Category names the failedUpdates list, or the error code of a request holding only
// this record) or Unconfirmed, unless an error is returned; a splittable 400 or an answer that
// does not account for every record splits the batch in halves. A refusal caused by the list
// itself (no such list in the project, a Dynamic or Internal list) is not split: the call fails
// with a *ListError wrapping a fatal *APIError. Other fatal answers are errors wrapping an
// *APIError with Fatal() true.
func (c *Client) Subscribe(ctx context.Context, listID int64, b Batch, updateExistingUsersOnly bool) (BatchResult, error) {
	return c.sendList(ctx, envelope{kind: kindSubscribe, listID: listID, flag: updateExistingUsersOnly}, b)
}

// Unsubscribe removes the records of b from the static list listID with
// POST /api/lists/unsubscribe, in the endpoint's own budget (Config.UnsubscribeRPS), always with
// "channelUnsubscribe": false; b is normally a batch of PackUnsubscribe(…, listID) and is packed
// again otherwise, as in Subscribe. The result and errors are Subscribe's. A record Iterable knows
// no user for is Rejected with Category notFoundEmails / notFoundUserIds: such a user is in no
// list, so the caller may count the goal as reached.
func (c *Client) Unsubscribe(ctx context.Context, listID int64, b Batch) (BatchResult, error) {
	return c.sendList(ctx, envelope{kind: kindUnsubscribe, listID: listID}, b)
}

func (c *Client) sendList(ctx context.Context, env envelope, b Batch) (BatchResult, error) {
	ep := c.endpointOf(env)
	if env.listID <= 0 {
		return BatchResult{}, fmt.Errorf("%s: list id %d is not a valid Iterable list id", ep.name, env.listID)
	}
	if len(b.Records) == 0 {
		return BatchResult{}, nil
	}
	s := c.newSender(ep)
	batches := []Batch{b}
	if b.Body == nil || b.env != env {
		// Packed for another request, or not at all: pack the records for this one.
		packed, oversize, err := pack(b.Records, env, c.listPerRequest(), c.maxBodyBytes)
		if err != nil {
			return BatchResult{}, fmt.Errorf("%s: %w", ep.name, err)
		}
		for _, i := range oversize {
			s.res.Rejected = append(s.res.Rejected, RecordRejection{Index: i, Category: CategoryTooLarge, Reason: TooLargeReason})
		}
		batches = packed
	}
	for _, pb := range batches {
		if err := s.send(ctx, pb, 0); err != nil {
			return s.result(), err
		}
	}
	return s.result(), nil
}

// checkList asks which lists exist after Iterable refused a list request, and returns a
// *ListError when the refusal is about the list. Once the list is known good, later refusals of
// this call are about records and split as usual.
func (s *sender) checkList(ctx context.Context, refusal *APIError) error {
	if err := s.c.listRefusal(ctx, s.ep.listID, refusal, true); err != nil {
		return err
	}
	s.listChecked = true
	return nil
}

// listRefusal returns a *ListError when the project has no list listID or, for a request that
// changes members (write), when its type refuses that; nil when the list is fine; or the error
// of GET /api/lists.
func (c *Client) listRefusal(ctx context.Context, listID int64, refusal *APIError, write bool) error {
	lists, err := c.Lists(ctx)
	if err != nil {
		return fmt.Errorf("checking list %d after Iterable refused the request (%v): %w", listID, refusal, err)
	}
	fault := *refusal
	fault.listFault = true
	for _, l := range lists {
		if l.ID != listID {
			continue
		}
		if write && refusesSubscribers(l.Type) {
			return &ListError{ListID: listID, Type: l.Type, Err: &fault}
		}
		return nil
	}
	return &ListError{ListID: listID, Err: &fault}
}

// subscribeReason describes a failedUpdates category of a subscribe answer without the value.
func subscribeReason(cat string) string {
	switch cat {
	case "notFoundEmails":
		return "no user with this email exists in Iterable and updateExistingUsersOnly kept Iterable from creating one: not added to the list (failedUpdates.notFoundEmails)"
	case "notFoundUserIds":
		return "no user with this userId exists in Iterable and none was created (updateExistingUsersOnly, or preferUserId not set in an email-based project): not added to the list (failedUpdates.notFoundUserIds)"
	}
	return "not added to the list: " + CategoryReason(cat)
}

// unsubscribeReason describes a failedUpdates category of an unsubscribe answer without the value.
func unsubscribeReason(cat string) string {
	switch cat {
	case "notFoundEmails":
		return "no user with this email exists in Iterable, so it is in no list (failedUpdates.notFoundEmails)"
	case "notFoundUserIds":
		return "no user with this userId exists in Iterable, so it is in no list (failedUpdates.notFoundUserIds)"
	}
	return "not removed from the list: " + CategoryReason(cat)
}

// Longest line of a getUsers answer accepted: one identifier.
const maxListUserLine = 64 << 10

// ListUsers streams the members of list listID with GET /api/lists/getUsers (its own budget,
// 5 requests/minute per project, as Iterable's limit) and calls fn with each one's identifier, in
// Iterable's order; it returns how many fn received. Iterable answers one identifier per line
// (text/plain): the email, or the userId of a user without email; preferUserID asks for the
// userId of hybrid-project users that have both. The body is read line by line, never whole.
//
// A refusal caused by the list (no such list) is a *ListError. A stream cut
// after the first line is an error (fn has then seen a prefix): start again.
func (c *Client) ListUsers(ctx context.Context, listID int64, preferUserID bool, fn func(id string) error) (int64, error) {
	if listID <= 0 {
		return 0, fmt.Errorf("list users: list id %d is not a valid Iterable list id", listID)
	}
	path := "/api/lists/getUsers?" + url.Values{
		"listId": {strconv.FormatInt(listID, 10)}, "preferUserId": {strconv.FormatBool(preferUserID)},
	}.Encode()
	var sent int64
	consume := lineConsumer("list users", 4<<10, maxListUserLine, func(_ int, line []byte) error {
		sent++
		if err := fn(string(line)); err != nil {
			return &callbackError{err: err}
		}
		return nil
	})
	var st attemptStats
	_, err := c.doStream(ctx, c.listUsers, http.MethodGet, opListUsers, path, nil, &st, consume)
	if err == nil {
		return sent, nil
	}
	var ce *callbackError
	if errors.As(err, &ce) {
		return sent, fmt.Errorf("list users of list %d: callback: %w", listID, ce.err)
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.splittable() {
		if lerr := c.listRefusal(ctx, listID, apiErr, false); lerr != nil {
			err = lerr
		}
	}
	return sent, fmt.Errorf("list users of list %d after %d identifiers: %w", listID, sent, err)
}

// ListSize returns the number of members of list listID with GET /api/lists/{listId}/size (its
// own budget, 5 requests/minute per project). Iterable documents the answer as a string: a bare
// number, or one in JSON quotes, is read. Errors are ListUsers'.
func (c *Client) ListSize(ctx context.Context, listID int64) (int64, error) {
	if listID <= 0 {
		return 0, fmt.Errorf("list size: list id %d is not a valid Iterable list id", listID)
	}
	var st attemptStats
	resp, err := c.do(ctx, c.listSize, http.MethodGet, opListSize, "/api/lists/"+strconv.FormatInt(listID, 10)+"/size", nil, &st)
	if err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.splittable() {
			if lerr := c.listRefusal(ctx, listID, apiErr, false); lerr != nil {
				err = lerr
			}
		}
		return 0, fmt.Errorf("size of list %d: %w", listID, err)
	}
	v := strings.Trim(strings.TrimSpace(string(resp.body)), `"`)
	n, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil || n < 0 {
		return 0, fmt.Errorf("size of list %d: the answer is not a count (%d bytes)", listID, len(resp.body))
	}
	return n, nil
}
