// Package bqfake is a local fake of the BigQuery REST API (and, optionally, of the Storage Read
// API over gRPC) for tests, used like net/http/httptest. It cannot execute SQL: queries are
// answered with canned results chosen by a substring of their SQL, and every request is
// recorded, so tests can check the plumbing of a client: labels, locations, billing caps,
// parameters, dry runs, paging, retries and error handling.
//
// Point the real client at it with option.WithEndpoint(s.URL()+"/") and
// option.WithoutAuthentication().
package bqfake

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	bq "google.golang.org/api/bigquery/v2"
)

// Error is an error BigQuery answers, as an HTTP error or as a failed job's errorResult.
type Error struct {
	Code    int    // HTTP status, e.g. 400, 403, 404, 500
	Reason  string // e.g. invalidQuery, accessDenied, backendError, rateLimitExceeded
	Message string
}

// Result is the canned answer to one query job.
type Result struct {
	// Schema of the result; nil for statements without one (DML, DDL).
	Schema *bq.TableSchema
	// Rows in the order of Schema's fields. Cells are Go values: nil, string, bool, int, int64,
	// float64, []any for REPEATED fields, []any (positional) for RECORD fields.
	Rows [][]any
	// PageSize splits Rows into pages of this many rows; 0 answers them in one page.
	PageSize int
	// Err makes the job fail: jobs.query and getQueryResults answer it as an HTTP error,
	// jobs.get reports it as the job's errorResult. For dry runs it is the insert's HTTP error.
	Err *Error
	// BytesProcessed is reported by dry runs (and as the job's statistics).
	BytesProcessed int64
	// BytesBilled is reported as the job's statistics (jobs.get, and jobs.insert's answer).
	BytesBilled int64
	// StatementType is reported in the job's statistics, e.g. SELECT or SCRIPT.
	StatementType string

	// synthetic generates the rows on the fly instead of Rows, for the Storage Read API only
	// (see ServeSyntheticPlan).
	synthetic *syntheticRows
}

// Job is a recorded query or load job.
type Job struct {
	ID             string
	SQL            string
	DryRun         bool
	Labels         map[string]string
	Location       string
	MaxBytesBilled int64
	Params         []*bq.QueryParameter
	FastPath       bool // submitted through jobs.query rather than jobs.insert
	Load           *bq.JobConfigurationLoad
	Data           []byte // the uploaded data of a load job
	result         Result
}

// Param returns the value of a named parameter ("" with ok false when absent): scalars as their
// string form, others as JSON.
func (j *Job) Param(name string) (string, bool) {
	for _, p := range j.Params {
		if p.Name == name && p.ParameterValue != nil {
			if p.ParameterType != nil && (p.ParameterType.Type == "ARRAY" || p.ParameterType.Type == "STRUCT") {
				b, _ := json.Marshal(p.ParameterValue)
				return string(b), true
			}
			return p.ParameterValue.Value, true
		}
	}
	return "", false
}

// Request is a recorded HTTP request.
type Request struct {
	Method string
	Path   string
	Query  url.Values
}

type rule struct {
	match   string
	results []Result
	fn      func(*Job) Result
	served  int
}

type failure struct {
	method, path string
	err          Error
	times        int
}

// Server is the fake. Its methods are safe for concurrent use.
type Server struct {
	srv *httptest.Server

	mu       sync.Mutex
	rules    []*rule
	failures []*failure
	requests []Request
	jobs     []*Job
	byID     map[string]*Job
	datasets map[string]*bq.Dataset      // by dataset id
	tables   map[string]*bq.Table        // by "dataset.table"
	refuse   map[string]Error            // "create dataset", ... → error for every such call
	sessions int                         // Storage Read sessions created
	appended map[string][]map[string]any // rows appended through the Storage Write API, by "dataset.table"
	appends  []Append                    // AppendRows requests received
	failApp  []appendFailure             // failures of the next AppendRows requests

	syntheticRead atomic.Int64 // synthetic rows sent through the Storage Read API
}

// New starts a fake; it stops at the end of the test.
func New(t testing.TB) *Server {
	s := &Server{byID: map[string]*Job{}, datasets: map[string]*bq.Dataset{}, tables: map[string]*bq.Table{},
		refuse: map[string]Error{}, appended: map[string][]map[string]any{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// URL is the base URL of the REST API.
func (s *Server) URL() string { return s.srv.URL }

// Handle answers the queries whose SQL contains match with results, in turn; the last one
// answers every later query. Later rules take precedence over earlier ones.
func (s *Server) Handle(match string, results ...Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = append([]*rule{{match: match, results: results}}, s.rules...)
}

// HandleFunc answers the queries whose SQL contains match with fn's result, computed from the
// job (its SQL, parameters, dry run flag). fn runs with the server's lock held: it must not call
// the Server's methods. Later rules take precedence over earlier ones.
func (s *Server) HandleFunc(match string, fn func(j *Job) Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = append([]*rule{{match: match, fn: fn}}, s.rules...)
}

// FailNext answers the next times requests with method whose path contains path with err.
func (s *Server) FailNext(method, path string, times int, err Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, &failure{method: method, path: path, err: err, times: times})
}

// Refuse answers every call of kind ("create dataset", "create table") with err.
func (s *Server) Refuse(kind string, err Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse[kind] = err
}

// AddDataset makes a dataset exist.
func (s *Server) AddDataset(id, location string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.datasets[id] = &bq.Dataset{Id: id, Location: location,
		DatasetReference: &bq.DatasetReference{DatasetId: id}}
}

// Dataset returns a dataset that exists, or nil.
func (s *Server) Dataset(id string) *bq.Dataset {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.datasets[id]
}

// Table returns a table that exists ("dataset.table"), or nil.
func (s *Server) Table(id string) *bq.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tables[id]
}

// Jobs returns the recorded jobs, dry runs included, in order.
func (s *Server) Jobs() []*Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Job(nil), s.jobs...)
}

// Requests returns the recorded HTTP requests, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Count counts the recorded requests with method whose path contains path.
func (s *Server) Count(method, path string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == method && strings.Contains(r.Path, path) {
			n++
		}
	}
	return n
}

// result picks the canned result of a query job; unmatched queries succeed with no rows.
func (s *Server) result(j *Job) Result {
	for _, r := range s.rules {
		if r.fn != nil && strings.Contains(j.SQL, r.match) {
			r.served++
			return r.fn(j)
		}
		if strings.Contains(j.SQL, r.match) && len(r.results) > 0 {
			i := min(r.served, len(r.results)-1)
			r.served++
			return r.results[i]
		}
	}
	return Result{}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()})
	for _, f := range s.failures {
		if f.times > 0 && f.method == r.Method && strings.Contains(r.URL.Path, f.path) {
			f.times--
			writeError(w, f.err)
			return
		}
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) > 3 && parts[0] == "upload" { // /upload/bigquery/v2/projects/{p}/jobs
		parts = parts[3:]
	}
	if len(parts) < 3 || parts[0] != "projects" {
		writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: " + r.URL.Path})
		return
	}
	project, rest := parts[1], parts[2:]
	switch {
	case r.Method == http.MethodPost && len(rest) == 1 && rest[0] == "queries":
		s.jobsQuery(w, r, project)
	case r.Method == http.MethodGet && len(rest) == 2 && rest[0] == "queries":
		s.getQueryResults(w, r, project, rest[1])
	case r.Method == http.MethodPost && len(rest) == 1 && rest[0] == "jobs":
		s.jobsInsert(w, r, project)
	case r.Method == http.MethodGet && len(rest) == 2 && rest[0] == "jobs":
		j, ok := s.byID[rest[1]]
		if !ok {
			writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: Job " + project + ":" + rest[1]})
			return
		}
		writeJSON(w, s.jobResource(project, j))
	case rest[0] == "datasets":
		s.datasetsAPI(w, r, project, rest[1:])
	default:
		writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: " + r.URL.Path})
	}
}

func (s *Server) newJob(sql string) *Job {
	j := &Job{ID: fmt.Sprintf("job_%d", len(s.jobs)+1), SQL: sql}
	s.jobs = append(s.jobs, j)
	s.byID[j.ID] = j
	return j
}

func (s *Server) jobsQuery(w http.ResponseWriter, r *http.Request, project string) {
	var req bq.QueryRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, Error{Code: 400, Reason: "invalid", Message: err.Error()})
		return
	}
	j := s.newJob(req.Query)
	j.FastPath, j.DryRun, j.Labels, j.Location = true, req.DryRun, req.Labels, req.Location
	j.MaxBytesBilled, j.Params = req.MaximumBytesBilled, req.QueryParameters
	j.result = s.result(j)
	if j.result.Err != nil {
		writeError(w, *j.result.Err)
		return
	}
	rows, token := page(j.result, 0, 0)
	writeJSON(w, &bq.QueryResponse{
		JobReference: &bq.JobReference{ProjectId: project, JobId: j.ID, Location: j.Location},
		JobComplete:  true, Schema: j.result.Schema, Rows: rows, PageToken: token,
		TotalRows: uint64(len(j.result.Rows)), TotalBytesProcessed: j.result.BytesProcessed,
	})
}

func (s *Server) getQueryResults(w http.ResponseWriter, r *http.Request, project, id string) {
	j, ok := s.byID[id]
	if !ok {
		writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: Job " + project + ":" + id})
		return
	}
	if j.result.Err != nil {
		writeError(w, *j.result.Err)
		return
	}
	q := r.URL.Query()
	start, _ := strconv.Atoi(q.Get("startIndex"))
	if t := q.Get("pageToken"); t != "" {
		start, _ = strconv.Atoi(strings.TrimPrefix(t, "p"))
	}
	resp := &bq.GetQueryResultsResponse{
		JobReference: &bq.JobReference{ProjectId: project, JobId: j.ID, Location: j.Location},
		JobComplete:  true, Schema: j.result.Schema, TotalRows: uint64(len(j.result.Rows)),
	}
	if max, err := strconv.Atoi(q.Get("maxResults")); err != nil || max > 0 {
		resp.Rows, resp.PageToken = page(j.result, start, max)
	}
	writeJSON(w, resp)
}

// page returns the rows of a result from start, at most max (0: the result's page size).
func page(res Result, start, max int) ([]*bq.TableRow, string) {
	size := res.PageSize
	if max > 0 && (size == 0 || max < size) {
		size = max
	}
	end := len(res.Rows)
	if size > 0 && start+size < end {
		end = start + size
	}
	var fields []*bq.TableFieldSchema
	if res.Schema != nil {
		fields = res.Schema.Fields
	}
	var out []*bq.TableRow
	for _, row := range res.Rows[min(start, end):end] {
		out = append(out, tableRow(row, fields))
	}
	token := ""
	if end < len(res.Rows) {
		token = fmt.Sprintf("p%d", end)
	}
	return out, token
}

func tableRow(row []any, fields []*bq.TableFieldSchema) *bq.TableRow {
	tr := &bq.TableRow{}
	for i, v := range row {
		var f *bq.TableFieldSchema
		if i < len(fields) {
			f = fields[i]
		}
		tr.F = append(tr.F, &bq.TableCell{V: cell(v, f)})
	}
	return tr
}

// cell encodes a Go value as the REST API does: scalars as strings, arrays as [{"v": …}],
// records as {"f": [{"v": …}]}.
func cell(v any, f *bq.TableFieldSchema) any {
	if v == nil {
		return nil
	}
	if f != nil && f.Mode == "REPEATED" {
		elem := *f
		elem.Mode = "NULLABLE"
		var out []any
		for _, e := range v.([]any) {
			out = append(out, map[string]any{"v": cell(e, &elem)})
		}
		return out
	}
	if f != nil && (f.Type == "RECORD" || f.Type == "STRUCT") {
		var out []any
		for i, e := range v.([]any) {
			out = append(out, map[string]any{"v": cell(e, f.Fields[i])})
		}
		return map[string]any{"f": out}
	}
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

func (s *Server) jobsInsert(w http.ResponseWriter, r *http.Request, project string) {
	var spec bq.Job
	var data []byte
	if r.URL.Query().Get("uploadType") != "" {
		var err error
		if data, err = readUpload(r, &spec); err != nil {
			writeError(w, Error{Code: 400, Reason: "invalid", Message: err.Error()})
			return
		}
	} else if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		writeError(w, Error{Code: 400, Reason: "invalid", Message: err.Error()})
		return
	}
	if spec.Configuration == nil {
		writeError(w, Error{Code: 400, Reason: "invalid", Message: "no configuration"})
		return
	}
	var sql string
	if q := spec.Configuration.Query; q != nil {
		sql = q.Query
	}
	if spec.JobReference != nil {
		if _, dup := s.byID[spec.JobReference.JobId]; dup {
			writeError(w, Error{Code: 409, Reason: "duplicate", Message: "Already Exists: Job " + spec.JobReference.JobId})
			return
		}
	}
	j := s.newJob(sql)
	if spec.JobReference != nil && spec.JobReference.JobId != "" {
		delete(s.byID, j.ID)
		j.ID = spec.JobReference.JobId
		s.byID[j.ID] = j
		j.Location = spec.JobReference.Location
	}
	j.DryRun, j.Labels = spec.Configuration.DryRun, spec.Configuration.Labels
	if q := spec.Configuration.Query; q != nil {
		j.MaxBytesBilled, j.Params = q.MaximumBytesBilled, q.QueryParameters
		j.result = s.result(j)
		if j.DryRun && j.result.Err != nil {
			writeError(w, *j.result.Err)
			return
		}
		if !j.DryRun && j.result.Schema != nil {
			// Query results land in an anonymous table, which the Storage Read API reads.
			s.tables["_anon."+j.ID] = &bq.Table{Schema: j.result.Schema, NumRows: uint64(j.result.numRows()),
				TableReference: &bq.TableReference{ProjectId: project, DatasetId: "_anon", TableId: j.ID}}
		}
	}
	if l := spec.Configuration.Load; l != nil {
		j.Load, j.Data = l, data
		if t := l.DestinationTable; t != nil {
			if _, ok := s.tables[t.DatasetId+"."+t.TableId]; !ok && l.CreateDisposition == "CREATE_NEVER" {
				j.result.Err = &Error{Code: 404, Reason: "notFound", Message: "Not found: Table " + t.TableId}
			}
		}
	}
	writeJSON(w, s.jobResource(project, j))
}

// readUpload splits a multipart upload into the job resource and the data.
func readUpload(r *http.Request, spec *bq.Job) ([]byte, error) {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, err
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	part, err := mr.NextPart()
	if err != nil {
		return nil, err
	}
	if err := json.NewDecoder(part).Decode(spec); err != nil {
		return nil, err
	}
	part, err = mr.NextPart()
	if err != nil {
		return nil, err
	}
	return io.ReadAll(part)
}

func (s *Server) jobResource(project string, j *Job) *bq.Job {
	res := &bq.Job{
		Id:            project + ":" + j.ID,
		JobReference:  &bq.JobReference{ProjectId: project, JobId: j.ID, Location: j.Location},
		Status:        &bq.JobStatus{State: "DONE"},
		Statistics:    &bq.JobStatistics{TotalBytesProcessed: j.result.BytesProcessed},
		Configuration: &bq.JobConfiguration{DryRun: j.DryRun, Labels: j.Labels, Load: j.Load},
	}
	if j.Load == nil {
		q := &bq.JobConfigurationQuery{Query: j.SQL, QueryParameters: j.Params, MaximumBytesBilled: j.MaxBytesBilled}
		if _, ok := s.tables["_anon."+j.ID]; ok {
			q.DestinationTable = &bq.TableReference{ProjectId: project, DatasetId: "_anon", TableId: j.ID}
		}
		res.Configuration.Query = q
		res.Statistics.Query = &bq.JobStatistics2{TotalBytesProcessed: j.result.BytesProcessed,
			TotalBytesBilled: j.result.BytesBilled, Schema: j.result.Schema, StatementType: j.result.StatementType}
	}
	if e := j.result.Err; e != nil {
		res.Status.ErrorResult = &bq.ErrorProto{Reason: e.Reason, Message: e.Message}
		res.Status.Errors = []*bq.ErrorProto{res.Status.ErrorResult}
	}
	return res
}

func (s *Server) datasetsAPI(w http.ResponseWriter, r *http.Request, project string, rest []string) {
	switch {
	case r.Method == http.MethodPost && len(rest) == 0:
		if e, ok := s.refuse["create dataset"]; ok {
			writeError(w, e)
			return
		}
		var ds bq.Dataset
		if err := json.NewDecoder(r.Body).Decode(&ds); err != nil || ds.DatasetReference == nil {
			writeError(w, Error{Code: 400, Reason: "invalid", Message: "bad dataset"})
			return
		}
		id := ds.DatasetReference.DatasetId
		if _, ok := s.datasets[id]; ok {
			writeError(w, Error{Code: 409, Reason: "duplicate", Message: "Already Exists: Dataset " + project + ":" + id})
			return
		}
		ds.Id = project + ":" + id
		s.datasets[id] = &ds
		writeJSON(w, &ds)
	case len(rest) == 1 && r.Method == http.MethodGet:
		ds, ok := s.datasets[rest[0]]
		if !ok {
			writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: Dataset " + project + ":" + rest[0]})
			return
		}
		writeJSON(w, ds)
	case len(rest) == 2 && rest[1] == "tables" && r.Method == http.MethodPost:
		if e, ok := s.refuse["create table"]; ok {
			writeError(w, e)
			return
		}
		var t bq.Table
		if err := json.NewDecoder(r.Body).Decode(&t); err != nil || t.TableReference == nil {
			writeError(w, Error{Code: 400, Reason: "invalid", Message: "bad table"})
			return
		}
		key := rest[0] + "." + t.TableReference.TableId
		if _, ok := s.tables[key]; ok {
			writeError(w, Error{Code: 409, Reason: "duplicate", Message: "Already Exists: Table " + key})
			return
		}
		s.tables[key] = &t
		writeJSON(w, &t)
	case len(rest) == 3 && rest[1] == "tables":
		key := rest[0] + "." + rest[2]
		t, ok := s.tables[key]
		if !ok {
			writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: Table " + project + ":" + key})
			return
		}
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, t)
		case http.MethodDelete:
			delete(s.tables, key)
			w.WriteHeader(http.StatusNoContent)
		default:
			writeError(w, Error{Code: 405, Reason: "invalid", Message: "method not allowed"})
		}
	default:
		writeError(w, Error{Code: 404, Reason: "notFound", Message: "Not found: " + r.URL.Path})
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers in Google's error format, which googleapi.CheckResponse decodes.
func writeError(w http.ResponseWriter, e Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": e.Code, "message": e.Message,
		"errors": []map[string]any{{"reason": e.Reason, "message": e.Message, "domain": "global"}},
	}})
}

// AddTable makes a table exist.
func (s *Server) AddTable(dataset, table string, schema *bq.TableSchema) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tables[dataset+"."+table] = &bq.Table{Schema: schema,
		TableReference: &bq.TableReference{DatasetId: dataset, TableId: table}}
}

// Schema builds a table schema.
func Schema(fields ...*bq.TableFieldSchema) *bq.TableSchema { return &bq.TableSchema{Fields: fields} }

// Field is a NULLABLE column of a legacy type name: INTEGER, FLOAT, BOOLEAN, STRING, BYTES,
// TIMESTAMP, DATE, TIME, DATETIME, NUMERIC, BIGNUMERIC, GEOGRAPHY, JSON, INTERVAL.
func Field(name, typ string) *bq.TableFieldSchema {
	return &bq.TableFieldSchema{Name: name, Type: typ, Mode: "NULLABLE"}
}

// Repeated is an ARRAY column of typ.
func Repeated(name, typ string) *bq.TableFieldSchema {
	return &bq.TableFieldSchema{Name: name, Type: typ, Mode: "REPEATED"}
}

// Record is a STRUCT column.
func Record(name string, fields ...*bq.TableFieldSchema) *bq.TableFieldSchema {
	return &bq.TableFieldSchema{Name: name, Type: "RECORD", Mode: "NULLABLE", Fields: fields}
}
