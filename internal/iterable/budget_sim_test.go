package iterable

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"time"
)

// A discrete-event simulation of worker processes sharing one Iterable project: each process has
// its own Budget and senders that pack, wait on the budget, send and retry 429s with the client's
// backoff; the project is a token bucket like the emulator's. It runs the real Budget code on a
// virtual clock, so the rate control can be checked for minutes of traffic in milliseconds.

type simConfig struct {
	processes, senders int
	limit              float64 // server requests/s (burst as many)
	ceiling            float64 // client budget ceiling
	duration           time.Duration
	seed               uint64
	stagger            time.Duration // process i starts at i × stagger
	ctl                controlParams
	stopAt             map[int]time.Duration // process → when it stops sending
	measureFrom        time.Duration         // utilization counts responses from then on
	strict             bool                  // the project's limit is a strict window, not a bucket
	others             []simTraffic          // another client's requests on the project
	requestsTotal      int                   // > 0: each process stops after this many accepted
	budgets            []*Budget             // reused (a later run of the same workers)
	base               time.Time             // of the virtual clock (default 1,700,000,000)
}

// simTraffic is another client sending rps requests/s from from to to (sent once, no retry).
type simTraffic struct {
	from, to time.Duration
	rps      float64
}

type simResult struct {
	accepted, requests, rateLimited int
	perProcess                      []int
	finished                        time.Duration // when the last process reached requestsTotal
	budgets                         []*Budget
}

func (r simResult) utilization(c simConfig) float64 {
	return float64(r.accepted) / (c.limit * (c.duration - c.measureFrom).Seconds())
}

func (r simResult) limitedRatio() float64 {
	if r.requests == 0 {
		return 0
	}
	return float64(r.rateLimited) / float64(r.requests)
}

type simKind int

const (
	simPack simKind = iota
	simAcquire
	simArrive
	simResponse
	simOther
)

type simEvent struct {
	at      time.Duration
	seq     int
	kind    simKind
	proc    int
	sender  int
	epoch   uint64
	limited bool
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

func simulate(c simConfig) simResult {
	if c.ctl == (controlParams{}) {
		c.ctl = defaultControl
	}
	rnd := rand.New(rand.NewPCG(c.seed, 7))
	base := c.base
	if base.IsZero() {
		base = time.Unix(1_700_000_000, 0)
	}
	budgets := c.budgets
	if budgets == nil {
		budgets = make([]*Budget, c.processes)
		for p := range budgets {
			budgets[p] = newBudget(c.ceiling, base.Add(time.Duration(p)*c.stagger), rnd.Float64, c.ctl)
		}
	}
	attempts := make([][]int, c.processes)
	for p := range attempts {
		attempts[p] = make([]int, c.senders)
	}
	res := simResult{perProcess: make([]int, c.processes), budgets: budgets}
	var q simQueue
	seq := 0
	push := func(e *simEvent) {
		seq++
		e.seq = seq
		heap.Push(&q, e)
	}
	ms := func(lo, hi float64) time.Duration {
		return time.Duration((lo + (hi-lo)*rnd.Float64()) * float64(time.Millisecond))
	}
	// The server: a token bucket of c.limit requests/s with a burst of as many.
	tokens, last := c.limit, time.Duration(-1)
	var window []time.Duration // strict: the accepted requests of the last second
	allow := func(at time.Duration) bool {
		if c.strict {
			for len(window) > 0 && at-window[0] >= time.Second {
				window = window[1:]
			}
			if len(window) >= int(c.limit) {
				return false
			}
			window = append(window, at)
			return true
		}
		if last >= 0 {
			tokens = math.Min(c.limit, tokens+(at-last).Seconds()*c.limit)
		}
		last = at
		if tokens < 1 {
			return false
		}
		tokens--
		return true
	}
	for p := range c.processes {
		start := time.Duration(p)*c.stagger + ms(20, 80) // process start-up
		for s := range c.senders {
			push(&simEvent{at: start, kind: simPack, proc: p, sender: s})
		}
	}
	for _, o := range c.others {
		for at := o.from; at < o.to; at += time.Duration(float64(time.Second) / o.rps) {
			push(&simEvent{at: at, kind: simOther, proc: -1})
		}
	}
	done := 0
	for q.Len() > 0 {
		e := heap.Pop(&q).(*simEvent)
		if e.kind == simOther {
			if e.at < c.duration {
				allow(e.at)
			}
			continue
		}
		if c.requestsTotal > 0 && res.perProcess[e.proc] >= c.requestsTotal {
			continue
		}
		if stop, ok := c.stopAt[e.proc]; e.at >= c.duration || (ok && e.at >= stop) {
			continue
		}
		b := budgets[e.proc]
		now := base.Add(e.at)
		switch e.kind {
		case simPack:
			attempts[e.proc][e.sender] = 0
			push(&simEvent{at: e.at + ms(2, 6), kind: simAcquire, proc: e.proc, sender: e.sender})
		case simAcquire:
			epoch, wait, ok := b.reserve(now)
			if !ok {
				// Timers fire a little late.
				push(&simEvent{at: e.at + max(wait, time.Millisecond) + ms(0, 1), kind: simAcquire, proc: e.proc, sender: e.sender})
				continue
			}
			res.requests++
			push(&simEvent{at: e.at + ms(0.3, 1.5), kind: simArrive, proc: e.proc, sender: e.sender, epoch: epoch})
		case simArrive:
			ok := allow(e.at)
			if ok {
				push(&simEvent{at: e.at + ms(5, 20), kind: simResponse, proc: e.proc, sender: e.sender, epoch: e.epoch})
			} else {
				push(&simEvent{at: e.at + ms(0.3, 1), kind: simResponse, proc: e.proc, sender: e.sender, epoch: e.epoch, limited: true})
			}
		case simResponse:
			if e.limited {
				res.rateLimited++
				b.rateLimitedAt(now, e.epoch, 0)
				// The client's backoff: 500ms doubling, ±50%, at most 30s.
				attempts[e.proc][e.sender]++
				iv := math.Min(0.5*math.Pow(2, float64(attempts[e.proc][e.sender]-1)), 30)
				d := time.Duration(iv * (0.5 + rnd.Float64()) * float64(time.Second))
				push(&simEvent{at: e.at + d, kind: simAcquire, proc: e.proc, sender: e.sender})
				continue
			}
			b.succeededAt(now)
			if e.at < c.measureFrom {
				push(&simEvent{at: e.at, kind: simPack, proc: e.proc, sender: e.sender})
				continue
			}
			res.accepted++
			res.perProcess[e.proc]++
			if c.requestsTotal > 0 && res.perProcess[e.proc] == c.requestsTotal {
				done++
				res.finished = max(res.finished, e.at)
				if done == c.processes {
					return res
				}
			}
			push(&simEvent{at: e.at, kind: simPack, proc: e.proc, sender: e.sender})
		}
	}
	return res
}
