package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a spec, located by file, line and key path.
type Problem struct {
	File string `json:"file"`
	Line int    `json:"line,omitempty"`
	Path string `json:"path"`
	Msg  string `json:"message"`
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Path == "" {
		return fmt.Sprintf("%s: %s", loc, p.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Path, p.Msg)
}

// Problems is every problem found; it is an error so callers can return it whole.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return fmt.Sprintf("%d problem(s) in activation specs:\n  %s", len(ps), strings.Join(lines, "\n  "))
}

// Load reads one spec file, or every *.yaml / *.yml file below a folder, and validates them all.
// It returns the activations that are valid and, as an error of type Problems, every problem.
func Load(path string) ([]Activation, error) {
	files, err := specFiles(path)
	if err != nil {
		return nil, err
	}
	var (
		out  []Activation
		all  Problems
		seen = map[string]string{}
	)
	for _, f := range files {
		docs, probs := loadFile(f)
		all = append(all, probs...)
		for _, d := range docs {
			if prev, dup := seen[d.act.ID]; dup && d.act.ID != "" {
				all = append(all, Problem{File: f, Line: d.lines["id"], Path: "id",
					Msg: fmt.Sprintf("activation id %q is already declared in %s", d.act.ID, prev)})
				continue
			}
			seen[d.act.ID] = f
			if d.ok {
				out = append(out, d.act)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if len(all) > 0 {
		return out, all
	}
	return out, nil
}

// LoadOne loads path and returns the activation with the given id.
func LoadOne(path, id string) (Activation, error) {
	acts, err := Load(path)
	if err != nil {
		return Activation{}, err
	}
	for _, a := range acts {
		if a.ID == id {
			return a, nil
		}
	}
	ids := make([]string, len(acts))
	for i, a := range acts {
		ids[i] = a.ID
	}
	return Activation{}, fmt.Errorf("activation %q not found in %s (found: %s)", id, path, strings.Join(ids, ", "))
}

func specFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load specs: %w", err)
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Hidden entries are skipped: a ConfigMap mounted by Kubernetes holds every file twice,
		// once through a hidden "..<timestamp>" directory.
		if p != path && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load specs from %s: %w", path, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("load specs: no *.yaml or *.yml file under %s", path)
	}
	sort.Strings(files)
	return files, nil
}

type loaded struct {
	act   Activation
	lines map[string]int
	ok    bool
}

// loadFile parses every YAML document of a file ("---" separates activations).
func loadFile(file string) ([]loaded, Problems) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, Problems{{File: file, Msg: err.Error()}}
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, Problems{{File: file, Msg: err.Error()}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var (
		out  []loaded
		all  Problems
		docs int
	)
	for {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			all = append(all, Problem{File: file, Msg: "not valid YAML: " + err.Error()})
			break
		}
		docs++
		root := &node
		if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
			root = root.Content[0]
		}
		if root.Kind != yaml.MappingNode {
			all = append(all, Problem{File: file, Line: root.Line, Msg: "an activation must be a YAML mapping"})
			continue
		}
		lines := map[string]int{}
		probs := checkKeys(file, root, reflect.TypeOf(Activation{}), "", lines)
		var a Activation
		if err := root.Decode(&a); err != nil {
			probs = append(probs, decodeProblems(file, root.Line, err)...)
		}
		a.File = file
		a.BaseDir = filepath.Dir(abs)
		a.resolvePaths()
		a.ApplyDefaults()
		for _, p := range a.validate() {
			p.File = file
			p.Line = lineOf(lines, p.Path)
			probs = append(probs, p)
		}
		all = append(all, probs...)
		out = append(out, loaded{act: a, lines: lines, ok: len(probs) == 0})
	}
	if docs == 0 && len(all) == 0 {
		all = append(all, Problem{File: file, Msg: "the file holds no activation"})
	}
	return out, all
}

// lineOf finds the line of a key path, falling back to its closest parent.
func lineOf(lines map[string]int, path string) int {
	for p := path; p != ""; {
		if l, ok := lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// resolvePaths makes file paths absolute against the spec's folder.
func (a *Activation) resolvePaths() {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(a.BaseDir, p)
	}
	if a.Source.DuckDB != nil {
		a.Source.DuckDB.Path = abs(a.Source.DuckDB.Path)
	}
	if a.State.DuckDB != nil {
		a.State.DuckDB.Path = abs(a.State.DuckDB.Path)
	}
	a.Destination.Iterable.APIKey.File = abs(a.Destination.Iterable.APIKey.File)
	for i := range a.Notify {
		a.Notify[i].Webhook.URL.File = abs(a.Notify[i].Webhook.URL.File)
	}
}

// checkKeys reports keys the schema does not know, and records the line of every key path.
func checkKeys(file string, n *yaml.Node, t reflect.Type, path string, lines map[string]int) Problems {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var probs Problems
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		known := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			known[name] = f.Type
			names = append(names, name)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			lines[p] = k.Line
			ft, ok := known[k.Value]
			if !ok {
				probs = append(probs, Problem{File: file, Line: k.Line, Path: p,
					Msg: fmt.Sprintf("unknown key %q (allowed here: %s)", k.Value, strings.Join(names, ", "))})
				continue
			}
			probs = append(probs, checkKeys(file, v, ft, p, lines)...)
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			lines[p] = c.Line
			probs = append(probs, checkKeys(file, c, t.Elem(), p, lines)...)
		}
	}
	return probs
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlLine finds the line number yaml.v3 puts at the start of each of its unmarshal errors.
var yamlLine = regexp.MustCompile(`^line (\d+): `)

// decodeProblems turns a decode error into problems that quote no part of the value: yaml.v3
// quotes the start of the offending value (`sk_live...`), which may be a secret pasted in place
// of a reference.
func decodeProblems(file string, line int, err error) Problems {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return Problems{{File: file, Line: line, Msg: "cannot decode the activation (not valid YAML for it)"}}
	}
	var ps Problems
	for _, e := range te.Errors {
		p := Problem{File: file, Line: line}
		if m := yamlLine.FindStringSubmatch(e); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			e = e[len(m[0]):]
		}
		kind, target := "a value", ""
		if _, rest, ok := strings.Cut(e, "cannot unmarshal "); ok {
			if k, _, ok := strings.Cut(rest, " "); ok {
				kind = map[string]string{"!!str": "a string", "!!int": "a number", "!!float": "a number", "!!bool": "a boolean",
					"!!seq": "a list", "!!map": "a mapping", "!!null": "null"}[k]
				if kind == "" {
					kind = "a value"
				}
			}
			if _, t, ok := strings.Cut(rest, " into "); ok {
				target = t
			}
		}
		p.Msg = "cannot decode " + kind
		if target != "" {
			p.Msg += " into " + target
		}
		p.Msg += " (the value is not shown: it may be a secret)"
		ps = append(ps, p)
	}
	return ps
}
