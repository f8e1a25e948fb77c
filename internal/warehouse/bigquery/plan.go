package bigquery

import (
	"context"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/activation-engine/activations/internal/warehouse"
)

// DryRunResult is what BigQuery says about a query without running it.
type DryRunResult struct {
	// BytesProcessed is the number of bytes the query would scan (and bill, on demand).
	BytesProcessed int64 `json:"bytesProcessed"`
	// Schema is the query's result, column by column.
	Schema []Column `json:"schema"`
	// Unsupported describes the columns whose values cannot be sent, e.g.
	// "column geo: FOO cannot be sent: unknown BigQuery type". Every type BigQuery documents
	// today is supported (see normalize), so it lists only types added later.
	Unsupported []string `json:"unsupported,omitempty"`
}

// DryRun validates a model query without running it (it costs nothing) and returns the bytes it
// would scan and its columns. Errors of the query wrap warehouse.ErrInvalidModel.
func (p *Planner) DryRun(ctx context.Context, query string) (DryRunResult, error) {
	if strings.TrimSpace(query) == "" {
		return DryRunResult{}, fmt.Errorf("dry run: %w: the query is empty", warehouse.ErrInvalidModel)
	}
	stats, err := p.dryRun(ctx, job{step: "dry-run", sql: trimQuery(query)})
	if err != nil {
		return DryRunResult{}, p.modelError(ctx, "dry run", err, true)
	}
	res := DryRunResult{BytesProcessed: stats.TotalBytesProcessed, Schema: []Column{}}
	for _, fs := range querySchema(stats) {
		res.Schema = append(res.Schema, Column{Name: fs.Name, Type: typeName(fs)})
		res.Unsupported = append(res.Unsupported, unsupported("column "+fs.Name, fs)...)
	}
	return res, nil
}

// unsupported lists the parts of a column whose type this package does not know.
func unsupported(path string, fs *bigquery.FieldSchema) []string {
	if fs.Type == bigquery.RecordFieldType {
		var out []string
		for _, sub := range fs.Schema {
			out = append(out, unsupported(path+"."+sub.Name, sub)...)
		}
		return out
	}
	elem := *fs
	elem.Repeated = false
	if _, ok := kindOf(&elem); !ok {
		return []string{fmt.Sprintf("%s: %s cannot be sent: unknown BigQuery type (cast it in the model, e.g. to STRING)",
			path, typeName(fs))}
	}
	return nil
}

func querySchema(stats *bigquery.JobStatistics) bigquery.Schema {
	if qs, ok := stats.Details.(*bigquery.QueryStatistics); ok {
		return qs.Schema
	}
	return nil
}

// Plan validates the model with a dry run (free; it also yields the column types), then runs one
// script that snapshots the model, records duplicate keys and shared identifiers, diffs against
// the state, writes the plan table, refreshes the state rows that only lost an unmapped field
// and prunes the activation's old rejections. Only counts come back.
func (p *Planner) Plan(ctx context.Context, req warehouse.PlanRequest) (warehouse.Plan, error) {
	id := req.ActivationID
	fields, err := checkPlanRequest(req)
	if err != nil {
		return warehouse.Plan{}, fmt.Errorf("plan %s: %w", id, err)
	}
	chunkRows := req.ChunkRows
	if chunkRows <= 0 {
		chunkRows = warehouse.DefaultChunkRows
	}
	retention := req.RejectionsRetention
	if retention <= 0 {
		retention = warehouse.DefaultRejectionsRetention
	}
	defer p.lock(id)()
	start := time.Now()
	table := warehouse.PlanTable(id, req.RunID)
	what := "plan " + id

	validate := job{step: "plan-validate", activationID: id, runID: req.RunID, table: table,
		sql: snapshotSelect(req, fields)}
	stats, err := p.dryRun(ctx, validate)
	if err != nil {
		return warehouse.Plan{}, p.modelError(ctx, what, err, true)
	}
	schema := querySchema(stats)
	if err := checkIdentifierType(req, schema); err != nil {
		return warehouse.Plan{}, fmt.Errorf("%s: %w", what, err)
	}
	plan := warehouse.Plan{Table: table, Columns: describeColumns(schema, fields)}

	script := job{step: "plan", activationID: id, runID: req.RunID, table: table,
		sql: planScript(req, fields, p.qualified(table), p.qualified(warehouse.StateTable(id)), p.qualified(RejectionsTable),
			chunkRows, int64(p.expiration/time.Second)),
		params: []bigquery.QueryParameter{
			{Name: "activation_id", Value: id}, {Name: "run_id", Value: req.RunID},
			{Name: "duplicate_format", Value: warehouse.DuplicateKeyReasonFormat},
			{Name: "shared_format", Value: warehouse.SharedIdentifierReasonFormat},
			{Name: "rejections_cutoff", Value: p.rejectionsCutoff(start, retention)},
		}}
	var parseErr error
	rows := 0
	err = p.query(ctx, script, func(row []bigquery.Value, _ bigquery.Schema) error {
		rows++
		parseErr = parseSummary(row, &plan)
		return parseErr
	})
	switch {
	case parseErr != nil:
		return warehouse.Plan{}, fmt.Errorf("plan %s: read the plan summary: %w", id, parseErr)
	case err != nil:
		return warehouse.Plan{}, p.modelError(ctx, what, err, false)
	case rows != 1:
		return warehouse.Plan{}, fmt.Errorf("plan %s: the plan script returned %d summary rows, want 1", id, rows)
	}
	clean := plan.Counts.ModelRows - plan.Counts.NullKeys - plan.Counts.DuplicateKeys - plan.Counts.DuplicateIdentifiers
	plan.Counts.Unchanged = clean - plan.Counts.Added - plan.Counts.Changed

	c := plan.Counts
	p.log.DebugContext(ctx, "plan written", "activation", id, "run", req.RunID, "table", table,
		"model_rows", c.ModelRows, "added", c.Added, "changed", c.Changed, "removed", c.Removed,
		"unchanged", c.Unchanged, "null_keys", c.NullKeys, "duplicate_keys", c.DuplicateKeys,
		"duplicate_identifiers", c.DuplicateIdentifiers, "known", c.Known, "refreshed", c.Refreshed,
		"chunks", len(plan.Chunks), "model_bytes", stats.TotalBytesProcessed, "took", time.Since(start))
	return plan, nil
}

// checkPlanRequest adds BigQuery's own limit to the shared checks: names must be valid UTF-8.
// BaseDir has no meaning here: BigQuery models name their tables.
func checkPlanRequest(req warehouse.PlanRequest) ([]warehouse.Field, error) {
	fields, err := warehouse.CheckPlanRequest(req)
	if err != nil {
		return nil, err
	}
	for _, f := range fields {
		if !validUTF8(f.Field, f.Column) {
			return nil, fmt.Errorf("%w: a mapped field or column name is not valid UTF-8", warehouse.ErrInvalidModel)
		}
	}
	if !validUTF8(req.PrimaryKey, req.Identifier) {
		return nil, fmt.Errorf("%w: a column name is not valid UTF-8", warehouse.ErrInvalidModel)
	}
	return fields, nil
}

// checkIdentifierType refuses an identifier column that BigQuery cannot CAST to STRING (JSON,
// GEOGRAPHY, STRUCT, ARRAY): the dry run accepts such a model, since the snapshot keeps the
// identifier in its type, but the plan script compares identifiers as text and would fail
// midway, after scanning the model. The snapshot's ident column carries the identifier's type.
func checkIdentifierType(req warehouse.PlanRequest, schema bigquery.Schema) error {
	if req.Identifier == "" {
		return nil
	}
	for _, fs := range schema {
		if !strings.EqualFold(fs.Name, "ident") {
			continue
		}
		switch {
		case fs.Repeated, fs.Type == bigquery.JSONFieldType, fs.Type == bigquery.GeographyFieldType,
			fs.Type == bigquery.RecordFieldType:
			return fmt.Errorf("%w: activation %s: the identifier column %q has type %s, which BigQuery cannot cast "+
				"to STRING: cast it in the model (e.g. JSON_VALUE(...), ST_ASTEXT(...) or one STRING field of the STRUCT)",
				warehouse.ErrInvalidModel, req.ActivationID, req.Identifier, typeName(fs))
		}
		return nil
	}
	return nil
}

// describeColumns reads the types of the mapped columns from the snapshot's schema, in field
// order.
func describeColumns(schema bigquery.Schema, fields []warehouse.Field) []warehouse.ColumnType {
	byName := map[string]*bigquery.FieldSchema{}
	for _, fs := range schema {
		byName[strings.ToLower(fs.Name)] = fs
	}
	out := make([]warehouse.ColumnType, len(fields))
	for i, f := range fields {
		out[i] = warehouse.ColumnType{Field: f.Field, Column: f.Column, Kind: warehouse.KindOther}
		if fs, ok := byName[warehouse.ValueColumn(f.Field)]; ok {
			out[i].Type = typeName(fs)
			out[i].Kind, _ = kindOf(fs)
		}
	}
	return out
}

// Columns of the plan script's summary row.
const (
	// model_rows, null_keys, duplicate_keys, duplicate_identifiers, retried, known, refreshed,
	// added, changed, removed: the plan's totals come from the plan table, not from its chunks.
	summaryCounts       = 10
	summaryKnownReasons = summaryCounts
	summaryChunks       = summaryCounts + 1
	summaryColumns      = summaryCounts + 2
)

// parseSummary reads the plan script's last row: the counts, known_reasons (reason, n) and
// chunks.
func parseSummary(row []bigquery.Value, plan *warehouse.Plan) error {
	if len(row) != summaryColumns {
		return fmt.Errorf("summary has %d columns, want %d", len(row), summaryColumns)
	}
	var err error
	c := &plan.Counts
	for i, dst := range []*int64{&c.ModelRows, &c.NullKeys, &c.DuplicateKeys, &c.DuplicateIdentifiers,
		&c.Retried, &c.Known, &c.Refreshed, &c.Added, &c.Changed, &c.Removed} {
		if *dst, err = asInt(row[i]); err != nil {
			return fmt.Errorf("summary column %d: %w", i, err)
		}
	}
	reasons, err := records(row[summaryKnownReasons], 2)
	if err != nil {
		return fmt.Errorf("summary known reasons: %w", err)
	}
	plan.KnownReasons = nil
	for _, cells := range reasons {
		reason, _ := cells[0].(string)
		n, err := asInt(cells[1])
		if err != nil {
			return fmt.Errorf("summary known reason count: %w", err)
		}
		plan.KnownReasons = append(plan.KnownReasons,
			warehouse.ReasonCount{Outcome: warehouse.OutcomeRejected, Reason: reason, Count: n})
	}
	chunks, err := records(row[summaryChunks], 6)
	if err != nil {
		return fmt.Errorf("summary chunks: %w", err)
	}
	plan.Chunks = nil
	for _, cells := range chunks {
		var n [6]int64
		for i := range n {
			if n[i], err = asInt(cells[i]); err != nil {
				return fmt.Errorf("summary chunk value %d: %w", i, err)
			}
		}
		plan.Chunks = append(plan.Chunks, warehouse.Chunk{Index: int(n[0]), FirstSeq: n[1], LastSeq: n[2],
			Added: n[3], Changed: n[4], Removed: n[5]})
	}
	return nil
}

// records reads an ARRAY<STRUCT> value of width fields (NULL is empty).
func records(v bigquery.Value, width int) ([][]bigquery.Value, error) {
	list, ok := v.([]bigquery.Value)
	if !ok && v != nil {
		return nil, fmt.Errorf("got a %T, want a list", v)
	}
	out := make([][]bigquery.Value, 0, len(list))
	for _, item := range list {
		cells, ok := item.([]bigquery.Value)
		if !ok || len(cells) != width {
			return nil, fmt.Errorf("got an item of %T, want %d values", item, width)
		}
		out = append(out, cells)
	}
	return out, nil
}

func asInt(v bigquery.Value) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case nil:
		return 0, nil
	}
	return 0, fmt.Errorf("got a %T, want an INT64", v)
}
