package iterable

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// DeleteResult is what DeleteUser did. Deleted and NotFound are never both true; both are false
// only with an error.
type DeleteResult struct {
	// Deleted: Iterable accepted the deletion. Iterable deletes asynchronously: the profile may
	// still be returned by lookups and exports for a while after.
	Deleted bool
	// NotFound: Iterable has no user with this identifier (or the identifier cannot name one),
	// so there was nothing to delete. Not an error: the goal, no such profile, is reached.
	NotFound    bool
	Requests    int // HTTP requests made, including retries
	RateLimited int // 429 answers received
}

// Endpoints of DeleteUser, as APIError.Op and Observer endpoints.
const (
	opDeleteByEmail  = "DELETE /api/users/{email}"
	opDeleteByUserID = "DELETE /api/users/byUserId/{userId}"
)

// DeleteUser deletes the user whose field (FieldEmail or FieldUserID) is id, with
// DELETE /api/users/{email} or DELETE /api/users/byUserId/{userId} (the id path-escaped). Iterable
// deletes by userId in every project type, by email only in email-based and hybrid projects;
// deleting by userId removes every user sharing it.
//
// Deletion is asynchronous in Iterable: a 200 means the deletion was accepted, not done. For a
// while the profile may still be found by GetUserByEmail / GetUserByUserID / ExportUserIDs, and
// deleting does not prevent a later bulkUpdate naming the user from creating a new profile.
//
// Each endpoint has its own budget (100 requests/s per project, Config.DeleteRPS), and 429s, 5xx
// and network failures are retried like bulkUpdate. A user Iterable does not know is NotFound,
// not an error. Iterable's spec documents only 200 (IterableApiResponse), 400 ("Invalid
// parameters") and 401 for these endpoints, nothing specific to an absent user; Iterable answers
// it with a 400 {"code":"BadParams","msg":"User does not exist. Email: … UserId: …"} (as peers'
// integrations record it), and the spec's UnknownEmailError / UnknownUserIdError codes are read
// the same way. An identifier that fails CheckEmail / CheckUserID is NotFound without a request
// (Iterable refuses it in any profile). A fatal answer
// (bad key) is an error wrapping *APIError with Fatal() true; any other refusal (a 400 that is not
// about the user's absence) is an error wrapping *APIError with Fatal() false, which concerns
// this identifier only.
func (c *Client) DeleteUser(ctx context.Context, field, id string) (DeleteResult, error) {
	var (
		res    DeleteResult
		budget *Budget
		op     string
		path   string
		check  func(string) error
	)
	switch field {
	case FieldEmail:
		budget, op, path, check = c.deleteByEmail, opDeleteByEmail, "/api/users/"+url.PathEscape(id), CheckEmail
	case FieldUserID:
		budget, op, path, check = c.deleteByUserID, opDeleteByUserID, "/api/users/byUserId/"+url.PathEscape(id), CheckUserID
	default:
		return res, fmt.Errorf("delete user: field must be %q or %q", FieldEmail, FieldUserID)
	}
	if check(id) != nil {
		res.NotFound = true
		return res, nil
	}
	var st attemptStats
	_, err := c.do(ctx, budget, http.MethodDelete, op, path, nil, &st)
	res.Requests, res.RateLimited = st.requests, st.rateLimited
	var apiErr *APIError
	switch {
	case err == nil:
		res.Deleted = true
		return res, nil
	case errors.As(err, &apiErr) && userAbsent(apiErr):
		res.NotFound = true
		return res, nil
	}
	return res, fmt.Errorf("delete user by %s: %w", field, err)
}

// userAbsent recognises Iterable's answer to deleting a user it does not know: 400 BadParams
// "User does not exist. Email: … UserId: …", or one of the spec's codes for an unknown user.
// A bare 404 is not one: it means a wrong base URL or path, and stays fatal.
func userAbsent(e *APIError) bool {
	if e.Status != http.StatusBadRequest && e.Status != http.StatusNotFound {
		return false
	}
	switch e.Code {
	case "UnknownEmailError", "UnknownUserIdError":
		return true
	case "BadParams", "NotFound":
		return e.Status == http.StatusBadRequest && strings.Contains(strings.ToLower(e.rawMsg), "does not exist")
	}
	return false
}
