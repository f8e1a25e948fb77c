// Package iterable is the client of Iterable's user API used by the activation engine: it packs
// users into bulkUpdate bodies within Iterable's limits, sends them inside a per-project rate
// budget with retries, splits rejected batches down to the guilty records, and maps every
// failedUpdates category back to the caller's records, trusting only answers that account for
// every record. It also looks users up, exports their identifiers and deletes them, and keeps
// static lists: it finds and creates lists and subscribes and unsubscribes packed batches the
// same way (lists.go).
//
// Nothing in this package puts user data (emails, userIds, field values) or the API key in an
// error or a log line: errors end up in Temporal history, which is stored in plaintext.
package iterable

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Base URLs of Iterable's data centres. The EU one serves userID-based and hybrid projects only.
const (
	USBaseURL = "https://api.iterable.com"
	EUBaseURL = "https://api.eu.iterable.com"
)

// BaseURL picks the API base URL of a region ("us" or "eu", case-insensitive; empty means "us").
// A non-empty override (an emulator, a proxy) wins.
func BaseURL(region, override string) (string, error) {
	if override != "" {
		u, err := url.Parse(override)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("iterable base URL override must be an absolute http(s) URL")
		}
		return strings.TrimRight(override, "/"), nil
	}
	switch strings.ToLower(strings.TrimSpace(region)) {
	case "", "us":
		return USBaseURL, nil
	case "eu":
		return EUBaseURL, nil
	}
	return "", fmt.Errorf("unknown Iterable region %q (want \"us\" or \"eu\")", region)
}

// Defaults of Config.
const (
	DefaultUsersPerRequest = 1000
	DefaultMaxBodyBytes    = 4 * 1024 * 1024
	DefaultMaxElapsed      = 2 * time.Minute
	DefaultHTTPTimeout     = 60 * time.Second
	DefaultLookupWorkers   = 16
	DefaultExportIdle      = 5 * time.Minute
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	BaseURL    string
	APIKey     string       // the value; never logged
	HTTPClient *http.Client // nil = a client with a 60s timeout
	Budgets    *Budgets     // shared rate budgets; nil = a private one
	// UsersPerRequest caps the users of one bulkUpdate body (default 1000).
	UsersPerRequest int
	// MaxBodyBytes caps the bytes of one bulkUpdate body (default 4 MiB, Iterable's limit).
	MaxBodyBytes int
	// RequestsPerSecond is the bulkUpdate budget per project (default 5). Negative = no
	// client-side limit on any endpoint (emulator benchmarks) unless LookupRPS, DeleteRPS or
	// ExportPerMinute say otherwise; 429s are still retried.
	RequestsPerSecond float64
	// LookupRPS is the budget of getByEmail and of byUserId, each, per project (default 100,
	// Iterable's limit). Negative = no client-side limit.
	LookupRPS float64
	// DeleteRPS is the budget of each user deletion endpoint (by email, by userId), per project
	// (default 100, Iterable's limit). Negative = no client-side limit.
	DeleteRPS float64
	// SubscribeRPS and UnsubscribeRPS are the budgets of POST /api/lists/subscribe and of
	// POST /api/lists/unsubscribe, each, per project (default 5). Iterable documents no limit for
	// them; 5 is bulkUpdate's, whose bodies they resemble, and 429s adapt the rate either way.
	// Negative = no client-side limit.
	SubscribeRPS   float64
	UnsubscribeRPS float64
	// ListsRPS is the budget of GET /api/lists per project (default 100, Iterable's limit).
	// Negative = no client-side limit.
	ListsRPS float64
	// LookupConcurrency is how many lookups Exists has in flight at once (default 16).
	LookupConcurrency int
	// ExportPerMinute is the budget of GET /api/export/data.json per project (default 4,
	// Iterable's limit). Negative = no client-side limit.
	ExportPerMinute float64
	// ExportIdleTimeout aborts an export stream that delivers no byte for this long (default
	// 5m). An export is not bounded by HTTPClient's Timeout: it may stream for hours.
	ExportIdleTimeout time.Duration
	// MaxElapsed bounds the retries of one request (default 2m).
	MaxElapsed time.Duration
	// RetryInitialInterval is the first backoff delay (default 500ms); tests make it small.
	RetryInitialInterval time.Duration
	// RetryMaxInterval caps one backoff delay (default 30s).
	RetryMaxInterval time.Duration
	Logger           *slog.Logger
	// Observer receives the latency of every request and the time spent waiting for the rate
	// budget (metrics); nil observes nothing.
	Observer Observer
}

// Observer is told about every HTTP request and every wait for a rate budget. endpoint is the
// request's method and route (e.g. "POST /api/users/bulkUpdate", "GET /api/users/byUserId"),
// never a URL with an identifier in it. status is the HTTP status code, 0 when no complete
// answer came (timeout, dropped connection, a stream cut midway). It must be safe for
// concurrent use.
type Observer interface {
	IterableRequest(ctx context.Context, endpoint string, status int, took time.Duration)
	IterableBudgetWait(ctx context.Context, endpoint string, waited time.Duration)
}

type noObserver struct{}

func (noObserver) IterableRequest(context.Context, string, int, time.Duration) {}
func (noObserver) IterableBudgetWait(context.Context, string, time.Duration)   {}

// Route is the route of a request path of this client with identifiers replaced by a
// placeholder ("/api/users/byUserId/{userId}"), for span names and URL attributes. A path this
// client does not send is returned as "/{other}", and so is DELETE /api/users/{email} (its path
// tells it from no other route but by shape; redacting it whole is safe). The query string is
// not part of a path.
func Route(path string) string {
	prefix, rest := "", path
	if i := strings.Index(path, "/api/"); i > 0 {
		// A base URL override may add a prefix (a proxy); it is configuration, not user data.
		prefix, rest = path[:i], path[i:]
	}
	switch {
	case rest == "/api/users/bulkUpdate", rest == "/api/users/getFields", rest == "/api/users/getByEmail",
		rest == "/api/export/data.json", rest == "/api/lists", rest == "/api/lists/subscribe",
		rest == "/api/lists/unsubscribe", rest == "/api/lists/getUsers":
		return prefix + rest
	case strings.HasPrefix(rest, "/api/lists/") && strings.HasSuffix(rest, "/size"):
		return prefix + "/api/lists/{listId}/size"
	case strings.HasPrefix(rest, "/api/users/byUserId/"):
		return prefix + "/api/users/byUserId/{userId}"
	}
	return prefix + "/{other}"
}

// Client talks to one Iterable project. It is safe for concurrent use.
type Client struct {
	baseURL         string
	apiKey          string
	http            *http.Client
	stream          *http.Client // http without its overall Timeout, for exports
	usersPerRequest int
	lookupWorkers   int
	exportIdle      time.Duration
	maxBodyBytes    int
	maxElapsed      time.Duration
	retryInitial    time.Duration
	retryMax        time.Duration
	log             *slog.Logger
	observer        Observer

	bulk, fields, byEmail, byUserID, export *Budget
	deleteByEmail, deleteByUserID           *Budget
	lists, createList, listUsers, listSize  *Budget
	subscribe, unsubscribe                  *Budget
}

// New checks cfg and builds a Client.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, fmt.Errorf("iterable config: BaseURL is required (use BaseURL(region, override))")
	}
	base, err := BaseURL("", cfg.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("iterable config: %w", err)
	}
	if strings.TrimSpace(cfg.APIKey) == "" {
		return nil, fmt.Errorf("iterable config: APIKey is empty")
	}
	if cfg.UsersPerRequest < 0 || cfg.MaxBodyBytes < 0 || cfg.MaxElapsed < 0 || cfg.LookupConcurrency < 0 || cfg.ExportIdleTimeout < 0 {
		return nil, fmt.Errorf("iterable config: UsersPerRequest, MaxBodyBytes, MaxElapsed, LookupConcurrency and ExportIdleTimeout must not be negative")
	}
	c := &Client{
		baseURL:         base,
		apiKey:          cfg.APIKey,
		http:            cfg.HTTPClient,
		usersPerRequest: cmpDefault(cfg.UsersPerRequest, DefaultUsersPerRequest),
		lookupWorkers:   cmpDefault(cfg.LookupConcurrency, DefaultLookupWorkers),
		exportIdle:      cmpDefault(cfg.ExportIdleTimeout, DefaultExportIdle),
		maxBodyBytes:    cmpDefault(cfg.MaxBodyBytes, DefaultMaxBodyBytes),
		maxElapsed:      cmpDefault(cfg.MaxElapsed, DefaultMaxElapsed),
		retryInitial:    cmpDefault(cfg.RetryInitialInterval, 500*time.Millisecond),
		retryMax:        cmpDefault(cfg.RetryMaxInterval, 30*time.Second),
		log:             cfg.Logger,
		observer:        cfg.Observer,
	}
	if c.maxBodyBytes < len(bodyPrefix(true))+len(bodySuffix)+2 {
		return nil, fmt.Errorf("iterable config: MaxBodyBytes %d is too small for any request", c.maxBodyBytes)
	}
	if c.http == nil {
		c.http = &http.Client{Timeout: DefaultHTTPTimeout}
	}
	// Same transport, redirects and cookies; no overall deadline (the idle timeout and ctx
	// bound an export instead).
	stream := *c.http
	stream.Timeout = 0
	c.stream = &stream
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.observer == nil {
		c.observer = noObserver{}
	}
	budgets := cfg.Budgets
	if budgets == nil {
		budgets = NewBudgets()
	}
	rps := cfg.RequestsPerSecond
	if rps == 0 {
		rps = defaultBulkUpdateRPS
	}
	lookups := float64(lookupRPS)
	getFields := float64(getFieldsRPS)
	exports := float64(exportPerMinute)
	deletes := float64(deleteRPS)
	lists, createLists := float64(listsRPS), float64(createListRPS)
	listReads := float64(listReadsPerMinute)
	subscribes, unsubscribes := float64(defaultSubscribeRPS), float64(defaultSubscribeRPS)
	if rps < 0 {
		// Rate limiting disabled: disable it for every endpoint of this client.
		lookups, getFields, exports, deletes = -1, -1, -1, -1
		lists, createLists, listReads, subscribes, unsubscribes = -1, -1, -1, -1, -1
	}
	if cfg.LookupRPS != 0 {
		lookups = cfg.LookupRPS
	}
	if cfg.DeleteRPS != 0 {
		deletes = cfg.DeleteRPS
	}
	if cfg.ExportPerMinute != 0 {
		exports = cfg.ExportPerMinute
	}
	if cfg.ListsRPS != 0 {
		lists = cfg.ListsRPS
	}
	if cfg.SubscribeRPS != 0 {
		subscribes = cfg.SubscribeRPS
	}
	if cfg.UnsubscribeRPS != 0 {
		unsubscribes = cfg.UnsubscribeRPS
	}
	c.bulk = budgets.Budget(cfg.APIKey, EndpointBulkUpdate, rps)
	c.fields = budgets.Budget(cfg.APIKey, EndpointGetFields, getFields)
	c.byEmail = budgets.Budget(cfg.APIKey, EndpointGetByEmail, lookups)
	c.byUserID = budgets.Budget(cfg.APIKey, EndpointGetByUserID, lookups)
	c.export = budgets.Budget(cfg.APIKey, EndpointExport, exports/60)
	c.deleteByEmail = budgets.Budget(cfg.APIKey, EndpointDeleteByEmail, deletes)
	c.deleteByUserID = budgets.Budget(cfg.APIKey, EndpointDeleteByUserID, deletes)
	c.lists = budgets.Budget(cfg.APIKey, EndpointLists, lists)
	c.createList = budgets.Budget(cfg.APIKey, EndpointCreateList, createLists)
	c.listUsers = budgets.Budget(cfg.APIKey, EndpointListUsers, listReads/60)
	c.listSize = budgets.Budget(cfg.APIKey, EndpointListSize, listReads/60)
	c.subscribe = budgets.Budget(cfg.APIKey, EndpointSubscribe, subscribes)
	c.unsubscribe = budgets.Budget(cfg.APIKey, EndpointUnsubscribe, unsubscribes)
	return c, nil
}

func cmpDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// BulkBudget is the shared bulkUpdate budget this client waits on.
func (c *Client) BulkBudget() *Budget { return c.bulk }

// SubscribeBudget and UnsubscribeBudget are the shared list budgets this client waits on.
func (c *Client) SubscribeBudget() *Budget   { return c.subscribe }
func (c *Client) UnsubscribeBudget() *Budget { return c.unsubscribe }

// UsersPerRequest is the most users Pack puts in one body.
func (c *Client) UsersPerRequest() int { return c.usersPerRequest }

// MaxBodyBytes is the largest body Pack produces.
func (c *Client) MaxBodyBytes() int { return c.maxBodyBytes }

// User is one user of a bulkUpdate request.
type User struct {
	Email        string         `json:"email,omitempty"`
	UserID       string         `json:"userId,omitempty"`
	PreferUserID *bool          `json:"preferUserId,omitempty"`
	DataFields   map[string]any `json:"dataFields,omitempty"`
	// Fields are the dataFields as names and values, when DataFields is nil: what a warehouse
	// row gives without a map per user. Pack writes them as it writes DataFields.
	Fields Fields `json:"-"`
}

// Fields are dataFields as Names, sorted and unique, and Values, Values[i] that of Names[i]
// (values Value returns).
type Fields struct {
	Names  []string
	Values []any
}

// FieldCount is the number of the user's dataFields.
func (u *User) FieldCount() int {
	if u.DataFields != nil {
		return len(u.DataFields)
	}
	return len(u.Fields.Values)
}

// FieldMap returns the user's dataFields by name: DataFields, or a new map of Fields.
func (u *User) FieldMap() map[string]any {
	if u.DataFields != nil || len(u.Fields.Values) == 0 {
		return u.DataFields
	}
	m := make(map[string]any, len(u.Fields.Values))
	for i, v := range u.Fields.Values {
		m[u.Fields.Names[i]] = v
	}
	return m
}

// Record is one user to send, tagged with the caller's opaque index (the caller maps it back to
// its row).
type Record struct {
	Index int
	User  User
}

// response is one HTTP answer, read whole.
type response struct {
	status     int
	body       []byte
	retryAfter time.Duration
}

// attemptStats counts what a call cost, for BatchResult.
type attemptStats struct {
	requests, rateLimited int
}

// Largest response body read; bulkUpdate answers list at most every identifier of the request.
const maxResponseBytes = 32 << 20

// do sends one request with the budget and retries: 429, 408, 5xx and network failures are
// retried with exponential backoff and jitter until MaxElapsed; Retry-After is honoured for every
// sender of the project. Non-retryable answers come back as *APIError.
func (c *Client) do(ctx context.Context, budget *Budget, method, op, path string, body []byte, st *attemptStats) (*response, error) {
	return c.doStream(ctx, budget, method, op, path, body, st, nil)
}

// consumeFunc reads a 2xx body as it streams in. It returns whether it consumed anything
// (after which the request is never retried) and why it stopped early.
type consumeFunc func(body io.Reader) (started bool, err error)

// doStream is do with a 2xx body handed to consume instead of being read whole. A failure of
// consume is retried like a transport failure only when it read nothing yet.
func (c *Client) doStream(ctx context.Context, budget *Budget, method, op, path string, body []byte, st *attemptStats, consume consumeFunc) (*response, error) {
	return c.doWith(ctx, budget, method, op, path, body, st, callOpts{consume: consume})
}

// callOpts adjust doWith.
type callOpts struct {
	consume consumeFunc
	// noResend: the request is not idempotent (it creates something), so it is sent again only
	// after an answer proving it was not processed: a 429 or a refused connection. Any other
	// failure (5xx, timeout, dropped connection) is returned for the caller to check first.
	noResend bool
}

// doWith is do with options.
func (c *Client) doWith(ctx context.Context, budget *Budget, method, op, path string, body []byte, st *attemptStats, o callOpts) (*response, error) {
	consume := o.consume
	bo := c.newBackOff()
	for attempt := 1; ; attempt++ {
		waitStart := time.Now()
		epoch, err := budget.acquire(ctx)
		if err != nil {
			return nil, fmt.Errorf("iterable %s: waiting for the rate budget: %w", op, err)
		}
		c.observer.IterableBudgetWait(ctx, op, time.Since(waitStart))
		st.requests++
		sent := time.Now()
		resp, err := c.once(ctx, method, path, body, consume)
		if resp != nil && err == nil {
			c.observer.IterableRequest(ctx, op, resp.status, time.Since(sent))
		} else {
			c.observer.IterableRequest(ctx, op, 0, time.Since(sent))
		}
		var retryAfter time.Duration
		var ce *consumeError
		switch {
		case errors.As(err, &ce):
			// The server accepted the request; the stream failed.
			budget.Succeeded()
			if ce.started || ctx.Err() != nil || !retryableTransport(ce.err) {
				return nil, ce.err
			}
			err = ce.err
		case err != nil:
			if ctx.Err() != nil {
				return nil, fmt.Errorf("iterable %s: %w", op, ctx.Err())
			}
			err = newTransportError(op, err)
			if !retryableTransport(err) || (o.noResend && !errors.Is(err, syscall.ECONNREFUSED)) {
				return nil, err
			}
		case resp.status >= 200 && resp.status < 300:
			budget.Succeeded()
			return resp, nil
		default:
			apiErr := parseAPIError(resp, op)
			limited := resp.status == http.StatusTooManyRequests || apiErr.Code == "RateLimitExceeded"
			if limited {
				st.rateLimited++
				budget.rateLimited(epoch, resp.retryAfter)
				retryAfter = resp.retryAfter
			} else if resp.status < 500 {
				// Admitted within the limit, though refused: the rate may climb.
				budget.Succeeded()
			}
			if !apiErr.Retryable() || (o.noResend && !limited) {
				return resp, apiErr
			}
			err = apiErr
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return nil, fmt.Errorf("iterable %s: giving up after %d attempts in %s: %w",
				op, attempt, bo.GetElapsedTime().Round(time.Millisecond), err)
		}
		if retryAfter > d {
			d = retryAfter
		}
		c.log.LogAttrs(ctx, slog.LevelWarn, "iterable request will be retried",
			slog.String("op", op), slog.Int("attempt", attempt), slog.Duration("delay", d),
			slog.String("error", err.Error()))
		if err := sleep(ctx, d); err != nil {
			return nil, fmt.Errorf("iterable %s: %w", op, err)
		}
	}
}

// newBackOff is the retry schedule of one request: exponential with jitter, until MaxElapsed.
func (c *Client) newBackOff() *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(c.retryInitial),
		backoff.WithMaxInterval(c.retryMax),
		backoff.WithMaxElapsedTime(c.maxElapsed),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
	)
}

// errStreamIdle cuts a stream that delivered nothing for Config.ExportIdleTimeout. Its text says
// "timeout" so that a stream that never started is retried like any timeout.
var errStreamIdle = errors.New("stream idle timeout: no data received")

// idleReader pushes back the idle timer on every read that returns data.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	idle  time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.timer.Reset(r.idle)
	}
	return n, err
}

// consumeError is a failure of a consumeFunc.
type consumeError struct {
	started bool
	err     error
}

func (e *consumeError) Error() string { return e.err.Error() }
func (e *consumeError) Unwrap() error { return e.err }

// once sends one HTTP request and reads its answer, or hands a 2xx body to consume.
func (c *Client) once(ctx context.Context, method, path string, body []byte, consume consumeFunc) (*response, error) {
	hc := c.http
	var idle *time.Timer
	if consume != nil {
		// A stream has no overall deadline; a stream that stalls is cut instead.
		hc = c.stream
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		idle = time.AfterFunc(c.exportIdle, func() { cancel(errStreamIdle) })
		defer idle.Stop()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Api-Key", c.apiKey)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	res, err := hc.Do(req)
	if err != nil {
		if errors.Is(context.Cause(ctx), errStreamIdle) {
			return nil, errStreamIdle
		}
		return nil, err
	}
	defer res.Body.Close()
	if consume != nil && res.StatusCode >= 200 && res.StatusCode < 300 {
		started, err := consume(&idleReader{r: res.Body, timer: idle, idle: c.exportIdle})
		if err != nil && errors.Is(context.Cause(ctx), errStreamIdle) {
			err = errStreamIdle
		}
		c.log.LogAttrs(ctx, slog.LevelDebug, "iterable stream",
			slog.String("method", method), slog.Int("status", res.StatusCode), slog.Duration("took", time.Since(start)))
		if err != nil {
			return nil, &consumeError{started: started, err: err}
		}
		return &response{status: res.StatusCode}, nil
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if err != nil {
		return nil, err
	}
	c.log.LogAttrs(ctx, slog.LevelDebug, "iterable request",
		slog.String("method", method), slog.Int("status", res.StatusCode),
		slog.Int("requestBytes", len(body)), slog.Duration("took", time.Since(start)))
	return &response{status: res.StatusCode, body: data, retryAfter: parseRetryAfter(res.Header.Get("Retry-After"))}, nil
}

// parseRetryAfter reads delay-seconds or an HTTP date; anything else means no hint.
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s <= 0 || s > 3600 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 && d <= time.Hour {
			return d
		}
	}
	return 0
}

// parseAPIError reads Iterable's {code, msg, params} error body, tolerating any other body.
func parseAPIError(resp *response, op string) *APIError {
	var body struct {
		Code string `json:"code"`
		Msg  string `json:"msg"`
	}
	_ = json.Unmarshal(resp.body, &body)
	return &APIError{Status: resp.status, Code: body.Code, Msg: sanitizeMsg(body.Msg, nil), Op: op, rawMsg: body.Msg}
}
