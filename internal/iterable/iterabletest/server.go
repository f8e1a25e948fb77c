// Package iterabletest is an in-memory Iterable for tests and demos, used like net/http/httptest.
// It enforces the documented behaviour of the user endpoints the activation engine uses:
// per-project API keys, the bulkUpdate body limit and rate limits, email and userId validation,
// email-based, userID-based and hybrid projects, field-type locking (sub-fields of objects
// included), createNewFields, GDPR-forgotten users, the full failedUpdates answer, lookups, user
// deletion, the user export, and static lists (see lists.go). Emails are matched
// case-insensitively everywhere (updates, lookups, notFound and conflict checks, forgotten
// users, deletes). Faults (latency, 5xx, 429 bursts, dropped connections, cut export streams,
// outages, answers that do not account for every user) can be injected to test retries and the
// client's checks.
//
// Choices where Iterable's documentation is silent (documented here, relied on by tests):
//   - A body over MaxBodyBytes is answered 400 {"code":"BatchTooLarge"} (not 413), and so is a
//     bulkUpdate of more than MaxBulkUsers (default 1,000) users, before anything is applied.
//   - Unlimited disables every rate limit of the emulator, not only bulkUpdate's.
//   - In a userID-based project a user without userId updates the one user that has the email
//     (a userID-based project cannot create a user without userId): an email naming no user is
//     reported in failedUpdates.notFoundEmails, one naming several users in invalidDataEmails.
//   - In an email-based project a user given by userId alone updates the user with that userId;
//     when there is none it is created only with preferUserId=true (with no email: the emulator
//     does not invent Iterable's placeholder address), else reported in notFoundUserIds.
//   - A user with neither email nor userId is reported in invalidEmails as "".
//   - A field name that is empty answers the whole request 400 BadParams, so tests can exercise the
//     client's split-in-halves; Faults.RejectField does the same with RequestFieldsTypesMismatched.
//   - Creating fields past MaxFields (default 1000) answers the whole request 400
//     UniqueFieldsLimitExceeded and applies nothing.
//   - Sub-fields of object fields are type-locked like top-level fields, by their dotted path
//     ("address.zip" of {"address":{"zip":1}}): a value of another type makes the user
//     invalidData. getFields reports them under that path with the object itself as "object",
//     and they count toward MaxFields. createdFields and filteredOutFields name top-level fields
//     only, and createNewFields=false filters top-level fields only (a new sub-field of a known
//     object is stored and locked). Array elements are not descended.
//   - An email-based project keeps the case an email was created with; hybrid and userID-based
//     projects take the case of the latest update naming it.
//   - DELETE /api/users/{email} and /api/users/byUserId/{userId} (DeleteRPS, default 100/s each)
//     remove the user at once, where Iterable deletes asynchronously. The spec documents only
//     200, 400 and 401: an absent user is answered 400 {"code":"BadParams","msg":"User does not
//     exist. Email: … UserId: …"} as Iterable does, and a deletion by email in a userID-based
//     project (which Iterable does not support) 400 BadParams. Field types stay locked.
//   - GET /api/export/data.json exports users only (dataTypeName=user; any other type is a 400).
//     A user's line is {"email","userId","profileUpdatedAt",<dataFields>...}, limited to
//     onlyFields when given; range and startDateTime/endDateTime select on profileUpdatedAt (the
//     time the emulator created or last updated the profile), in UTC. Lines come sorted by email,
//     then userId.
package iterabletest

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProjectType is how a project identifies its users.
type ProjectType string

const (
	ProjectEmail  ProjectType = "email"
	ProjectUserID ProjectType = "userId"
	ProjectHybrid ProjectType = "hybrid"
)

// Options configure the emulator. Zero values take Iterable's documented limits.
type Options struct {
	// BulkUpdateRPS is the bulkUpdate rate limit per project (default 5, burst equal to the rate).
	BulkUpdateRPS float64
	// Unlimited disables every rate limit.
	Unlimited bool
	// RateLimit is how every rate limit counts (default RateLimitTokenBucket; see traffic.go).
	RateLimit RateLimitMode
	// GetFieldsRPS is the getFields rate limit per project (default 3).
	GetFieldsRPS float64
	// LookupRPS is the rate limit of getByEmail and of byUserId, each, per project (default 100).
	LookupRPS float64
	// ExportPerMinute is the rate limit of GET /api/export/data.json per project (default 4,
	// with a burst of 4 requests).
	ExportPerMinute float64
	// MaxBodyBytes is the largest bulkUpdate body accepted (default 4 MiB).
	MaxBodyBytes int
	// MaxFields is the project's limit of distinct user fields (default 1000).
	MaxFields int
	// MaxBulkUsers is the most users one bulkUpdate may hold (default 1000); more is answered
	// 400 BatchTooLarge.
	MaxBulkUsers int
	// DeleteRPS is the rate limit of DELETE /api/users/{email} and of
	// DELETE /api/users/byUserId/{userId}, each, per project (default 100).
	DeleteRPS float64
	// ListsRPS is the rate limit of GET /api/lists per project (default 100).
	ListsRPS float64
	// SubscribeRPS and UnsubscribeRPS are the rate limits of POST /api/lists/subscribe and of
	// POST /api/lists/unsubscribe, each, per project (default 5: Iterable documents none).
	SubscribeRPS   float64
	UnsubscribeRPS float64
	// ListUsersPerMinute is the rate limit of GET /api/lists/getUsers and of
	// GET /api/lists/{listId}/size, each, per project (default 5, with a burst of as many).
	ListUsersPerMinute float64
	// MaxSubscribers is the most subscribers one subscribe or unsubscribe may hold (default
	// 1000); more is answered 400 BatchTooLarge.
	MaxSubscribers int
	// KeepReceived records every user object received, for Received (tests; costs memory).
	KeepReceived bool
	Logger       *slog.Logger
}

// Faults are injected failures; they apply to bulkUpdate requests that carry a valid key,
// except Latency, which delays every request, Outage, which answers every request, and
// CutExportAfter and Export429, which apply to exports.
type Faults struct {
	Latency time.Duration
	// Error5xxRate answers this fraction (0..1) of bulk requests 500, drawn from a seeded
	// generator so runs are reproducible.
	Error5xxRate float64
	// Burst429 answers the next N bulk requests 429 RateLimitExceeded.
	Burst429 int
	// DropConnections closes the connection of the next N bulk requests without an answer.
	DropConnections int
	// RetryAfter, when set, is sent as Retry-After (whole seconds, at least 1) with every 429.
	RetryAfter time.Duration
	// RejectField answers 400 RequestFieldsTypesMismatched to any bulk request in which a user's
	// dataFields holds this field, the way Iterable refuses a whole request because of one user.
	RejectField string
	// CutExportAfter, when positive, makes every export stream stop after this many lines by
	// closing the connection without ending the response, as a failing proxy would. Serve the
	// emulator over a connection (NewServer) to use it.
	CutExportAfter int
	// Export429 answers the next N export requests 429 RateLimitExceeded.
	Export429 int
	// Burst429Every, Burst429Length and Burst429RetryAfters repeat 429 bursts for the whole
	// run (see faults.go).
	Burst429Every       int
	Burst429Length      int
	Burst429RetryAfters []time.Duration
	// Outage makes every endpoint unavailable, whatever the key (see faults.go).
	Outage Outage
	// MiscountUser: every bulkUpdate request holding a user whose email (case-insensitive) or
	// userId is this value is applied normally, but its answer reports successCount one higher
	// than the users it updated, so the counts disagree with failedUpdates (see faults.go).
	MiscountUser string
	// UnknownCategoryUser: every bulkUpdate request holding a user whose email (case-insensitive)
	// or userId is this value is applied normally (that user is updated and counted in
	// successCount), and its answer also names that user, as sent, in
	// failedUpdates.<UnknownCategory>, a list Iterable does not document (see faults.go).
	UnknownCategoryUser string
	// UnknownCategory names that list (default "undocumentedEmails", or "undocumentedUserIds"
	// when the user was sent without email).
	UnknownCategory string
	// List429 answers the next N subscribe and unsubscribe requests 429 RateLimitExceeded (with
	// RetryAfter when set).
	List429 int
}

// StoredUser is a user profile as stored by the emulator.
type StoredUser struct {
	Email      string
	UserID     string
	DataFields map[string]any
}

// Stats count what a project received.
type Stats struct {
	BulkRequests int // bulkUpdate requests with the project's key, whatever the answer
	// FirstBulkAt is when the first of them arrived, LastBulkAt when the last answer was
	// written: a benchmark tells the wire's span from the run's.
	FirstBulkAt, LastBulkAt time.Time
	RateLimited             int // 429 answers (rate limit and Burst429)
	UsersReceived           int // users in bulk bodies that were decoded (applied or not)
	FieldsReceived          int // dataFields entries in bulk bodies that were processed
	UsersUpdated            int // sum of successCount
	UsersFailed             int // sum of failCount
	Errors5xx               int
	DroppedConnections      int
	BadRequests             int // 400 answers of any endpoint
	GetFieldsRequests       int
	LookupRequests          int // getByEmail and byUserId
	ExportRequests          int // export/data.json, whatever the answer
	ExportedUsers           int // lines streamed by export/data.json
	Bursts429               int // bursts started by Faults.Burst429Every
	Burst429RetryAfter      int // 429 answers of those bursts that carried Retry-After
	// MiscountedAnswers counts bulkUpdate answers whose successCount Faults.MiscountUser raised.
	MiscountedAnswers int
	// UnknownCategoryAnswers counts bulkUpdate answers to which Faults.UnknownCategoryUser added
	// an undocumented failedUpdates list.
	UnknownCategoryAnswers int
	DeleteRequests         int // DELETE /api/users/{email} and /byUserId/{userId}, whatever the answer
	UsersDeleted           int // users those requests removed

	ListsRequests       int // GET /api/lists
	ListsCreated        int // POST /api/lists answered 200
	SubscribeRequests   int // POST /api/lists/subscribe, whatever the answer
	UnsubscribeRequests int // POST /api/lists/unsubscribe, whatever the answer
	MembersAdded        int // users subscribe made members of a list they were not in
	MembersRemoved      int // members unsubscribe removed from a list
	// ChannelUnsubscribes counts unsubscribe requests that said "channelUnsubscribe": true, a
	// global unsubscribe from the list's channel: a list activation must never send one.
	ChannelUnsubscribes int
	ListUsersRequests   int // GET /api/lists/getUsers and /api/lists/{listId}/size
}

// Server is the emulator. It implements http.Handler.
type Server struct {
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux
	ts   *httptest.Server

	mu           sync.Mutex
	projects     map[string]*project
	faults       Faults
	rnd          *rand.Rand
	nextListID   int64 // list ids are unique across projects, as Iterable's are
	unauthorized int
	burst        burstState    // Faults.Burst429Every
	outages      int           // requests answered by Faults.Outage
	trafficStop  chan struct{} // closed to stop InjectTraffic's goroutines
}

// NewServer starts an emulator on 127.0.0.1 with a random port.
func NewServer(opts Options) *Server {
	s := NewHandler(opts)
	s.ts = httptest.NewServer(s)
	return s
}

// NewHandler builds an emulator without listening; serve it yourself.
func NewHandler(opts Options) *Server {
	if opts.BulkUpdateRPS <= 0 {
		opts.BulkUpdateRPS = 5
	}
	if opts.GetFieldsRPS <= 0 {
		opts.GetFieldsRPS = 3
	}
	if opts.LookupRPS <= 0 {
		opts.LookupRPS = 100
	}
	if opts.ExportPerMinute <= 0 {
		opts.ExportPerMinute = 4
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 4 * 1024 * 1024
	}
	if opts.MaxFields <= 0 {
		opts.MaxFields = 1000
	}
	if opts.MaxBulkUsers <= 0 {
		opts.MaxBulkUsers = 1000
	}
	if opts.DeleteRPS <= 0 {
		opts.DeleteRPS = 100
	}
	if opts.ListsRPS <= 0 {
		opts.ListsRPS = 100
	}
	if opts.SubscribeRPS <= 0 {
		opts.SubscribeRPS = 5
	}
	if opts.UnsubscribeRPS <= 0 {
		opts.UnsubscribeRPS = 5
	}
	if opts.ListUsersPerMinute <= 0 {
		opts.ListUsersPerMinute = 5
	}
	if opts.MaxSubscribers <= 0 {
		opts.MaxSubscribers = 1000
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:     opts,
		log:      log,
		mux:      http.NewServeMux(),
		projects: make(map[string]*project),
		rnd:      rand.New(rand.NewPCG(1, 2)),
	}
	s.mux.HandleFunc("POST /api/users/bulkUpdate", s.bulkUpdate)
	s.mux.HandleFunc("GET /api/users/getFields", s.getFields)
	s.mux.HandleFunc("GET /api/users/getByEmail", s.getByEmail)
	s.mux.HandleFunc("GET /api/users/byUserId/{userId...}", s.getByUserID)
	s.mux.HandleFunc("GET /api/export/data.json", s.exportData)
	s.mux.HandleFunc("DELETE /api/users/{email}", s.deleteByEmail)
	s.mux.HandleFunc("DELETE /api/users/byUserId/{userId...}", s.deleteByUserID)
	s.mux.HandleFunc("GET /api/lists", s.getLists)
	s.mux.HandleFunc("POST /api/lists", s.createList)
	s.mux.HandleFunc("POST /api/lists/subscribe", s.subscribe)
	s.mux.HandleFunc("POST /api/lists/unsubscribe", s.unsubscribe)
	s.mux.HandleFunc("GET /api/lists/getUsers", s.listUsers)
	s.mux.HandleFunc("GET /api/lists/{listId}/size", s.listSize)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", "Endpoint not emulated")
	})
	return s
}

// URL is the base URL of a started server ("" for NewHandler).
func (s *Server) URL() string {
	if s.ts == nil {
		return ""
	}
	return s.ts.URL
}

// Close stops a started server.
func (s *Server) Close() {
	s.StopTraffic()
	if s.ts != nil {
		s.ts.Close()
	}
}

// ServeHTTP serves the emulated API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	lat := s.faults.Latency
	s.mu.Unlock()
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-r.Context().Done():
			return
		}
	}
	if s.outage(w, r) {
		return
	}
	s.mux.ServeHTTP(w, r)
}

// AddProject creates a project reached with apiKey, replacing any project with that key.
func (s *Server) AddProject(apiKey string, t ProjectType) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.projects[apiKey] = newProject(t, s.opts)
}

// InjectFaults replaces the injected faults; Faults{} removes them.
func (s *Server) InjectFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	s.burst = burstState{}
}

// Stats returns the counters of the project of apiKey (zero for an unknown key).
func (s *Server) Stats(apiKey string) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.projects[apiKey]; p != nil {
		return p.stats
	}
	return Stats{}
}

// Unauthorized counts requests answered 401 (their key names no project).
func (s *Server) Unauthorized() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unauthorized
}

// Users returns deep copies of the project's users sorted by email (case-insensitively), then
// userId.
func (s *Server) Users(apiKey string) []StoredUser {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return nil
	}
	out := make([]StoredUser, 0, len(p.all))
	for u := range p.all {
		out = append(out, u.stored())
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := strings.ToLower(out[i].Email), strings.ToLower(out[j].Email); a != b {
			return a < b
		}
		return out[i].UserID < out[j].UserID
	})
	return out
}

// User returns a deep copy of the user with that email (case-insensitive) or, when email is
// empty, with that userId.
func (s *Server) User(apiKey, email, userID string) (StoredUser, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return StoredUser{}, false
	}
	u := p.find(email, userID)
	if u == nil {
		return StoredUser{}, false
	}
	return u.stored(), true
}

// HasUser reports whether the project holds a user with that email (case-insensitive) or, when
// email is empty, with that userId.
func (s *Server) HasUser(apiKey, email, userID string) bool {
	_, ok := s.User(apiKey, email, userID)
	return ok
}

// Forget GDPR-forgets a user: the profile is deleted and later updates naming its email or
// userId land in forgottenEmails / forgottenUserIds. The identifiers are forgotten even when no
// such user exists.
func (s *Server) Forget(apiKey, email, userID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return
	}
	if u := p.find(email, userID); u != nil {
		if u.email != "" {
			p.forgottenEmails[strings.ToLower(u.email)] = true
		}
		if u.userID != "" {
			p.forgottenUserIDs[u.userID] = true
		}
		p.remove(u)
	}
	if email != "" {
		p.forgottenEmails[strings.ToLower(email)] = true
	}
	if userID != "" {
		p.forgottenUserIDs[userID] = true
	}
}

// SetFieldType locks a field's type as if a value of that type had been stored
// ("string", "long", "double", "boolean", "date", "object", "array").
func (s *Server) SetFieldType(apiKey, field, typ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.projects[apiKey]; p != nil {
		p.fields[field] = typ
	}
}

// authorize finds the project of the request's Api-Key or answers 401. Call with s.mu held.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) *project {
	p := s.projects[r.Header.Get("Api-Key")]
	if p == nil {
		s.unauthorized++
		writeError(w, http.StatusUnauthorized, "BadApiKey", "Invalid API key")
	}
	return p
}

func (s *Server) rateLimited(w http.ResponseWriter) {
	if ra := s.faults.RetryAfter; ra > 0 {
		secs := int((ra + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", itoa(secs))
	}
	writeError(w, http.StatusTooManyRequests, "RateLimitExceeded", "Rate limit exceeded")
}

func (s *Server) getFields(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	p.stats.GetFieldsRequests++
	if !p.getFieldsRL.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return
	}
	fields := map[string]string{"email": "string", "userId": "string"}
	for k, v := range p.fields {
		fields[k] = v
	}
	writeJSON(w, http.StatusOK, map[string]any{"fields": fields})
}

func (s *Server) getByEmail(w http.ResponseWriter, r *http.Request) {
	s.lookup(w, r, r.URL.Query().Get("email"), "", true)
}

func (s *Server) getByUserID(w http.ResponseWriter, r *http.Request) {
	s.lookup(w, r, "", r.PathValue("userId"), false)
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request, email, userID string, byEmail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	p.stats.LookupRequests++
	rl := p.byUserIDRL
	if byEmail {
		rl = p.byEmailRL
	}
	if !rl.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return
	}
	var u *user
	if byEmail {
		if email != "" {
			u = p.find(email, "")
		}
	} else if userID != "" {
		u = p.byUserID[userID]
	}
	if u == nil {
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	su := u.stored()
	body := map[string]any{"dataFields": su.DataFields}
	if su.Email != "" {
		body["email"] = su.Email
	}
	if su.UserID != "" {
		body["userId"] = su.UserID
	}
	writeJSON(w, http.StatusOK, map[string]any{"user": body})
}

// bulkUpdate serves POST /api/users/bulkUpdate.
func (s *Server) bulkUpdate(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.authorize(w, r)
	if p == nil {
		s.mu.Unlock()
		return
	}
	p.stats.BulkRequests++
	if p.stats.FirstBulkAt.IsZero() {
		p.stats.FirstBulkAt = time.Now()
	}
	defer func() {
		s.mu.Lock()
		p.stats.LastBulkAt = time.Now()
		s.mu.Unlock()
	}()
	f := &s.faults
	switch {
	case f.DropConnections > 0:
		f.DropConnections--
		p.stats.DroppedConnections++
		s.mu.Unlock()
		dropConnection(w, r)
		return
	case f.Burst429 > 0:
		f.Burst429--
		p.stats.RateLimited++
		s.rateLimited(w)
		s.mu.Unlock()
		return
	case s.scheduledBurst(w, p):
		s.mu.Unlock()
		return
	case f.Error5xxRate > 0 && s.rnd.Float64() < f.Error5xxRate:
		p.stats.Errors5xx++
		s.mu.Unlock()
		writeError(w, http.StatusInternalServerError, "GenericError", "Internal server error (injected)")
		return
	case !p.bulkRL.allow(time.Now()):
		p.stats.RateLimited++
		s.rateLimited(w)
		s.mu.Unlock()
		return
	}
	faults := *f
	s.mu.Unlock()

	status, code, msg, resp, users := s.readAndApply(r, p, faults.RejectField)
	received := len(users)
	s.mu.Lock()
	p.stats.UsersReceived += received
	if status != http.StatusOK {
		p.stats.BadRequests++
	} else {
		p.stats.UsersUpdated += resp.SuccessCount
		p.stats.UsersFailed += resp.FailCount
		answerFaults(faults, p, users, resp)
	}
	s.mu.Unlock()
	s.log.Debug("iterabletest bulkUpdate", slog.Int("status", status), slog.String("code", code),
		slog.Int("users", received))
	if status != http.StatusOK {
		writeError(w, status, code, msg)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// readAndApply reads, checks and applies a bulk body, and returns the users it decoded. Decoding
// runs without the lock; applying holds it, so each request is applied atomically with respect
// to others.
func (s *Server) readAndApply(r *http.Request, p *project, rejectField string) (status int, code, msg string, resp *bulkResponse, users []inUser) {
	limit := s.opts.MaxBodyBytes
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return http.StatusBadRequest, "BadJsonBody", "Could not read the request body", nil, nil
	}
	if len(body) > limit {
		// Drain what is left (bounded) so the client reads our answer instead of a reset.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		return http.StatusBadRequest, "BatchTooLarge", "Request body exceeds " + itoa(limit) + " bytes", nil, nil
	}
	var req bulkRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		if _, ok := err.(*json.UnmarshalTypeError); ok {
			return http.StatusBadRequest, "BadParams", "Invalid request: " + err.Error(), nil, nil
		}
		return http.StatusBadRequest, "BadJsonBody", "Could not parse the JSON body", nil, nil
	}
	if dec.More() {
		return http.StatusBadRequest, "BadJsonBody", "Trailing data after the JSON body", nil, nil
	}
	if req.Users == nil {
		return http.StatusBadRequest, "BadParams", "users is required", nil, nil
	}
	if len(req.Users) > s.opts.MaxBulkUsers {
		return http.StatusBadRequest, "BatchTooLarge",
			"A bulk update may hold at most " + itoa(s.opts.MaxBulkUsers) + " users", nil, req.Users
	}
	for _, u := range req.Users {
		for k := range u.DataFields {
			if k == "" {
				return http.StatusBadRequest, "BadParams", "Field names must not be empty", nil, req.Users
			}
			if rejectField != "" && k == rejectField {
				return http.StatusBadRequest, "RequestFieldsTypesMismatched",
					"Field types mismatched for field '" + k + "'", nil, req.Users
			}
		}
	}
	createNew := req.CreateNewFields == nil || *req.CreateNewFields

	s.mu.Lock()
	defer s.mu.Unlock()
	if createNew {
		if n := p.newFieldCount(req.Users); len(p.fields)+n > s.opts.MaxFields {
			return http.StatusBadRequest, "UniqueFieldsLimitExceeded",
				"Project would exceed its limit of " + itoa(s.opts.MaxFields) + " unique fields", nil, req.Users
		}
	}
	for _, u := range req.Users {
		p.stats.FieldsReceived += len(u.DataFields)
		if s.opts.KeepReceived {
			p.received = append(p.received, StoredUser{Email: u.Email, UserID: u.UserID, DataFields: copyFields(u.DataFields)})
		}
	}
	return http.StatusOK, "", "", p.applyBulk(req.Users, createNew), req.Users
}

// Received returns every user object the project accepted for processing in bulkUpdate bodies,
// in arrival order (only with Options.KeepReceived): tests read what exactly was sent.
func (s *Server) Received(apiKey string) []StoredUser {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return nil
	}
	out := make([]StoredUser, len(p.received))
	for i, u := range p.received {
		out[i] = StoredUser{Email: u.Email, UserID: u.UserID, DataFields: copyFields(u.DataFields)}
	}
	return out
}

func copyFields(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// dropConnection closes the connection without an answer, as a failing proxy would.
func dropConnection(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	// Not served over a connection we can take: abort the response instead.
	panic(http.ErrAbortHandler)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"code": code, "msg": msg, "params": nil})
}

func itoa(n int) string { return strconv.Itoa(n) }
