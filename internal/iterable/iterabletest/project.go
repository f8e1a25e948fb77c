package iterabletest

import (
	"encoding/json"
	"math"
	"strings"
	"time"
)

// project is one Iterable project: its users, field types and limits. All access holds Server.mu.
type project struct {
	typ      ProjectType
	all      map[*user]struct{}
	byEmail  map[string][]*user // lower-cased email; one user at most except in userID projects
	byUserID map[string]*user
	fields   map[string]string // field name → locked type

	forgottenEmails  map[string]bool // lower-cased
	forgottenUserIDs map[string]bool

	bulkRL, getFieldsRL, byEmailRL, byUserIDRL, exportRL *limiter
	deleteByEmailRL, deleteByUserIDRL                    *limiter
	listsRL, subscribeRL, unsubscribeRL                  *limiter
	listUsersRL, listSizeRL                              *limiter
	stats                                                Stats
	traffic                                              TrafficStats // InjectTraffic's requests
	received                                             []StoredUser // with Options.KeepReceived

	lists map[int64]*list
}

type user struct {
	email, userID string
	data          map[string]any
	updated       time.Time // profileUpdatedAt: creation or last update
}

func newProject(t ProjectType, o Options) *project {
	newLimiter := func(rps float64, unlimited bool) *limiter {
		return newLimiter(rps, unlimited).mode(o.RateLimit)
	}
	newBurstLimiter := func(rps, burst float64, unlimited bool) *limiter {
		return newBurstLimiter(rps, burst, unlimited).mode(o.RateLimit)
	}
	return &project{
		typ:              t,
		all:              make(map[*user]struct{}),
		byEmail:          make(map[string][]*user),
		byUserID:         make(map[string]*user),
		fields:           make(map[string]string),
		forgottenEmails:  make(map[string]bool),
		forgottenUserIDs: make(map[string]bool),
		bulkRL:           newLimiter(o.BulkUpdateRPS, o.Unlimited),
		getFieldsRL:      newLimiter(o.GetFieldsRPS, o.Unlimited),
		byEmailRL:        newLimiter(o.LookupRPS, o.Unlimited),
		byUserIDRL:       newLimiter(o.LookupRPS, o.Unlimited),
		exportRL:         newBurstLimiter(o.ExportPerMinute/60, exportBurst, o.Unlimited),
		deleteByEmailRL:  newLimiter(o.DeleteRPS, o.Unlimited),
		deleteByUserIDRL: newLimiter(o.DeleteRPS, o.Unlimited),
		listsRL:          newLimiter(o.ListsRPS, o.Unlimited),
		subscribeRL:      newLimiter(o.SubscribeRPS, o.Unlimited),
		unsubscribeRL:    newLimiter(o.UnsubscribeRPS, o.Unlimited),
		listUsersRL:      newBurstLimiter(o.ListUsersPerMinute/60, o.ListUsersPerMinute, o.Unlimited),
		listSizeRL:       newBurstLimiter(o.ListUsersPerMinute/60, o.ListUsersPerMinute, o.Unlimited),
		lists:            make(map[int64]*list),
	}
}

func (u *user) stored() StoredUser {
	data, _ := deepCopy(u.data).(map[string]any)
	if data == nil {
		data = map[string]any{}
	}
	return StoredUser{Email: u.email, UserID: u.userID, DataFields: data}
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = deepCopy(e)
		}
		return out
	}
	return v
}

// find returns the user with email (case-insensitive) or, when email is empty, with userID.
func (p *project) find(email, userID string) *user {
	if email != "" {
		if l := p.byEmail[strings.ToLower(email)]; len(l) > 0 {
			return l[0]
		}
		return nil
	}
	if userID != "" {
		return p.byUserID[userID]
	}
	return nil
}

func (p *project) add(email, userID string) *user {
	u := &user{data: map[string]any{}, updated: time.Now()}
	p.all[u] = struct{}{}
	p.setEmail(u, email)
	p.setUserID(u, userID)
	return u
}

func (p *project) remove(u *user) {
	p.setEmail(u, "")
	p.setUserID(u, "")
	delete(p.all, u)
	// A deleted profile leaves every list.
	for _, l := range p.lists {
		delete(l.members, u)
	}
}

func (p *project) setEmail(u *user, email string) {
	if strings.EqualFold(u.email, email) {
		u.email = email
		return
	}
	if u.email != "" {
		k := strings.ToLower(u.email)
		l := p.byEmail[k]
		for i, x := range l {
			if x == u {
				l = append(l[:i:i], l[i+1:]...)
				break
			}
		}
		if len(l) == 0 {
			delete(p.byEmail, k)
		} else {
			p.byEmail[k] = l
		}
	}
	u.email = email
	if email != "" {
		k := strings.ToLower(email)
		p.byEmail[k] = append(p.byEmail[k], u)
	}
}

func (p *project) setUserID(u *user, id string) {
	if u.userID == id {
		return
	}
	if u.userID != "" {
		delete(p.byUserID, u.userID)
	}
	u.userID = id
	if id != "" {
		p.byUserID[id] = u
	}
}

// bulkRequest is the body of POST /api/users/bulkUpdate.
type bulkRequest struct {
	CreateNewFields *bool    `json:"createNewFields"`
	Users           []inUser `json:"users"`
}

type inUser struct {
	Email              string         `json:"email"`
	UserID             string         `json:"userId"`
	PreferUserID       bool           `json:"preferUserId"`
	MergeNestedObjects bool           `json:"mergeNestedObjects"`
	DataFields         map[string]any `json:"dataFields"`
}

type bulkResponse struct {
	SuccessCount      int           `json:"successCount"`
	FailCount         int           `json:"failCount"`
	CreatedFields     []string      `json:"createdFields"`
	FilteredOutFields []string      `json:"filteredOutFields"`
	FailedUpdates     failedUpdates `json:"failedUpdates"`
}

type failedUpdates struct {
	ConflictEmails     []string `json:"conflictEmails"`
	ConflictUserIds    []string `json:"conflictUserIds"`
	ForgottenEmails    []string `json:"forgottenEmails"`
	ForgottenUserIds   []string `json:"forgottenUserIds"`
	InvalidDataEmails  []string `json:"invalidDataEmails"`
	InvalidDataUserIds []string `json:"invalidDataUserIds"`
	InvalidEmails      []string `json:"invalidEmails"`
	InvalidUserIds     []string `json:"invalidUserIds"`
	NotFoundEmails     []string `json:"notFoundEmails"`
	NotFoundUserIds    []string `json:"notFoundUserIds"`

	extra map[string][]string // lists Iterable does not document (Faults.UnknownCategoryUser)
}

// MarshalJSON adds the extra lists to the documented ones.
func (f failedUpdates) MarshalJSON() ([]byte, error) {
	type documented failedUpdates // without this method
	b, err := json.Marshal(documented(f))
	if err != nil || len(f.extra) == 0 {
		return b, err
	}
	all := map[string]any{}
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for k, v := range f.extra {
		all[k] = v
	}
	return json.Marshal(all)
}

// newFieldCount is the number of distinct fields the request would create, sub-fields of objects
// included (Iterable: "a field's uniqueness determined by its name and position").
func (p *project) newFieldCount(users []inUser) int {
	seen := map[string]struct{}{}
	add := func(name, _ string) bool {
		if _, ok := p.fields[name]; !ok {
			seen[name] = struct{}{}
		}
		return true
	}
	for _, u := range users {
		for k, v := range u.DataFields {
			if v == nil {
				continue
			}
			add(k, "")
			if m, ok := v.(map[string]any); ok {
				subFields(k, m, add)
			}
		}
	}
	return len(seen)
}

// subFields calls fn with the dotted name ("address.zip") and type of every non-null sub-field
// of the object field name, depth first, until fn returns false; it returns false then. Arrays
// are not descended: their elements have no name of their own.
func subFields(name string, obj map[string]any, fn func(name, typ string) bool) bool {
	for k, e := range obj {
		_, typ := normalize(e)
		if typ == "" {
			continue
		}
		sub := name + "." + k
		if !fn(sub, typ) {
			return false
		}
		if m, ok := e.(map[string]any); ok && !subFields(sub, m, fn) {
			return false
		}
	}
	return true
}

// applyBulk applies the users in order, as Iterable processes a bulk request user by user.
func (p *project) applyBulk(users []inUser, createNew bool) *bulkResponse {
	resp := &bulkResponse{
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
	created := map[string]bool{}
	filtered := map[string]bool{}
	for i := range users {
		if _, list := p.apply(&users[i], createNew, false, resp, created, filtered); list != nil {
			resp.FailCount++
		} else {
			resp.SuccessCount++
		}
	}
	return resp
}

// refusal is the failedUpdates list, and the identifier to name there, of a user Iterable
// refuses whatever the request asks: no identifier, a malformed one, or a GDPR-forgotten
// user. It is nil for a user that may be looked at further.
func (p *project) refusal(in *inUser, f *failedUpdates) (*[]string, string) {
	email, uid := in.Email, in.UserID
	switch {
	case email == "" && uid == "":
		return &f.InvalidEmails, ""
	case email != "" && !validEmail(email):
		return &f.InvalidEmails, email
	case uid != "" && !validUserID(uid):
		return &f.InvalidUserIds, uid
	case email != "" && p.forgottenEmails[strings.ToLower(email)]:
		return &f.ForgottenEmails, email
	case uid != "" && p.forgottenUserIDs[uid]:
		return &f.ForgottenUserIds, uid
	}
	return nil, ""
}

// apply applies one user. It returns the user updated on success, or the failedUpdates list it
// was added to. mustExist (a subscribe's updateExistingUsersOnly, where the project honours it)
// reports an unknown user in notFoundEmails, or notFoundUserIds when it has no email, instead
// of creating it.
func (p *project) apply(in *inUser, createNew, mustExist bool, resp *bulkResponse, created, filtered map[string]bool) (*user, *[]string) {
	f := &resp.FailedUpdates
	fail := func(list *[]string, id string) (*user, *[]string) {
		*list = append(*list, id)
		return nil, list
	}
	email, uid := in.Email, in.UserID
	if list, id := p.refusal(in, f); list != nil {
		return fail(list, id)
	}

	// Resolve the profile to update, or decide to create one.
	var target *user
	create := false
	switch p.typ {
	case ProjectUserID:
		if uid != "" {
			target = p.byUserID[uid]
			create = target == nil
		} else {
			// A userID-based project cannot create a user without userId.
			switch l := p.byEmail[strings.ToLower(email)]; len(l) {
			case 0:
				return fail(&f.NotFoundEmails, email)
			case 1:
				target = l[0]
			default:
				return fail(&f.InvalidDataEmails, email)
			}
		}
	case ProjectHybrid:
		var byID, byMail *user
		if uid != "" {
			byID = p.byUserID[uid]
		}
		if email != "" {
			byMail = p.find(email, "")
		}
		switch {
		case byID != nil && byMail != nil && byID != byMail:
			return fail(&f.ConflictEmails, email)
		case byID == nil && byMail != nil && uid != "" && byMail.userID != "" && byMail.userID != uid:
			return fail(&f.ConflictEmails, email)
		}
		target = byID
		if target == nil {
			target = byMail
		}
		create = target == nil
	default: // email-based
		if email != "" {
			target = p.find(email, "")
			if uid != "" {
				if other := p.byUserID[uid]; other != nil && other != target {
					return fail(&f.ConflictUserIds, uid)
				}
			}
			create = target == nil
		} else {
			target = p.byUserID[uid]
			if target == nil {
				if !in.PreferUserID {
					return fail(&f.NotFoundUserIds, uid)
				}
				create = true
			}
		}
	}

	if create && mustExist {
		if email != "" {
			return fail(&f.NotFoundEmails, email)
		}
		return fail(&f.NotFoundUserIds, uid)
	}

	// Check types before changing anything: a mismatch rejects the whole user.
	type change struct {
		typ string
		val any
		obj map[string]any // the value as sent, when an object: its sub-fields are locked too
	}
	fits := func(name, typ string) bool {
		locked, ok := p.fields[name]
		return !ok || compatible(locked, typ)
	}
	changes := make(map[string]change, len(in.DataFields))
	for k, v := range in.DataFields {
		val, typ := normalize(v)
		obj, _ := v.(map[string]any)
		if (typ != "" && !fits(k, typ)) || (obj != nil && !subFields(k, obj, fits)) {
			if email != "" {
				return fail(&f.InvalidDataEmails, email)
			}
			return fail(&f.InvalidDataUserIds, uid)
		}
		changes[k] = change{typ, val, obj}
	}

	if create {
		target = p.add(email, uid)
	} else {
		if email != "" && p.typ != ProjectEmail {
			p.setEmail(target, email)
		}
		if uid != "" && p.typ != ProjectUserID {
			p.setUserID(target, uid)
		}
	}
	target.updated = time.Now()
	for k, c := range changes {
		if _, known := p.fields[k]; !known {
			if !createNew {
				if !filtered[k] {
					filtered[k] = true
					resp.FilteredOutFields = append(resp.FilteredOutFields, k)
				}
				continue
			}
			if c.typ != "" {
				// The first non-null value fixes the type; a null creates nothing.
				p.fields[k] = c.typ
				if !created[k] {
					created[k] = true
					resp.CreatedFields = append(resp.CreatedFields, k)
				}
			}
		}
		if c.obj != nil {
			// The first non-null value of a sub-field fixes its type, as at the top level.
			subFields(k, c.obj, func(name, typ string) bool {
				if _, ok := p.fields[name]; !ok {
					p.fields[name] = typ
				}
				return true
			})
		}
		if in.MergeNestedObjects {
			if old, ok := target.data[k].(map[string]any); ok {
				if nv, ok := c.val.(map[string]any); ok {
					for nk, ne := range nv {
						old[nk] = ne
					}
					continue
				}
			}
		}
		target.data[k] = c.val
	}
	return target, nil
}

// normalize converts a decoded JSON value (numbers as json.Number) to what is stored, and
// returns its Iterable type ("" for null).
func normalize(v any) (any, string) {
	switch x := v.(type) {
	case nil:
		return nil, ""
	case bool:
		return x, "boolean"
	case json.Number:
		if i, err := x.Int64(); err == nil && !strings.ContainsAny(string(x), ".eE") {
			return i, "long"
		}
		fl, err := x.Float64()
		if err != nil || math.IsInf(fl, 0) {
			return string(x), "double"
		}
		return fl, "double"
	case string:
		if isDate(x) {
			return x, "date"
		}
		return x, "string"
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k], _ = normalize(e)
		}
		return out, "object"
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i], _ = normalize(e)
		}
		return out, "array"
	}
	return v, "string"
}

// compatible reports whether a value of type got may be stored in a field locked to locked.
func compatible(locked, got string) bool {
	switch {
	case locked == got:
		return true
	case locked == "double" && got == "long":
		return true
	case locked == "string" && got == "date":
		// A date-shaped string is still a string.
		return true
	}
	return false
}

// isDate recognises Iterable's canonical "yyyy-MM-dd HH:mm:ss +00:00".
func isDate(s string) bool {
	if len(s) != len("2006-01-02 15:04:05 +00:00") {
		return false
	}
	_, err := time.Parse("2006-01-02 15:04:05 -07:00", s)
	return err == nil
}

// validEmail is a reasonable RFC-ish check: one @, a non-empty local part, a domain with a dot
// that neither starts nor ends the domain, no spaces or control characters.
func validEmail(e string) bool {
	at := strings.IndexByte(e, '@')
	if at <= 0 || strings.Count(e, "@") != 1 {
		return false
	}
	for _, r := range e {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	domain := e[at+1:]
	dot := strings.IndexByte(domain, '.')
	return dot > 0 && !strings.HasSuffix(domain, ".") && !strings.Contains(domain, "..")
}

// validUserID follows Iterable's rules: non-empty, at most 52 characters, printable ASCII, no
// trailing space.
func validUserID(id string) bool {
	if id == "" || len(id) > 52 || strings.HasSuffix(id, " ") {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// limiter is a token bucket, or a strict window (RateLimitStrictWindow: at most burst
// requests accepted in any burst/rate seconds).
type limiter struct {
	rate, burst, tokens float64
	last                time.Time
	unlimited           bool
	window              []time.Time // RateLimitStrictWindow: the accepted requests of the window
	strict              bool
}

func newLimiter(rps float64, unlimited bool) *limiter {
	return newBurstLimiter(rps, math.Max(1, rps), unlimited)
}

// newBurstLimiter is a token bucket of rps per second holding at most burst tokens (at least 1).
func newBurstLimiter(rps, burst float64, unlimited bool) *limiter {
	burst = math.Max(1, burst)
	return &limiter{rate: rps, burst: burst, tokens: burst, unlimited: unlimited || rps <= 0}
}

func (l *limiter) allow(now time.Time) bool {
	if l.unlimited {
		return true
	}
	if l.strict {
		return l.allowWindow(now)
	}
	if !l.last.IsZero() {
		l.tokens = math.Min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
