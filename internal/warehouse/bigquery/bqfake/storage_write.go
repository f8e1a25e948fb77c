package bqfake

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Append is a recorded AppendRows request.
type Append struct {
	Stream        string // the request's write stream, or the connection's first one
	RoutingHeader string // the connection's x-goog-request-params
	Rows          int
	Failed        bool // answered with an error (FailAppends, or a refused request)
}

type appendFailure struct {
	skip  int // requests to answer normally first
	code  codes.Code
	times int
	row   bool // answer with row errors rather than ending the connection
}

// FailAppends makes the next times AppendRows requests fail with code: the connection ends
// with that status and their rows are not stored.
func (s *Server) FailAppends(code codes.Code, times int) { s.FailAppendsAfter(0, code, times) }

// FailAppendsAfter is FailAppends after skip more requests have been stored and acknowledged.
func (s *Server) FailAppendsAfter(skip int, code codes.Code, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failApp = append(s.failApp, appendFailure{skip: skip, code: code, times: times})
}

// RefuseAppendedRows makes the next times AppendRows requests be answered with a row error
// for their first row (the request's rows are not stored), as BigQuery refuses a bad row.
func (s *Server) RefuseAppendedRows(times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failApp = append(s.failApp, appendFailure{code: codes.InvalidArgument, times: times, row: true})
}

// Appended returns the rows appended to a table ("dataset.table") through the Storage Write
// API, in order: column → value (string; int64 for INTEGER and TIMESTAMP columns, TIMESTAMP in
// microseconds). A column the row did not set is absent (NULL).
func (s *Server) Appended(table string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.appended[table]...)
}

// Appends returns the recorded AppendRows requests, in order.
func (s *Server) Appends() []Append {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Append(nil), s.appends...)
}

type writeServer struct {
	storagepb.UnimplementedBigQueryWriteServer
	s *Server
}

// AppendRows accepts appends to "projects/p/datasets/d/tables/t/streams/_default" of a table
// that exists, with proto rows described by the connection's first writer schema. Like
// BigQuery, it refuses a schema with a field the table lacks, and rows missing a required
// field; it answers each request in turn.
func (w *writeServer) AppendRows(conn storagepb.BigQueryWrite_AppendRowsServer) error {
	header := ""
	if md, ok := metadata.FromIncomingContext(conn.Context()); ok {
		header = strings.Join(md.Get("x-goog-request-params"), ",")
	}
	var stream, table string
	var msg protoreflect.MessageDescriptor
	for {
		req, err := conn.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if stream == "" {
			stream = req.GetWriteStream()
			if table, err = w.table(stream); err != nil {
				return err
			}
		} else if req.GetWriteStream() != "" && req.GetWriteStream() != stream {
			return status.Errorf(codes.InvalidArgument, "bqfake: one stream per connection")
		}
		data := req.GetProtoRows()
		if data == nil {
			return status.Errorf(codes.InvalidArgument, "bqfake: only proto rows are supported")
		}
		if ws := data.GetWriterSchema(); ws != nil {
			if msg, err = w.descriptor(table, ws.GetProtoDescriptor()); err != nil {
				return err
			}
		}
		if msg == nil {
			return status.Errorf(codes.InvalidArgument, "the first request of a connection must carry the writer schema")
		}
		rec := Append{Stream: stream, RoutingHeader: header, Rows: len(data.GetRows().GetSerializedRows())}
		w.s.mu.Lock()
		var fail *appendFailure
		if len(w.s.failApp) > 0 {
			if f := &w.s.failApp[0]; f.skip > 0 {
				f.skip--
			} else {
				failed := *f
				fail = &failed
				if f.times--; f.times <= 0 {
					w.s.failApp = w.s.failApp[1:]
				}
			}
		}
		rec.Failed = fail != nil
		w.s.appends = append(w.s.appends, rec)
		w.s.mu.Unlock()
		switch {
		case fail != nil && fail.row:
			if err := conn.Send(&storagepb.AppendRowsResponse{RowErrors: []*storagepb.RowError{{Index: 0,
				Code: storagepb.RowError_FIELDS_ERROR, Message: "bqfake: refused row"}}}); err != nil {
				return err
			}
			continue
		case fail != nil:
			return status.Error(fail.code, "bqfake: append failed")
		}
		rows, err := decodeRows(msg, data.GetRows().GetSerializedRows())
		if err != nil {
			w.markFailed()
			return err
		}
		w.s.mu.Lock()
		w.s.appended[table] = append(w.s.appended[table], rows...)
		w.s.mu.Unlock()
		if err := conn.Send(&storagepb.AppendRowsResponse{WriteStream: stream,
			Response: &storagepb.AppendRowsResponse_AppendResult_{AppendResult: &storagepb.AppendRowsResponse_AppendResult{}}}); err != nil {
			return err
		}
	}
}

func (w *writeServer) markFailed() {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.s.appends[len(w.s.appends)-1].Failed = true
}

// table checks that stream is the default stream of a table that exists, and returns the
// table as "dataset.table".
func (w *writeServer) table(stream string) (string, error) {
	parts := strings.Split(stream, "/")
	if len(parts) != 8 || parts[0] != "projects" || parts[2] != "datasets" || parts[4] != "tables" ||
		parts[6] != "streams" || parts[7] != "_default" {
		return "", status.Errorf(codes.InvalidArgument, "bqfake: %q is not a table's default stream", stream)
	}
	table := parts[3] + "." + parts[5]
	if w.s.Table(table) == nil {
		return "", status.Errorf(codes.NotFound, "Requested entity was not found: table %s", table)
	}
	return table, nil
}

// descriptor builds the writer schema's message, and checks that each of its fields is a
// column of the table.
func (w *writeServer) descriptor(table string, dp *descriptorpb.DescriptorProto) (protoreflect.MessageDescriptor, error) {
	if dp == nil {
		return nil, status.Errorf(codes.InvalidArgument, "bqfake: the writer schema has no descriptor")
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{Name: proto.String("bqfake_writer_schema.proto"),
		Syntax: proto.String("proto2"), MessageType: []*descriptorpb.DescriptorProto{dp}}, nil)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bqfake: invalid writer schema: %v", err)
	}
	msg := fd.Messages().Get(0)
	columns := map[string]bool{}
	for _, f := range w.s.Table(table).Schema.Fields {
		columns[strings.ToLower(f.Name)] = true
	}
	for i := range msg.Fields().Len() {
		if name := string(msg.Fields().Get(i).Name()); !columns[strings.ToLower(name)] {
			return nil, status.Errorf(codes.InvalidArgument, "Input schema has more fields than BigQuery schema, extra fields: '%s'", name)
		}
	}
	return msg, nil
}

// decodeRows reads proto rows into column → value maps.
func decodeRows(msg protoreflect.MessageDescriptor, rows [][]byte) ([]map[string]any, error) {
	out := make([]map[string]any, 0, len(rows))
	for i, b := range rows {
		m := dynamicpb.NewMessage(msg)
		if err := proto.Unmarshal(b, m); err != nil { // checks required fields too
			return nil, status.Errorf(codes.InvalidArgument, "bqfake: row %d: %v", i, err)
		}
		row := map[string]any{}
		m.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch f.Kind() {
			case protoreflect.StringKind:
				row[string(f.Name())] = v.String()
			case protoreflect.Int64Kind:
				row[string(f.Name())] = v.Int()
			default:
				row[string(f.Name())] = fmt.Sprint(v.Interface())
			}
			return true
		})
		out = append(out, row)
	}
	return out, nil
}
