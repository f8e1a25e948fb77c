package iterable

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"unicode/utf8"
)

// APIError is a non-2xx answer from Iterable. Its Error text carries the HTTP status and Iterable's
// error code only: Iterable's msg may quote the user's email or values, and errors end up in
// Temporal history in plaintext.
type APIError struct {
	Status int
	Code   string
	// Msg is Iterable's message with email addresses and quoted values redacted. It is kept out
	// of Error() all the same; log or show it only where user data may be shown.
	Msg string
	// Op is the endpoint, e.g. "POST /api/users/bulkUpdate" (no query string, no path values).
	Op string

	rawMsg string // Iterable's msg as sent, to redact again knowing the record (never printed)
	// listFault: the refusal was found to concern the list of the request (see ListError), which
	// no retry or split can fix.
	listFault bool
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("iterable ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Fatal() {
		b.WriteString(" (fatal)")
	}
	return b.String()
}

// Fatal reports an error that retrying or splitting cannot fix: the key is wrong or lacks
// permissions, the project itself refuses (e.g. its field limit is reached), or a list request
// names a list that does not exist or is not static. The activation
// should pause rather than reject rows one by one.
func (e *APIError) Fatal() bool {
	if e.listFault {
		return true
	}
	switch e.Status {
	case 401, 403, 404, 405:
		return true
	}
	return fatalCode(e.Code)
}

// Retryable reports a transient error: rate limited, request timeout or a server-side failure.
func (e *APIError) Retryable() bool {
	if e.Fatal() {
		return false
	}
	return e.Status == 429 || e.Status == 408 || e.Status >= 500 || e.Code == "RateLimitExceeded"
}

// splittable reports a 4xx caused by the content of the request: sending fewer users may
// isolate the culprit.
func (e *APIError) splittable() bool {
	if e.Fatal() || e.Retryable() {
		return false
	}
	return e.Status >= 400 && e.Status < 500
}

// fatalCode lists Iterable's error codes that concern the key or the project, not a user.
func fatalCode(code string) bool {
	switch code {
	case "BadApiKey", "BadAuthorizationHeader", "Unauthorized", "Forbidden", "ForbiddenParamsError",
		"UniqueFieldsLimitExceeded", "InvalidJwtPayload", "JwtUserIdentifiersMismatched":
		return true
	}
	return false
}

// transportError replaces *url.Error, whose text contains the full URL (and so the email or userId
// of a lookup), with the operation name.
type transportError struct {
	op  string
	err error
}

func (e *transportError) Error() string { return "iterable " + e.op + ": " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

func newTransportError(op string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return &transportError{op: op, err: err}
}

// retryableTransport reports network failures worth another attempt: timeouts, resets, refused or
// dropped connections. Anything else (a malformed URL, a TLS misconfiguration) will not heal.
func retryableTransport(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	// The transport reports a connection closed mid-response with these texts and no typed error.
	msg := err.Error()
	return strings.Contains(msg, "connection reset") || strings.Contains(msg, "server closed") ||
		strings.Contains(msg, "EOF") || strings.Contains(msg, "timeout")
}

// sanitizeMsg removes what might be user data from an Iterable msg: the given identifiers and
// values, anything that looks like an email, quoted strings other than known field names, and
// numbers (a value such as an age or an amount is data too) other than digits inside a known
// field name or an Iterable error code.
func sanitizeMsg(msg string, fieldNames map[string]any, secrets ...string) string {
	for _, s := range secrets {
		if len(s) < 2 {
			continue
		}
		msg = replaceFold(msg, s, "<redacted>")
	}
	var b strings.Builder
	b.Grow(len(msg))
	for i := 0; i < len(msg); {
		c := msg[i]
		if c == '"' || c == '\'' || c == '`' {
			if j := strings.IndexByte(msg[i+1:], c); j >= 0 {
				inner := msg[i+1 : i+1+j]
				if _, ok := fieldNames[inner]; ok || inner == "<redacted>" {
					b.WriteString(msg[i : i+2+j])
				} else {
					b.WriteByte(c)
					b.WriteString("<value>")
					b.WriteByte(c)
				}
				i += j + 2
				continue
			}
		}
		if c >= '0' && c <= '9' {
			j := numberEnd(msg, i)
			if keepWord(wordAround(msg, i), fieldNames) {
				b.WriteString(msg[i:j])
			} else {
				b.WriteString("<number>")
			}
			i = j
			continue
		}
		b.WriteByte(c)
		i++
	}
	words := strings.Fields(b.String())
	for i, w := range words {
		if strings.Contains(w, "@") {
			words[i] = "<email>"
		}
	}
	out := strings.Join(words, " ")
	const maxLen = 300
	if len(out) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(out[cut]) {
			cut--
		}
		out = out[:cut] + "…"
	}
	return out
}

// numberEnd is the end of the number starting at msg[i]: digits, with "." or "," between digits
// ("1,234.5" is one number).
func numberEnd(msg string, i int) int {
	digit := func(k int) bool { return k >= 0 && k < len(msg) && msg[k] >= '0' && msg[k] <= '9' }
	for ; i < len(msg); i++ {
		if !digit(i) && !((msg[i] == '.' || msg[i] == ',') && digit(i-1) && digit(i+1)) {
			return i
		}
	}
	return i
}

// wordAround is the word of msg holding msg[i], without surrounding punctuation.
func wordAround(msg string, i int) string {
	sep := func(c byte) bool {
		return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'' || c == '`'
	}
	l, r := i, i
	for l > 0 && !sep(msg[l-1]) {
		l--
	}
	for r < len(msg) && !sep(msg[r]) {
		r++
	}
	return strings.Trim(msg[l:r], ".,;:!?()[]{}")
}

// keepWord reports a word whose digits are not data: a field name of the record (or a path
// into one, "address.zip2"), or one of Iterable's error codes.
func keepWord(w string, fieldNames map[string]any) bool {
	if _, ok := fieldNames[w]; ok {
		return true
	}
	if head, _, ok := strings.Cut(w, "."); ok {
		if _, ok := fieldNames[head]; ok {
			return true
		}
	}
	return iterableCode(w)
}

// iterableCode lists the error codes of Iterable's API spec (IterableApiResponse.code).
func iterableCode(s string) bool {
	switch s {
	case "Success", "BadApiKey", "BadAuthorizationHeader", "BadJsonBody", "BadParams", "BatchTooLarge",
		"DatabaseError", "EmailAlreadyExists", "ExternalKeyConflict", "Forbidden", "ForbiddenParamsError",
		"ForgottenUserError", "GenericError", "InvalidEmailAddressError", "InvalidJwtPayload",
		"InvalidUserIdError", "JwtUserIdentifiersMismatched", "NotFound", "QueueEmailError",
		"RateLimitExceeded", "RequestFieldsTypesMismatched", "Unauthorized", "UniqueFieldsLimitExceeded",
		"UnknownEmailError", "UnknownUserIdError", "UserIdAlreadyExists":
		return true
	}
	return false
}

// replaceFold replaces every case-insensitive occurrence of old in s (ASCII case folding is enough
// for emails and ids).
func replaceFold(s, old, repl string) string {
	if old == "" {
		return s
	}
	ls, lo := strings.ToLower(s), strings.ToLower(old)
	if len(ls) != len(s) {
		return strings.ReplaceAll(s, old, repl)
	}
	var b strings.Builder
	for {
		i := strings.Index(ls, lo)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(repl)
		s, ls = s[i+len(old):], ls[i+len(old):]
	}
}
