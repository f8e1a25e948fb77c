package iterable_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

func TestCheckEmail(t *testing.T) {
	tests := []struct {
		name  string
		email string
		rule  string // part of the error; "" = valid
	}{
		{name: "plain", email: "alice@example.com"},
		{name: "plus and subdomain", email: "a.b+tag@mail.example.co.uk"},
		{name: "unicode", email: "élise@exemple.fr"},
		{name: "upper case", email: "Alice@Example.COM"},
		{name: "at the length limit", email: strings.Repeat("a", 254-len("@example.com")) + "@example.com"},
		{name: "empty", email: "", rule: "empty"},
		{name: "too long", email: strings.Repeat("a", 255-len("@example.com")) + "@example.com", rule: "longer than 254"},
		{name: "no at", email: "alice.example.com", rule: "no @"},
		{name: "two ats", email: "alice@bob@example.com", rule: "more than one @"},
		{name: "empty local part", email: "@example.com", rule: "before the @ is empty"},
		{name: "empty domain", email: "alice@", rule: "domain after the @ is empty"},
		{name: "domain without dot", email: "alice@localhost", rule: "no dot"},
		{name: "leading dot", email: "alice@.example.com", rule: "empty label"},
		{name: "trailing dot", email: "alice@example.com.", rule: "empty label"},
		{name: "double dot", email: "alice@example..com", rule: "empty label"},
		{name: "space", email: "alice smith@example.com", rule: "whitespace"},
		{name: "trailing space", email: "alice@example.com ", rule: "whitespace"},
		{name: "tab", email: "alice\t@example.com", rule: "whitespace"},
		{name: "non-breaking space", email: "alice\u00a0@example.com", rule: "whitespace"},
		{name: "control character", email: "alice\x01@example.com", rule: "control"},
		{name: "invalid UTF-8", email: "alice\xff@example.com", rule: "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := iterable.CheckEmail(tt.email)
			if tt.rule == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, iterable.ErrInvalidEmail)
			require.Contains(t, err.Error(), tt.rule)
			if tt.email != "" {
				require.NotContains(t, err.Error(), tt.email, "the value never appears in the error")
				require.NotContains(t, err.Error(), "alice")
			}
		})
	}
}

func TestCheckUserID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		rule string // part of the error; "" = valid
	}{
		{name: "plain", id: "user-42"},
		{name: "printable punctuation", id: "a/b c~!@#$%^&*()"},
		{name: "inner and leading spaces", id: " a b"},
		{name: "52 characters", id: strings.Repeat("x", 52)},
		{name: "empty", id: "", rule: "empty"},
		{name: "53 characters", id: strings.Repeat("x", 53), rule: "longer than 52"},
		{name: "trailing space", id: "secret-id ", rule: "ends with a space"},
		{name: "tab", id: "secret\tid", rule: "printable ASCII"},
		{name: "newline", id: "secret\nid", rule: "printable ASCII"},
		{name: "DEL", id: "secret\x7fid", rule: "printable ASCII"},
		{name: "non-ASCII", id: "sécret", rule: "printable ASCII"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := iterable.CheckUserID(tt.id)
			if tt.rule == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, iterable.ErrInvalidUserID)
			require.Contains(t, err.Error(), tt.rule)
			require.NotContains(t, err.Error(), "secret")
			require.NotContains(t, err.Error(), "xxx")
		})
	}
}

// The local checks and the emulator (which follows Iterable's documented rules, independently)
// agree on these cases.
func TestChecksAgreeWithTheEmulator(t *testing.T) {
	e := newEnv(t, iterabletest.ProjectHybrid, iterabletest.Options{}, iterable.Config{})
	cases := []iterable.User{
		{Email: "ok@example.com", UserID: "ok-1"},
		{Email: "no-dot@localhost", UserID: "ok-2"},
		{Email: "two@@example.com", UserID: "ok-3"},
		{Email: "trailing-dot@example.com.", UserID: "ok-4"},
		{Email: "ok2@example.com", UserID: strings.Repeat("x", 53)},
		{Email: "ok3@example.com", UserID: "trailing "},
		{Email: "ok4@example.com", UserID: "tab\there"},
	}
	res, err := e.send(t, true, cases...)
	require.NoError(t, err)
	rejected := map[int]bool{}
	for _, r := range res.Rejected {
		rejected[r.Index] = true
	}
	for i, u := range cases {
		local := iterable.CheckEmail(u.Email) != nil || iterable.CheckUserID(u.UserID) != nil
		require.Equal(t, local, rejected[i], "case %d", i)
	}
}
