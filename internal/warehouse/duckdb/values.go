package duckdb

import (
	"context"
	"database/sql/driver"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	duckdb "github.com/duckdb/duckdb-go/v2"

	"github.com/activation-engine/activations/internal/warehouse"
)

// The driver returns some values in a form that does not say what they are: a UUID and a BLOB
// both arrive as []byte, a TIME as a time.Time on 0001-01-01, INTERVAL, MAP and UNION as driver
// types that iterable.Value refuses. The plan table keeps the model's types, so ReadChunk parses
// them once per chunk and converts only the columns that need it:
//
//	UUID → "8-4-4-4-12" lowercase string      BLOB → standard base64 string
//	TIME → "15:04:05" with the fraction only when there is one ("15:04:05.25")
//	TIME WITH TIME ZONE → the same plus the offset ("15:04:05+02:30", "15:04:05+00:00")
//	INTERVAL → ISO 8601 duration ("P1Y2M3DT4H5M6.5S", "PT0S"; negative parts keep their sign)
//	MAP → object: keys as text (see keyText), values converted by their type
//	UNION → the value of its member, converted by that member's type
//	STRUCT, LIST, ARRAY → converted element by element, in place
//	GEOMETRY → a value iterable.Value rejects with the reason (it arrives as WKB bytes)
//
// Every other type keeps the driver's value, which iterable.Value handles.

// convertFunc turns one non-NULL driver value of a column into what it means.
type convertFunc func(any) any

// converters holds one convertFunc per mapped field, nil where the driver's value needs none.
type converters []convertFunc

// value converts the value of field i; columns without a converter cost a nil check.
func (cs converters) value(i int, v any) any {
	if v == nil || cs[i] == nil {
		return v
	}
	return cs[i](v)
}

// valueConverters reads the model's types of a plan table's value columns (one catalog query
// per chunk) and builds the converter of each field.
func (p *Planner) valueConverters(ctx context.Context, table string, fields []warehouse.Field) (converters, error) {
	rows, err := p.db.QueryContext(ctx, `SELECT column_name, data_type FROM duckdb_columns()
		WHERE database_name = ? AND schema_name = 'main' AND table_name = ?`, p.catName, table)
	if err != nil {
		return nil, fmt.Errorf("read column types of %s: %w", table, err)
	}
	defer rows.Close()
	types := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("read column types of %s: %w", table, err)
		}
		types[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read column types of %s: %w", table, err)
	}
	// The last converter is the identifier's: a UUID identifier is sent as its text too.
	cs := make(converters, len(fields)+1)
	columns := make([]string, 0, len(fields)+1)
	for _, f := range fields {
		columns = append(columns, warehouse.ValueColumn(f.Field))
	}
	columns = append(columns, "ident")
	for i, col := range columns {
		typ, ok := types[col]
		if !ok {
			continue // the chunk's SELECT names the missing column itself
		}
		t, err := parseType(typ)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", col, err)
		}
		cs[i] = converterFor(t)
	}
	return cs, nil
}

// duckType is a parsed DuckDB type name, as duckdb_columns() and DESCRIBE print it.
type duckType struct {
	name  string      // upper-case base name: "INTEGER", "TIME WITH TIME ZONE", "STRUCT", "LIST", "ARRAY"…
	raw   string      // the type as printed, for messages
	names []string    // STRUCT field and UNION member names
	elems []*duckType // STRUCT fields, UNION members, MAP key and value, LIST or ARRAY element
}

// parseType parses a type name such as `STRUCT("a b" UUID, c BLOB[])[3]` or `MAP(VARCHAR, UUID)`.
func parseType(s string) (*duckType, error) {
	p := &typeParser{s: s}
	t, err := p.typ()
	if err == nil {
		p.space()
		if p.i < len(p.s) {
			err = fmt.Errorf("unexpected %q at offset %d", p.s[p.i:], p.i)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("parse DuckDB type %s: %w", s, err)
	}
	return t, nil
}

type typeParser struct {
	s string
	i int
}

func (p *typeParser) space() {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *typeParser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *typeParser) expect(c byte) error {
	p.space()
	if p.peek() != c {
		return fmt.Errorf("expected %q at offset %d", c, p.i)
	}
	p.i++
	return nil
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func (p *typeParser) typ() (*duckType, error) {
	p.space()
	start := p.i
	// A base name is one or more words ("TIME WITH TIME ZONE"); a type is always followed by
	// a delimiter or the end, never by another word.
	for p.i < len(p.s) && (isWordByte(p.s[p.i]) || p.s[p.i] == ' ' && p.i+1 < len(p.s) && isWordByte(p.s[p.i+1])) {
		p.i++
	}
	if p.i == start {
		return nil, fmt.Errorf("expected a type name at offset %d", p.i)
	}
	t := &duckType{name: strings.ToUpper(p.s[start:p.i])}
	if p.peek() == '(' {
		p.i++
		var err error
		switch t.name {
		case "STRUCT", "UNION":
			err = p.members(t)
		case "MAP":
			err = p.mapTypes(t)
		default: // DECIMAL(18,3), ENUM('a', 'b'), GEOMETRY('OGC:CRS84'): arguments, not types
			err = p.skipArgs()
		}
		if err != nil {
			return nil, err
		}
	}
	t.raw = p.s[start:p.i]
	for p.peek() == '[' {
		end := strings.IndexByte(p.s[p.i:], ']')
		if end < 0 {
			return nil, fmt.Errorf("unclosed [ at offset %d", p.i)
		}
		size := p.s[p.i+1 : p.i+end]
		name := "LIST"
		if size != "" {
			if _, err := strconv.ParseUint(size, 10, 32); err != nil {
				return nil, fmt.Errorf("array size %q at offset %d", size, p.i)
			}
			name = "ARRAY"
		}
		p.i += end + 1
		t = &duckType{name: name, raw: p.s[start:p.i], elems: []*duckType{t}}
	}
	return t, nil
}

// members parses the `name TYPE, …)` of a STRUCT or UNION.
func (p *typeParser) members(t *duckType) error {
	for {
		name, err := p.ident()
		if err != nil {
			return err
		}
		e, err := p.typ()
		if err != nil {
			return err
		}
		t.names = append(t.names, name)
		t.elems = append(t.elems, e)
		p.space()
		switch p.peek() {
		case ',':
			p.i++
		case ')':
			p.i++
			return nil
		default:
			return fmt.Errorf("expected , or ) at offset %d", p.i)
		}
	}
}

// ident reads a field name: bare, or double-quoted with "" standing for a quote.
func (p *typeParser) ident() (string, error) {
	p.space()
	if p.peek() != '"' {
		start := p.i
		for p.i < len(p.s) && p.s[p.i] != ' ' {
			p.i++
		}
		if p.i == start {
			return "", fmt.Errorf("expected a field name at offset %d", p.i)
		}
		return p.s[start:p.i], nil
	}
	var b strings.Builder
	for p.i++; p.i < len(p.s); p.i++ {
		if p.s[p.i] == '"' {
			if p.i+1 < len(p.s) && p.s[p.i+1] == '"' {
				b.WriteByte('"')
				p.i++
				continue
			}
			p.i++
			return b.String(), nil
		}
		b.WriteByte(p.s[p.i])
	}
	return "", fmt.Errorf("unclosed quoted name")
}

func (p *typeParser) mapTypes(t *duckType) error {
	k, err := p.typ()
	if err != nil {
		return err
	}
	if err := p.expect(','); err != nil {
		return err
	}
	v, err := p.typ()
	if err != nil {
		return err
	}
	if err := p.expect(')'); err != nil {
		return err
	}
	t.elems = []*duckType{k, v}
	return nil
}

// skipArgs skips to the closing parenthesis, over quoted strings (ENUM values may hold anything).
func (p *typeParser) skipArgs() error {
	depth := 1
	for ; p.i < len(p.s); p.i++ {
		switch c := p.s[p.i]; c {
		case '\'', '"':
			j := p.i + 1
			for ; j < len(p.s); j++ {
				if p.s[j] != c {
					continue
				}
				if j+1 < len(p.s) && p.s[j+1] == c {
					j++ // a doubled quote stands for one
					continue
				}
				break
			}
			if j >= len(p.s) {
				return fmt.Errorf("unclosed quote at offset %d", p.i)
			}
			p.i = j // the closing quote; the loop steps past it
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				p.i++
				return nil
			}
		}
	}
	return fmt.Errorf("unclosed ( in type arguments")
}

// converterFor is nil for a type whose driver values need no conversion, so that its column
// costs nothing per row.
func converterFor(t *duckType) convertFunc {
	switch t.name {
	case "UUID":
		return uuidValue
	case "BLOB":
		return blobValue
	case "TIME":
		return timeValue
	case "TIME WITH TIME ZONE":
		return timeTZValue
	case "INTERVAL":
		return intervalValue
	case "GEOMETRY":
		return func(any) any { return unsendable(geometryReason) }
	case "LIST", "ARRAY":
		return listConverter(converterFor(t.elems[0]))
	case "STRUCT":
		return structConverter(t)
	case "MAP":
		return mapConverter(t.elems[0], t.elems[1])
	case "UNION":
		return unionConverter(t)
	}
	return nil
}

func uuidValue(v any) any {
	b, ok := v.([]byte)
	if !ok || len(b) != 16 {
		return v
	}
	var buf [36]byte
	hex.Encode(buf[0:8], b[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], b[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], b[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], b[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], b[10:])
	return string(buf[:])
}

// blobValue encodes bytes as BigQuery's planner does for BYTES: arbitrary bytes are not text.
func blobValue(v any) any {
	if b, ok := v.([]byte); ok {
		return base64.StdEncoding.EncodeToString(b)
	}
	return v
}

func timeValue(v any) any {
	if t, ok := v.(time.Time); ok {
		return t.Format("15:04:05.999999")
	}
	return v
}

func timeTZValue(v any) any {
	t, ok := v.(time.Time)
	if !ok {
		return v
	}
	if _, off := t.Zone(); off%60 != 0 {
		return t.Format("15:04:05.999999-07:00:00")
	}
	return t.Format("15:04:05.999999-07:00")
}

func intervalValue(v any) any {
	if iv, ok := v.(duckdb.Interval); ok {
		return isoInterval(iv)
	}
	return v
}

// isoInterval writes an interval as an ISO 8601 duration. DuckDB keeps months, days and
// microseconds apart (a month is not a number of days), and so does the duration; each part
// keeps its own sign, as DuckDB's do.
func isoInterval(iv duckdb.Interval) string {
	var b strings.Builder
	b.WriteByte('P')
	part := func(n int64, unit byte) {
		if n != 0 {
			b.WriteString(strconv.FormatInt(n, 10))
			b.WriteByte(unit)
		}
	}
	part(int64(iv.Months/12), 'Y')
	part(int64(iv.Months%12), 'M')
	part(int64(iv.Days), 'D')
	if iv.Micros != 0 {
		b.WriteByte('T')
		sign, u := "", uint64(iv.Micros)
		if iv.Micros < 0 {
			sign, u = "-", -u // two's complement: exact even for the smallest int64
		}
		h, m, s, frac := u/3_600_000_000, u/60_000_000%60, u/1_000_000%60, u%1_000_000
		if h != 0 {
			b.WriteString(sign + strconv.FormatUint(h, 10) + "H")
		}
		if m != 0 {
			b.WriteString(sign + strconv.FormatUint(m, 10) + "M")
		}
		if s != 0 || frac != 0 {
			b.WriteString(sign + strconv.FormatUint(s, 10))
			if frac != 0 {
				b.WriteString(strings.TrimRight(fmt.Sprintf(".%06d", frac), "0"))
			}
			b.WriteByte('S')
		}
	}
	if b.Len() == 1 {
		return "PT0S"
	}
	return b.String()
}

// unsendable stands in for a value of a type Iterable cannot take: iterable.Value rejects the
// row with the reason, which names the type, never the value.
type unsendable string

func (u unsendable) Value() (driver.Value, error) { return nil, errors.New(string(u)) }

const geometryReason = "GEOMETRY values arrive as WKB bytes, which Iterable cannot read; " +
	"cast the column to VARCHAR in the model (WKT)"

func listConverter(elem convertFunc) convertFunc {
	if elem == nil {
		return nil
	}
	return func(v any) any {
		list, ok := v.([]any)
		if !ok {
			return v
		}
		for i, e := range list {
			if e != nil {
				list[i] = elem(e)
			}
		}
		return v
	}
}

func structConverter(t *duckType) convertFunc {
	var names []string
	var convs []convertFunc
	for i, e := range t.elems {
		if c := converterFor(e); c != nil {
			names = append(names, t.names[i])
			convs = append(convs, c)
		}
	}
	if len(convs) == 0 {
		return nil
	}
	return func(v any) any {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		for i, name := range names {
			if e := m[name]; e != nil {
				m[name] = convs[i](e)
			}
		}
		return v
	}
}

func unionConverter(t *duckType) convertFunc {
	members := make(map[string]convertFunc, len(t.names))
	for i, name := range t.names {
		members[name] = converterFor(t.elems[i])
	}
	return func(v any) any {
		u, ok := v.(duckdb.Union)
		if !ok {
			return v
		}
		if c := members[u.Tag]; c != nil && u.Value != nil {
			return c(u.Value)
		}
		return u.Value
	}
}

// mapConverter makes an object of a MAP: JSON objects have string keys.
func mapConverter(key, val *duckType) convertFunc {
	keyConv, valConv, text := converterFor(key), converterFor(val), keyText(key)
	return func(v any) any {
		m, ok := v.(duckdb.OrderedMap)
		if !ok {
			return v
		}
		keys, vals := m.Keys(), m.Values()
		out := make(map[string]any, len(keys))
		for i, k := range keys {
			if keyConv != nil && k != nil {
				k = keyConv(k)
			}
			e := vals[i]
			if valConv != nil && e != nil {
				e = valConv(e)
			}
			out[text(k)] = e
		}
		return out
	}
}

// keyText writes a MAP key (already converted) as text: strings as they are, numbers in their
// shortest form, dates and timestamps as DuckDB prints them (timestamps with time zone in UTC).
func keyText(key *duckType) func(any) string {
	layout := ""
	switch key.name {
	case "DATE":
		layout = "2006-01-02"
	case "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS":
		layout = "2006-01-02 15:04:05.999999999"
	case "TIMESTAMP WITH TIME ZONE":
		layout = "2006-01-02 15:04:05.999999-07:00"
	}
	return func(k any) string {
		switch x := k.(type) {
		case string:
			return x
		case time.Time:
			if layout != "" {
				return x.UTC().Format(layout)
			}
		case bool:
			return strconv.FormatBool(x)
		case int8, int16, int32, int64, int:
			return fmt.Sprint(x)
		case uint8, uint16, uint32, uint64, uint:
			return fmt.Sprint(x)
		case float32:
			return strconv.FormatFloat(float64(x), 'g', -1, 32)
		case float64:
			return strconv.FormatFloat(x, 'g', -1, 64)
		case *big.Int:
			return x.String()
		case duckdb.Decimal:
			return x.String()
		}
		return fmt.Sprint(k)
	}
}

// unsupportedReason says why values of a type cannot be sent, "" when they can. It is what
// `starter validate` reports, before a run reads a single row.
func unsupportedReason(t *duckType) string {
	switch t.name {
	case "VARIANT":
		return "DuckDB's Go driver cannot read VARIANT values; cast the column in the model (e.g. to JSON or VARCHAR)"
	case "TIME_NS":
		return "DuckDB's Go driver cannot read TIME_NS values; cast the column in the model to TIME (or to VARCHAR to keep nanoseconds)"
	case "GEOMETRY":
		return geometryReason
	case "LIST", "ARRAY":
		return nested(t.elems[0])
	case "STRUCT", "UNION":
		for _, e := range t.elems {
			if r := nested(e); r != "" {
				return r
			}
		}
		return ""
	case "MAP":
		if !mapKeyReadable(t.elems[0]) {
			return fmt.Sprintf("DuckDB's Go driver cannot read MAP keys of type %s; cast the column in the model (e.g. to MAP(VARCHAR, %s))",
				t.elems[0].raw, t.elems[1].raw)
		}
		return nested(t.elems[1])
	}
	if !knownType(t.name) {
		return "unknown DuckDB type; cast the column in the model (e.g. to VARCHAR)"
	}
	return ""
}

// nested is the reason of a part of a nested type, naming the part.
func nested(t *duckType) string {
	if r := unsupportedReason(t); r != "" {
		return "it holds " + t.raw + ": " + r
	}
	return ""
}

// mapKeyReadable mirrors the driver, which reads a MAP only when its keys are comparable in Go
// (a UUID key arrives as []byte) and refuses some key types outright.
func mapKeyReadable(key *duckType) bool {
	switch key.name {
	case "BLOB", "BIT", "UUID", "GEOMETRY", "LIST", "ARRAY", "STRUCT", "MAP", "UNION", "JSON", "VARIANT", "TIME_NS":
		return false
	}
	return true
}

func knownType(name string) bool {
	switch name {
	case "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
		"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "BIGNUM", "VARINT",
		"FLOAT", "DOUBLE", "DECIMAL", "VARCHAR", "BLOB", "UUID", "BIT", "ENUM", "JSON",
		"DATE", "TIME", "TIME WITH TIME ZONE", "INTERVAL",
		"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE",
		"LIST", "ARRAY", "STRUCT", "MAP", "UNION", "NULL":
		return true
	}
	return false
}

// ModelColumn is one column of a model's result, as DuckDB describes it.
type ModelColumn struct {
	Name string `json:"name"`
	Type string `json:"type"` // e.g. INTEGER, STRUCT(a UUID, b BLOB[]), MAP(VARCHAR, UUID)
	// Unsupported says why the column's values cannot be sent; "" when they can.
	Unsupported string `json:"unsupported,omitempty"`
}

// DescribeModel binds a model without running it (DuckDB's DESCRIBE), as Plan would run it:
// with baseDir as file_search_path and the source database, if any, attached read-only. It
// opens a throwaway in-memory database instead of opts.Path, so validating a spec neither
// creates a state file nor waits for the one a worker holds. Errors of the model wrap
// warehouse.ErrInvalidModel.
func DescribeModel(ctx context.Context, opts Options, baseDir, query string) ([]ModelColumn, error) {
	query = strings.TrimRight(strings.TrimSpace(query), "; \t\r\n")
	if query == "" {
		return nil, fmt.Errorf("describe model: %w: the query is empty", warehouse.ErrInvalidModel)
	}
	if strings.Contains(baseDir, ",") {
		return nil, fmt.Errorf("describe model: %w: the model's folder %q contains a comma, which DuckDB's file_search_path cannot hold",
			warehouse.ErrInvalidModel, baseDir)
	}
	opts.Path = ""
	p, err := Open(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("describe model: %w", err)
	}
	defer p.Close()
	conn, err := p.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("describe model: connect: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SET SESSION file_search_path = `+quoteLiteral(baseDir)); err != nil {
		return nil, fmt.Errorf("describe model: set file_search_path: %w", err)
	}
	if p.source != "" {
		if _, err := conn.ExecContext(ctx, `USE `+p.source); err != nil {
			return nil, fmt.Errorf("describe model: use source database: %w", err)
		}
	}
	// Wrapped as snapshotSQL wraps it, so a model that binds here binds in Plan.
	rows, err := conn.QueryContext(ctx, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM (\n"+query+"\n) AS model)")
	if err != nil {
		return nil, describeError(ctx, err)
	}
	defer rows.Close()
	var cols []ModelColumn
	for rows.Next() {
		var c ModelColumn
		if err := rows.Scan(&c.Name, &c.Type); err != nil {
			return nil, fmt.Errorf("describe model: %w", err)
		}
		if t, err := parseType(c.Type); err != nil {
			c.Unsupported = "cannot parse the DuckDB type; cast the column in the model (e.g. to VARCHAR)"
		} else {
			c.Unsupported = unsupportedReason(t)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, describeError(ctx, err)
	}
	return cols, nil
}

// describeError classifies an error of DESCRIBE as modelError does for Plan: binding may read
// files (a CSV's header and sample), and messages about their data are withheld.
func describeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("describe model: %w", context.Cause(ctx))
	}
	var de *duckdb.Error
	switch {
	case !errors.As(err, &de) || transientErrorTypes[de.Type]:
		return fmt.Errorf("describe model: %w", err)
	case queryErrorTypes[de.Type]:
		return fmt.Errorf("describe model: %w: %s", warehouse.ErrInvalidModel, de.Msg)
	}
	return fmt.Errorf("describe model: %w: %s while reading the model's files (details withheld because "+
		"they can contain row values; run the model in DuckDB to see them)", warehouse.ErrInvalidModel, errorClass(de.Msg))
}
