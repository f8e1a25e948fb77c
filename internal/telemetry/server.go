package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// HTTP endpoints of the worker's telemetry server. Kubernetes probes use exactly these paths.
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// EnvHTTPAddr names the variable holding the telemetry server's listen address; DefaultHTTPAddr
// is used when it is unset, and "off" disables the server.
const (
	EnvHTTPAddr     = "ACTIVATIONS_HTTP_ADDR"
	DefaultHTTPAddr = ":9090"
)

// HTTPAddr is the telemetry server's address from ACTIVATIONS_HTTP_ADDR (default ":9090"); empty
// when the variable is "off".
func HTTPAddr() string {
	v := strings.TrimSpace(os.Getenv(EnvHTTPAddr))
	switch {
	case v == "":
		return DefaultHTTPAddr
	case strings.EqualFold(v, "off"):
		return ""
	}
	return v
}

// DefaultReadyTimeout bounds the health check /readyz makes, below a typical probe timeout (2s).
const DefaultReadyTimeout = time.Second

// Probes answers the liveness and readiness probes. Liveness is the process answering HTTP.
// Readiness is: the worker was started (SetReady(true), after worker.Start succeeded and before
// shutdown begins) and check (the Temporal client's CheckHealth) answers within Timeout.
type Probes struct {
	ready atomic.Bool
	check func(context.Context) error
	// Timeout bounds check; zero means DefaultReadyTimeout.
	Timeout time.Duration
}

// NewProbes returns probes that are not ready yet. check may be nil (readiness is then the
// flag alone).
func NewProbes(check func(context.Context) error) *Probes {
	return &Probes{check: check}
}

// SetReady marks the worker started (true) or stopping (false).
func (p *Probes) SetReady(ready bool) { p.ready.Store(ready) }

// Healthz answers 200 while the process serves HTTP.
func (p *Probes) Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = fmt.Fprintln(w, "ok")
}

// Readyz answers 200 when the worker polls its task queue and Temporal answers, else 503 with
// the reason.
func (p *Probes) Readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !p.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, "not ready: the worker is not polling (starting or shutting down)")
		return
	}
	if p.check != nil {
		timeout := p.Timeout
		if timeout <= 0 {
			timeout = DefaultReadyTimeout
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		if err := p.check(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: Temporal health check: %v\n", err)
			return
		}
	}
	_, _ = fmt.Fprintln(w, "ok")
}

// Handler routes /metrics, /healthz and /readyz.
func (t *Telemetry) Handler(p *Probes) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+PathMetrics, t.MetricsHandler())
	mux.HandleFunc("GET "+PathHealthz, p.Healthz)
	mux.HandleFunc("GET "+PathReadyz, p.Readyz)
	return mux
}

// Server is a running telemetry HTTP server.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan error
}

// Serve listens on addr (so that a taken port is reported now) and serves h in the background.
func Serve(ctx context.Context, logger *slog.Logger, addr string, h http.Handler) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry server: listen on %s: %w", addr, err)
	}
	s := &Server{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)},
		addr: ln.Addr(),
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Addr is the address the server listens on (with the port chosen for ":0").
func (s *Server) Addr() net.Addr { return s.addr }

// Shutdown stops accepting connections and waits for the requests in flight, until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry server shutdown: %w", err)
	}
	if err := <-s.done; err != nil {
		return fmt.Errorf("telemetry server: %w", err)
	}
	return nil
}
