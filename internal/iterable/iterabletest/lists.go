package iterabletest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Lists. The emulator serves GET and POST /api/lists, POST /api/lists/subscribe and
// /api/lists/unsubscribe, GET /api/lists/getUsers and GET /api/lists/{listId}/size. Choices where
// Iterable's documentation is silent (relied on by tests):
//   - List ids are unique across the emulator's projects; an id of another project is unknown.
//     Names need not be unique (POST /api/lists creates a second list of the same name).
//   - A listId that names no list of the project, or is missing, is answered 400 BadParams on
//     every list endpoint; subscribe and unsubscribe to a Dynamic list are answered 400
//     BadParams. More than MaxSubscribers subscribers, or a body over MaxBodyBytes, is answered
//     400 BatchTooLarge, before anything is applied.
//   - subscribe applies each subscriber as bulkUpdate does (validation, forgotten users, field
//     type locking, project types, preferUserId), with new fields created (the project's
//     default), then makes the user a member. updateExistingUsersOnly is honoured in
//     userID-based and hybrid projects only, as the spec says: an unknown subscriber lands in
//     notFoundEmails (or notFoundUserIds when sent without email) and is not created. In an
//     email-based project it is ignored and unknown emails are created.
//   - unsubscribe resolves each subscriber by userId when it has one (by email in an email-based
//     project when it has both), else by email. A user that does not exist lands in
//     notFoundEmails / notFoundUserIds (the spec: "not found (for subscribe/unsubscribe only)");
//     an existing user that is not a member is a success that changes nothing. channelUnsubscribe
//     is counted (Stats.ChannelUnsubscribes), not otherwise emulated; campaignId is ignored.
//   - getUsers answers text/plain, one identifier per line, sorted: the email, or the userId of
//     a member without email, or with preferUserId=true the userId of a member that has one.
//     size answers the count as a bare number, text/plain (the spec says only "string").
//   - Deleting or forgetting a user removes it from every list.

// list is one list of a project. All access holds Server.mu.
type list struct {
	id                int64
	name, description string
	typ               string // "Standard" or "Dynamic"
	created           time.Time
	members           map[*user]struct{}
}

const (
	listStandard = "Standard"
	listDynamic  = "Dynamic"
)

// AddList creates a list in the project of apiKey and returns its id, 0 for an unknown key: a
// static (Standard) list, or a Dynamic one, which subscribe and unsubscribe refuse.
func (s *Server) AddList(apiKey, name string, dynamic bool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return 0
	}
	typ := listStandard
	if dynamic {
		typ = listDynamic
	}
	return s.addList(p, name, "", typ).id
}

// addList creates a list. Call with s.mu held.
func (s *Server) addList(p *project, name, description, typ string) *list {
	s.nextListID++
	l := &list{id: s.nextListID, name: name, description: description, typ: typ, created: time.Now(),
		members: make(map[*user]struct{})}
	p.lists[l.id] = l
	return l
}

// ListMembers returns the identifiers of the members of a list, sorted: each one's email, or
// userId when it has no email. It returns nil when the project has no such list.
func (s *Server) ListMembers(apiKey string, listID int64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil || p.lists[listID] == nil {
		return nil
	}
	return p.lists[listID].identifiers(false)
}

// ListIDByName returns the id of the list named name (the lowest id when several share the
// name) and whether there is one.
func (s *Server) ListIDByName(apiKey, name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.projects[apiKey]
	if p == nil {
		return 0, false
	}
	var id int64
	for _, l := range p.lists {
		if l.name == name && (id == 0 || l.id < id) {
			id = l.id
		}
	}
	return id, id != 0
}

// identifiers lists the members as getUsers does, sorted.
func (l *list) identifiers(preferUserID bool) []string {
	out := make([]string, 0, len(l.members))
	for u := range l.members {
		id := u.email
		if u.userID != "" && (id == "" || preferUserID) {
			id = u.userID
		}
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// getLists serves GET /api/lists: {"lists":[ListDetails…]} sorted by id.
func (s *Server) getLists(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	p.stats.ListsRequests++
	if !p.listsRL.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return
	}
	ids := make([]int64, 0, len(p.lists))
	for id := range p.lists {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		l := p.lists[id]
		d := map[string]any{"id": l.id, "name": l.name, "listType": l.typ, "createdAt": l.created.UnixMilli()}
		if l.description != "" {
			d["description"] = l.description
		}
		out = append(out, d)
	}
	writeJSON(w, http.StatusOK, map[string]any{"lists": out})
}

// createList serves POST /api/lists {name, description} → {listId}: a static list. Iterable
// documents no rate limit for it; the emulator has none.
func (s *Server) createList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.authorize(w, r)
	s.mu.Unlock()
	if p == nil {
		return
	}
	var req struct {
		Name        *string `json:"name"`
		Description string  `json:"description"`
	}
	status, code, msg := s.readJSON(r, &req)
	if status == http.StatusOK && (req.Name == nil || strings.TrimSpace(*req.Name) == "") {
		status, code, msg = http.StatusBadRequest, "BadParams", "name is required"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if status != http.StatusOK {
		p.stats.BadRequests++
		writeError(w, status, code, msg)
		return
	}
	l := s.addList(p, *req.Name, req.Description, listStandard)
	p.stats.ListsCreated++
	writeJSON(w, http.StatusOK, map[string]any{"listId": l.id})
}

// subscribeRequest is SubscribeRequest; unsubscribeRequest is UnsubscribeRequest.
type subscribeRequest struct {
	ListID                  *int64   `json:"listId"`
	Subscribers             []inUser `json:"subscribers"`
	UpdateExistingUsersOnly bool     `json:"updateExistingUsersOnly"`
}

type unsubscribeRequest struct {
	ListID             *int64   `json:"listId"`
	Subscribers        []inUser `json:"subscribers"`
	CampaignID         *int64   `json:"campaignId"`
	ChannelUnsubscribe bool     `json:"channelUnsubscribe"`
}

// admitList counts a subscribe or unsubscribe request and applies its faults and rate limit; it
// says whether to go on. Call with s.mu held.
func (s *Server) admitList(w http.ResponseWriter, p *project, rl *limiter) bool {
	if s.faults.List429 > 0 {
		s.faults.List429--
		p.stats.RateLimited++
		s.rateLimited(w)
		return false
	}
	if !rl.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return false
	}
	return true
}

// memberList checks a subscribe or unsubscribe request's list and subscribers and returns the
// list, or the 400 to answer. Call with s.mu held.
func (s *Server) memberList(p *project, listID *int64, subscribers []inUser) (*list, string, string) {
	switch {
	case listID == nil:
		return nil, "BadParams", "listId is required"
	case subscribers == nil:
		return nil, "BadParams", "subscribers is required"
	case len(subscribers) > s.opts.MaxSubscribers:
		return nil, "BatchTooLarge", "A request may hold at most " + itoa(s.opts.MaxSubscribers) + " subscribers"
	}
	l := p.lists[*listID]
	if l == nil {
		return nil, "BadParams", "List " + strconv.FormatInt(*listID, 10) + " does not exist"
	}
	if l.typ != listStandard {
		return nil, "BadParams", "Cannot change the members of a " + l.typ + " list"
	}
	return l, "", ""
}

// subscribe serves POST /api/lists/subscribe.
func (s *Server) subscribe(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.authorize(w, r)
	if p == nil {
		s.mu.Unlock()
		return
	}
	p.stats.SubscribeRequests++
	ok := s.admitList(w, p, p.subscribeRL)
	s.mu.Unlock()
	if !ok {
		return
	}
	var req subscribeRequest
	status, code, msg := s.readJSON(r, &req)
	s.mu.Lock()
	defer s.mu.Unlock()
	var l *list
	if status == http.StatusOK {
		if l, code, msg = s.memberList(p, req.ListID, req.Subscribers); l == nil {
			status = http.StatusBadRequest
		}
	}
	if status == http.StatusOK {
	check:
		for _, u := range req.Subscribers {
			for k := range u.DataFields {
				if k == "" {
					status, code, msg = http.StatusBadRequest, "BadParams", "Field names must not be empty"
					break check
				}
			}
		}
	}
	// Subscribe has no createNewFields: the project's default, adding new fields, applies.
	if status == http.StatusOK {
		if n := p.newFieldCount(req.Subscribers); len(p.fields)+n > s.opts.MaxFields {
			status, code, msg = http.StatusBadRequest, "UniqueFieldsLimitExceeded",
				"Project would exceed its limit of "+itoa(s.opts.MaxFields)+" unique fields"
		}
	}
	if status != http.StatusOK {
		p.stats.BadRequests++
		writeError(w, status, code, msg)
		return
	}
	mustExist := req.UpdateExistingUsersOnly && p.typ != ProjectEmail
	resp := newListResponse()
	created, filtered := map[string]bool{}, map[string]bool{}
	for i := range req.Subscribers {
		u, failed := p.apply(&req.Subscribers[i], true, mustExist, resp, created, filtered)
		if failed != nil {
			resp.FailCount++
			continue
		}
		resp.SuccessCount++
		if _, member := l.members[u]; !member {
			l.members[u] = struct{}{}
			p.stats.MembersAdded++
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// unsubscribe serves POST /api/lists/unsubscribe.
func (s *Server) unsubscribe(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.authorize(w, r)
	if p == nil {
		s.mu.Unlock()
		return
	}
	p.stats.UnsubscribeRequests++
	ok := s.admitList(w, p, p.unsubscribeRL)
	s.mu.Unlock()
	if !ok {
		return
	}
	var req unsubscribeRequest
	status, code, msg := s.readJSON(r, &req)
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == http.StatusOK && req.ChannelUnsubscribe {
		p.stats.ChannelUnsubscribes++
	}
	var l *list
	if status == http.StatusOK {
		if l, code, msg = s.memberList(p, req.ListID, req.Subscribers); l == nil {
			status = http.StatusBadRequest
		}
	}
	if status != http.StatusOK {
		p.stats.BadRequests++
		writeError(w, status, code, msg)
		return
	}
	resp := newListResponse()
	for i := range req.Subscribers {
		if p.leave(l, &req.Subscribers[i], &resp.FailedUpdates) {
			resp.SuccessCount++
		} else {
			resp.FailCount++
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// leave removes one subscriber from l, and reports success; on failure the subscriber is added
// to the failedUpdates list that says why. A user that exists but is not a member succeeds.
func (p *project) leave(l *list, in *inUser, f *failedUpdates) bool {
	fail := func(list *[]string, id string) bool {
		*list = append(*list, id)
		return false
	}
	email, uid := in.Email, in.UserID
	if list, id := p.refusal(in, f); list != nil {
		return fail(list, id)
	}
	var u *user
	if uid != "" && (email == "" || p.typ != ProjectEmail) {
		if u = p.byUserID[uid]; u == nil {
			return fail(&f.NotFoundUserIds, uid)
		}
	} else {
		switch users := p.byEmail[strings.ToLower(email)]; len(users) {
		case 0:
			return fail(&f.NotFoundEmails, email)
		case 1:
			u = users[0]
		default:
			// Several users of a userID-based project share the email: it names none of them.
			return fail(&f.InvalidDataEmails, email)
		}
	}
	if _, member := l.members[u]; member {
		delete(l.members, u)
		p.stats.MembersRemoved++
	}
	return true
}

// newListResponse is an empty UserBulkUpdateListResponse with every documented list present.
func newListResponse() *bulkResponse {
	return &bulkResponse{
		CreatedFields:     []string{},
		FilteredOutFields: []string{},
		FailedUpdates: failedUpdates{
			ConflictEmails: []string{}, ConflictUserIds: []string{},
			ForgottenEmails: []string{}, ForgottenUserIds: []string{},
			InvalidDataEmails: []string{}, InvalidDataUserIds: []string{},
			InvalidEmails: []string{}, InvalidUserIds: []string{},
			NotFoundEmails: []string{}, NotFoundUserIds: []string{},
		},
	}
}

// listUsers serves GET /api/lists/getUsers?listId=&preferUserId=: text/plain, one identifier
// per line.
func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	l := s.readList(w, p, p.listUsersRL, r.URL.Query().Get("listId"))
	if l == nil {
		return
	}
	prefer, _ := strconv.ParseBool(r.URL.Query().Get("preferUserId"))
	var b strings.Builder
	for _, id := range l.identifiers(prefer) {
		b.WriteString(id)
		b.WriteByte('\n')
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, b.String())
}

// listSize serves GET /api/lists/{listId}/size: the count, text/plain.
func (s *Server) listSize(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	l := s.readList(w, p, p.listSizeRL, r.PathValue("listId"))
	if l == nil {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, strconv.Itoa(len(l.members)))
}

// readList counts a getUsers or size request, applies its rate limit and finds its list, or
// answers. Call with s.mu held.
func (s *Server) readList(w http.ResponseWriter, p *project, rl *limiter, rawID string) *list {
	p.stats.ListUsersRequests++
	if !rl.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return nil
	}
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil {
		p.stats.BadRequests++
		writeError(w, http.StatusBadRequest, "BadParams", "listId must be a list id")
		return nil
	}
	l := p.lists[id]
	if l == nil {
		p.stats.BadRequests++
		writeError(w, http.StatusBadRequest, "BadParams", "List "+strconv.FormatInt(id, 10)+" does not exist")
		return nil
	}
	return l
}

// readJSON reads a JSON body of at most MaxBodyBytes into v (numbers as json.Number) and returns
// 200, or the 400 to answer. It runs without s.mu.
func (s *Server) readJSON(r *http.Request, v any) (status int, code, msg string) {
	limit := s.opts.MaxBodyBytes
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return http.StatusBadRequest, "BadJsonBody", "Could not read the request body"
	}
	if len(body) > limit {
		// Drain what is left (bounded) so the client reads our answer instead of a reset.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		return http.StatusBadRequest, "BatchTooLarge", "Request body exceeds " + itoa(limit) + " bytes"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		if _, ok := err.(*json.UnmarshalTypeError); ok {
			return http.StatusBadRequest, "BadParams", "Invalid request: " + err.Error()
		}
		return http.StatusBadRequest, "BadJsonBody", "Could not parse the JSON body"
	}
	if dec.More() {
		return http.StatusBadRequest, "BadJsonBody", "Trailing data after the JSON body"
	}
	return http.StatusOK, "", ""
}
