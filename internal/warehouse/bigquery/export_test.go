package bigquery

import "github.com/cenkalti/backoff/v4"

// FastRetries makes a planner retry failed jobs at once, for tests.
func FastRetries(p *Planner) {
	p.newBackOff = func() backoff.BackOff { return backoff.WithMaxRetries(&backoff.ZeroBackOff{}, 3) }
}
