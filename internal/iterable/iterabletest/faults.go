package iterabletest

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"
)

// Faults that last, for fault drills: repeated 429 bursts and outages.
//
// Repeated 429 bursts (Faults.Burst429Every > 0): after every Burst429Every bulk requests, the
// next Burst429Length (default 1) bulk requests are answered 429 RateLimitExceeded, whichever
// project they name. Burst i sends Retry-After Burst429RetryAfters[i % len] (whole seconds, at
// least 1; a zero entry sends no header), or no header when the list is empty, so one run sees
// bursts with and without Retry-After. Requests answered by DropConnections or Burst429 do not
// count; those later answered 500 by Error5xxRate or 429 by the rate limit do. Stats count the
// bursts (Bursts429), their answers (in RateLimited) and the answers with a Retry-After
// (Burst429RetryAfter).
//
// Outages (Faults.Outage) answer every request, on every endpoint and whatever its key, before
// anything else (after Latency): OutageServiceUnavailable with 503 {"code":"ServiceUnavailable"},
// OutageDropConnections by closing the connection without an answer. OutageAnswers counts them.
// For an Iterable that cannot be reached at all (connections refused), see GoOffline.
//
// Answers that do not account for every user, for the client's check that nothing unconfirmed
// is taken as accepted: Faults.MiscountUser and Faults.UnknownCategoryUser pick a user by email
// (case-insensitive) or userId. Every bulkUpdate request holding that user is applied exactly
// as without the fault (the user is updated, or lands in its usual failedUpdates list), then
// its 200 answer is altered: MiscountUser raises successCount by one (MiscountedAnswers counts
// them); UnknownCategoryUser adds the list failedUpdates.<UnknownCategory> naming that user as
// sent, its email or else its userId (UnknownCategoryAnswers counts them). Stats.UsersUpdated
// and UsersFailed count what was applied, not the altered counts. Requests without the user
// are answered truthfully, so a client that splits the request finds the user.

// Outage is a way for the whole API to be unavailable.
type Outage int

const (
	// NoOutage serves requests normally.
	NoOutage Outage = iota
	// OutageServiceUnavailable answers every request 503.
	OutageServiceUnavailable
	// OutageDropConnections closes every request's connection without an answer.
	OutageDropConnections
)

// String names the outage, for test names and logs.
func (o Outage) String() string {
	switch o {
	case NoOutage:
		return "none"
	case OutageServiceUnavailable:
		return "503"
	case OutageDropConnections:
		return "dropped-connections"
	}
	return "unknown"
}

// burstState is the progress of Faults.Burst429Every. All access holds Server.mu.
type burstState struct {
	since      int           // requests since the last burst ended
	left       int           // answers left in the current burst
	n          int           // bursts started
	retryAfter time.Duration // of the current burst
}

// scheduledBurst answers the request 429 when a repeated burst is due or going on, and says
// whether it did. Call with s.mu held.
func (s *Server) scheduledBurst(w http.ResponseWriter, p *project) bool {
	f, b := &s.faults, &s.burst
	if f.Burst429Every <= 0 {
		return false
	}
	if b.left == 0 {
		if b.since < f.Burst429Every {
			b.since++
			return false
		}
		b.since = 0
		b.left = max(f.Burst429Length, 1)
		b.retryAfter = 0
		if l := f.Burst429RetryAfters; len(l) > 0 {
			b.retryAfter = l[b.n%len(l)]
		}
		b.n++
		p.stats.Bursts429++
	}
	b.left--
	p.stats.RateLimited++
	if b.retryAfter > 0 {
		p.stats.Burst429RetryAfter++
		w.Header().Set("Retry-After", itoa(int((b.retryAfter+time.Second-1)/time.Second)))
	}
	writeError(w, http.StatusTooManyRequests, "RateLimitExceeded", "Rate limit exceeded (injected burst)")
	return true
}

// outage answers the request when Faults.Outage is set, and says whether it did.
func (s *Server) outage(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	mode := s.faults.Outage
	if mode != NoOutage {
		s.outages++
	}
	s.mu.Unlock()
	switch mode {
	case OutageServiceUnavailable:
		writeError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "Service unavailable (injected outage)")
	case OutageDropConnections:
		dropConnection(w, r)
	default:
		return false
	}
	return true
}

// OutageAnswers counts the requests answered by Faults.Outage, on every endpoint and key.
func (s *Server) OutageAnswers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outages
}

// GoOffline makes a server started by NewServer unreachable: it stops listening, lets the
// requests being served finish and closes every connection, so that clients get "connection
// refused" until GoOnline. Projects, users and stats are kept. Call GoOffline, GoOnline, URL
// and Close from one goroutine.
func (s *Server) GoOffline() {
	if s.ts != nil {
		s.ts.Close()
	}
}

// GoOnline listens again, on the address the server had, after GoOffline: URL does not change.
func (s *Server) GoOnline() error {
	if s.ts == nil {
		return errors.New("iterabletest: GoOnline needs a server started by NewServer")
	}
	addr := s.ts.Listener.Addr().String()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ts := httptest.NewUnstartedServer(s)
	_ = ts.Listener.Close()
	ts.Listener = l
	ts.Start()
	s.ts = ts
	return nil
}

// answerFaults alters a bulkUpdate answer as Faults.MiscountUser and Faults.UnknownCategoryUser
// say. Call with s.mu held.
func answerFaults(f Faults, p *project, users []inUser, resp *bulkResponse) {
	if f.MiscountUser != "" && holds(users, f.MiscountUser) != nil {
		resp.SuccessCount++
		p.stats.MiscountedAnswers++
	}
	if f.UnknownCategoryUser == "" {
		return
	}
	u := holds(users, f.UnknownCategoryUser)
	if u == nil {
		return
	}
	cat, id := f.UnknownCategory, u.Email
	if id == "" {
		id = u.UserID
	}
	if cat == "" {
		cat = "undocumentedEmails"
		if u.Email == "" {
			cat = "undocumentedUserIds"
		}
	}
	if resp.FailedUpdates.extra == nil {
		resp.FailedUpdates.extra = map[string][]string{}
	}
	resp.FailedUpdates.extra[cat] = append(resp.FailedUpdates.extra[cat], id)
	p.stats.UnknownCategoryAnswers++
}

// holds returns the first user of users whose email (case-insensitive) or userId is id.
func holds(users []inUser, id string) *inUser {
	for i := range users {
		if (users[i].Email != "" && strings.EqualFold(users[i].Email, id)) || (users[i].UserID != "" && users[i].UserID == id) {
			return &users[i]
		}
	}
	return nil
}
