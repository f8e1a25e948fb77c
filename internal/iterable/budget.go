package iterable

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Endpoint names of the budgets a Client uses. Iterable limits each endpoint per project.
const (
	EndpointBulkUpdate  = "bulkUpdate"
	EndpointGetFields   = "getFields"
	EndpointGetByEmail  = "getByEmail"
	EndpointGetByUserID = "byUserId"
	EndpointExport      = "exportData"
	// EndpointDeleteByEmail and EndpointDeleteByUserID are DELETE /api/users/{email} and
	// DELETE /api/users/byUserId/{userId}: 100 requests/s each, per project.
	EndpointDeleteByEmail  = "deleteByEmail"
	EndpointDeleteByUserID = "deleteByUserId"
	// EndpointLists is GET /api/lists (100 requests/s per project); EndpointCreateList is
	// POST /api/lists, EndpointSubscribe and EndpointUnsubscribe are POST /api/lists/subscribe and
	// /api/lists/unsubscribe, for which Iterable documents no limit.
	EndpointLists       = "getLists"
	EndpointCreateList  = "createList"
	EndpointSubscribe   = "listSubscribe"
	EndpointUnsubscribe = "listUnsubscribe"
	// EndpointListUsers and EndpointListSize are GET /api/lists/getUsers and
	// GET /api/lists/{listId}/size: 5 requests/minute each, per project.
	EndpointListUsers    = "listGetUsers"
	EndpointListSize     = "listSize"
	listReadsPerMinute   = 5
	listsRPS             = 100
	createListRPS        = 1   // creating a list is rare; a burst of creations is a bug
	defaultSubscribeRPS  = 5   // each of subscribe and unsubscribe; undocumented, as bulkUpdate
	lookupRPS            = 100 // getByEmail and byUserId, per project
	deleteRPS            = 100 // each delete endpoint, per project
	getFieldsRPS         = 3
	defaultBulkUpdateRPS = 5
	exportPerMinute      = 4 // GET /api/export/data.json, per project
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
	key := BudgetName(apiKey, endpoint)
	b.mu.Lock()
	defer b.mu.Unlock()
	if bu, ok := b.buckets[key]; ok {
		bu.lowerCeiling(rps)
		return bu
	}
	bu := newBudget(rps, time.Now(), rand.Float64, defaultControl)
	bu.name = key
	b.buckets[key] = bu
	return bu
}

// BudgetName names the budget of endpoint for the project of apiKey: its ProjectKey, "/" and the
// endpoint. It holds no secret, so the run log keeps it next to the project's good rate.
func BudgetName(apiKey, endpoint string) string {
	return ProjectKey(apiKey) + "/" + endpoint
}

// Wait blocks until a request to endpoint of the project of apiKey may be sent.
func (b *Budgets) Wait(ctx context.Context, apiKey, endpoint string, rps float64) error {
	return b.Budget(apiKey, endpoint, rps).Wait(ctx)
}

// Rate control. Every worker process holds its own *Budgets and processes never talk to each
// other: a 429 is the only sign that others share the project (Iterable documents no
// Retry-After). Iterable's limit behaves like a token bucket (5 requests/s for bulkUpdate, a
// burst of as many), and that bucket shapes the design:
//
//   - A lone process paces at 98% of the ceiling (target). At 100% the server's bucket sits
//     empty and network jitter alone earns 429s; at 98% it refills by 0.1 request/s and a lone
//     process never sees one.
//   - The bucket hides an overload until it is drained, so processes always learn of it late and
//     overshoot: the rate a process had at its 429 is more than its share. Probing must therefore
//     be slow, or 429s come every few seconds whatever the decrease.
//   - The bucket also gives back what a dip costs: the requests not sent while the processes run
//     below the limit are tokens spent when they go above it. A dip that saves less than the
//     bucket (5 requests) costs no throughput, so the aggregate stays near 100% of the limit.
//
// The budget therefore:
//
//  1. starts at its highest paced rate, 98% of the ceiling, with one token: a lone process is
//     at the limit from its first request (issue 14: a project's first run of 100,000 users at
//     0.98 of the limit, not 0.95 after a slow start from 40%);
//  2. on the first 429 of a start estimates its share from how long the start ran. The
//     project's bucket holds about a second of the limit, so a 429 t seconds into a start at
//     rate r says the senders together ran at about limit × (1 + 1/t), and r's share of the
//     limit is about r × t/(t+1). The budget drops to r × t/(t+10), at most 60% of r (about
//     the floor when t is short: the project's bucket refills, and processes that started
//     together stop refusing each other's requests), and regains r × t/(t+1.5), a little
//     under the share, within 2 s; from there it probes as after any decrease. Simulated
//     (200 seeds, one minute), processes starting together earn fewer 429s than with the slow
//     start this replaced (two: 0.7% against 1.6%; three: 2.4% against 2.8%; six: 7.8%
//     against 9.8%) at the same utilization, and a lone process's 100 requests reach 0.983 of
//     the limit instead of 0.949. A start whose rate is below 98% (after an idle restart,
//     step 4) grows by 25% of the ceiling per second until that first 429;
//  3. on a later 429 halves its rate, regains 70% of the rate it had within 2 s (the overload
//     was short, most of the rate was fine), and from the decrease probes upward by
//     ceiling × (0.002·t + 0.00005·t²) after t seconds: slowly at first, so that the next 429
//     is ~15 s away, and faster the longer none comes, so that a process left alone takes the
//     whole limit back within about two minutes. The probe's slope is jittered by ±20% at each
//     decrease so that processes hit by the same overload do not probe in step;
//  4. after 30 s without a request, starts again (step 1), at the rate it had, capped at 98%:
//     the first 429 that follows estimates the share again (see idleRestart);
//  5. counts one decrease per overload: a 429 answered to a request sent before the last
//     decrease changes nothing (epoch). There is no cool-down besides: the retried request waits
//     for the decreased rate's next token anyway, and simulations showed none helped;
//  6. remembers the project's good rate: the rate at the start of the last calm window, a
//     window of 5 s without a 429 (every rate since was at least as high, so it was held for
//     the whole window). Every run records it in the run log of the state with the budget's
//     name (GoodRate, BudgetName), and a new process's budget reads the project's latest record
//     (Remember): step 7 then knows the rate another client's burst interrupts from the first
//     request of a restarted or redeployed worker, and a start below it (step 4) begins there;
//  7. tells another client's share from an overshoot. An episode is the 429s between two calm
//     periods. It is someone else's when its first 429 came at a rate no higher than the good
//     rate (we did not rise: another client's burst, or one jittered request refused by a
//     strict window), or when it reaches 3 decreases (even the decreased rates were refused).
//     Then, once no 429 has come for 2 s, the rate goes back to the good rate of before the
//     episode within 3 s, instead of probing for minutes. A restore that earns a 429 (the other
//     client is still there, or a new process joined) is tried again after a quiet period twice
//     as long (4 s, 8 s, …), so a client that keeps a steady share costs a 429 now and then, not
//     a storm. An overshoot (a 429 while probing above the good rate) only probes, as above.
//
// Until the fifth stop of issue 14 a start was slow (40% of the ceiling, +25%/s, 60% of the
// rate at the first 429): every faster start tried then (≥ 50% and ≥ +100%/s, or 98% at once,
// each with a fixed first decrease) cost 3.3–6% 429s when three processes start together. A
// fixed decrease leaves one of them at 98% whenever it drew no 429 in the first wave, and its
// requests, paced just under the project's refill, take every token while the others' retries
// are refused for seconds. The estimate of step 2 instead cuts deep when the 429 came early
// (processes starting together) and gently when it came late (docs/benchmarks.md).
//
// Measured with BenchmarkThreeProcessesTwoActivations (three processes, two activations each, at
// Iterable's real limit, no Retry-After): 0.979–0.993 of the limit with 2.0–2.9% of the requests
// answered 429 (4 runs; 4 of them in the first 10 s of each), against 0.98–1.01 and 2.6–3.3% with the
// slow start; a lone process (BenchmarkOneProcessAtTheLimit): 0.980 of the limit, no 429, against
// 0.95–0.97. TestBudgetSimulation checks the same on a simulated clock, for more cases;
// TestBudgetSimulationAnotherClientsBurst, ...SteadyShare and ...RemembersAcrossRuns check steps
// 6 and 7, and BenchmarkOneProcessAnotherClientsBurst measures step 7 (docs/benchmarks.md).
type controlParams struct {
	target    float64 // of the ceiling: the highest paced rate
	start     float64 // of the ceiling: the first rate
	slowStart float64 // of the ceiling per second, until the first 429, while below target
	first     float64 // on a start's first 429 at t s, rate × min(first, t/(t+drain))
	drain     float64 // seconds (see first)
	share     float64 // seconds: ... then regain rate × t/(t+share) within recoverIn
	decrease  float64 // rate × this on a later 429
	recover   float64 // × the rate before a later decrease: regained linearly within recoverIn
	recoverIn float64 // seconds
	probe     float64 // of the ceiling per second since the last decrease
	accel     float64 // of the ceiling per second², added to probe as time passes
	jitter    float64 // probe and accel × (1 ± this), drawn at each decrease
	// Another client's share (see the rate control comment, steps 6 and 7).
	calm        float64 // seconds without a 429 after which the rate is the project's good rate
	clusterHits int     // decreases in one episode that say another client took the share
	quiet       float64 // seconds without a 429 before the first restore; doubles per failure
	restoreIn   float64 // seconds to regain the good rate, linearly
}

// defaultControl is the tuning described above (immutable; tests simulate variants).
var defaultControl = controlParams{
	target: 0.98, start: 0.98, slowStart: 0.25, first: 0.6, drain: 10, share: 1.5, decrease: 0.5,
	recover: 0.7, recoverIn: 2, probe: 0.002, accel: 0.00005, jitter: 0.2,
	calm: 5, clusterHits: 3, quiet: 2, restoreIn: 3,
}

// Floor of the decreased rate: half a request per second keeps a paused-looking but live sync.
const minRate = 0.5

// idleRestart: a budget unused this long starts again (step 4). Its rate was learnt against
// processes that may have stopped or started since: it is kept (capped at 98%), but the next
// 429 is a start's first and estimates the share anew.
const idleRestart = 30 * time.Second

// Budget is a token bucket whose rate adapts to 429 answers (see the rate control comment).
// Its burst is one request: requests are spaced by at least 1/rate, so that a stall (a slow
// response, a GC pause) is not followed by requests back to back, which a limit counted in a
// strict one-second window refuses (issue 14). An unlimited budget (+Inf) never waits.
type Budget struct {
	name        string // BudgetName; "" for a budget made outside Budgets
	mu          sync.Mutex
	ctl         controlParams
	ceiling     float64 // configured requests/s; +Inf = unlimited
	rate        float64 // current requests/s
	tokens      float64
	last        time.Time // of the last refill
	pausedUntil time.Time // honours Retry-After for every sender of the project
	// epoch counts decreases: a 429 answered to a request admitted before the last decrease was
	// already accounted for, so several in-flight requests hit by one overload decrease once.
	epoch uint64

	limited     bool           // a 429 was seen since the start
	started     time.Time      // the start's first token (zero until it is taken)
	decreased   float64        // the rate set by the last decrease
	goal        float64        // regained within recoverIn after the last decrease
	slope       float64        // this probe's jitter: × the probe and acceleration
	decreasedAt time.Time      // when the last decrease happened
	grown       time.Time      // last slow-start increase
	used        time.Time      // last token taken
	random      func() float64 // [0, 1), for the jitter

	// The project's good rate and the episodes of 429s (steps 6 and 7).
	good      float64   // the last rate held calm (no 429 for ctl.calm): kept across runs
	calmSince time.Time // creation or the last decrease
	mark      float64   // the rate at markAt: good once held for ctl.calm without a 429
	markAt    time.Time
	pre       float64 // good when this episode began
	external  bool    // this episode began at a rate already held calm: not our overshoot
	hits      int     // decreases in this episode
	restores  int     // restores of this episode that earned a 429
	restoring bool    // the rate is being restored to pre

	seedMu sync.Mutex // held while Remember loads; never with mu
	seeded bool       // Remember ran: it loads once per budget
}

func newBudget(rps float64, now time.Time, random func() float64, ctl controlParams) *Budget {
	b := &Budget{ctl: ctl, ceiling: rps, rate: rps, tokens: 1, last: now, grown: now, used: now, random: random, calmSince: now}
	if !math.IsInf(rps, 1) {
		b.rate = b.startRate()
	}
	return b
}

func (b *Budget) startRate() float64 {
	return math.Min(b.ceiling, math.Max(minRate, b.ceiling*b.ctl.start))
}

// target is the highest rate the budget paces at.
func (b *Budget) target() float64 { return b.ceiling * b.ctl.target }

func (b *Budget) lowerCeiling(rps float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rps < b.ceiling {
		unlimited := math.IsInf(b.ceiling, 1)
		b.ceiling = rps
		if unlimited {
			b.rate = b.startRate()
			b.tokens = 1
			return
		}
		b.rate = math.Min(b.rate, b.target())
		b.decreased = math.Min(b.decreased, b.rate)
		b.tokens = math.Min(b.tokens, 1)
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

// Name is the budget's BudgetName ("" for a budget made outside Budgets).
func (b *Budget) Name() string { return b.name }

// GoodRate is the project's good rate as this budget knows it, in requests/s: learnt in this
// process (step 6) or remembered from an earlier one; 0 when neither. A run records it in the
// run log, so that the next process to sync the project starts there.
func (b *Budget) GoodRate() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.good
}

// Remember gives the budget the good rate an earlier process learnt (the run log's latest
// record of the budget), so that a restarted worker tells another client's burst from its own
// overshoot from its first request on (step 7), and starts no lower than that rate. It acts once per
// budget: load runs on the first call only, and not at all when this process has learnt a rate
// already or the budget is unlimited. load's error is returned and not tried again: a run had
// better start slowly than read the warehouse before each of its chunks.
func (b *Budget) Remember(load func() (float64, error)) error {
	b.seedMu.Lock()
	defer b.seedMu.Unlock()
	if b.seeded {
		return nil
	}
	b.seeded = true
	b.mu.Lock()
	skip := b.good > 0 || math.IsInf(b.ceiling, 1)
	b.mu.Unlock()
	if skip {
		return nil
	}
	good, err := load()
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.remember(good)
	return nil
}

// remember takes good as the project's good rate when none is known. A budget whose start is
// below it (no 429 yet) goes there at once, as after an idle restart; one that met a 429 already
// keeps its rate and restores to good only after someone else's episode (step 7). Call with
// b.mu held.
func (b *Budget) remember(good float64) {
	if b.good > 0 || !(good > 0) || math.IsInf(good, 1) || math.IsInf(b.ceiling, 1) {
		return
	}
	b.good = math.Min(good, b.target())
	if !b.limited && b.rate < b.good {
		b.rate = b.good
		// The calm window restarts at the new rate: the slower rates before it were never
		// held for a whole window and must not replace the remembered one.
		b.markAt = time.Time{}
	}
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
		epoch, wait, ok := b.reserve(time.Now())
		b.mu.Unlock()
		if ok {
			return epoch, nil
		}
		if err := sleep(ctx, max(wait, time.Millisecond)); err != nil {
			return 0, err
		}
	}
}

// reserve takes a token at now, or says how long to wait for one. Call with b.mu held.
func (b *Budget) reserve(now time.Time) (epoch uint64, wait time.Duration, ok bool) {
	if now.Before(b.pausedUntil) {
		return 0, b.pausedUntil.Sub(now), false
	}
	if math.IsInf(b.rate, 1) {
		return b.epoch, 0, true
	}
	if now.Sub(b.used) >= idleRestart {
		// What the budget learnt is stale: start again (step 4), at most at the start rate
		// or the project's good rate, and let the first 429 estimate the share anew.
		b.refill(now)
		b.rate = math.Min(b.rate, math.Max(b.startRate(), math.Min(b.good, b.target())))
		b.tokens = math.Min(b.tokens, 1)
		b.limited, b.grown, b.started = false, now, now
		b.markAt = time.Time{}
	}
	b.refill(now)
	if b.tokens >= 1 {
		b.tokens--
		if b.started.IsZero() {
			b.started = now
		}
		b.used = now
		return b.epoch, 0, true
	}
	return 0, time.Duration((1 - b.tokens) / b.rate * float64(time.Second)), false
}

func (b *Budget) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 && !math.IsInf(b.rate, 1) {
		b.tokens = math.Min(1, b.tokens+el*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
}

// RateLimited records a 429. The rate decreases (see the rate control comment) and, when
// Iterable said Retry-After, every sender of the project waits that long.
func (b *Budget) RateLimited(retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rateLimitedAt(time.Now(), b.epoch, retryAfter)
}

func (b *Budget) rateLimited(epoch uint64, retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rateLimitedAt(time.Now(), epoch, retryAfter)
}

// rateLimitedAt records a 429 answered to a request admitted under epoch. Call with b.mu held.
func (b *Budget) rateLimitedAt(now time.Time, epoch uint64, retryAfter time.Duration) {
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
	if now.Sub(b.calmSince).Seconds() >= b.ctl.calm && !b.unrestored() {
		// A new episode: the rate that was calm until now is what a restore goes back to. When
		// the refused rate is no higher than that, we did not overshoot: someone else took a
		// share (another client's burst, or one jittered request in a strict window).
		b.pre, b.hits, b.restores = b.good, 0, 0
		b.external = b.good > 0 && b.rate <= b.good*(1+1e-9)
	}
	if b.restoring {
		b.restores++
		b.restoring = false
	}
	b.hits++
	b.calmSince = now
	b.markAt = time.Time{}
	factor, goal := b.ctl.decrease, b.rate*b.ctl.recover
	if !b.limited {
		// The start's first 429: the sooner it came, the more senders share the project.
		t := 0.0
		if !b.started.IsZero() {
			t = math.Max(0, now.Sub(b.started).Seconds())
		}
		factor, goal = math.Min(b.ctl.first, ratio(t, b.ctl.drain)), b.rate*ratio(t, b.ctl.share)
	}
	b.limited = true
	b.goal = goal
	b.rate = math.Max(math.Min(minRate, b.ceiling), b.rate*factor)
	b.decreased = b.rate
	b.decreasedAt = now
	b.slope = 1 + b.ctl.jitter*(2*b.random()-1)
	// Drop the saved burst: the project is over its limit right now.
	b.tokens = math.Min(b.tokens, 0)
}

// ratio is t/(t+d), 1 when both are 0.
func ratio(t, d float64) float64 {
	if t+d <= 0 {
		return 1
	}
	return t / (t + d)
}

// unrestored says the last episode was someone else's and its rate is not back yet: a 429 now
// continues it (the rates held calm meanwhile are not the project's good rate).
func (b *Budget) unrestored() bool {
	return b.someoneElses() && b.pre > 0 && b.rate < b.pre
}

// someoneElses says the episode was another client's (or a joining process's), not our
// overshoot: it began at the good rate, or even the decreased rates were refused.
func (b *Budget) someoneElses() bool {
	return b.external || b.hits >= b.ctl.clusterHits
}

// Succeeded records a request that was not rate limited; the rate climbs back toward the ceiling.
func (b *Budget) Succeeded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.succeededAt(time.Now())
}

// succeededAt raises the rate of a start below the target, or the recovery and the probe after a
// decrease. Call with b.mu held.
func (b *Budget) succeededAt(now time.Time) {
	// good is the rate of the start of a calm window that ended without a 429: every rate since
	// was at least as high, so it was held calm for the whole window.
	// While someone else's episode is not restored, the lower rates it forced are not good.
	if b.markAt.IsZero() { // creation, a 429 or an idle restart: a new window starts here
		b.mark, b.markAt = b.rate, now
	} else if now.Sub(b.markAt).Seconds() >= b.ctl.calm {
		if !b.unrestored() {
			b.good = b.mark
		}
		b.mark, b.markAt = b.rate, now
	}
	if math.IsInf(b.rate, 1) || b.rate >= b.target() {
		b.grown = now
		return
	}
	b.refill(now)
	var next float64
	if !b.limited {
		next = b.rate + b.ctl.slowStart*b.ceiling*now.Sub(b.grown).Seconds()
	} else if u := now.Sub(b.decreasedAt).Seconds(); u > 0 {
		next = b.decreased + b.ceiling*b.slope*(b.ctl.probe*u+b.ctl.accel*u*u)
		if goal := b.goal; goal > b.decreased {
			next = math.Max(next, math.Min(goal, b.decreased+(goal-b.decreased)*u/b.ctl.recoverIn))
		}
		// Another client took the share: back to the good rate once its 429s have stopped.
		quiet := b.ctl.quiet * math.Pow(2, float64(b.restores))
		if b.someoneElses() && b.pre > b.decreased && u >= quiet {
			b.restoring = b.rate < b.pre
			next = math.Max(next, b.decreased+(b.pre-b.decreased)*math.Min(1, (u-quiet)/b.ctl.restoreIn))
		}
	}
	b.grown = now
	b.rate = math.Min(b.target(), math.Max(b.rate, next))
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
