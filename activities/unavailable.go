package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
)

// Backoff of the Iterable client's retries, set explicitly on the chunk's client so that
// chunkMaxElapsed can be derived from them.
const (
	chunkRetryInitial = 500 * time.Millisecond
	chunkRetryMax     = 30 * time.Second
	// chunkMaxElapsedCap keeps one request's retries well inside SyncChunk's 2h start-to-close.
	chunkMaxElapsedCap = 90 * time.Minute
)

// failureLimit makes the chunk's Iterable client give up after maxConsecutiveFailedRequests
// consecutive failed HTTP requests: it counts them in the client's transport, and raises the
// client's MaxElapsed so that its retries (500ms doubling to 30s, plus each request's timeout)
// last long enough to reach that count. The counter belongs to one chunk attempt.
func failureLimit(act spec.Activation, httpClient *http.Client) func(*iterable.Config) {
	limit := act.Limits().MaxConsecutiveFailedRequests
	return func(cfg *iterable.Config) {
		base := httpClient
		if base == nil {
			base = &http.Client{Timeout: iterable.DefaultHTTPTimeout}
		}
		counted := *base
		rt := base.Transport
		if rt == nil {
			rt = http.DefaultTransport
		}
		counted.Transport = &failureCounter{base: rt, max: limit}
		cfg.HTTPClient = &counted
		cfg.RetryInitialInterval = chunkRetryInitial
		cfg.RetryMaxInterval = chunkRetryMax
		cfg.MaxElapsed = chunkMaxElapsed(limit, counted.Timeout)
	}
}

// chunkMaxElapsed bounds the retries of one request so that limit attempts fit: each attempt may
// take the HTTP timeout, and each wait is at most 1.5 × the backoff interval (50% jitter).
func chunkMaxElapsed(limit int, httpTimeout time.Duration) time.Duration {
	if httpTimeout <= 0 {
		httpTimeout = iterable.DefaultHTTPTimeout
	}
	var total time.Duration
	wait := chunkRetryInitial
	for i := 0; i < limit; i++ {
		total += httpTimeout + wait*3/2
		wait = min(2*wait, chunkRetryMax)
		if total >= chunkMaxElapsedCap {
			return chunkMaxElapsedCap
		}
	}
	return total
}

// failureCounter is an http.RoundTripper that counts consecutive failed requests: no answer
// (network errors, timeouts) or an answer that says "not now" (408, 429, 5xx). Any other answer
// resets the count. When the count reaches max, it drops the answer and returns an
// *unavailableError, which the Iterable client does not retry, and it refuses every later
// request of the chunk.
type failureCounter struct {
	base http.RoundTripper
	max  int

	mu          sync.Mutex
	consecutive int
	last        string
}

func (f *failureCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	if f.consecutive >= f.max {
		e := &unavailableError{failures: f.consecutive, last: f.last}
		f.mu.Unlock()
		return nil, e
	}
	f.mu.Unlock()

	res, err := f.base.RoundTrip(req)
	var what string
	switch {
	case err != nil:
		if errors.Is(req.Context().Err(), context.Canceled) {
			// The caller gave up (the activity was cancelled): not Iterable's failure.
			return res, err
		}
		// Words such as "timeout" stay out of the description: the client decides on retries
		// by the error's text, and this error must not be retried.
		what = "no answer (network error)"
	case res.StatusCode == http.StatusRequestTimeout || res.StatusCode == http.StatusTooManyRequests || res.StatusCode >= 500:
		what = fmt.Sprintf("HTTP %d", res.StatusCode)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if what == "" {
		f.consecutive = 0
		return res, nil
	}
	f.consecutive++
	f.last = what
	if f.consecutive < f.max {
		return res, err
	}
	if res != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
		_ = res.Body.Close()
	}
	return nil, &unavailableError{failures: f.consecutive, last: what}
}

// unavailableError says that Iterable failed maxConsecutiveFailedRequests requests in a row.
type unavailableError struct {
	failures int
	last     string
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("Iterable unavailable: %d consecutive requests failed (last: %s)", e.failures, e.last)
}

// asUnavailable turns an unavailableError anywhere in err's chain into the non-retryable
// IterableUnavailable application error; it returns nil for any other error.
func asUnavailable(err error, where string) error {
	var ue *unavailableError
	if !errors.As(err, &ue) {
		return nil
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: %v (thresholds.maxConsecutiveFailedRequests is %d)", where, ue, ue.failures),
		ErrTypeIterableUnavailable, nil)
}
