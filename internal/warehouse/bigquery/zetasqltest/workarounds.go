package zetasqltest

// Workaround rewrites what GoogleSQL's reference analyzer does not model of BigQuery before a
// statement is analyzed. Every statement reports the workarounds applied to it.
type Workaround struct {
	Name string
	Why  string
	fn   func(sql string) (string, bool)
}

// Workarounds is the complete list: nothing else is changed or skipped.
var Workarounds = []Workaround{}

func applyWorkarounds(sql string) (string, []string) {
	var names []string
	for _, w := range Workarounds {
		if out, ok := w.fn(sql); ok {
			sql = out
			names = append(names, w.Name)
		}
	}
	return sql, names
}
