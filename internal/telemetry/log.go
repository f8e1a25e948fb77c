// Package telemetry sets up logging (and, later, traces and metrics) for the two programs.
package telemetry

import (
	"io"
	"log/slog"
	"os"
	"strings"
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
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
