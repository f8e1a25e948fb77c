package iterable

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Batch is one request: its records and the exact body that will be sent. Pack makes bulkUpdate
// batches (a Batch built by hand is one too); PackSubscribe and PackUnsubscribe make list batches.
type Batch struct {
	Records []Record
	Body    []byte
	// CreateNewFields is bulkUpdate's flag; list batches ignore it.
	CreateNewFields bool

	// spans[i] is where Records[i]'s user sits in Body, so a split reuses the encoding.
	spans []span
	// env is the request the body was packed for; the zero value is bulkUpdate.
	env envelope
}

type span struct{ start, end int }

// batchKind is the endpoint a body is packed for.
type batchKind uint8

const (
	kindBulkUpdate batchKind = iota
	kindSubscribe
	kindUnsubscribe
)

// envelope is what a body carries besides its users: the endpoint and its parameters.
type envelope struct {
	kind   batchKind
	listID int64 // subscribe, unsubscribe
	// flag is createNewFields (bulkUpdate) or updateExistingUsersOnly (subscribe).
	flag bool
}

func bulkEnvelope(createNewFields bool) envelope {
	return envelope{kind: kindBulkUpdate, flag: createNewFields}
}

// envelope is the request b is packed for. A bulkUpdate batch follows its exported
// CreateNewFields, which a caller may have set by hand.
func (b Batch) envelope() envelope {
	if b.env.kind == kindBulkUpdate {
		return bulkEnvelope(b.CreateNewFields)
	}
	return b.env
}

// prefix is the body up to the first user. Parameters come before the array so that the suffix
// is the same for every endpoint, and unsubscribe always says channelUnsubscribe false: leaving
// a list must never unsubscribe the person from the list's channel (a global unsubscribe).
func (e envelope) prefix() string {
	switch e.kind {
	case kindSubscribe:
		return `{"listId":` + strconv.FormatInt(e.listID, 10) + `,"updateExistingUsersOnly":` +
			strconv.FormatBool(e.flag) + `,"subscribers":[`
	case kindUnsubscribe:
		return `{"listId":` + strconv.FormatInt(e.listID, 10) + `,"channelUnsubscribe":false,"subscribers":[`
	}
	return bodyPrefix(e.flag)
}

// user is the user as this endpoint sends it: an unsubscribe names one identifier only.
func (e envelope) user(u User) User {
	if e.kind == kindUnsubscribe {
		return unsubscriber(u)
	}
	return u
}

// unsubscriber keeps one identifier of u, as Iterable's Unsubscriber asks ("an email or a
// userId, but not both"): the userId when u has no email or prefers its userId, else the email.
func unsubscriber(u User) User {
	if u.UserID != "" && (u.Email == "" || (u.PreferUserID != nil && *u.PreferUserID)) {
		return User{UserID: u.UserID}
	}
	return User{Email: u.Email}
}

func bodyPrefix(createNewFields bool) string {
	if createNewFields {
		return `{"createNewFields":true,"users":[`
	}
	return `{"createNewFields":false,"users":[`
}

const bodySuffix = "]}"

// Pack splits records into request bodies of at most UsersPerRequest users and at most
// MaxBodyBytes bytes each, measured exactly on the encoded body
// {"createNewFields":<bool>,"users":[...]}. Each user is encoded once and copied into its
// batch's body. Records whose single-user body exceeds the limit are returned by index in
// oversize: they must be rejected as too large, never sent. Record order is kept.
//
// A record whose email (case-insensitive) or userId already appears in the current batch starts
// a new one: Iterable's answer names identifiers, not positions, so within a batch each must name
// one record; and the two updates then apply in order.
func (c *Client) Pack(records []Record, createNewFields bool) (batches []Batch, oversize []int, err error) {
	return pack(records, bulkEnvelope(createNewFields), c.usersPerRequest, c.maxBodyBytes)
}

// pack packs records for env. The records of the batches are those given, except that their
// User is the user as sent (env.user).
func pack(records []Record, env envelope, perRequest, maxBytes int) ([]Batch, []int, error) {
	prefix := env.prefix()
	overhead := len(prefix) + len(bodySuffix)

	ps := packScratches.Get().(*packScratch)
	defer ps.put()
	var (
		enc      = ps.enc
		scratch  = ps.scratch[:0]
		batches  []Batch
		oversize []int
		cur      []byte
		recs     []Record
		spans    []span
		capGuess int
		emails   = ps.emails
		userIDs  = ps.userIDs
	)
	defer func() { ps.scratch = scratch }()
	flush := func() {
		if len(recs) == 0 {
			return
		}
		cur = append(cur, bodySuffix...)
		batches = append(batches, Batch{Records: recs, Body: cur, CreateNewFields: env.kind == kindBulkUpdate && env.flag, spans: spans, env: env})
		capGuess = len(cur) + len(cur)/16
		cur, recs, spans = nil, nil, nil
		clear(emails)
		clear(userIDs)
	}

	for i := range records {
		rec := records[i]
		rec.User = env.user(rec.User)
		u, err := enc.appendUser(scratch[:0], &rec.User)
		if err != nil {
			return nil, nil, fmt.Errorf("pack record %d: %w", rec.Index, encodeError(err))
		}
		scratch = u
		if overhead+len(u) > maxBytes {
			oversize = append(oversize, rec.Index)
			continue
		}
		email, id := strings.ToLower(rec.User.Email), rec.User.UserID
		if len(recs) > 0 && (len(recs) >= perRequest || len(cur)+1+len(u)+len(bodySuffix) > maxBytes ||
			has(emails, email) || has(userIDs, id)) {
			flush()
		}
		if email != "" {
			emails[email] = struct{}{}
		}
		if id != "" {
			userIDs[id] = struct{}{}
		}
		if len(recs) == 0 {
			// Size the body like the previous one, or from this user for the first and last.
			n := min(perRequest, len(records)-i)
			guess := overhead + (len(u)+1)*n + n/4*len(u)/4
			if capGuess > 0 {
				guess = min(guess, capGuess)
			}
			cur = make([]byte, 0, min(guess, maxBytes))
			cur = append(cur, prefix...)
			recs = make([]Record, 0, n)
			spans = make([]span, 0, n)
		} else {
			cur = append(cur, ',')
		}
		start := len(cur)
		cur = append(cur, u...)
		spans = append(spans, span{start, len(cur)})
		recs = append(recs, rec)
	}
	flush()
	return batches, oversize, nil
}

// packScratch is what pack reuses from call to call: a window of users is packed at a time, and
// building the identifier sets and the encoder anew for each cost more than encoding the users.
type packScratch struct {
	enc             *userEncoder
	scratch         []byte // one user's encoding
	emails, userIDs map[string]struct{}
}

var packScratches = sync.Pool{New: func() any {
	return &packScratch{enc: newUserEncoder(), emails: map[string]struct{}{}, userIDs: map[string]struct{}{}}
}}

// put empties ps, keeping no user, and returns it to the pool.
func (ps *packScratch) put() {
	clear(ps.emails)
	clear(ps.userIDs)
	clear(ps.enc.fields[:cap(ps.enc.fields)])
	ps.enc.fields = ps.enc.fields[:0]
	if cap(ps.scratch) > 64<<10 {
		ps.scratch = nil // an oversize user's buffer is not worth keeping
	}
	packScratches.Put(ps)
}

func has(set map[string]struct{}, k string) bool {
	if k == "" {
		return false
	}
	_, ok := set[k]
	return ok
}

// encodeError keeps only messages that cannot carry a value: a Marshaler's error might.
func encodeError(err error) error {
	var ute *json.UnsupportedTypeError
	var uve *json.UnsupportedValueError
	var me *json.MarshalerError
	if errors.As(err, &me) {
		return fmt.Errorf("user is not JSON-encodable (%s.MarshalJSON failed)", me.Type)
	}
	var ee encodeErr
	if errors.As(err, &ute) || errors.As(err, &uve) || errors.As(err, &ee) {
		return err
	}
	return fmt.Errorf("user is not JSON-encodable (%T)", err)
}

// halves splits b into two batches, reusing the users' encoded bytes.
func (b Batch) halves() (Batch, Batch, error) {
	mid := len(b.Records) / 2
	left, err := b.sub(0, mid)
	if err != nil {
		return Batch{}, Batch{}, err
	}
	right, err := b.sub(mid, len(b.Records))
	return left, right, err
}

func (b Batch) sub(from, to int) (Batch, error) {
	recs := b.Records[from:to]
	env := b.envelope()
	if len(b.spans) != len(b.Records) {
		// A Batch built by hand has no spans: encode its users again.
		bs, _, err := pack(recs, env, len(recs), int(^uint(0)>>1))
		if err != nil {
			return Batch{}, err
		}
		if len(bs) != 1 {
			// Two records name the same user: one body cannot tell their answers apart.
			return Batch{}, fmt.Errorf("batch of %d records names a user twice and cannot be one request", len(recs))
		}
		return bs[0], nil
	}
	prefix := env.prefix()
	n := len(prefix) + len(bodySuffix)
	for _, s := range b.spans[from:to] {
		n += s.end - s.start + 1
	}
	body := make([]byte, 0, n)
	body = append(body, prefix...)
	spans := make([]span, 0, to-from)
	for i, s := range b.spans[from:to] {
		if i > 0 {
			body = append(body, ',')
		}
		start := len(body)
		body = append(body, b.Body[s.start:s.end]...)
		spans = append(spans, span{start, len(body)})
	}
	body = append(body, bodySuffix...)
	return Batch{Records: recs, Body: body, CreateNewFields: b.CreateNewFields, spans: spans, env: b.env}, nil
}
