package iterable

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
)

// GetFields calls GET /api/users/getFields (its own budget of 3 req/s per project) and returns
// field name → Iterable type. The type names are those of the Type constants: "string", "long",
// "double", "boolean", "date", "object", "array" (the emulator reports exactly these, plus
// "string" for email and userId); the real API may name others. Sub-fields of object fields come
// under their dotted path ("address.zip"), next to the object itself. Compare a value's type with
// IterableTypeOf and FieldTypeAccepts to predict a conflict before sending.
func (c *Client) GetFields(ctx context.Context) (map[string]string, error) {
	const op = "GET /api/users/getFields"
	var st attemptStats
	resp, err := c.do(ctx, c.fields, "GET", op, "/api/users/getFields", nil, &st)
	if err != nil {
		return nil, fmt.Errorf("getFields: %w", err)
	}
	var body struct {
		Fields map[string]any `json:"fields"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil {
		return nil, fmt.Errorf("getFields: decoding the response: %w", jsonErr(err))
	}
	out := make(map[string]string, len(body.Fields))
	for name, typ := range body.Fields {
		if s, ok := typ.(string); ok {
			out[name] = s
		} else {
			out[name] = fmt.Sprint(typ)
		}
	}
	return out, nil
}

// GetUserByEmail calls GET /api/users/getByEmail (100 req/s per project). found is false when
// Iterable has no such user.
func (c *Client) GetUserByEmail(ctx context.Context, email string) (u User, found bool, err error) {
	const op = "GET /api/users/getByEmail"
	u, found, err = c.getUser(ctx, c.byEmail, op, "/api/users/getByEmail?email="+url.QueryEscape(email))
	if err != nil {
		return User{}, false, fmt.Errorf("getByEmail: %w", err)
	}
	return u, found, nil
}

// GetUserByUserID calls GET /api/users/byUserId/{userId} (100 req/s per project). found is false
// when Iterable has no such user.
func (c *Client) GetUserByUserID(ctx context.Context, userID string) (u User, found bool, err error) {
	const op = "GET /api/users/byUserId"
	u, found, err = c.getUser(ctx, c.byUserID, op, "/api/users/byUserId/"+url.PathEscape(userID))
	if err != nil {
		return User{}, false, fmt.Errorf("byUserId: %w", err)
	}
	return u, found, nil
}

func (c *Client) getUser(ctx context.Context, budget *Budget, op, path string) (User, bool, error) {
	var st attemptStats
	resp, err := c.do(ctx, budget, "GET", op, path, nil, &st)
	if err != nil {
		return User{}, false, err
	}
	var body struct {
		User *struct {
			Email      string         `json:"email"`
			UserID     string         `json:"userId"`
			DataFields map[string]any `json:"dataFields"`
		} `json:"user"`
	}
	dec := json.NewDecoder(bytes.NewReader(resp.body))
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		return User{}, false, fmt.Errorf("decoding the response: %w", jsonErr(err))
	}
	if body.User == nil {
		return User{}, false, nil
	}
	fields, _ := numbers(body.User.DataFields).(map[string]any)
	return User{Email: body.User.Email, UserID: body.User.UserID, DataFields: fields}, true, nil
}

// numbers turns json.Number into int64 when integral, float64 otherwise, the types Value produces.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return x
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
		return x
	}
	return v
}
