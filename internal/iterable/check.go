package iterable

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors of CheckEmail and CheckUserID wrap these, so callers can tell the two apart with
// errors.Is. Their text says which rule failed and never quotes the value: it ends up in
// rejection reasons and Temporal history.
var (
	ErrInvalidEmail  = errors.New("invalid email")
	ErrInvalidUserID = errors.New("invalid userId")
)

// Limits of identifiers.
const (
	MaxEmailLength  = 254 // characters; RFC 5321's limit of a forward path
	MaxUserIDLength = 52  // characters; Iterable's documented limit
)

// CheckEmail rejects an email that Iterable would refuse, before it is sent: it must be non-empty,
// at most 254 characters of valid UTF-8 without whitespace or control characters, with exactly one
// @, a non-empty local part, and a domain that has a dot and no empty label ("a..b", ".a", "a.").
// It is deliberately no stricter than that: a row rejected locally is never tried, so a doubtful
// address is left for Iterable to judge.
func CheckEmail(s string) error {
	fail := func(rule string) error { return fmt.Errorf("%w: %s", ErrInvalidEmail, rule) }
	switch {
	case s == "":
		return fail("it is empty")
	case !utf8.ValidString(s):
		return fail("it is not valid UTF-8")
	case utf8.RuneCountInString(s) > MaxEmailLength:
		return fail(fmt.Sprintf("it is longer than %d characters", MaxEmailLength))
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fail("it contains whitespace or a control character")
	}
	local, domain, ok := strings.Cut(s, "@")
	switch {
	case !ok:
		return fail("it has no @")
	case strings.Contains(domain, "@"):
		return fail("it has more than one @")
	case local == "":
		return fail("the part before the @ is empty")
	case domain == "":
		return fail("the domain after the @ is empty")
	case !strings.Contains(domain, "."):
		return fail("the domain has no dot")
	}
	for label := range strings.SplitSeq(domain, ".") {
		if label == "" {
			return fail("the domain has an empty label (a leading, trailing or doubled dot)")
		}
	}
	return nil
}

// CheckUserID applies Iterable's documented rules for userId: non-empty, at most 52 characters,
// printable ASCII only (space to tilde), and no trailing space.
func CheckUserID(s string) error {
	fail := func(rule string) error { return fmt.Errorf("%w: %s", ErrInvalidUserID, rule) }
	if s == "" {
		return fail("it is empty")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return fail("it contains a character that is not printable ASCII")
		}
	}
	switch {
	case len(s) > MaxUserIDLength:
		return fail(fmt.Sprintf("it is longer than %d characters", MaxUserIDLength))
	case strings.HasSuffix(s, " "):
		return fail("it ends with a space")
	}
	return nil
}
