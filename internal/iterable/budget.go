package iterable

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"sync"
	"time"
)

// Endpoint names of the budgets a Client uses. Iterable limits each endpoint per project.
const (
	EndpointBulkUpdate   = "bulkUpdate"
	EndpointGetFields    = "getFields"
	EndpointGetByEmail   = "getByEmail"
	EndpointGetByUserID  = "byUserId"
	lookupRPS            = 100 // getByEmail and byUserId, per project
	getFieldsRPS         = 3
	defaultBulkUpdateRPS = 5
)

// Budgets holds one token bucket per Iterable project and endpoint. A project is known by the
// SHA-256 of its API key (one key belongs to one project), so the key itself is never kept as a
// map key. Every Client given the same *Budgets shares the buckets: several activations syncing
// to the same project in one worker stay within the project's limit together.
type Budgets struct {
	mu      sync.Mutex
	buckets map[string]*Budget
}

// NewBudgets returns an empty set of budgets; share one per process.
func NewBudgets() *Budgets {
	return &Budgets{buckets: make(map[string]*Budget)}
}

// ProjectKey is the identifier budgets use for the project of apiKey: a SHA-256 hex digest.
func ProjectKey(apiKey string) string {
	sum := sha256.Sum256([]byte(apiKey))
	return hex.EncodeToString(sum[:])
}

// Budget returns the shared bucket of endpoint for the project of apiKey, creating it with a
// ceiling of rps requests per second. rps <= 0 means unlimited. When clients configure different
// ceilings for the same bucket, the lowest wins: the project's limit is the same for all of them.
func (b *Budgets) Budget(apiKey, endpoint string, rps float64) *Budget {
	if rps <= 0 || math.IsInf(rps, 1) || math.IsNaN(rps) {
		rps = math.Inf(1)
	}
	key := ProjectKey(apiKey) + "/" + endpoint
	b.mu.Lock()
	defer b.mu.Unlock()
	if bu, ok := b.buckets[key]; ok {
		bu.lowerCeiling(rps)
		return bu
	}
	bu := newBudget(rps)
	b.buckets[key] = bu
	return bu
}

// Wait blocks until a request to endpoint of the project of apiKey may be sent.
func (b *Budgets) Wait(ctx context.Context, apiKey, endpoint string, rps float64) error {
	return b.Budget(apiKey, endpoint, rps).Wait(ctx)
}

// Budget is a token bucket whose rate follows AIMD: halved on every 429 answered to a request
// sent at the current rate (down to a floor), raised by a twentieth of the ceiling on every
// success. Processes that share a project converge to fair shares of its limit without talking
// to each other. Burst equals the current rate (at least one request).
type Budget struct {
	mu          sync.Mutex
	ceiling     float64 // configured requests/s; +Inf = unlimited
	rate        float64 // current requests/s
	tokens      float64
	last        time.Time
	pausedUntil time.Time // honours Retry-After for every sender of the project
	// epoch counts decreases: a 429 answered to a request admitted before the last decrease was
	// already accounted for, so several in-flight requests hit by one overload halve only once.
	epoch uint64
}

func newBudget(rps float64) *Budget {
	return &Budget{ceiling: rps, rate: rps, tokens: math.Max(1, rps), last: time.Now()}
}

// Floor of the decreased rate: half a request per second keeps a paused-looking but live sync.
const minRate = 0.5

func (b *Budget) lowerCeiling(rps float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rps < b.ceiling {
		b.ceiling = rps
		b.rate = math.Min(b.rate, rps)
		b.tokens = math.Min(b.tokens, math.Max(1, rps))
	}
}

// Rate is the current allowed requests per second (+Inf when unlimited).
func (b *Budget) Rate() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rate
}

// Ceiling is the configured requests per second (+Inf when unlimited).
func (b *Budget) Ceiling() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ceiling
}

// Wait blocks until a request may be sent, or ctx ends.
func (b *Budget) Wait(ctx context.Context) error {
	_, err := b.acquire(ctx)
	return err
}

// acquire takes one token and returns the decrease epoch the request is sent under.
func (b *Budget) acquire(ctx context.Context) (uint64, error) {
	for {
		b.mu.Lock()
		now := time.Now()
		var d time.Duration
		switch {
		case now.Before(b.pausedUntil):
			d = b.pausedUntil.Sub(now)
		case math.IsInf(b.rate, 1):
			e := b.epoch
			b.mu.Unlock()
			return e, nil
		default:
			b.refill(now)
			if b.tokens >= 1 {
				b.tokens--
				e := b.epoch
				b.mu.Unlock()
				return e, nil
			}
			d = time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
		}
		b.mu.Unlock()
		if err := sleep(ctx, max(d, time.Millisecond)); err != nil {
			return 0, err
		}
	}
}

func (b *Budget) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 && !math.IsInf(b.rate, 1) {
		b.tokens = math.Min(math.Max(1, b.rate), b.tokens+el*b.rate)
	}
	b.last = now
}

// RateLimited records a 429. The rate is halved (not below the floor) and, when Iterable said
// Retry-After, every sender of the project waits that long.
func (b *Budget) RateLimited(retryAfter time.Duration) {
	b.mu.Lock()
	e := b.epoch
	b.mu.Unlock()
	b.rateLimited(e, retryAfter)
}

func (b *Budget) rateLimited(epoch uint64, retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if retryAfter > 0 {
		if until := now.Add(retryAfter); until.After(b.pausedUntil) {
			b.pausedUntil = until
		}
	}
	if epoch != b.epoch {
		return
	}
	b.epoch++
	b.refill(now)
	if math.IsInf(b.rate, 1) {
		// An unlimited budget learns nothing from a 429: the caller asked for no limit.
		return
	}
	b.rate = math.Max(math.Min(minRate, b.ceiling), b.rate/2)
	// Drop the saved burst: the project is over its limit right now.
	b.tokens = math.Min(b.tokens, 0)
}

// Succeeded records a request that was not rate limited; the rate climbs back toward the ceiling.
func (b *Budget) Succeeded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate >= b.ceiling {
		return
	}
	b.refill(time.Now())
	b.rate = math.Min(b.ceiling, b.rate+b.ceiling/20)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
