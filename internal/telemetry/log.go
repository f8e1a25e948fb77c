// Package telemetry sets up the worker's logs, traces and metrics: slog with trace ids,
// OpenTelemetry tracer and meter providers configured by the standard OTEL_* variables, a
// Prometheus /metrics endpoint, liveness and readiness probes, the Temporal SDK's metrics and
// tracing, and an HTTP client transport whose spans carry no user identifiers.
//
// Nothing here sets OpenTelemetry globals: Setup returns the providers, and the program passes
// them where they are needed.
package telemetry

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// Logger returns a slog logger configured by LOG_FORMAT (json | text, default text) and
// LOG_LEVEL (debug | info | warn | error, default info).
func Logger(w io.Writer) *slog.Logger { return LoggerDefaultLevel(w, slog.LevelInfo) }

// LoggerDefaultLevel is Logger with another level when LOG_LEVEL is unset.
func LoggerDefaultLevel(w io.Writer, def slog.Level) *slog.Logger {
	level := def
	switch strings.ToLower(os.Getenv("LOG_LEVEL")) {
	case "info":
		level = slog.LevelInfo
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if strings.ToLower(os.Getenv("LOG_FORMAT")) == "json" {
		return slog.New(TraceHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(TraceHandler(slog.NewTextHandler(w, opts)))
}

// Keys TraceHandler adds.
const (
	LogKeyTraceID = "trace_id"
	LogKeySpanID  = "span_id"
)

// TraceHandler wraps h so that a record logged with a context holding a valid span (the
// *Context methods of slog.Logger, LogAttrs) carries trace_id and span_id.
func TraceHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(traceHandler); ok {
		return h
	}
	return traceHandler{h}
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			r = r.Clone()
			r.AddAttrs(slog.String(LogKeyTraceID, sc.TraceID().String()), slog.String(LogKeySpanID, sc.SpanID().String()))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
