package bqfake

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/ipc"
	"github.com/apache/arrow/go/v15/arrow/memory"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/activation-engine/activations/internal/warehouse"
)

// SyntheticField is a mapped field of a synthetic plan: its destination field name (the plan's
// value column is warehouse.ValueColumn of it) and its BigQuery type: STRING, INTEGER, FLOAT,
// BOOLEAN or TIMESTAMP. SyntheticValue gives row i's value.
type SyntheticField struct {
	Field string
	Type  string
}

// DefaultSyntheticFields are the fields of a SyntheticPlan without Fields: the four types of the
// DuckDB worker benchmark (string, long, boolean, timestamp).
var DefaultSyntheticFields = []SyntheticField{
	{Field: "name", Type: "STRING"}, {Field: "score", Type: "INTEGER"},
	{Field: "active", Type: "BOOLEAN"}, {Field: "signedUpAt", Type: "TIMESTAMP"},
}

// SyntheticPlan is a plan of Rows added rows (seq 1..Rows), none held in memory: row i has key
// SyntheticKey(i), identifier SyntheticEmail(i) and the values SyntheticValue(f, i).
type SyntheticPlan struct {
	Rows int64
	// Fields are the mapped fields (default DefaultSyntheticFields).
	Fields []SyntheticField
	// BatchRows is the number of rows per Arrow record batch (ReadRowsResponse) of a chunk read
	// (default 1,000).
	BatchRows int
}

// syntheticEpoch is the first row's TIMESTAMP value; row i's is i seconds later.
var syntheticEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// SyntheticKey is row i's primary key, as the plan stores it (STRING).
func SyntheticKey(i int64) string { return strconv.FormatInt(i, 10) }

// SyntheticEmail is row i's identifier.
func SyntheticEmail(i int64) string { return "user" + strconv.FormatInt(i, 10) + "@example.com" }

// SyntheticValue is row i's value of f, as the planner decodes it: STRING "<field> <i>",
// INTEGER i mod 1000 (int64), FLOAT (i mod 100000) / 100, BOOLEAN i mod 3 = 0, TIMESTAMP
// 2024-01-01 00:00:00 UTC plus i seconds (time.Time).
func SyntheticValue(f SyntheticField, i int64) any {
	switch f.Type {
	case "STRING":
		return f.Field + " " + strconv.FormatInt(i, 10)
	case "INTEGER":
		return i % 1000
	case "FLOAT":
		return float64(i%100000) / 100
	case "BOOLEAN":
		return i%3 == 0
	case "TIMESTAMP":
		return syntheticEpoch.Add(time.Duration(i) * time.Second)
	}
	return nil
}

// SyntheticRowsRead is the number of synthetic rows sent through the Storage Read API.
func (s *Server) SyntheticRowsRead() int64 { return s.syntheticRead.Load() }

// ServeSyntheticPlan makes the fake answer a whole run of the BigQuery planner on a plan of
// p.Rows added rows, without executing SQL or holding rows: Plan's dry run (the snapshot's
// schema) and script (a summary of p.Rows added rows, in chunks of the size the script's SQL
// numbers them by), each chunk's read (its seq range, from the job's @after and @last, rows
// generated on the fly as Arrow record batches of the Storage Read API: the REST API answers
// no rows), Commit (the committed chunks' rows, all upserted) and TopReasons (none). It runs
// no check of the SQL beyond finding the columns it answers. Start the gRPC server with
// StartStorage and read with StorageRead.
func (s *Server) ServeSyntheticPlan(p SyntheticPlan) {
	if len(p.Fields) == 0 {
		p.Fields = DefaultSyntheticFields
	}
	if p.BatchRows <= 0 {
		p.BatchRows = 1000
	}
	sp := &syntheticPlan{SyntheticPlan: p}
	s.HandleFunc("", sp.answer)
}

// syntheticPlan is the state of ServeSyntheticPlan's responder (guarded by the server's lock).
type syntheticPlan struct {
	SyntheticPlan
	chunkRows int64 // from the plan script
}

// chunkSizeRE finds the chunk size in the plan script: DIV(q.seq - 1, N) AS chunk.
var chunkSizeRE = regexp.MustCompile(`DIV\(q\.seq - 1, (\d+)\)`)

func synthError(format string, args ...any) Result {
	return Result{Err: &Error{Code: 400, Reason: "invalidQuery", Message: "bqfake synthetic plan: " + fmt.Sprintf(format, args...)}}
}

func (sp *syntheticPlan) answer(j *Job) Result {
	switch sql := j.SQL; {
	case strings.Contains(sql, "CREATE TEMP TABLE"):
		return sp.summary(sql)
	case j.DryRun && strings.Contains(sql, "AS row_hash FROM ("):
		fields := []*bq.TableFieldSchema{Field("key", "STRING"), Field("ident", "STRING"), Field("ident_hash", "STRING")}
		for _, f := range sp.Fields {
			fields = append(fields, Field(warehouse.ValueColumn(f.Field), f.Type))
		}
		fields = append(fields, Field("field_hashes", "STRING"), Field("row_hash", "STRING"))
		return Result{Schema: Schema(fields...), BytesProcessed: sp.Rows * 100}
	case strings.Contains(sql, "WHERE plan.seq > @after"):
		return sp.read(j)
	case strings.HasPrefix(sql, "MERGE "):
		return sp.commit(j)
	case strings.Contains(sql, "COUNT(DISTINCT key)"):
		return Result{Schema: Schema(Field("outcome", "STRING"), Field("reason", "STRING"), Field("n", "INTEGER"))}
	}
	return Result{}
}

// summary is the plan script's last row (see the planner's parseSummary): model_rows ..
// removed, known_reasons, chunks (chunk, first_seq, last_seq, added, changed, removed).
func (sp *syntheticPlan) summary(sql string) Result {
	m := chunkSizeRE.FindStringSubmatch(sql)
	if m == nil {
		return synthError("no chunk size in the plan script")
	}
	size, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || size <= 0 {
		return synthError("chunk size %q", m[1])
	}
	sp.chunkRows = size
	var chunks []any
	for first := int64(1); first <= sp.Rows; first += size {
		last := min(first+size-1, sp.Rows)
		chunks = append(chunks, []any{(first - 1) / size, first, last, last - first + 1, int64(0), int64(0)})
	}
	integer := func(name string) *bq.TableFieldSchema { return Field(name, "INTEGER") }
	schema := Schema(integer("model_rows"), integer("null_keys"), integer("duplicate_keys"), integer("duplicate_identifiers"),
		integer("retried"), integer("known"), integer("refreshed"), integer("added"), integer("changed"), integer("removed"),
		&bq.TableFieldSchema{Name: "known_reasons", Type: "RECORD", Mode: "REPEATED",
			Fields: []*bq.TableFieldSchema{Field("reason", "STRING"), integer("n")}},
		&bq.TableFieldSchema{Name: "chunks", Type: "RECORD", Mode: "REPEATED", Fields: []*bq.TableFieldSchema{integer("chunk"),
			integer("first_seq"), integer("last_seq"), integer("added"), integer("changed"), integer("removed")}})
	n := sp.Rows
	return Result{StatementType: "SCRIPT", Schema: schema,
		Rows: [][]any{{n, int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), n, int64(0), int64(0), []any{}, chunks}}}
}

// read answers a chunk read: the seq range (@after, @last] of the plan, with the value columns
// in the order the SQL selects them.
func (sp *syntheticPlan) read(j *Job) Result {
	bound := func(name string) (int64, bool) {
		v, ok := j.Param(name)
		if !ok {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	after, ok1 := bound("after")
	last, ok2 := bound("last")
	if !ok1 || !ok2 {
		return synthError("the read has no INT64 parameters @after and @last")
	}
	type col struct {
		at int
		f  SyntheticField
	}
	var cols []col
	for _, f := range sp.Fields {
		at := strings.Index(j.SQL, "plan.`"+warehouse.ValueColumn(f.Field)+"`")
		if at < 0 {
			return synthError("the read does not select the value column of field %q", f.Field)
		}
		cols = append(cols, col{at, f})
	}
	fields := []*bq.TableFieldSchema{Field("seq", "INTEGER"), Field("key", "STRING"), Field("op", "STRING"),
		Repeated("changed_fields", "STRING"), Field("ident", "STRING"), Field("old_ident", "STRING"),
		Field("row_hash", "STRING"), Field("keep_profile", "BOOLEAN"), Field("prior_outcome", "STRING"),
		Field("prior_class", "STRING"), Field("prior_field", "STRING"), Field("prior_reason", "STRING"),
		Field("hold", "BOOLEAN")}
	g := &syntheticRows{first: max(after+1, 1), last: min(last, sp.Rows), batch: sp.BatchRows}
	for len(cols) > 0 { // selection sort by position in the SQL: a handful of fields
		k := 0
		for i, c := range cols {
			if c.at < cols[k].at {
				k = i
			}
		}
		g.fields = append(g.fields, cols[k].f)
		fields = append(fields, Field(warehouse.ValueColumn(cols[k].f.Field), cols[k].f.Type))
		cols = append(cols[:k], cols[k+1:]...)
	}
	fields = append(fields, Field("known", "BOOLEAN"))
	return Result{Schema: Schema(fields...), synthetic: g}
}

// commit counts the rows of the committed chunks (@chunks), all upserted.
func (sp *syntheticPlan) commit(j *Job) Result {
	if sp.chunkRows <= 0 {
		return synthError("commit before the plan")
	}
	var n int64
	for _, p := range j.Params {
		if p.Name != "chunks" || p.ParameterValue == nil {
			continue
		}
		for _, v := range p.ParameterValue.ArrayValues {
			c, err := strconv.ParseInt(v.Value, 10, 64)
			if err != nil {
				return synthError("chunk %q", v.Value)
			}
			first := c*sp.chunkRows + 1
			n += max(0, min(first+sp.chunkRows-1, sp.Rows)-first+1)
		}
	}
	return Result{Schema: Schema(Field("upserted", "INTEGER"), Field("deleted", "INTEGER"), Field("held", "INTEGER")),
		Rows: [][]any{{n, int64(0), int64(0)}}}
}

// syntheticRows are the rows first..last of a synthetic plan, generated when read.
type syntheticRows struct {
	first, last int64
	fields      []SyntheticField // value columns, in the result's order
	batch       int
}

// numRows is the number of rows of a result.
func (r Result) numRows() int64 {
	if g := r.synthetic; g != nil {
		return max(0, g.last-g.first+1)
	}
	return int64(len(r.Rows))
}

// readSynthetic streams a synthetic result from offset as Arrow record batches.
func (s *Server) readSynthetic(res Result, offset int64, stream storagepb.BigQueryRead_ReadRowsServer) error {
	g := res.synthetic
	var fields []arrow.Field
	for _, f := range res.Schema.Fields {
		t, err := arrowType(f)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		fields = append(fields, arrow.Field{Name: f.Name, Type: t, Nullable: true})
	}
	as := arrow.NewSchema(fields, nil)
	var only bytes.Buffer // schema then end-of-stream marker
	if err := ipc.NewWriter(&only, ipc.WithSchema(as)).Close(); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	schemaLen := only.Len() - 8
	b := array.NewRecordBuilder(memory.DefaultAllocator, as)
	defer b.Release()
	var buf bytes.Buffer
	for first := g.first + offset; first <= g.last; first += int64(g.batch) {
		n := min(int64(g.batch), g.last-first+1)
		for i := first; i < first+n; i++ {
			g.append(b, i)
		}
		rec := b.NewRecord()
		buf.Reset()
		err := ipc.NewWriter(&buf, ipc.WithSchema(as)).Write(rec)
		rec.Release()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(&storagepb.ReadRowsResponse{RowCount: n,
			Rows: &storagepb.ReadRowsResponse_ArrowRecordBatch{ArrowRecordBatch: &storagepb.ArrowRecordBatch{
				SerializedRecordBatch: buf.Bytes()[schemaLen:], RowCount: n}}}); err != nil {
			return err
		}
		s.syntheticRead.Add(n)
	}
	return nil
}

// append writes row i in the columns of readChunkSQL: an add without prior, changed_fields
// empty (BigQuery has no NULL arrays), old_ident NULL, keep_profile and hold false, the values,
// known false.
func (g *syntheticRows) append(b *array.RecordBuilder, i int64) {
	b.Field(0).(*array.Int64Builder).Append(i)
	b.Field(1).(*array.StringBuilder).Append(SyntheticKey(i))
	b.Field(2).(*array.StringBuilder).Append("add")
	b.Field(3).(*array.ListBuilder).Append(true)
	b.Field(4).(*array.StringBuilder).Append(SyntheticEmail(i))
	b.Field(5).AppendNull()
	b.Field(6).(*array.StringBuilder).Append(fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15))
	b.Field(7).(*array.BooleanBuilder).Append(false)
	for c := 8; c <= 11; c++ {
		b.Field(c).AppendNull()
	}
	b.Field(12).(*array.BooleanBuilder).Append(false)
	for k, f := range g.fields {
		switch v := SyntheticValue(f, i).(type) {
		case string:
			b.Field(13 + k).(*array.StringBuilder).Append(v)
		case int64:
			b.Field(13 + k).(*array.Int64Builder).Append(v)
		case float64:
			b.Field(13 + k).(*array.Float64Builder).Append(v)
		case bool:
			b.Field(13 + k).(*array.BooleanBuilder).Append(v)
		case time.Time:
			b.Field(13 + k).(*array.TimestampBuilder).Append(arrow.Timestamp(v.UnixMicro()))
		default:
			b.Field(13 + k).AppendNull()
		}
	}
	b.Field(13 + len(g.fields)).(*array.BooleanBuilder).Append(false)
}
