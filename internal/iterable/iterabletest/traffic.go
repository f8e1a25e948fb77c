package iterabletest

import (
	"math"
	"time"
)

// Rate-limit modes and other clients' traffic, for the rate control's benchmarks.
//
// RateLimitTokenBucket (the default) counts every limit as a token bucket of its rate with a
// burst of as many requests: a client a little under the limit never sees a 429, whatever the
// jitter of its requests. RateLimitStrictWindow accepts at most burst requests in any window of
// burst/rate seconds (5 bulkUpdate requests in any second): no burst after a pause, and a
// client paced at 98% of the limit is answered 429 as soon as jitter brings six requests within
// one second.
//
// Another client of the project (InjectTraffic) sends requests to one endpoint at a steady rate,
// during a time window: a burst then silence, or a steady share. Its requests are not served,
// only counted against the project's limit before ours; TrafficStats says how many were
// accepted and rate limited. Stats count only the requests that reached the server.

// RateLimitMode is how the emulator counts a rate limit.
type RateLimitMode int

const (
	// RateLimitTokenBucket is a token bucket of the rate with a burst of as many requests.
	RateLimitTokenBucket RateLimitMode = iota
	// RateLimitStrictWindow accepts at most burst requests in any burst/rate seconds.
	RateLimitStrictWindow
)

// Traffic is another client's requests to the bulkUpdate endpoint of a project.
type Traffic struct {
	// After is when it starts, from InjectTraffic.
	After time.Duration
	// RPS is its rate, requests per second, evenly spaced; each request is sent once (a 429 is
	// not retried).
	RPS float64
	// For is how long it lasts; 0 = until the server is closed or StopTraffic.
	For time.Duration
}

// TrafficStats count the requests of the injected traffic of a project.
type TrafficStats struct {
	Requests, Accepted, RateLimited int
}

func (l *limiter) mode(m RateLimitMode) *limiter {
	l.strict = m == RateLimitStrictWindow
	return l
}

// allowWindow is the strict window: at most burst requests accepted in any burst/rate seconds.
func (l *limiter) allowWindow(now time.Time) bool {
	n := int(math.Max(1, math.Floor(l.burst)))
	span := time.Duration(float64(n) / l.rate * float64(time.Second))
	i := 0
	for i < len(l.window) && now.Sub(l.window[i]) >= span {
		i++
	}
	l.window = l.window[i:]
	if len(l.window) >= n {
		return false
	}
	l.window = append(l.window, now)
	return true
}

// InjectTraffic starts another client's bulkUpdate traffic on the project of apiKey (see
// Traffic). It runs in a goroutine until its end, StopTraffic or Close.
func (s *Server) InjectTraffic(apiKey string, t Traffic) {
	if t.RPS <= 0 {
		return
	}
	s.mu.Lock()
	if s.trafficStop == nil {
		s.trafficStop = make(chan struct{})
	}
	stop := s.trafficStop
	s.mu.Unlock()
	go func() {
		start := time.Now().Add(t.After)
		interval := time.Duration(float64(time.Second) / t.RPS)
		for i := 0; ; i++ {
			at := start.Add(time.Duration(i) * interval)
			if t.For > 0 && at.Sub(start) >= t.For {
				return
			}
			timer := time.NewTimer(time.Until(at))
			select {
			case <-stop:
				timer.Stop()
				return
			case <-timer.C:
			}
			s.mu.Lock()
			if p := s.projects[apiKey]; p != nil {
				p.traffic.Requests++
				if p.bulkRL.allow(time.Now()) {
					p.traffic.Accepted++
				} else {
					p.traffic.RateLimited++
				}
			}
			s.mu.Unlock()
		}
	}()
}

// StopTraffic stops every injected traffic.
func (s *Server) StopTraffic() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.trafficStop != nil {
		close(s.trafficStop)
		s.trafficStop = nil
	}
}

// TrafficStats returns the counters of the injected traffic of the project of apiKey.
func (s *Server) TrafficStats(apiKey string) TrafficStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.projects[apiKey]; p != nil {
		return p.traffic
	}
	return TrafficStats{}
}
