package bqfake

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/ipc"
	"github.com/apache/arrow/go/v15/arrow/memory"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StartStorage starts a fake of the Storage Read and Storage Write APIs (gRPC, plaintext) on a
// local port, and returns the address for option.WithEndpoint (with an insecure transport).
// The Read API serves the result table of every query job that had a schema, as one Arrow
// stream; supported column types: INTEGER, FLOAT, BOOLEAN, STRING, TIMESTAMP (int64
// microseconds) and REPEATED ones. The Write API takes AppendRows on the default stream of the
// tables that exist (see storage_write.go).
func (s *Server) StartStorage(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("bqfake: listen: %v", err)
	}
	g := grpc.NewServer()
	storagepb.RegisterBigQueryReadServer(g, &readServer{s: s})
	storagepb.RegisterBigQueryWriteServer(g, &writeServer{s: s})
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// ReadSessions is the number of read sessions created, one per table read.
func (s *Server) ReadSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

type readServer struct {
	storagepb.UnimplementedBigQueryReadServer
	s *Server
}

// table finds the query job whose result table is "projects/p/datasets/_anon/tables/<job>".
func (r *readServer) table(name string) (*Job, error) {
	i := strings.LastIndex(name, "/tables/")
	if i < 0 || !strings.Contains(name, "/datasets/_anon/") {
		return nil, status.Errorf(codes.NotFound, "not found: table %s", name)
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	j, ok := r.s.byID[name[i+len("/tables/"):]]
	if !ok || j.result.Schema == nil {
		return nil, status.Errorf(codes.NotFound, "not found: table %s", name)
	}
	return j, nil
}

func (r *readServer) CreateReadSession(_ context.Context, req *storagepb.CreateReadSessionRequest) (*storagepb.ReadSession, error) {
	table := req.GetReadSession().GetTable()
	j, err := r.table(table)
	if err != nil {
		return nil, err
	}
	schema, _, err := arrowData(j.result)
	if err != nil {
		return nil, status.Error(codes.Unimplemented, err.Error())
	}
	r.s.mu.Lock()
	r.s.sessions++
	r.s.mu.Unlock()
	return &storagepb.ReadSession{
		Name: table + "/session", Table: table, DataFormat: storagepb.DataFormat_ARROW,
		Schema:  &storagepb.ReadSession_ArrowSchema{ArrowSchema: &storagepb.ArrowSchema{SerializedSchema: schema}},
		Streams: []*storagepb.ReadStream{{Name: table + "/session/streams/0"}},
	}, nil
}

func (r *readServer) ReadRows(req *storagepb.ReadRowsRequest, stream storagepb.BigQueryRead_ReadRowsServer) error {
	j, err := r.table(strings.TrimSuffix(req.GetReadStream(), "/session/streams/0"))
	if err != nil {
		return err
	}
	if j.result.synthetic != nil {
		return r.s.readSynthetic(j.result, req.GetOffset(), stream)
	}
	if req.GetOffset() >= int64(len(j.result.Rows)) {
		return nil
	}
	res := j.result
	res.Rows = res.Rows[req.GetOffset():]
	_, batch, err := arrowData(res)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	n := int64(len(res.Rows))
	return stream.Send(&storagepb.ReadRowsResponse{RowCount: n,
		Rows: &storagepb.ReadRowsResponse_ArrowRecordBatch{ArrowRecordBatch: &storagepb.ArrowRecordBatch{
			SerializedRecordBatch: batch, RowCount: n}}})
}

// arrowData serialises a result as the Storage Read API does: an IPC schema message, and one
// record batch message.
func arrowData(res Result) (schema, batch []byte, err error) {
	var fields []arrow.Field
	for _, f := range res.Schema.Fields {
		t, err := arrowType(f)
		if err != nil {
			return nil, nil, err
		}
		fields = append(fields, arrow.Field{Name: f.Name, Type: t, Nullable: true})
	}
	as := arrow.NewSchema(fields, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, as)
	defer b.Release()
	for _, row := range res.Rows {
		for i, f := range res.Schema.Fields {
			if err := appendValue(b.Field(i), f, row[i]); err != nil {
				return nil, nil, fmt.Errorf("column %s: %w", f.Name, err)
			}
		}
	}
	rec := b.NewRecord()
	defer rec.Release()

	var only bytes.Buffer // schema then end-of-stream marker
	if err := ipc.NewWriter(&only, ipc.WithSchema(as)).Close(); err != nil {
		return nil, nil, err
	}
	schema = only.Bytes()[:only.Len()-8]
	var full bytes.Buffer // schema then the batch
	if err := ipc.NewWriter(&full, ipc.WithSchema(as)).Write(rec); err != nil {
		return nil, nil, err
	}
	if !bytes.HasPrefix(full.Bytes(), schema) {
		return nil, nil, fmt.Errorf("arrow stream does not start with its schema")
	}
	return schema, full.Bytes()[len(schema):], nil
}

func arrowType(f *bq.TableFieldSchema) (arrow.DataType, error) {
	var t arrow.DataType
	switch f.Type {
	case "INTEGER", "INT64":
		t = arrow.PrimitiveTypes.Int64
	case "FLOAT", "FLOAT64":
		t = arrow.PrimitiveTypes.Float64
	case "BOOLEAN", "BOOL":
		t = arrow.FixedWidthTypes.Boolean
	case "STRING":
		t = arrow.BinaryTypes.String
	case "TIMESTAMP":
		t = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	default:
		return nil, fmt.Errorf("bqfake: type %s is not served through the Storage Read API", f.Type)
	}
	if f.Mode == "REPEATED" {
		return arrow.ListOf(t), nil
	}
	return t, nil
}

func appendValue(b array.Builder, f *bq.TableFieldSchema, v any) error {
	if v == nil {
		b.AppendNull()
		return nil
	}
	if f.Mode == "REPEATED" {
		lb := b.(*array.ListBuilder)
		lb.Append(true)
		elem := *f
		elem.Mode = "NULLABLE"
		for _, e := range v.([]any) {
			if err := appendValue(lb.ValueBuilder(), &elem, e); err != nil {
				return err
			}
		}
		return nil
	}
	s := cell(v, f).(string)
	switch bb := b.(type) {
	case *array.Int64Builder:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		bb.Append(n)
	case *array.Float64Builder:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		bb.Append(x)
	case *array.BooleanBuilder:
		x, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		bb.Append(x)
	case *array.StringBuilder:
		bb.Append(s)
	case *array.TimestampBuilder:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		bb.Append(arrow.Timestamp(n))
	default:
		return fmt.Errorf("unsupported builder %T", b)
	}
	return nil
}
