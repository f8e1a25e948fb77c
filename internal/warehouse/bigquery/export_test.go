package bigquery

import "github.com/cenkalti/backoff/v4"

// FastRetries makes a planner retry failed jobs at once, for tests.
func FastRetries(p *Planner) {
	p.newBackOff = func() backoff.BackOff { return backoff.WithMaxRetries(&backoff.ZeroBackOff{}, 3) }
}

// DeleteStreamedRows lets Plan prune rejections however young (the conformance suite prunes with
// a retention of a nanosecond), as BigQuery's documentation now allows DML on rows recently
// appended over gRPC; see streamedRowsAge.
func DeleteStreamedRows(p *Planner) { p.streamedAge = 0 }
