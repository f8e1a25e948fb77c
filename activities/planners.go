package activities

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// PlannerSource hands out the planner of an activation's warehouse.
type PlannerSource interface {
	Planner(ctx context.Context, a spec.Activation) (warehouse.Planner, error)
}

// PlannerPool opens one planner per state database and shares it between activities: DuckDB
// lets a single process open a database file, so every activity of the worker must use the same
// handle.
type PlannerPool struct {
	Logger *slog.Logger

	mu       sync.Mutex
	planners map[string]warehouse.Planner
}

// NewPlannerPool returns an empty pool.
func NewPlannerPool(logger *slog.Logger) *PlannerPool {
	if logger == nil {
		logger = slog.Default()
	}
	return &PlannerPool{Logger: logger, planners: map[string]warehouse.Planner{}}
}

// Planner opens (once) the planner of the activation's state.
func (p *PlannerPool) Planner(ctx context.Context, a spec.Activation) (warehouse.Planner, error) {
	if a.Source.Type != "duckdb" {
		return nil, fmt.Errorf("activation %s: source type %q is not supported by this worker", a.ID, a.Source.Type)
	}
	// An in-memory state lives only as long as its handle, so each activation gets its own.
	key := a.StatePath() + "\x00" + a.SourcePath()
	if a.StatePath() == "" {
		key = "mem:" + a.ID + "\x00" + a.SourcePath()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pl, ok := p.planners[key]; ok {
		return pl, nil
	}
	pl, err := duckdb.Open(ctx, duckdb.Options{Path: a.StatePath(), SourcePath: a.SourcePath(), Logger: p.Logger})
	if err != nil {
		return nil, fmt.Errorf("activation %s: open DuckDB state %s: %w", a.ID, a.StatePath(), err)
	}
	p.planners[key] = pl
	return pl, nil
}

// Close closes every planner; the worker calls it on shutdown so the files are released.
func (p *PlannerPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first error
	for k, pl := range p.planners {
		if err := pl.Close(); err != nil && first == nil {
			first = err
		}
		delete(p.planners, k)
	}
	return first
}
