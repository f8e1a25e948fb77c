package bigquery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"time"

	"cloud.google.com/go/bigquery"
	storage "cloud.google.com/go/bigquery/storage/apiv1"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Rejections are written to the shared rejections table in one of two ways.
//
// By default each RecordRejections call is one append to the table's default stream of the
// BigQuery Storage Write API (gRPC): milliseconds, no job, no DML quota, and the rows are
// visible to queries at once. The sender calls it once per window of up to 1,000 rows that had
// a rejection, so a run with many rejections makes many calls; as DML jobs, each would take
// seconds and queue behind every other DML statement on the table that all activations share.
//
// The default stream is at-least-once: a call retried after an append whose answer was lost
// appends its rows again. Every reader tolerates that: TopReasons counts distinct keys, Commit
// holds a key when any rejection of the run names it, and Plan takes each key's latest
// rejection (duplicates are equal rows) and prunes only rows older than a later one of the
// same key (equal duplicates are kept together).
//
// BigQuery long refused UPDATE, DELETE and MERGE on rows written through the Storage Write API
// in the last 30 minutes (its documentation now lists that limit for the REST flavour and
// insertAll only, and allows DML on rows recently streamed over gRPC). Plan's DML on this table
// is kept clear of such rows whatever the rule is: the retention DELETE deletes only rows older
// than streamedRowsAge (rejectionsCutoff), and the DELETE of a retried Plan deletes only the
// duplicate-key and shared-identifier rows, which only Plan's own INSERT writes: a call that
// records rejections of those classes writes them with DML (planClasses).
//
// With Options.RejectionsDML, or when an append fails for good, rows are written by DML INSERT
// jobs of up to rejectionBatchRows rows (insertRejectionsSQL).

// streamedRowsAge bounds from below the age of the rejections Plan may delete: twice BigQuery's
// 30 minutes, for the clock of the worker that stamped at. The spec's shortest retention is an
// hour, so it changes nothing for a valid activation.
const streamedRowsAge = time.Hour

// planClasses are the classes of the rejections Plan records, and deletes again when the same
// run is planned again: they never go through the Storage Write API.
var planClasses = []warehouse.Class{warehouse.ClassDuplicateKey, warehouse.ClassSharedIdentifier}

// Rejection batches stay well below the 10 MB request limits of jobs.query and AppendRows.
const (
	rejectionBatchRows  = 2000
	rejectionBatchBytes = 2 << 20
)

// rejectionBatches splits rs into batches of at most rejectionBatchRows rows and about
// rejectionBatchBytes bytes (a row over the limit makes a batch of its own).
func rejectionBatches(rs []warehouse.Rejection) [][]warehouse.Rejection {
	var out [][]warehouse.Rejection
	for start := 0; start < len(rs); {
		end, size := start, 0
		for end < len(rs) && end-start < rejectionBatchRows && (end == start || size < rejectionBatchBytes) {
			r := rs[end]
			size += len(r.Key) + len(r.Reason) + len(r.Field) + len(r.Class) + len(r.RowHash) + 96
			end++
		}
		out = append(out, rs[start:end])
		start = end
	}
	return out
}

// RecordRejections appends the rows to the rejections table: through the Storage Write API's
// default stream (one append per call), or with DML INSERT jobs (Options.RejectionsDML, the
// classes Plan records, and the rows an append could not write). Values travel as proto rows or
// as one array-of-structs query parameter per batch, never in SQL text or errors.
func (p *Planner) RecordRejections(ctx context.Context, activationID, runID string, rs []warehouse.Rejection) error {
	if err := warehouse.CheckActivationID(activationID); err != nil {
		return fmt.Errorf("record rejections: %w", err)
	}
	if len(rs) == 0 {
		return nil
	}
	if runID == "" {
		return fmt.Errorf("record %d rejections of %s: run id is empty", len(rs), activationID)
	}
	what := fmt.Sprintf("record %d rejections of %s run %s", len(rs), activationID, runID)
	if p.writer == nil {
		if err := p.insertRejections(ctx, activationID, runID, rs); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	var streamed, dml []warehouse.Rejection
	for _, r := range rs {
		if slices.Contains(planClasses, r.Class) {
			dml = append(dml, r)
		} else {
			streamed = append(streamed, r)
		}
	}
	if len(streamed) > 0 {
		left, err := p.appendRejections(ctx, activationID, runID, streamed)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", what, context.Cause(ctx))
			}
			// The Storage Write API is an optimisation: DML writes the same rows, slower.
			p.log.WarnContext(ctx, "Storage Write API append of rejections failed, writing them with DML",
				"activation", activationID, "run", runID, "rows", len(left), "error", err)
			dml = append(dml, left...)
		}
	}
	if len(dml) > 0 {
		if err := p.insertRejections(ctx, activationID, runID, dml); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

// rejectionParam is one element of the @rows parameter of insertRejectionsSQL.
type rejectionParam struct {
	Key     string              `bigquery:"key"`
	Op      string              `bigquery:"op"`
	Outcome string              `bigquery:"outcome"`
	Field   bigquery.NullString `bigquery:"field"`
	Reason  string              `bigquery:"reason"`
	Class   bigquery.NullString `bigquery:"class"`
	RowHash bigquery.NullString `bigquery:"row_hash"`
}

// nullString is NULL for "": an unknown field, class or row hash.
func nullString(s string) bigquery.NullString {
	return bigquery.NullString{StringVal: s, Valid: s != ""}
}

// insertRejections writes the rows with one DML INSERT job per batch.
func (p *Planner) insertRejections(ctx context.Context, activationID, runID string, rs []warehouse.Rejection) error {
	sql := insertRejectionsSQL(p.qualified(RejectionsTable))
	for _, b := range rejectionBatches(rs) {
		batch := make([]rejectionParam, len(b))
		for i, r := range b {
			batch[i] = rejectionParam{Key: r.Key, Op: string(r.Op), Outcome: string(r.Outcome),
				Field: nullString(r.Field), Reason: r.Reason, Class: nullString(string(r.Class)), RowHash: nullString(r.RowHash)}
		}
		j := job{step: "rejections", activationID: activationID, runID: runID, sql: sql,
			params: []bigquery.QueryParameter{{Name: "activation_id", Value: activationID},
				{Name: "run_id", Value: runID}, {Name: "rows", Value: batch}}}
		if err := p.query(ctx, j, func([]bigquery.Value, bigquery.Schema) error { return nil }); err != nil {
			return fmt.Errorf("DML insert: %w", p.explain(err))
		}
	}
	return nil
}

// rejectionsWriter appends rejections to the default stream of the rejections table.
type rejectionsWriter struct {
	client *storage.BigQueryWriteClient
	stream string                         // projects/{p}/datasets/{d}/tables/rejections/streams/_default
	msg    protoreflect.MessageDescriptor // one row of rejectionsSchema
	schema *storagepb.ProtoSchema         // msg, self-contained, for the first request of a connection
}

func newRejectionsWriter(ctx context.Context, project, dataset string, opts []option.ClientOption) (*rejectionsWriter, error) {
	ts, err := adapt.BQSchemaToStorageTableSchema(rejectionsSchema)
	if err != nil {
		return nil, fmt.Errorf("rejections schema: %w", err)
	}
	d, err := adapt.StorageSchemaToProto2Descriptor(ts, "rejection")
	if err != nil {
		return nil, fmt.Errorf("rejections row descriptor: %w", err)
	}
	msg, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("rejections row descriptor is a %T, not a message", d)
	}
	dp, err := adapt.NormalizeDescriptor(msg)
	if err != nil {
		return nil, fmt.Errorf("rejections row descriptor: %w", err)
	}
	client, err := storage.NewBigQueryWriteClient(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &rejectionsWriter{client: client, msg: msg, schema: &storagepb.ProtoSchema{ProtoDescriptor: dp},
		stream: fmt.Sprintf("projects/%s/datasets/%s/tables/%s/streams/_default", project, dataset, RejectionsTable)}, nil
}

// encode serialises one rejection as a row message. at is the time of the call, the same for
// every attempt, so that an append repeated by a retry repeats equal rows.
func (w *rejectionsWriter) encode(activationID, runID string, at time.Time, r warehouse.Rejection) ([]byte, error) {
	m := dynamicpb.NewMessage(w.msg)
	fields := w.msg.Fields()
	set := func(name, value string, null bool) {
		if !null {
			m.Set(fields.ByName(protoreflect.Name(name)), protoreflect.ValueOfString(value))
		}
	}
	// As the DML path writes them: field, class and row_hash are NULL when unknown.
	set("activation_id", activationID, false)
	set("run_id", runID, false)
	set("key", r.Key, false)
	set("op", string(r.Op), false)
	set("outcome", string(r.Outcome), false)
	set("field", r.Field, r.Field == "")
	set("reason", r.Reason, false)
	set("class", string(r.Class), r.Class == "")
	set("row_hash", r.RowHash, r.RowHash == "")
	m.Set(fields.ByName("at"), protoreflect.ValueOfInt64(at.UnixMicro()))
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, errors.New("encoding a rejection row failed") // the message may quote the row
	}
	return b, nil
}

// appendRejections appends the rows through the Storage Write API, retrying transient
// failures, and returns the rows it could not append (all of them, or those of the requests
// after the last acknowledged one) with the error.
func (p *Planner) appendRejections(ctx context.Context, activationID, runID string, rs []warehouse.Rejection) ([]warehouse.Rejection, error) {
	w := p.writer
	at := time.Now().UTC()
	batches := rejectionBatches(rs)
	requests := make([][][]byte, len(batches))
	for i, b := range batches {
		for _, r := range b {
			row, err := w.encode(activationID, runID, at, r)
			if err != nil {
				return rs, err
			}
			requests[i] = append(requests[i], row)
		}
	}
	done := 0
	j := job{step: "rejections", activationID: activationID, runID: runID}
	err := p.retryWith(ctx, j, func() error {
		n, err := w.append(ctx, requests[done:])
		done += n
		return err
	}, nil, appendRetryable)
	if err != nil {
		return slices.Concat(batches[done:]...), err
	}
	return nil, nil
}

// append sends the requests on one AppendRows connection and returns how many BigQuery
// acknowledged, in order. Errors carry the status code and the first words of BigQuery's
// message only, since row errors can quote a value.
func (w *rejectionsWriter) append(ctx context.Context, requests [][][]byte) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The routing header that the generated client cannot add to a bidirectional stream.
	ctx = metadata.AppendToOutgoingContext(ctx, "x-goog-request-params", "write_stream="+url.QueryEscape(w.stream))
	conn, err := w.client.AppendRows(ctx)
	if err != nil {
		return 0, appendError(err)
	}
	for i, rows := range requests {
		data := &storagepb.AppendRowsRequest_ProtoData{Rows: &storagepb.ProtoRows{SerializedRows: rows}}
		req := &storagepb.AppendRowsRequest{Rows: &storagepb.AppendRowsRequest_ProtoRows{ProtoRows: data}}
		if i == 0 { // the stream and the schema once per connection
			req.WriteStream, data.WriterSchema = w.stream, w.schema
		}
		if err := conn.Send(req); err != nil {
			break // the server ended the stream: Recv says why
		}
	}
	_ = conn.CloseSend()
	for acked := 0; acked < len(requests); acked++ {
		resp, err := conn.Recv()
		if errors.Is(err, io.EOF) {
			return acked, status.Errorf(codes.Unavailable, "the append stream ended after %d of %d requests", acked, len(requests))
		}
		if err != nil {
			return acked, appendError(err)
		}
		if st := resp.GetError(); st != nil {
			return acked, appendError(status.ErrorProto(st))
		}
		if errs := resp.GetRowErrors(); len(errs) > 0 {
			return acked, fmt.Errorf("Storage Write API refused %d rows (first: row %d, %s)",
				len(errs), errs[0].GetIndex(), errs[0].GetCode())
		}
	}
	return len(requests), nil
}

// appendError keeps a gRPC error's code (for appendRetryable) and the first words of its message.
func appendError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err // a context error, or a transport error the client already retried
	}
	return status.Error(st.Code(), "Storage Write API: "+withhold(st.Message()))
}

// appendRetryable tells the failures of an append that another attempt may not meet.
func appendRetryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.Internal, codes.Aborted:
		return true
	}
	return false
}

// rejectionsCutoff is the @rejections_cutoff of a plan started at start: rejections older than
// the retention may go, but never those young enough to have been appended through the
// Storage Write API recently (see streamedRowsAge).
func (p *Planner) rejectionsCutoff(start time.Time, retention time.Duration) time.Time {
	return start.Add(-max(retention, p.streamedAge)).UTC()
}
