package iterable

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// userEncoder writes a User as JSON, byte for byte as encoding/json does with SetEscapeHTML(false)
// (same key order, same escaping) with one deliberate difference: a float64 or float32 with an
// integral value is written with ".0" (5.0, not 5). Iterable types a field by the first value it
// ever sees, and a bare 5 would lock a DOUBLE column's field to long, after which every
// fractional value is rejected. It is also several times faster than reflection on the hot path.
// Types other than those Value produces fall back to encoding/json.
type userEncoder struct {
	fields   []field // reused for the top-level dataFields
	fallback bytes.Buffer
	enc      *json.Encoder
}

func newUserEncoder() *userEncoder {
	e := &userEncoder{}
	e.enc = json.NewEncoder(&e.fallback)
	e.enc.SetEscapeHTML(false)
	return e
}

// maxDepth bounds nesting, so a map that contains itself fails instead of recursing forever.
const maxDepth = 64

func (e *userEncoder) appendUser(dst []byte, u *User) ([]byte, error) {
	dst = append(dst, '{')
	first := true
	sep := func() {
		if !first {
			dst = append(dst, ',')
		}
		first = false
	}
	if u.Email != "" {
		sep()
		dst = append(dst, `"email":`...)
		dst = appendString(dst, u.Email)
	}
	if u.UserID != "" {
		sep()
		dst = append(dst, `"userId":`...)
		dst = appendString(dst, u.UserID)
	}
	if u.PreferUserID != nil {
		sep()
		dst = append(dst, `"preferUserId":`...)
		dst = strconv.AppendBool(dst, *u.PreferUserID)
	}
	switch {
	case len(u.DataFields) > 0:
		sep()
		dst = append(dst, `"dataFields":`...)
		var err error
		dst, e.fields, err = e.appendMap(dst, u.DataFields, e.fields[:0], 1)
		if err != nil {
			return nil, err
		}
	case u.DataFields == nil && len(u.Fields.Values) > 0:
		sep()
		dst = append(dst, `"dataFields":`...)
		var err error
		if dst, err = e.appendFields(dst, &u.Fields); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// appendFields writes fields as appendMap writes a map: their names are sorted already.
func (e *userEncoder) appendFields(dst []byte, fs *Fields) ([]byte, error) {
	if len(fs.Names) != len(fs.Values) {
		return nil, encodeErr("dataFields: " + strconv.Itoa(len(fs.Names)) + " names for " + strconv.Itoa(len(fs.Values)) + " values")
	}
	dst = append(dst, '{')
	for i, v := range fs.Values {
		if i > 0 {
			if fs.Names[i] <= fs.Names[i-1] {
				return nil, encodeErr("dataFields: names not sorted or repeated")
			}
			dst = append(dst, ',')
		}
		dst = appendString(dst, fs.Names[i])
		dst = append(dst, ':')
		var err error
		if dst, err = e.appendValue(dst, v, 1); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// field is one entry of a map being encoded.
type field struct {
	key   string
	value any
}

// appendMap writes m with its keys sorted, as encoding/json does. fields is scratch space.
func (e *userEncoder) appendMap(dst []byte, m map[string]any, fields []field, depth int) ([]byte, []field, error) {
	for k, v := range m {
		fields = append(fields, field{k, v})
	}
	sortFields(fields)
	dst = append(dst, '{')
	for i := range fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, fields[i].key)
		dst = append(dst, ':')
		var err error
		if dst, err = e.appendValue(dst, fields[i].value, depth); err != nil {
			return nil, fields, err
		}
	}
	return append(dst, '}'), fields, nil
}

// sortFields sorts by key: insertion sort for the few fields of a user, else the library's.
func sortFields(fs []field) {
	if len(fs) > 12 {
		slices.SortFunc(fs, func(a, b field) int { return strings.Compare(a.key, b.key) })
		return
	}
	for i := 1; i < len(fs); i++ {
		for j := i; j > 0 && fs[j].key < fs[j-1].key; j-- {
			fs[j], fs[j-1] = fs[j-1], fs[j]
		}
	}
}

func (e *userEncoder) appendValue(dst []byte, v any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, encodeErr("value nested too deeply (a cycle?)")
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case string:
		return appendString(dst, x), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case float64:
		return appendFloat(dst, x, 64)
	case float32:
		return appendFloat(dst, float64(x), 32)
	case json.Number:
		if x == "" {
			return append(dst, '0'), nil
		}
		if !validNumber(string(x)) {
			return nil, encodeErr("json.Number is not a number")
		}
		return append(dst, x...), nil
	case map[string]any:
		if x == nil {
			return append(dst, "null"...), nil
		}
		dst, _, err := e.appendMap(dst, x, make([]field, 0, len(x)), depth+1)
		return dst, err
	case []any:
		if x == nil {
			return append(dst, "null"...), nil
		}
		dst = append(dst, '[')
		for i, el := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = e.appendValue(dst, el, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	}
	e.fallback.Reset()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	b := e.fallback.Bytes()
	return append(dst, b[:len(b)-1]...), nil // Encode appends a newline
}

// appendFloat formats like encoding/json, then adds ".0" to integral values (see userEncoder).
func appendFloat(dst []byte, f float64, bits int) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, encodeErr("float is NaN or infinite, which JSON cannot carry")
	}
	start := len(dst)
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	dst = strconv.AppendFloat(dst, f, format, -1, bits)
	if format == 'e' {
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
		return dst, nil
	}
	if bytes.IndexByte(dst[start:], '.') < 0 {
		dst = append(dst, ".0"...)
	}
	return dst, nil
}

// encodeErr is an encoding failure whose text carries no value.
type encodeErr string

func (e encodeErr) Error() string { return string(e) }

const hexDigits = "0123456789abcdef"

// appendString quotes s exactly as encoding/json does without HTML escaping.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// validNumber follows JSON's number grammar, as encoding/json checks json.Number.
func validNumber(s string) bool {
	digits := func(s string) string {
		for len(s) > 0 && '0' <= s[0] && s[0] <= '9' {
			s = s[1:]
		}
		return s
	}
	if s == "" {
		return false
	}
	if s[0] == '-' {
		s = s[1:]
		if s == "" {
			return false
		}
	}
	switch {
	case s[0] == '0':
		s = s[1:]
	case '1' <= s[0] && s[0] <= '9':
		s = digits(s[1:])
	default:
		return false
	}
	if len(s) >= 2 && s[0] == '.' && '0' <= s[1] && s[1] <= '9' {
		s = digits(s[2:])
	}
	if len(s) >= 2 && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		if s[0] == '+' || s[0] == '-' {
			s = s[1:]
			if s == "" {
				return false
			}
		}
		s = digits(s)
	}
	return s == ""
}
