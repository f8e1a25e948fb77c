package iterable

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// Identifier fields of Exists and ExportUserIDs.
const (
	FieldEmail  = "email"
	FieldUserID = "userId"
)

// Update mode (insert mode off) must never create a profile, and bulkUpdate has no "update only"
// flag. Two ways to learn which profiles exist, to be chosen by the caller:
//
//   - Exists looks every identifier up (getByEmail / byUserId, 100 requests/s each per project):
//     cheap for the few thousand changed rows of an incremental run.
//   - ExportUserIDs streams every identifier of the project (export/data.json, 4 requests/minute
//     per project): one request, but proportional to the project's size; for a first run or a
//     large diff against a small project.

// Exists reports, for every identifier of ids, whether a profile with it exists in the project.
// field is FieldEmail (matched case-insensitively, as Iterable does) or FieldUserID (exact). The
// map is keyed by the ids as given.
//
// The lookups run LookupConcurrency at a time inside the endpoint's own budget and retry 429s and
// 5xx like bulkUpdate. An identifier that fails CheckEmail / CheckUserID is reported missing
// without a request (it cannot name a profile), and so is one Iterable refuses with a 400: a
// doubtful identifier then costs its row, not the whole run. Any other failure is an error.
func (c *Client) Exists(ctx context.Context, field string, ids []string) (map[string]bool, error) {
	var (
		lookup func(context.Context, string) (User, bool, error)
		check  func(string) error
		key    func(string) string
	)
	switch field {
	case FieldEmail:
		lookup, check, key = c.GetUserByEmail, CheckEmail, strings.ToLower
	case FieldUserID:
		lookup, check, key = c.GetUserByUserID, CheckUserID, func(s string) string { return s }
	default:
		return nil, fmt.Errorf("exists: field must be %q or %q", FieldEmail, FieldUserID)
	}

	out := make(map[string]bool, len(ids))
	slot := make(map[string]int) // lookup key → index in todo
	var todo []string
	for _, id := range ids {
		if _, dup := out[id]; dup {
			continue
		}
		out[id] = false
		if check(id) != nil {
			continue
		}
		if k := key(id); !hasKey(slot, k) {
			slot[k] = len(todo)
			todo = append(todo, id)
		}
	}
	found := make([]bool, len(todo))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next    atomic.Int64
		refused atomic.Int64
		wg      sync.WaitGroup
	)
	for range min(c.lookupWorkers, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(todo) || ctx.Err() != nil {
					return
				}
				_, ok, err := lookup(ctx, todo[i])
				var apiErr *APIError
				switch {
				case err == nil:
					found[i] = ok
				case errors.As(err, &apiErr) && apiErr.splittable():
					// Iterable refuses the identifier itself: no profile can have it.
					refused.Add(1)
				default:
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, fmt.Errorf("exists by %s (%d lookups): %w", field, len(todo), err)
	}
	if n := refused.Load(); n > 0 {
		c.log.LogAttrs(ctx, slog.LevelWarn, "iterable refused some lookups as invalid; counted as missing",
			slog.String("field", field), slog.Int64("refused", n), slog.Int("lookups", len(todo)))
	}
	for id := range out {
		if i, ok := slot[key(id)]; ok && check(id) == nil {
			out[id] = found[i]
		}
	}
	return out, nil
}

func hasKey(m map[string]int, k string) bool {
	_, ok := m[k]
	return ok
}

// Longest line of an export stream accepted: a user with only its identifier is far smaller.
const maxExportLine = 4 << 20

// ExportUserIDs streams the identifier field (FieldEmail or FieldUserID) of every user of the
// project with GET /api/export/data.json?dataTypeName=user&range=All&onlyFields=<field> and
// calls fn with each non-empty one, in the order Iterable sends them; it returns how many fn
// received. The body (application/x-json-stream, one JSON object per line) is read line by line,
// never buffered whole.
//
// The export has its own budget (4 requests/minute per project). A 429, a 5xx or a network
// failure before the first line is retried; a stream cut later is an error, and the caller
// starts the export again (fn has then seen a prefix of the identifiers). An error of fn stops
// the export and is returned wrapped.
func (c *Client) ExportUserIDs(ctx context.Context, field string, fn func(id string) error) (int64, error) {
	const op = "GET /api/export/data.json"
	if field != FieldEmail && field != FieldUserID {
		return 0, fmt.Errorf("export: field must be %q or %q", FieldEmail, FieldUserID)
	}
	path := "/api/export/data.json?" + url.Values{
		"dataTypeName": {"user"}, "range": {"All"}, "onlyFields": {field},
	}.Encode()
	var sent int64
	consume := lineConsumer("export", 64<<10, maxExportLine, func(n int, line []byte) error {
		id, err := exportedID(line, field)
		if err != nil {
			return fmt.Errorf("export line %d: %w", n, err)
		}
		if id == "" {
			return nil
		}
		sent++
		if err := fn(id); err != nil {
			return &callbackError{err: err}
		}
		return nil
	})
	var st attemptStats
	if _, err := c.doStream(ctx, c.export, "GET", op, path, nil, &st, consume); err != nil {
		var ce *callbackError
		if errors.As(err, &ce) {
			return sent, fmt.Errorf("export of user %ss: callback: %w", field, ce.err)
		}
		return sent, fmt.Errorf("export of user %ss after %d identifiers: %w", field, sent, err)
	}
	return sent, nil
}

// lineConsumer reads a streamed body line by line: line gets each non-blank line, trimmed, and
// its 1-based number. It tells doStream whether a line was read: a failure before the first one
// is retried, a later one is an error saying how far the stream got (the caller has seen a
// prefix and starts again). An error of line stops the read and is returned as is.
func lineConsumer(what string, bufSize, maxLine int, line func(n int, b []byte) error) consumeFunc {
	return func(body io.Reader) (bool, error) {
		rec := &readErr{r: body}
		sc := bufio.NewScanner(rec)
		sc.Buffer(make([]byte, 0, bufSize), maxLine)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			if atEOF && rec.err != nil && len(data) > 0 && bytes.IndexByte(data, '\n') < 0 {
				// The unterminated rest of a failed stream is half a line, not a line.
				return 0, nil, rec.err
			}
			return bufio.ScanLines(data, atEOF)
		})
		lines := 0
		for sc.Scan() {
			lines++
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 {
				continue
			}
			if err := line(lines, b); err != nil {
				return true, err
			}
		}
		if err := sc.Err(); err != nil {
			return lines > 0, fmt.Errorf("%s stream cut after %d lines: %w", what, lines, err)
		}
		return lines > 0, nil
	}
}

// readErr remembers the error that ended a stream other than io.EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// callbackError carries an error of ExportUserIDs' fn through doStream.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }
func (e *callbackError) Unwrap() error { return e.err }

// exportedID reads field from one exported user; a missing or null field is "".
func exportedID(line []byte, field string) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return "", jsonErr(err)
	}
	raw, ok := obj[field]
	if !ok || string(raw) == "null" {
		return "", nil
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", fmt.Errorf("%s is not a string", field)
	}
	return id, nil
}
