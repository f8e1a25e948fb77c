package bigquery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/cenkalti/backoff/v4"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"

	"github.com/activation-engine/activations/internal/warehouse"
)

// job describes one query job: its SQL and parameters, and what its labels say.
type job struct {
	step         string // label "step" and log attribute: plan, read, commit, ...
	activationID string
	runID        string
	table        string // the plan table it works on, if any (label "plan")
	sql          string
	params       []bigquery.QueryParameter
}

// newQuery configures a query with the planner's location, labels and billing cap.
func (p *Planner) newQuery(c *bigquery.Client, j job) *bigquery.Query {
	q := c.Query(j.sql)
	q.Location = p.location
	q.Labels = labels(j.step, j.activationID, j.runID, j.table)
	q.MaxBytesBilled = p.maxBytes
	q.Parameters = j.params
	return q
}

// rowFunc receives one row of a result with the result's schema.
type rowFunc func(row []bigquery.Value, schema bigquery.Schema) error

// callbackError carries an error of a rowFunc: it stops the read, is never retried, and is
// returned unwrapped.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }
func (e *callbackError) Unwrap() error { return e.err }

// query runs a statement or a script and passes every row of its (last statement's) result to
// fn. It uses jobs.query, whose request id makes the client's own retries idempotent. Failed
// jobs are retried as new jobs while no row has reached fn: every statement the planner runs
// can run again (CREATE OR REPLACE, IF NOT EXISTS, MERGE, conditional DELETE then INSERT).
func (p *Planner) query(ctx context.Context, j job, fn rowFunc) error {
	delivered := false
	err := p.retry(ctx, j, func() error {
		it, err := p.newQuery(p.bq, j).Read(ctx)
		if err != nil {
			return err
		}
		p.tally(ctx, j, it.SourceJob(), nil) // the job is done (and billed) once Read returns
		return iterate(it, func(row []bigquery.Value, schema bigquery.Schema) error {
			delivered = true
			return fn(row, schema)
		})
	}, func() bool { return !delivered })
	var cb *callbackError
	if errors.As(err, &cb) {
		return cb.err
	}
	return err
}

// iterate drains a row iterator into fn.
func iterate(it *bigquery.RowIterator, fn rowFunc) error {
	for {
		var row []bigquery.Value
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return readError(err)
		}
		if err := fn(row, it.Schema); err != nil {
			return &callbackError{err}
		}
	}
}

// readError keeps errors of the API, which describe requests and jobs, and withholds those of
// decoding a row, which the client formats with the value it could not convert.
func readError(err error) error {
	if _, ok := apiErrorOf(err); ok || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("reading a result row failed (details withheld: they can contain row values)")
}

// dryRun validates a query without running it and returns its statistics: bytes it would
// process and the schema of its result. Dry runs are free.
func (p *Planner) dryRun(ctx context.Context, j job) (*bigquery.JobStatistics, error) {
	var stats *bigquery.JobStatistics
	err := p.retry(ctx, j, func() error {
		q := p.newQuery(p.bq, j)
		q.DryRun = true
		dj, err := q.Run(ctx)
		if err != nil {
			return err
		}
		if st := dj.LastStatus(); st != nil && st.Statistics != nil {
			stats = st.Statistics
			return nil
		}
		return fmt.Errorf("dry run returned no statistics")
	}, nil)
	return stats, err
}

// runJob starts a query job through jobs.insert and waits for it: the Storage Read API reads
// the result table of such a job.
func (p *Planner) runJob(ctx context.Context, c *bigquery.Client, j job) (*bigquery.Job, error) {
	bj, err := p.newQuery(c, j).Run(ctx)
	if err != nil {
		return nil, err
	}
	status, err := bj.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if err := status.Err(); err != nil {
		return nil, err
	}
	p.tally(ctx, j, bj, status)
	return bj, nil
}

// retry runs op until it succeeds, fails for good, or may not run again (canRetry false).
func (p *Planner) retry(ctx context.Context, j job, op func() error, canRetry func() bool) error {
	return p.retryWith(ctx, j, op, canRetry, retryable)
}

// retryWith is retry with another classification of transient errors (gRPC appends).
func (p *Planner) retryWith(ctx context.Context, j job, op func() error, canRetry func() bool,
	retryable func(error) bool) error {
	attempt := 0
	return backoff.RetryNotify(func() error {
		attempt++
		err := op()
		if err == nil {
			return nil
		}
		var cb *callbackError
		if errors.As(err, &cb) || ctx.Err() != nil || !retryable(err) || canRetry != nil && !canRetry() {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(p.newBackOff(), ctx), func(err error, wait time.Duration) {
		p.log.WarnContext(ctx, "BigQuery call failed, retrying", "step", j.step, "activation", j.activationID,
			"run", j.runID, "attempt", attempt, "wait", wait, "error", err)
	})
}

// defaultBackOff follows BigQuery's advice: jittered exponential waits from one second, about
// six attempts within two minutes. The client library already retries each HTTP call; this
// retries jobs that failed for a transient reason.
func defaultBackOff() backoff.BackOff {
	return backoff.WithMaxRetries(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(time.Second), backoff.WithRandomizationFactor(0.5),
		backoff.WithMultiplier(2), backoff.WithMaxInterval(32*time.Second),
		backoff.WithMaxElapsedTime(2*time.Minute)), 6)
}

// apiError is what BigQuery said about a failed call or job.
type apiError struct {
	code            int
	reason, message string
}

// apiErrorOf extracts BigQuery's reason and message from a failed HTTP call
// (*googleapi.Error) or a failed job (*bigquery.Error).
func apiErrorOf(err error) (apiError, bool) {
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		e := apiError{code: ge.Code, message: ge.Message}
		if len(ge.Errors) > 0 {
			e.reason = ge.Errors[0].Reason
			if e.message == "" {
				e.message = ge.Errors[0].Message
			}
		}
		return e, true
	}
	var be *bigquery.Error
	if errors.As(err, &be) {
		return apiError{reason: be.Reason, message: be.Message}, true
	}
	return apiError{}, false
}

// Reasons of transient failures: https://cloud.google.com/bigquery/docs/error-messages
var transientReasons = []string{"backendError", "internalError", "rateLimitExceeded", "jobRateLimitExceeded",
	"jobBackendError", "jobInternalError"}

// retryable tells transient failures (a new job may succeed) from the others.
func retryable(err error) bool {
	e, ok := apiErrorOf(err)
	if !ok {
		return false // transport errors were already retried by the client library
	}
	msg := strings.ToLower(e.message)
	switch {
	case slices.Contains(transientReasons, e.reason):
		return true
	case e.reason == "quotaExceeded":
		// Rate quotas ("try again later") clear by themselves; daily quotas do not.
		return strings.Contains(msg, "later") || strings.Contains(msg, "retry") || strings.Contains(msg, "rate") ||
			strings.Contains(msg, "too many") // e.g. too many DML statements queued on one table
	case e.code == http.StatusTooManyRequests || e.code >= 500:
		return true
	case e.reason == "duplicate":
		// jobs.insert retried by the client after a lost answer: the next attempt is a new job.
		return true
	}
	// Concurrent DML on one table (another worker's commit): the loser may run again.
	return strings.Contains(msg, "concurrent update") || strings.Contains(msg, "could not serialize access")
}

// isReason reports whether err is BigQuery's error with one of the reasons.
func isReason(err error, reasons ...string) bool {
	e, ok := apiErrorOf(err)
	return ok && slices.Contains(reasons, e.reason)
}

func isNotFound(err error) bool {
	e, ok := apiErrorOf(err)
	return ok && (e.code == http.StatusNotFound || e.reason == "notFound")
}

func isConflict(err error) bool {
	e, ok := apiErrorOf(err)
	return ok && (e.code == http.StatusConflict || e.reason == "duplicate")
}

func isAccessDenied(err error) bool {
	e, ok := apiErrorOf(err)
	return ok && (e.reason == "accessDenied" || e.code == http.StatusForbidden && e.reason == "")
}

// iamRoles is what the worker's credentials need; it is appended to access errors.
func (p *Planner) iamRoles() string {
	return fmt.Sprintf("the worker's credentials need roles/bigquery.dataEditor on dataset %s:%s "+
		"(or, to let Open create it, bigquery.datasets.create on project %s through roles/bigquery.user or "+
		"roles/bigquery.dataEditor), roles/bigquery.jobUser on project %s to run jobs, "+
		"roles/bigquery.readSessionUser on project %s for the Storage Read API, and "+
		"roles/bigquery.dataViewer on the datasets the models read",
		p.project, p.dataset, p.project, p.project, p.project)
}

// explain adds the IAM roles to an access error.
func (p *Planner) explain(err error) error {
	if isAccessDenied(err) {
		return fmt.Errorf("%w (%s)", err, p.iamRoles())
	}
	return err
}

// modelError classifies an error of a job that runs the model. validating is true for the dry
// run, which reads no data: its messages describe the query, so they are kept whole. Errors of
// the running script (a bad cast, a division by zero) may quote row values: only their first
// words are kept.
func (p *Planner) modelError(ctx context.Context, what string, err error, validating bool) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: model query: %w", what, context.Cause(ctx))
	}
	e, ok := apiErrorOf(err)
	if !ok {
		return fmt.Errorf("%s: model query: %w", what, err)
	}
	jobsCreate := strings.Contains(e.message, "bigquery.jobs.create")
	switch {
	case isAccessDenied(err) && (!validating || jobsCreate):
		return fmt.Errorf("%s: %w (%s)", what, err, p.iamRoles())
	case validating && slices.Contains([]string{"invalidQuery", "invalid", "notFound", "accessDenied"}, e.reason):
		return fmt.Errorf("%s: %w: %s", what, warehouse.ErrInvalidModel, e.message)
	case e.reason == "bytesBilledLimitExceeded":
		return fmt.Errorf("%s: %w: %s (raise MaximumBytesBilled or make the model read less)",
			what, warehouse.ErrInvalidModel, e.message)
	case !validating && slices.Contains([]string{"invalidQuery", "invalid"}, e.reason):
		return fmt.Errorf("%s: %w: %s (details withheld because they can contain row values; "+
			"run the model in BigQuery to see them)", what, warehouse.ErrInvalidModel, withhold(e.message))
	}
	return fmt.Errorf("%s: model query: %w", what, err)
}

// withhold keeps the first words of a runtime error message, before anything that may quote a
// value: a colon ("Bad int64 value: …"), a quote, or the words value and row.
func withhold(msg string) string {
	msg = strings.TrimPrefix(msg, "Query error: ")
	cut := len(msg)
	for _, marker := range []string{":", "'", `"`, " value", "Value", " row", "Row", "\n"} {
		if i := strings.Index(msg, marker); i >= 0 && i < cut {
			cut = i
		}
	}
	if s := strings.TrimSpace(msg[:cut]); s != "" {
		return s
	}
	return "query error"
}
