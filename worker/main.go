// Command worker runs the activation workflow and its activities on a Temporal task queue.
//
// Temporal connection settings come from the standard environment (TEMPORAL_ADDRESS, default
// localhost:7233; TEMPORAL_NAMESPACE, default "default"; TEMPORAL_API_KEY; TLS files; profiles).
// ACTIVATIONS_TASK_QUEUE overrides the task queue (default "activations").
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"go.temporal.io/sdk/worker"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/telemetry"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

func main() {
	logger := telemetry.Logger(os.Stderr)
	if err := run(logger); err != nil {
		logger.Error("worker stopped", "error", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, opts, err := temporalclient.Dial(ctx, logger)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := temporalclient.EnsureSearchAttributes(ctx, c, opts.Namespace, workflows.SearchAttributes()); err != nil {
		// Runs still work; only the search attributes would fail, so say it loudly and go on.
		logger.Warn("search attributes", "error", err)
	}
	queue := os.Getenv("ACTIVATIONS_TASK_QUEUE")
	if queue == "" {
		queue = workflows.TaskQueue
	}
	acts := activities.New(logger)
	acts.Temporal = c // pauses and unpauses schedules when runs pause and resume
	defer func() {
		if err := acts.Close(); err != nil {
			logger.Warn("close planners", "error", err)
		}
	}()
	w := worker.New(c, queue, worker.Options{})
	workflows.Register(w, acts)
	logger.Info("worker started", "address", opts.HostPort, "namespace", opts.Namespace, "task_queue", queue)
	if err := w.Run(workerInterrupt(ctx)); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// workerInterrupt turns the context into the channel worker.Run waits on.
func workerInterrupt(ctx context.Context) <-chan any {
	ch := make(chan any, 1)
	go func() {
		<-ctx.Done()
		ch <- struct{}{}
	}()
	return ch
}
