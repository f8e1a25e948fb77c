package bigquery

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/ipc"
	"google.golang.org/api/googleapi"

	"github.com/activation-engine/activations/internal/warehouse"
)

// ReadChunk streams the rows of one chunk with Seq > AfterSeq, in Seq order, from a query that
// selects a seq range of the plan (never OFFSET). With Options.StorageRead the result is read
// through the Storage Read API, else through the REST API's pages. Values are normalised to
// plain Go types (see normalize). An error returned by fn stops the read and is returned as is.
func (p *Planner) ReadChunk(ctx context.Context, req warehouse.ChunkRequest, fn func(warehouse.Row) error) error {
	id := req.ActivationID
	what := fmt.Sprintf("read chunk %d of %s", req.Chunk.Index, id)
	if err := warehouse.CheckPlanTable(req.Table, id); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	fields, err := warehouse.SortedFields(req.Fields)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	known := ""
	if req.KnownTable != "" {
		if err := warehouse.CheckPlanTable(req.KnownTable, id); err != nil {
			return fmt.Errorf("%s: known identifiers: %w", what, err)
		}
		known = p.qualified(req.KnownTable)
	}
	after := req.After()
	if after >= req.Chunk.LastSeq {
		return nil // resumed past the end: nothing left to read
	}
	// An add changes every field; the plan stores no list for it. The list is shared, read-only,
	// by every add of the chunk.
	all := make([]string, len(fields))
	for i, f := range fields {
		all[i] = f.Field
	}
	j := job{step: "read", activationID: id, table: req.Table,
		sql:    readChunkSQL(p.qualified(req.Table), known, req.KnownLowerCase, fields),
		params: []bigquery.QueryParameter{{Name: "after", Value: after}, {Name: "last", Value: req.Chunk.LastSeq}}}

	var fnErr, decodeErr error
	n := 0
	handle := func(row []bigquery.Value, schema bigquery.Schema) error {
		r, err := chunkRow(row, schema, fields, all)
		if err != nil {
			decodeErr = err
			return err
		}
		if err := fn(r); err != nil {
			fnErr = err
			return err
		}
		n++
		return nil
	}
	if p.storage != nil {
		err = p.readStorage(ctx, j, handle)
	} else {
		err = p.query(ctx, j, handle)
	}
	switch {
	case err == nil:
		return nil
	case fnErr != nil && errors.Is(err, fnErr):
		return fnErr
	case decodeErr != nil:
		return fmt.Errorf("%s from %s: row %d: %w", what, req.Table, n, decodeErr)
	}
	return fmt.Errorf("%s from %s after %d rows: %w", what, req.Table, n, p.explain(err))
}

// readStorage runs the query as a job and reads its result table with the Storage Read API
// (one ordered stream, since the query ends with ORDER BY).
func (p *Planner) readStorage(ctx context.Context, j job, fn rowFunc) error {
	// Cancelling stops the client's stream workers when fn ends the read early.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	delivered := false
	err := p.retry(ctx, j, func() error {
		bj, err := p.runJob(ctx, p.storage, j)
		if err != nil {
			return err
		}
		it, err := bj.Read(ctx)
		if err != nil {
			return err
		}
		deliver := func(row []bigquery.Value, schema bigquery.Schema) error {
			delivered = true
			return fn(row, schema)
		}
		if ait, ok := arrowStream(it); ok {
			return iterateArrow(ait, it.Schema, deliver)
		}
		return iterate(it, deliver)
	}, func() bool { return !delivered })
	var cb *callbackError
	if errors.As(err, &cb) {
		return cb.err
	}
	return err
}

// arrowStream is the result's Arrow record batches when every column has a type that
// iterateArrow decodes (INT64, FLOAT64, BOOL, STRING, TIMESTAMP, ARRAY<STRING>) and the stream's
// Arrow schema says the same; ok is false otherwise, and nothing of the result has been read.
// The client's own decoding formats every INT64, FLOAT64 and BOOL cell with fmt.Sprintf and
// parses it back into a []bigquery.Value: a third of the BigQuery mode's sending CPU.
func arrowStream(it *bigquery.RowIterator) (bigquery.ArrowIterator, bool) {
	if !it.IsAccelerated() || len(it.Schema) == 0 {
		return nil, false
	}
	for _, f := range it.Schema {
		if arrowTypeOf(f) == nil {
			return nil, false
		}
	}
	ait, err := it.ArrowIterator()
	if err != nil {
		return nil, false
	}
	rdr, err := ipc.NewReader(bytes.NewReader(ait.SerializedArrowSchema()))
	if err != nil {
		return nil, false
	}
	defer rdr.Release()
	as := rdr.Schema()
	if as == nil || len(as.Fields()) != len(it.Schema) {
		return nil, false
	}
	for i, f := range as.Fields() {
		if !arrow.TypeEqual(f.Type, arrowTypeOf(it.Schema[i])) {
			return nil, false
		}
	}
	return ait, true
}

// arrowTypeOf is the Arrow type the Storage Read API sends a column of this type in, nil for
// the types iterateArrow leaves to the client.
func arrowTypeOf(f *bigquery.FieldSchema) arrow.DataType {
	var t arrow.DataType
	switch f.Type {
	case bigquery.IntegerFieldType:
		t = arrow.PrimitiveTypes.Int64
	case bigquery.FloatFieldType:
		t = arrow.PrimitiveTypes.Float64
	case bigquery.BooleanFieldType:
		t = arrow.FixedWidthTypes.Boolean
	case bigquery.StringFieldType:
		t = arrow.BinaryTypes.String
	case bigquery.TimestampFieldType:
		if f.Repeated {
			return nil
		}
		t = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	default:
		return nil
	}
	if f.Repeated {
		if f.Type != bigquery.StringFieldType {
			return nil
		}
		return arrow.ListOf(t)
	}
	return t
}

// iterateArrow decodes the record batches into the values the client would give (int64,
// float64, bool, string, time.Time in UTC, []bigquery.Value of strings, nil for NULL) and calls
// fn for every row; the row slice is reused from row to row.
func iterateArrow(ait bigquery.ArrowIterator, schema bigquery.Schema, fn rowFunc) error {
	rdr, err := ipc.NewReader(bigquery.NewArrowIteratorReader(ait))
	if err != nil {
		return readError(err)
	}
	defer rdr.Release()
	row := make([]bigquery.Value, len(schema))
	for rdr.Next() {
		rec := rdr.Record()
		cols := rec.Columns()
		if len(cols) != len(schema) {
			return fmt.Errorf("arrow record batch has %d columns, want %d", len(cols), len(schema))
		}
		for i := range int(rec.NumRows()) {
			for c, col := range cols {
				row[c] = arrowValue(col, i)
			}
			if err := fn(row, schema); err != nil {
				return &callbackError{err}
			}
		}
	}
	if err := rdr.Err(); err != nil && !errors.Is(err, io.EOF) {
		return readError(err)
	}
	return nil
}

// arrowValue is row i of a column of one of arrowTypeOf's types.
func arrowValue(col arrow.Array, i int) bigquery.Value {
	if col.IsNull(i) {
		return nil
	}
	switch a := col.(type) {
	case *array.Int64:
		return a.Value(i)
	case *array.Float64:
		return a.Value(i)
	case *array.Boolean:
		return a.Value(i)
	case *array.String:
		return strings.Clone(a.Value(i)) // the batch's buffer is not ours to keep
	case *array.Timestamp:
		return time.UnixMicro(int64(a.Value(i))).UTC()
	case *array.List:
		from, to := a.ValueOffsets(i)
		out := make([]bigquery.Value, 0, to-from)
		for j := from; j < to; j++ {
			out = append(out, arrowValue(a.ListValues(), int(j)))
		}
		return out
	}
	return nil
}

// chunkRow decodes one row of readChunkSQL, as the DuckDB planner fills a warehouse.Row.
func chunkRow(row []bigquery.Value, schema bigquery.Schema, fields []warehouse.Field, all []string) (warehouse.Row, error) {
	if want := warehouse.ChunkColValues + len(fields) + 1; len(row) != want {
		return warehouse.Row{}, fmt.Errorf("got %d columns, want %d", len(row), want)
	}
	at := func(i int) *bigquery.FieldSchema {
		if i < len(schema) {
			return schema[i]
		}
		return nil
	}
	str := func(i int) string { s, _ := row[i].(string); return s }
	flag := func(i int) bool { b, _ := row[i].(bool); return b }
	seq, err := asInt(row[warehouse.ChunkColSeq])
	if err != nil {
		return warehouse.Row{}, fmt.Errorf("seq: %w", err)
	}
	op := str(warehouse.ChunkColOp)
	r := warehouse.Row{Seq: seq, Key: str(warehouse.ChunkColKey), Op: warehouse.Op(op), Identifier: normalize(row[warehouse.ChunkColIdent], at(warehouse.ChunkColIdent)),
		Known: flag(len(row) - 1), RowHash: str(warehouse.ChunkColRowHash), KeepProfile: flag(warehouse.ChunkColKeepProfile)}
	if row[warehouse.ChunkColPriorOutcome] != nil {
		r.Prior = &warehouse.Prior{Outcome: warehouse.Outcome(str(warehouse.ChunkColPriorOutcome)), Class: warehouse.Class(str(warehouse.ChunkColPriorClass)),
			Field: str(warehouse.ChunkColPriorField), Reason: str(warehouse.ChunkColPriorReason), Hold: flag(warehouse.ChunkColHold)}
	}
	if r.Op == warehouse.OpRemove {
		// A removal names the profile it was last synced with (nil when the state has none).
		r.Identifier = nil
		if old, ok := row[warehouse.ChunkColOldIdent].(string); ok {
			r.Identifier = old
		}
	} else {
		if old, ok := row[warehouse.ChunkColOldIdent].(string); ok {
			r.PreviousIdentifier = old // the identifier changed: another profile
		}
		r.Values = warehouse.Values{Names: all, Vals: make([]any, len(fields))}
		for i := range fields {
			r.Values.Vals[i] = normalize(row[warehouse.ChunkColValues+i], at(warehouse.ChunkColValues+i))
		}
	}
	switch r.Op {
	case warehouse.OpAdd:
		r.Changed = all
	case warehouse.OpChange:
		list, _ := row[warehouse.ChunkColChanged].([]bigquery.Value)
		r.Changed = make([]string, 0, len(list))
		for _, c := range list {
			if s, ok := c.(string); ok {
				r.Changed = append(r.Changed, s)
			}
		}
	case warehouse.OpRemove:
	default:
		return warehouse.Row{}, fmt.Errorf("unknown op %q", op)
	}
	return r, nil
}

// TopReasons counts distinct keys per outcome and reason, most frequent first.
func (p *Planner) TopReasons(ctx context.Context, activationID, runID string, limit int) ([]warehouse.ReasonCount, error) {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return nil, fmt.Errorf("top reasons: %w", err)
	}
	j := job{step: "top-reasons", activationID: activationID, runID: runID,
		sql:    topReasonsSQL(p.qualified(RejectionsTable), limit > 0),
		params: []bigquery.QueryParameter{{Name: "activation_id", Value: activationID}, {Name: "run_id", Value: runID}}}
	if limit > 0 {
		j.params = append(j.params, bigquery.QueryParameter{Name: "limit", Value: int64(limit)})
	}
	var out []warehouse.ReasonCount
	err := p.query(ctx, j, func(row []bigquery.Value, _ bigquery.Schema) error {
		if len(row) != 3 {
			return fmt.Errorf("got %d columns, want 3", len(row))
		}
		outcome, _ := row[0].(string)
		reason, _ := row[1].(string)
		n, err := asInt(row[2])
		if err != nil {
			return err
		}
		out = append(out, warehouse.ReasonCount{Outcome: warehouse.Outcome(outcome), Reason: reason, Count: n})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("top reasons of %s run %s: %w", activationID, runID, p.explain(err))
	}
	return out, nil
}

// Commit applies the finished chunks' rows that the run did not reject and that no known
// rejection holds back (warehouse.HeldByPrior, with req.Conflicts) to the state with one MERGE.
// The counts come from the plan, not from DML statistics, so a repeated Commit reports the same
// result (and changes nothing but synced_at).
func (p *Planner) Commit(ctx context.Context, req warehouse.CommitRequest) (warehouse.CommitResult, error) {
	id := req.ActivationID
	var res warehouse.CommitResult
	if err := warehouse.CheckActivationID(id); err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	if err := warehouse.CheckPlanTable(req.Table, id); err != nil {
		return res, fmt.Errorf("commit %s: %w", id, err)
	}
	if len(req.Chunks) == 0 {
		return res, nil
	}
	if req.RunID == "" {
		return res, fmt.Errorf("commit %s: run id is empty", id)
	}
	chunks := make([]int64, len(req.Chunks))
	for i, c := range req.Chunks {
		chunks[i] = int64(c)
	}
	defer p.lock(id)()
	start := time.Now()
	j := job{step: "commit", activationID: id, runID: req.RunID, table: req.Table,
		sql: commitScript(p.qualified(req.Table), p.qualified(warehouse.StateTable(id)), p.qualified(RejectionsTable)),
		params: []bigquery.QueryParameter{{Name: "activation_id", Value: id}, {Name: "run_id", Value: req.RunID},
			{Name: "chunks", Value: chunks}, {Name: "conflicts", Value: warehouse.ConflictPairs(req.Conflicts)}}}
	rows := 0
	err := p.query(ctx, j, func(row []bigquery.Value, _ bigquery.Schema) error {
		rows++
		if len(row) != 3 {
			return fmt.Errorf("got %d columns, want 3", len(row))
		}
		var err error
		for i, dst := range []*int64{&res.Upserted, &res.Deleted, &res.Held} {
			if *dst, err = asInt(row[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && rows != 1 {
		err = fmt.Errorf("the commit script returned %d count rows, want 1", rows)
	}
	if err != nil {
		return warehouse.CommitResult{}, fmt.Errorf("commit %s run %s: %w", id, req.RunID, p.explain(err))
	}
	p.log.DebugContext(ctx, "plan committed", "activation", id, "run", req.RunID, "table", req.Table,
		"chunks", len(req.Chunks), "upserted", res.Upserted, "deleted", res.Deleted, "held", res.Held,
		"took", time.Since(start))
	return res, nil
}

// DropPlan deletes a plan (or known-identifier) table; dropping it twice is harmless. It is an
// API call, not a job: free and immediate.
func (p *Planner) DropPlan(ctx context.Context, table string) error {
	if err := warehouse.CheckPlanTable(table, ""); err != nil {
		return fmt.Errorf("drop plan: %w", err)
	}
	if err := p.bq.Dataset(p.dataset).Table(table).Delete(ctx); err != nil && !isNotFound(err) {
		return fmt.Errorf("drop plan %s: %w", table, p.explain(err))
	}
	return nil
}

// uploadChunk bounds the memory of LoadIdentifiers: the client buffers one chunk of the upload.
const uploadChunk = 8 << 20

var errUploadEnded = errors.New("the upload of identifiers ended")

// LoadIdentifiers streams the identifiers as newline-delimited JSON into a load job (free of
// query costs; never all in memory: an io.Pipe feeds a resumable upload chunk by chunk), then
// deduplicates them into the run's known table, which expires like a plan table.
func (p *Planner) LoadIdentifiers(ctx context.Context, activationID, runID string, lowerCase bool,
	load func(add func(id string) error) error) (string, int64, error) {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return "", 0, fmt.Errorf("load identifiers: %w", err)
	}
	table := warehouse.KnownTable(activationID, runID)
	what := "load identifiers of " + activationID
	schema := bigquery.Schema{{Name: "id", Type: bigquery.StringFieldType}}
	staging := p.bq.Dataset(p.dataset).Table(table + "_staging")
	// A retried load starts from an empty staging table, which expires even if never dropped.
	if err := staging.Delete(ctx); err != nil && !isNotFound(err) {
		return "", 0, fmt.Errorf("%s: %w", what, p.explain(err))
	}
	err := staging.Create(ctx, &bigquery.TableMetadata{Schema: schema, ExpirationTime: time.Now().Add(p.expiration)})
	if err != nil && !isConflict(err) {
		return "", 0, fmt.Errorf("%s: %w", what, p.explain(err))
	}
	defer func() {
		if err := staging.Delete(context.WithoutCancel(ctx)); err != nil && !isNotFound(err) {
			p.log.WarnContext(ctx, "could not drop staging table", "activation", activationID, "error", err)
		}
	}()

	pr, pw := io.Pipe()
	loaded := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, 256<<10)
		enc := json.NewEncoder(bw)
		enc.SetEscapeHTML(false)
		err := load(func(id string) error {
			return enc.Encode(struct {
				ID string `json:"id"`
			}{id})
		})
		if err == nil {
			err = bw.Flush()
		}
		_ = pw.CloseWithError(err) // nil: the upload reads EOF
		loaded <- err
	}()
	src := bigquery.NewReaderSource(pr)
	src.SourceFormat = bigquery.JSON
	src.Schema = schema
	loader := staging.LoaderFrom(src)
	loader.WriteDisposition = bigquery.WriteTruncate
	loader.CreateDisposition = bigquery.CreateNever
	loader.Labels = labels("load-identifiers", activationID, runID, table)
	loader.Location = p.location
	loader.MediaOptions = []googleapi.MediaOption{googleapi.ChunkSize(uploadChunk)}
	lj, runErr := loader.Run(ctx)
	_ = pr.CloseWithError(errUploadEnded) // unblocks load if the upload stopped reading early
	loadErr := <-loaded
	switch {
	case loadErr != nil && !errors.Is(loadErr, errUploadEnded):
		return "", 0, fmt.Errorf("%s: %w", what, loadErr)
	case runErr != nil:
		return "", 0, fmt.Errorf("%s: load job: %w", what, p.explain(runErr))
	}
	status, err := lj.Wait(ctx)
	if err == nil {
		err = status.Err()
	}
	if err != nil {
		return "", 0, fmt.Errorf("%s: load job: %w", what, p.explain(err))
	}

	j := job{step: "load-identifiers", activationID: activationID, runID: runID, table: table,
		sql: knownScript(p.qualified(table), p.qualified(table+"_staging"), lowerCase, int64(p.expiration/time.Second))}
	var n int64
	err = p.query(ctx, j, func(row []bigquery.Value, _ bigquery.Schema) error {
		if len(row) != 1 {
			return fmt.Errorf("got %d columns, want 1", len(row))
		}
		var err error
		n, err = asInt(row[0])
		return err
	})
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", what, p.explain(err))
	}
	return table, n, nil
}
