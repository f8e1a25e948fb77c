package zetasqltest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Column is a named, typed column of a table or of a result.
type Column struct {
	Name string
	Type Type
}

// Table is a table of the catalog, named by its path (project, dataset, table; or one name for
// a temporary table).
type Table struct {
	Path    []string
	Columns []Column
}

// Catalog holds the tables the analyzer resolves names against. Names are case-insensitive,
// like BigQuery's dataset and table names in the analyzer. It is not safe for concurrent use.
type Catalog struct {
	tables []Table
}

// NewCatalog returns an empty catalog (the builtin functions are always there).
func NewCatalog() *Catalog { return &Catalog{} }

func pathKey(path []string) string { return strings.ToLower(strings.Join(path, "\x00")) }

// AddTable adds a table, or replaces the table of that path.
func (c *Catalog) AddTable(path []string, cols ...Column) {
	t := Table{Path: slices.Clone(path), Columns: slices.Clone(cols)}
	for i := range c.tables {
		if pathKey(c.tables[i].Path) == pathKey(path) {
			c.tables[i] = t
			return
		}
	}
	c.tables = append(c.tables, t)
}

// Table returns the table of a path.
func (c *Catalog) Table(path ...string) (Table, bool) {
	for _, t := range c.tables {
		if pathKey(t.Path) == pathKey(path) {
			return t, true
		}
	}
	return Table{}, false
}

// Clone returns an independent copy.
func (c *Catalog) Clone() *Catalog { return &Catalog{tables: slices.Clone(c.tables)} }

// proto writes the catalog as a SimpleCatalogProto: one nested catalog per path prefix.
func (c *Catalog) proto(lang json.RawMessage) map[string]any {
	type node struct {
		name     string
		tables   []any
		children []*node
	}
	root := &node{}
	for _, t := range c.tables {
		n := root
		for _, part := range t.Path[:len(t.Path)-1] {
			var next *node
			for _, ch := range n.children {
				if strings.EqualFold(ch.name, part) {
					next = ch
				}
			}
			if next == nil {
				next = &node{name: part}
				n.children = append(n.children, next)
			}
			n = next
		}
		cols := make([]any, len(t.Columns))
		for i, col := range t.Columns {
			cols[i] = map[string]any{"name": col.Name, "type": col.Type}
		}
		n.tables = append(n.tables, map[string]any{"name": t.Path[len(t.Path)-1],
			"full_name": strings.Join(t.Path, "."), "column": cols})
	}
	var write func(n *node) map[string]any
	write = func(n *node) map[string]any {
		m := map[string]any{"name": n.name, "table": n.tables}
		var subs []any
		for _, ch := range n.children {
			subs = append(subs, write(ch))
		}
		m["catalog"] = subs
		return m
	}
	m := write(root)
	m["builtin_function_options"] = map[string]any{"language_options": lang}
	return m
}

// Param is a declared named query parameter (@name).
type Param struct {
	Name string
	Type Type
}

// TableOptions are BigQuery's OPTIONS of CREATE TABLE with their types. The analyzer refuses
// any other option name and a value of another type: by default it would take any name.
var TableOptions = map[string]Type{
	"expiration_timestamp":      Scalar("TIMESTAMP"),
	"partition_expiration_days": Scalar("FLOAT64"),
	"require_partition_filter":  Scalar("BOOL"),
	"kms_key_name":              Scalar("STRING"),
	"friendly_name":             Scalar("STRING"),
	"description":               Scalar("STRING"),
	"labels":                    Array(Struct(Field("", Scalar("STRING")), Field("", Scalar("STRING")))),
	"default_rounding_mode":     Scalar("STRING"),
	"enable_change_history":     Scalar("BOOL"),
	"max_staleness":             Scalar("INTERVAL"),
}

func (s *Server) analyzerOptions(params []Param) map[string]any {
	ps := make([]any, len(params))
	for i, p := range params {
		ps[i] = map[string]any{"name": p.Name, "type": p.Type}
	}
	var opts []any
	for name, t := range TableOptions {
		opts = append(opts, map[string]any{"name": name, "type": t})
	}
	return map[string]any{
		"allowed_hints_and_options":   map[string]any{"disallow_unknown_options": true, "option": opts},
		"language_options":            s.lang,
		"query_parameters":            ps,
		"parameter_mode":              "PARAMETER_NAMED",
		"allow_undeclared_parameters": false,
		"error_message_mode":          "ERROR_MESSAGE_MULTI_LINE_WITH_CARET",
		"default_timezone":            "UTC",
	}
}

// Statement is one analyzed statement (or IF condition) of a script.
type Statement struct {
	// Index counts the statements and conditions of the script from 1, in text order.
	Index int
	// SQL is the text as written in the script; Analyzed the text given to the analyzer, which
	// differs when a Workaround applied.
	SQL, Analyzed string
	// Workarounds names the workarounds applied to the text.
	Workarounds []string
	// Condition is set for the condition of an IF, analyzed as a BOOL expression.
	Condition bool
	// Kind is the resolved node, e.g. "resolved_query_stmt" or "resolved_merge_stmt".
	Kind string
	// Columns are the query's result columns, or the columns of Table.
	Columns []Column
	// Table is the path of the table that a CREATE TABLE statement makes or an ALTER TABLE
	// statement changes; Temp tells a temporary table.
	Table []string
	Temp  bool
}

// ScriptError is the analyzer's refusal of one statement of a script.
type ScriptError struct {
	Statement Statement
	Err       error
}

func (e *ScriptError) Error() string {
	what := "statement"
	if e.Statement.Condition {
		what = "IF condition"
	}
	msg := fmt.Sprintf("%s %d: %v\n--- the %s as analyzed:\n%s", what, e.Statement.Index, e.Err, what, e.Statement.Analyzed)
	if len(e.Statement.Workarounds) > 0 {
		msg += "\n(workarounds applied: " + strings.Join(e.Statement.Workarounds, ", ") + ")"
	}
	return msg
}

func (e *ScriptError) Unwrap() error { return e.Err }

// AnalyzeScript parses sql as a script (statements separated by ";", IF blocks) and analyzes
// each statement and IF condition in order, with params declared and every other parameter
// refused. A CREATE statement adds its table (with the analyzer's column types) before the next
// statement is analyzed: permanent tables to cat, temporary tables to the script only. It stops
// at the first refusal, a *ScriptError. Script statements other than IF and BEGIN ... END are
// refused rather than skipped.
func (s *Server) AnalyzeScript(ctx context.Context, cat *Catalog, sql string, params []Param) ([]Statement, error) {
	var parsed struct {
		Script map[string]any `json:"parsed_script"`
	}
	err := s.call(ctx, "Parse", map[string]any{"sql_statement": sql, "allow_script": true, "options": s.lang}, &parsed)
	if err != nil {
		return nil, fmt.Errorf("parse the script: %w", err)
	}
	var units []unit
	if err := collect(sql, get(parsed.Script, "statement_list_node"), &units); err != nil {
		return nil, err
	}
	scope := cat.Clone() // temporary tables live in scope only, which ends with the script
	var out []Statement
	for i, u := range units {
		st := Statement{Index: i + 1, SQL: u.sql, Condition: u.condition}
		st.Analyzed, st.Workarounds = applyWorkarounds(u.sql)
		if err := s.analyze(ctx, scope, &st, params); err != nil {
			return out, &ScriptError{Statement: st, Err: err}
		}
		if st.Table != nil {
			scope.AddTable(st.Table, st.Columns...)
			if !st.Temp {
				cat.AddTable(st.Table, st.Columns...)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *Server) analyze(ctx context.Context, cat *Catalog, st *Statement, params []Param) error {
	req := map[string]any{"options": s.analyzerOptions(params), "simple_catalog": cat.proto(s.lang)}
	if st.Condition {
		req["sql_expression"] = st.Analyzed
	} else {
		req["sql_statement"] = st.Analyzed
	}
	var resp struct {
		Statement  map[string]any `json:"resolved_statement"`
		Expression map[string]any `json:"resolved_expression"`
	}
	if err := s.call(ctx, "Analyze", req, &resp); err != nil {
		return err
	}
	if st.Condition {
		kind, node := unwrap(resp.Expression)
		st.Kind = kind
		var t Type
		if err := remarshal(chainField(node, "type"), &t); err != nil {
			return err
		}
		if t.Kind != "TYPE_BOOL" {
			return fmt.Errorf("the IF condition is a %s, not a BOOL", t)
		}
		return nil
	}
	kind, node := unwrap(resp.Statement)
	st.Kind = kind
	var out struct {
		Output []struct {
			Name   string `json:"name"`
			Column struct {
				Type Type `json:"type"`
			} `json:"column"`
		} `json:"output_column_list"`
		Defs []struct {
			Name string `json:"name"`
			Type Type   `json:"type"`
		} `json:"column_definition_list"`
		NamePath []string         `json:"name_path"`
		Scope    string           `json:"create_scope"`
		Actions  []map[string]any `json:"alter_action_list"`
	}
	if err := remarshal(flatten(node), &out); err != nil {
		return err
	}
	for _, c := range out.Output {
		st.Columns = append(st.Columns, Column{Name: c.Name, Type: c.Column.Type})
	}
	switch {
	case strings.HasPrefix(kind, "resolved_create_table") && len(out.NamePath) > 0:
		st.Columns = nil
		for _, d := range out.Defs {
			st.Columns = append(st.Columns, Column{Name: d.Name, Type: d.Type})
		}
		st.Table, st.Temp = out.NamePath, out.Scope == "CREATE_TEMP"
	case kind == "resolved_alter_table_stmt":
		return alterTable(cat, st, out.NamePath, out.Actions)
	}
	return nil
}

// alterTable applies the column changes of an ALTER TABLE statement to the table's columns.
func alterTable(cat *Catalog, st *Statement, path []string, actions []map[string]any) error {
	t, ok := cat.Table(path...)
	if !ok {
		return nil // ALTER TABLE IF EXISTS of a missing table: the analyzer accepted it
	}
	cols := slices.Clone(t.Columns)
	has := func(name string) int {
		return slices.IndexFunc(cols, func(c Column) bool { return strings.EqualFold(c.Name, name) })
	}
	for _, a := range actions {
		kind, node := unwrap(a)
		var act struct {
			Def struct {
				Name string `json:"name"`
				Type Type   `json:"type"`
			} `json:"column_definition"`
			Name string `json:"name"`
		}
		if err := remarshal(flatten(node), &act); err != nil {
			return err
		}
		switch kind {
		case "resolved_add_column_action":
			if has(act.Def.Name) < 0 {
				cols = append(cols, Column{Name: act.Def.Name, Type: act.Def.Type})
			}
		case "resolved_drop_column_action":
			if i := has(act.Name); i >= 0 {
				cols = slices.Delete(cols, i, i+1)
			}
		case "resolved_set_options_action":
		default:
			return fmt.Errorf("ALTER TABLE action %s is not modelled by zetasqltest", kind)
		}
	}
	st.Table, st.Columns = t.Path, cols
	return nil
}

// unit is a statement or an IF condition of a script, by its text.
type unit struct {
	sql       string
	condition bool
}

// collect walks a parsed statement list (ASTStatementListProto as JSON) in order.
func collect(sql string, list map[string]any, out *[]unit) error {
	items, _ := list["statement_list"].([]any)
	for _, item := range items {
		m, _ := item.(map[string]any)
		kind, node := unwrap(m)
		switch kind {
		case "ast_if_statement":
			if err := addRange(sql, get(node, "condition"), true, out); err != nil {
				return err
			}
			if err := collect(sql, get(node, "then_list"), out); err != nil {
				return err
			}
			if clauses := get(node, "elseif_clauses"); clauses != nil {
				list, _ := clauses["elseif_clause"].([]any)
				for _, c := range list {
					cm, _ := c.(map[string]any)
					if err := addRange(sql, get(cm, "condition"), true, out); err != nil {
						return err
					}
					if err := collect(sql, get(cm, "body"), out); err != nil {
						return err
					}
				}
			}
			if err := collect(sql, get(node, "else_list"), out); err != nil {
				return err
			}
		case "ast_begin_end_block":
			if get(node, "handler_list") != nil {
				return fmt.Errorf("BEGIN ... EXCEPTION blocks are not analyzed: %.80q", textOf(sql, node))
			}
			if err := collect(sql, get(node, "statement_list_node"), out); err != nil {
				return err
			}
		default:
			if _, script := m["ast_script_statement_node"]; script {
				return fmt.Errorf("script statement %s is not analyzed: %.80q", kind, textOf(sql, node))
			}
			if err := addRange(sql, m, false, out); err != nil {
				return err
			}
		}
	}
	return nil
}

func addRange(sql string, m map[string]any, condition bool, out *[]unit) error {
	_, node := unwrap(m)
	text := textOf(sql, node)
	if text == "" {
		return fmt.Errorf("no text for a parsed statement")
	}
	*out = append(*out, unit{sql: text, condition: condition})
	return nil
}

// textOf cuts a node's text out of the script by its parse location.
func textOf(sql string, node map[string]any) string {
	r, _ := chainField(node, "parse_location_range").(map[string]any)
	start, _ := r["start"].(float64)
	end, _ := r["end"].(float64)
	if r == nil || int(end) > len(sql) || start > end {
		return ""
	}
	return sql[int(start):int(end)]
}

// unwrap descends the oneof wrappers of an Any...Proto (each a map of one "..._node" key) to the
// concrete node, and returns its kind without the "_node" suffix.
func unwrap(m map[string]any) (string, map[string]any) {
	kind := ""
	for len(m) == 1 {
		var k string
		var v any
		for k, v = range m {
		}
		next, ok := v.(map[string]any)
		if !ok || !strings.HasSuffix(k, "_node") || k == "parent" {
			break
		}
		kind, m = strings.TrimSuffix(k, "_node"), next
	}
	return kind, m
}

func get(m map[string]any, key string) map[string]any {
	v, _ := m[key].(map[string]any)
	return v
}

// chainField finds a field in a node or in its "parent" chain (the base classes).
func chainField(m map[string]any, key string) any {
	for m != nil {
		if v, ok := m[key]; ok {
			return v
		}
		m = get(m, "parent")
	}
	return nil
}

// flatten merges a node with its parent chain.
func flatten(m map[string]any) map[string]any {
	out := map[string]any{}
	for m != nil {
		for k, v := range m {
			if _, ok := out[k]; !ok && k != "parent" {
				out[k] = v
			}
		}
		m = get(m, "parent")
	}
	return out
}

func remarshal(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}
