package zetasqltest

import (
	"fmt"
	"strings"
	"unicode"
)

// Type is a GoogleSQL type, shaped like the analyzer's TypeProto (its JSON form).
type Type struct {
	Kind   string      `json:"type_kind"` // TYPE_INT64, TYPE_ARRAY, ...
	Array  *ElemType   `json:"array_type,omitempty"`
	Struct *StructType `json:"struct_type,omitempty"`
	Range  *ElemType   `json:"range_type,omitempty"`
}

// ElemType is the element of an ARRAY or a RANGE.
type ElemType struct {
	Element *Type `json:"element_type"`
}

// StructType lists the fields of a STRUCT.
type StructType struct {
	Fields []StructField `json:"field,omitempty"`
}

// StructField is one field of a STRUCT; Name may be empty.
type StructField struct {
	Name string `json:"field_name,omitempty"`
	Type *Type  `json:"field_type"`
}

// scalars maps GoogleSQL's (and BigQuery's legacy REST) names of scalar types to type kinds.
var scalars = map[string]string{
	"INT64": "TYPE_INT64", "INTEGER": "TYPE_INT64",
	"NUMERIC": "TYPE_NUMERIC", "BIGNUMERIC": "TYPE_BIGNUMERIC",
	"FLOAT64": "TYPE_DOUBLE", "FLOAT": "TYPE_DOUBLE",
	"BOOL": "TYPE_BOOL", "BOOLEAN": "TYPE_BOOL",
	"STRING": "TYPE_STRING", "BYTES": "TYPE_BYTES",
	"DATE": "TYPE_DATE", "DATETIME": "TYPE_DATETIME", "TIME": "TYPE_TIME", "TIMESTAMP": "TYPE_TIMESTAMP",
	"JSON": "TYPE_JSON", "GEOGRAPHY": "TYPE_GEOGRAPHY", "INTERVAL": "TYPE_INTERVAL",
}

// Scalar returns a scalar type by its SQL name (INT64, FLOAT64, STRING, ...); it panics on an
// unknown name.
func Scalar(name string) Type {
	kind, ok := scalars[strings.ToUpper(name)]
	if !ok {
		panic("zetasqltest: unknown scalar type " + name)
	}
	return Type{Kind: kind}
}

// Array returns ARRAY<elem>.
func Array(elem Type) Type { return Type{Kind: "TYPE_ARRAY", Array: &ElemType{Element: &elem}} }

// Range returns RANGE<elem>.
func Range(elem Type) Type { return Type{Kind: "TYPE_RANGE", Range: &ElemType{Element: &elem}} }

// Struct returns STRUCT<fields>.
func Struct(fields ...StructField) Type {
	return Type{Kind: "TYPE_STRUCT", Struct: &StructType{Fields: fields}}
}

// Field is a STRUCT field.
func Field(name string, t Type) StructField { return StructField{Name: name, Type: &t} }

// String writes the type in SQL, e.g. ARRAY<STRUCT<a INT64, b STRING>>.
func (t Type) String() string {
	switch t.Kind {
	case "TYPE_ARRAY":
		if t.Array != nil && t.Array.Element != nil {
			return "ARRAY<" + t.Array.Element.String() + ">"
		}
	case "TYPE_RANGE":
		if t.Range != nil && t.Range.Element != nil {
			return "RANGE<" + t.Range.Element.String() + ">"
		}
	case "TYPE_STRUCT":
		var fs []string
		if t.Struct != nil {
			for _, f := range t.Struct.Fields {
				s := f.Type.String()
				if f.Name != "" {
					s = "`" + f.Name + "` " + s
				}
				fs = append(fs, s)
			}
		}
		return "STRUCT<" + strings.Join(fs, ", ") + ">"
	case "TYPE_DOUBLE":
		return "FLOAT64"
	}
	return strings.TrimPrefix(t.Kind, "TYPE_")
}

// ParseType reads a type written in SQL: a scalar name, ARRAY<T>, RANGE<T> or
// STRUCT<name T, ...> (field names may be quoted with backticks).
func ParseType(s string) (Type, error) {
	p := &typeParser{s: s}
	t, err := p.parse()
	if p.skip(); err == nil && p.i < len(p.s) {
		err = fmt.Errorf("unexpected %q", p.s[p.i:])
	}
	if err != nil {
		return Type{}, fmt.Errorf("type %q: %w", s, err)
	}
	return t, nil
}

// MustParseType is ParseType that panics on an error.
func MustParseType(s string) Type {
	t, err := ParseType(s)
	if err != nil {
		panic(err)
	}
	return t
}

type typeParser struct {
	s string
	i int
}

func (p *typeParser) skip() {
	for p.i < len(p.s) && unicode.IsSpace(rune(p.s[p.i])) {
		p.i++
	}
}

func (p *typeParser) word() string {
	p.skip()
	if p.i < len(p.s) && p.s[p.i] == '`' {
		end := strings.IndexByte(p.s[p.i+1:], '`')
		if end < 0 {
			return ""
		}
		w := p.s[p.i+1 : p.i+1+end]
		p.i += end + 2
		return w
	}
	start := p.i
	for p.i < len(p.s) && (p.s[p.i] == '_' || unicode.IsLetter(rune(p.s[p.i])) || unicode.IsDigit(rune(p.s[p.i]))) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *typeParser) expect(c byte) error {
	p.skip()
	if p.i >= len(p.s) || p.s[p.i] != c {
		return fmt.Errorf("want %q at %d", c, p.i)
	}
	p.i++
	return nil
}

func (p *typeParser) parse() (Type, error) {
	name := strings.ToUpper(p.word())
	switch name {
	case "ARRAY", "RANGE":
		if err := p.expect('<'); err != nil {
			return Type{}, err
		}
		elem, err := p.parse()
		if err != nil {
			return Type{}, err
		}
		if err := p.expect('>'); err != nil {
			return Type{}, err
		}
		if name == "ARRAY" {
			return Array(elem), nil
		}
		return Range(elem), nil
	case "STRUCT":
		if err := p.expect('<'); err != nil {
			return Type{}, err
		}
		var fields []StructField
		for {
			fname := p.word()
			ft, err := p.parse()
			if err != nil {
				return Type{}, err
			}
			fields = append(fields, Field(fname, ft))
			p.skip()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if err := p.expect('>'); err != nil {
				return Type{}, err
			}
			return Struct(fields...), nil
		}
	}
	if kind, ok := scalars[name]; ok {
		return Type{Kind: kind}, nil
	}
	return Type{}, fmt.Errorf("unknown type %q", name)
}
