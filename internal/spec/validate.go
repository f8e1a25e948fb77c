package spec

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Allowed values, named once so messages and checks agree.
var (
	idPattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	sourceTypes  = []string{"duckdb", "bigquery"}
	bqDataset    = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	bqProject    = regexp.MustCompile(`^[a-z][a-z0-9.:-]{4,62}[a-z0-9]$`)
	regions      = []string{"us", "eu"}
	projectTypes = []string{"email", "userId", "hybrid"}
	modes        = []string{ModeUpsert, ModeUpdate}
	nulls        = []string{"clear", "ignore"}
	idFields     = []string{"email", "userId"}
	onRemoved    = []string{"keep", "clear", "delete"}
)

// Iterable refuses field names it reserves for identity at the top level of a profile.
var reservedFields = map[string]bool{"email": true, "userId": true}

// Validate checks an activation without a file (for example one that came in a workflow input).
func (a Activation) Validate() error {
	ps := a.validate()
	if len(ps) == 0 {
		return nil
	}
	for i := range ps {
		ps[i].File = a.File
		if ps[i].File == "" {
			ps[i].File = "activation " + a.ID
		}
	}
	return ps
}

func (a Activation) validate() Problems {
	var ps Problems
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	oneOf := func(path, v string, allowed []string) {
		for _, x := range allowed {
			if v == x {
				return
			}
		}
		if v == "" {
			add(path, "is required (one of: %s)", strings.Join(allowed, ", "))
			return
		}
		add(path, "%q is not allowed (one of: %s)", v, strings.Join(allowed, ", "))
	}

	if !idPattern.MatchString(a.ID) {
		add("id", "%q must match %s (lowercase letters, digits and dashes, at most 63 characters)", a.ID, idPattern)
	}

	// Source.
	oneOf("source.type", a.Source.Type, sourceTypes)
	switch a.Source.Type {
	case "duckdb":
		if a.State.BigQuery != nil {
			add("state.bigquery", "a duckdb source keeps its state in DuckDB: use state.duckdb")
		}
	case "bigquery":
		bq := a.State.BigQuery
		switch {
		case bq == nil:
			add("state.bigquery", "is required for a bigquery source: {project: PROJECT, dataset: DATASET}")
		default:
			if !bqProject.MatchString(bq.Project) {
				add("state.bigquery.project", "%q is not a Google Cloud project id", bq.Project)
			}
			if !bqDataset.MatchString(bq.Dataset) {
				add("state.bigquery.dataset", "%q must be letters, digits and underscores", bq.Dataset)
			}
			if bq.MaximumBytesBilled < 0 {
				add("state.bigquery.maximumBytesBilled", "must be positive")
			}
		}
		if a.State.DuckDB != nil {
			add("state.duckdb", "a bigquery source keeps its state in BigQuery: use state.bigquery")
		}
		if a.Source.DuckDB != nil {
			add("source.duckdb", "is only for source.type duckdb")
		}
	}
	if d := time.Duration(a.State.RejectionsRetention); d < 0 || (d > 0 && d < time.Hour) {
		add("state.rejectionsRetention", "%s is too short (at least 1h, e.g. 720h for 30 days)", d)
	}
	if strings.TrimSpace(a.Source.Query) == "" {
		add("source.query", "is required: the SQL query of the model")
	}
	if a.Source.PrimaryKey == "" {
		add("source.primaryKey", "is required: the model column that identifies a row")
	}

	// Destination.
	d := a.Destination
	oneOf("destination.type", d.Type, []string{"iterable"})
	oneOf("destination.iterable.region", d.Iterable.Region, regions)
	oneOf("destination.iterable.projectType", d.Iterable.ProjectType, projectTypes)
	if d.Iterable.Region == "eu" && d.Iterable.ProjectType == "email" {
		add("destination.iterable.projectType", "Iterable's EU data center hosts only userId-based and hybrid projects, not email-based ones")
	}
	if u := d.Iterable.BaseURL; u != "" {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			add("destination.iterable.baseURL", "%q must be an http(s) URL such as https://api.iterable.com", u)
		}
	}
	key := d.Iterable.APIKey
	switch {
	case key.Env == "" && key.File == "":
		add("destination.iterable.apiKey", "is required: {env: VAR} or {file: /path/to/key}; never the key itself")
	case key.Env != "" && key.File != "":
		add("destination.iterable.apiKey", "set either env or file, not both")
	}
	oneOf("destination.mode", d.Mode, modes)
	if d.Nulls != "" {
		oneOf("destination.nulls", d.Nulls, nulls)
	}
	if d.Identifier.Column == "" {
		add("destination.identifier.column", "is required: the model column that holds the user's email or userId")
	}
	oneOf("destination.identifier.field", d.Identifier.Field, idFields)
	if d.Iterable.ProjectType == "userId" && d.Identifier.Field == "email" {
		add("destination.identifier.field", "userId-based projects identify users by userId, not email")
	}
	if d.OnRemoved != "" {
		oneOf("destination.onRemoved", d.OnRemoved, onRemoved)
	}
	if l := d.List; l != nil {
		switch {
		case l.Name == "" && l.ID == 0:
			add("destination.list", "set name (found, or created when missing) or id (an existing static list)")
		case l.Name != "" && l.ID != 0:
			add("destination.list", "set either name or id, not both")
		case l.ID < 0:
			add("destination.list.id", "%d is not a list id", l.ID)
		case strings.TrimSpace(l.Name) != l.Name:
			add("destination.list.name", "%q has leading or trailing spaces", l.Name)
		}
		if l.OnLeave != "" {
			oneOf("destination.list.onLeave", l.OnLeave, []string{"unsubscribe", "keep"})
		}
		if l.RequestsPerSecond < 0 {
			add("destination.list.requestsPerSecond", "must be positive")
		}
		if d.OnRemoved != "" && d.OnRemoved != "keep" {
			add("destination.onRemoved", "a list activation says what leaving rows do with list.onLeave")
		}
	} else if len(d.Fields) == 0 {
		add("destination.fields", "map at least one column to an Iterable field")
	}
	seenField := map[string]int{}
	for i, f := range d.Fields {
		p := fmt.Sprintf("destination.fields[%d]", i)
		if f.Column == "" {
			add(p+".column", "is required: the model column")
		}
		switch {
		case f.Field == "":
			add(p+".field", "is required: the exact Iterable field name")
		case reservedFields[f.Field]:
			add(p+".field", "%q identifies the user; map it with destination.identifier instead", f.Field)
		case strings.TrimSpace(f.Field) != f.Field:
			add(p+".field", "%q has leading or trailing spaces", f.Field)
		}
		if j, dup := seenField[f.Field]; dup && f.Field != "" {
			add(p+".field", "%q is already mapped by destination.fields[%d]", f.Field, j)
		}
		seenField[f.Field] = i
	}

	// Schedule.
	if s := a.Schedule; s != nil {
		switch {
		case s.Cron == "" && s.Every == "":
			add("schedule", "set cron or every, or remove schedule for manual runs only")
		case s.Cron != "" && s.Every != "":
			add("schedule", "set either cron or every, not both")
		case s.Cron != "":
			if err := checkCron(s.Cron); err != nil {
				add("schedule.cron", "%q: %v", s.Cron, err)
			}
		default:
			if _, err := ParseEvery(s.Every); err != nil {
				add("schedule.every", "%q: %v", s.Every, err)
			}
		}
	}

	// Sync settings.
	if s := a.Sync; s.UsersPerRequest < 0 || s.UsersPerRequest > 1000 {
		add("sync.usersPerRequest", "%d must be between 1 and 1000", s.UsersPerRequest)
	}
	if a.Sync.ChunkRows < 0 {
		add("sync.chunkRows", "must be positive")
	}
	if a.Sync.Concurrency < 0 || a.Sync.Concurrency > 64 {
		add("sync.concurrency", "%d must be between 1 and 64", a.Sync.Concurrency)
	}
	if a.Sync.LookupMaxRows < 0 {
		add("sync.lookupMaxRows", "must be positive")
	}
	if a.Sync.RequestsPerSecond < 0 {
		add("sync.requestsPerSecond", "must be positive")
	}
	if hb := a.Sync.HeartbeatTimeout; hb != 0 && time.Duration(hb) < 2*time.Second {
		add("sync.heartbeatTimeout", "%s is too short (at least 2s)", time.Duration(hb))
	}
	for i, n := range a.Notify {
		p := fmt.Sprintf("notify[%d]", i)
		switch u := n.Webhook.URL; {
		case u.Env == "" && u.File == "":
			add(p+".webhook.url", "is required: {env: VAR} or {file: /path}; never the URL itself (it is a credential)")
		case u.Env != "" && u.File != "":
			add(p+".webhook.url", "set either env or file, not both")
		}
		if n.Format != "" {
			oneOf(p+".format", n.Format, []string{"json", "slack"})
		}
		for j, e := range n.On {
			oneOf(fmt.Sprintf("%s.on[%d]", p, j), e, NotifyEvents)
		}
	}
	ps = append(ps, a.Thresholds.problems()...)
	return ps
}

// ParseEvery parses an interval such as 90m, 4h or 1d.
func ParseEvery(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil {
		return 0, fmt.Errorf("not an interval (examples: 15m, 4h, 1d)")
	}
	if d < time.Minute {
		return 0, fmt.Errorf("must be at least 1m")
	}
	return d, nil
}

// checkCron accepts the five-field cron syntax that Temporal schedules take.
func checkCron(expr string) error {
	f := strings.Fields(expr)
	if len(f) != 5 {
		return fmt.Errorf("needs 5 fields (minute hour day-of-month month day-of-week), has %d", len(f))
	}
	for i, x := range f {
		for _, r := range x {
			if !strings.ContainsRune("0123456789*/,-?LW#", r) && !(i >= 3 && (r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z')) {
				return fmt.Errorf("field %d has unexpected character %q", i+1, r)
			}
		}
		if err := cronFields[i].check(x); err != nil {
			return fmt.Errorf("%s %w", cronFields[i].name, err)
		}
	}
	return nil
}

// cronField is one field of a cron expression: its name, range and value names.
type cronField struct {
	name     string
	min, max int
	names    []string // names of min, min+1, … (months, days of the week)
}

var cronFields = []cronField{
	{name: "minute", min: 0, max: 59},
	{name: "hour", min: 0, max: 23},
	{name: "day-of-month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: []string{"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}},
	{name: "day-of-week", min: 0, max: 7, names: []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}},
}

// check reads a field's comma-separated items (*, N, A-B, with an optional /STEP) and refuses
// values out of range, as Temporal's schedule would at apply time. Items with Quartz-style L, W
// or # are left to Temporal.
func (c cronField) check(field string) error {
	for _, item := range strings.Split(field, ",") {
		if strings.ContainsAny(strings.ToUpper(item), "LW#") && !c.isName(item) {
			continue
		}
		base, step, hasStep := strings.Cut(item, "/")
		if hasStep {
			if n, err := strconv.Atoi(step); err != nil || n < 1 {
				return fmt.Errorf("step %q must be a positive number", step)
			}
		}
		if base == "*" || base == "?" {
			continue
		}
		lo, hi, isRange := strings.Cut(base, "-")
		a, err := c.value(lo)
		if err != nil {
			return err
		}
		if isRange {
			b, err := c.value(hi)
			if err != nil {
				return err
			}
			if b < a {
				return fmt.Errorf("range %s is backwards", base)
			}
		}
	}
	return nil
}

func (c cronField) isName(s string) bool {
	for _, n := range c.names {
		if strings.EqualFold(s, n) {
			return true
		}
	}
	return false
}

func (c cronField) value(s string) (int, error) {
	for i, n := range c.names {
		if strings.EqualFold(s, n) {
			return c.min + i, nil
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	if v < c.min || v > c.max {
		return 0, fmt.Errorf("%d is not in range [%d-%d]", v, c.min, c.max)
	}
	return v, nil
}
