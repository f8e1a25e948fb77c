package duckdb

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/activation-engine/activations/internal/warehouse"
)

// maxBufferedChunkRows bounds the chunks that readChunk reads whole before handing their rows
// over (see readChunk); a larger chunk is read in seq order by DuckDB and streamed.
const maxBufferedChunkRows = 50_000

// readChunk is ReadChunk. It reads the driver's rows directly (database/sql's Scan would
// convert and copy every cell once more) and, for a chunk of at most maxBufferedChunkRows rows,
// without ORDER BY: the plan numbers its rows densely, so the chunk is read whole (one chunk of
// rows in memory, a few MB) and put in seq order in Go, which costs DuckDB no sort of wide rows
// and frees its connection before the first row is sent.
func (p *Planner) readChunk(ctx context.Context, req warehouse.ChunkRequest, fn func(warehouse.Row) error) error {
	id := req.ActivationID
	if err := warehouse.CheckPlanTable(req.Table, id); err != nil {
		return fmt.Errorf("read chunk %d of %s: %w", req.Chunk.Index, id, err)
	}
	fields, err := warehouse.SortedFields(req.Fields)
	if err != nil {
		return fmt.Errorf("read chunk %d of %s: %w", req.Chunk.Index, id, err)
	}
	cols := []string{"seq", "key", "op", "changed_fields", "ident", "old_ident", "row_hash",
		"keep_profile", "prior_outcome", "prior_class", "prior_field", "prior_reason", "hold"}
	// An add changes every field; the plan stores no list for it. The list is shared, read-only,
	// by every add of the chunk, and names every row's values (sorted, as SortedFields are).
	all := make([]string, len(fields))
	for i, f := range fields {
		cols = append(cols, quoteIdent(warehouse.ValueColumn(f.Field)))
		all[i] = f.Field
	}
	after := req.After()
	from := p.qualified(req.Table) + " AS plan"
	cols = append(cols, "false AS known")
	if req.KnownTable != "" {
		if err := warehouse.CheckPlanTable(req.KnownTable, id); err != nil {
			return fmt.Errorf("read chunk %d of %s: known identifiers: %w", req.Chunk.Index, id, err)
		}
		// The known table holds each identifier once (LoadIdentifiers dedups), so the join
		// neither drops nor repeats plan rows.
		cols[len(cols)-1] = "known.id IS NOT NULL AS known"
		ident := "CASE WHEN plan.op = 'remove' THEN plan.old_ident ELSE CAST(plan.ident AS VARCHAR) END"
		if req.KnownLowerCase {
			ident = "lower(" + ident + ")"
		}
		from += ` LEFT JOIN ` + p.qualified(req.KnownTable) + ` AS known ON known.id = ` + ident
	}
	for i, c := range cols {
		if !strings.Contains(c, " AS ") {
			cols[i] = "plan." + c
		}
	}
	buffered := req.Chunk.LastSeq-after <= maxBufferedChunkRows
	// The bounds are written into the SQL, not bound as parameters: DuckDB then prunes the row
	// groups and vectors outside them with their min-max statistics, which a parameter, unknown
	// when the statement is planned, does not allow (BenchmarkReadChunk: about a quarter less CPU).
	// They are integers: nothing a model controls.
	query := `SELECT ` + strings.Join(cols, ", ") + ` FROM ` + from + `
		WHERE plan.seq > ` + strconv.FormatInt(after, 10) + ` AND plan.seq <= ` + strconv.FormatInt(req.Chunk.LastSeq, 10)
	if !buffered {
		query += ` ORDER BY plan.seq`
	}
	failed := func(err error) error {
		return fmt.Errorf("read chunk %d of %s from %s: %w", req.Chunk.Index, id, req.Table, err)
	}

	conn, err := p.db.Conn(ctx)
	if err != nil {
		return failed(err)
	}
	defer conn.Close()
	var (
		out     []warehouse.Row
		fnErr   error // fn's error, returned as is
		n       int
		sorted  = true
		lastSeq = after
	)
	if buffered {
		buf := rowBuffers.Get().(*[]warehouse.Row)
		defer func() { *buf = out[:0]; rowBuffers.Put(buf) }()
		out = slices.Grow((*buf)[:0], int(max(req.Chunk.LastSeq-after, 0)))
	}
	err = conn.Raw(func(dc any) error {
		qc, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		rows, err := qc.QueryContext(ctx, query, nil)
		if err != nil {
			return err
		}
		defer rows.Close()
		// The model's types decide what a value means (a UUID and a BLOB both arrive as bytes).
		conv, err := p.cachedConverters(ctx, req.Table, fields, rows)
		if err != nil {
			return err
		}
		dest := make([]driver.Value, len(cols))
		for {
			if err := rows.Next(dest); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return fmt.Errorf("after %d rows: %w", n, err)
			}
			r, err := chunkRow(dest, fields, all, conv)
			if err != nil {
				return fmt.Errorf("row %d: %w", n, err)
			}
			n++
			if !buffered {
				if fnErr = fn(r); fnErr != nil {
					return fnErr
				}
				continue
			}
			if r.Seq <= lastSeq {
				sorted = false
			}
			lastSeq = r.Seq
			out = append(out, r)
		}
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return failed(err)
	}
	if !sorted {
		slices.SortStableFunc(out, func(a, b warehouse.Row) int {
			switch {
			case a.Seq < b.Seq:
				return -1
			case a.Seq > b.Seq:
				return 1
			}
			return 0
		})
	}
	for i := range out {
		r := out[i]
		out[i] = warehouse.Row{} // the buffer is reused: it must not keep what fn does not
		if err := fn(r); err != nil {
			clear(out[i:])
			return err
		}
	}
	return nil
}

// rowBuffers holds the buffers of buffered chunks, empty, for the next chunk.
var rowBuffers = sync.Pool{New: func() any { return new([]warehouse.Row) }}

// chunkRow builds a plan row from the driver's values of one result row (see the col* offsets).
func chunkRow(dest []driver.Value, fields []warehouse.Field, all []string, conv converters) (warehouse.Row, error) {
	var r warehouse.Row
	seq, ok := dest[warehouse.ChunkColSeq].(int64)
	if !ok {
		return r, fmt.Errorf("seq is %T, not BIGINT", dest[warehouse.ChunkColSeq])
	}
	r.Seq = seq
	r.Key, _ = dest[warehouse.ChunkColKey].(string)
	op, _ := dest[warehouse.ChunkColOp].(string)
	r.Op = warehouse.Op(op)
	switch h := dest[warehouse.ChunkColRowHash].(type) {
	case uint64:
		r.RowHash = strconv.FormatUint(h, 10)
	case string: // a plan table written by a release before hash format 2
		r.RowHash = h
	}
	r.KeepProfile, _ = dest[warehouse.ChunkColKeepProfile].(bool)
	r.Known, _ = dest[len(dest)-1].(bool)
	if outcome, ok := dest[warehouse.ChunkColPriorOutcome].(string); ok {
		hold, _ := dest[warehouse.ChunkColHold].(bool)
		r.Prior = &warehouse.Prior{Outcome: warehouse.Outcome(outcome), Class: warehouse.Class(text(dest[warehouse.ChunkColPriorClass])),
			Field: text(dest[warehouse.ChunkColPriorField]), Reason: text(dest[warehouse.ChunkColPriorReason]), Hold: hold}
	}
	oldIdent, hasOld := dest[warehouse.ChunkColOldIdent].(string)
	if r.Op == warehouse.OpRemove {
		// A removal names the profile it was last synced with (nil when the state has none).
		if hasOld {
			r.Identifier = oldIdent
		}
		return r, nil
	}
	if hasOld {
		r.PreviousIdentifier = oldIdent // the identifier changed: another profile
	}
	r.Identifier = conv.value(len(fields), owned(dest[warehouse.ChunkColIdent]))
	r.Values = warehouse.Values{Names: all, Vals: make([]any, len(fields))}
	for i := range fields {
		r.Values.Vals[i] = conv.value(i, owned(dest[warehouse.ChunkColValues+i]))
	}
	switch r.Op {
	case warehouse.OpAdd:
		r.Changed = all
	case warehouse.OpChange:
		list, _ := dest[warehouse.ChunkColChanged].([]any)
		r.Changed = make([]string, 0, len(list))
		for _, c := range list {
			if s, ok := c.(string); ok {
				r.Changed = append(r.Changed, s)
			}
		}
	}
	return r, nil
}

// text is a nullable VARCHAR's value, "" for NULL.
func text(v driver.Value) string {
	s, _ := v.(string)
	return s
}

// owned copies the bytes a driver may reuse (database/sql's Scan into an any does the same).
func owned(v driver.Value) driver.Value {
	if b, ok := v.([]byte); ok {
		return bytes.Clone(b)
	}
	return v
}

// columnTyper is what the driver's rows tell about a result column's type.
type columnTyper interface {
	ColumnTypeDatabaseTypeName(index int) string
}

// converterCache keeps each plan table's converters, so a chunk costs no catalog query. An
// entry is used only while the result's value columns have the types (as the driver names
// them) it was built for: a plan table made again with other types builds new converters.
var converterCache struct {
	sync.Mutex
	m map[converterKey]converters
}

type converterKey struct {
	p     *Planner
	table string
	types string // the fields with the driver's type names of their columns, and the identifier's
}

// maxCachedConverters bounds converterCache: it is emptied when full (a table per run).
const maxCachedConverters = 64

func (p *Planner) cachedConverters(ctx context.Context, table string, fields []warehouse.Field, rows driver.Rows) (converters, error) {
	key := converterKey{p: p, table: table}
	if ct, ok := rows.(columnTyper); ok {
		names := make([]string, 0, 2*len(fields)+1)
		for i, f := range fields {
			names = append(names, f.Field, ct.ColumnTypeDatabaseTypeName(warehouse.ChunkColValues+i))
		}
		names = append(names, ct.ColumnTypeDatabaseTypeName(warehouse.ChunkColIdent))
		key.types = strings.Join(names, "\x00")
	} else {
		return p.valueConverters(ctx, table, fields)
	}
	converterCache.Lock()
	cs, ok := converterCache.m[key]
	converterCache.Unlock()
	if ok && len(cs) == len(fields)+1 {
		return cs, nil
	}
	cs, err := p.valueConverters(ctx, table, fields)
	if err != nil {
		return nil, err
	}
	converterCache.Lock()
	defer converterCache.Unlock()
	if converterCache.m == nil || len(converterCache.m) >= maxCachedConverters {
		converterCache.m = map[converterKey]converters{}
	}
	converterCache.m[key] = cs
	return cs, nil
}
