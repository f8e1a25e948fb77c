package activities

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/api/option"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
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
	// BigQueryClientOptions and BigQueryStorageClientOptions, when set, become every BigQuery
	// planner's bigquery.Options.ClientOptions (REST) and StorageClientOptions (the Storage Read
	// and Write APIs' gRPC): the worker points them at an emulator (ACTIVATIONS_BIGQUERY_ENDPOINT,
	// ACTIVATIONS_BIGQUERY_STORAGE_ENDPOINT). Set them before the first Planner call.
	BigQueryClientOptions        []option.ClientOption
	BigQueryStorageClientOptions []option.ClientOption

	mu       sync.Mutex
	planners map[string]*pooled
}

// pooled is one planner of the pool, or its opening: done closes once pl or err is set.
type pooled struct {
	done chan struct{}
	pl   warehouse.Planner
	err  error
}

// NewPlannerPool returns an empty pool.
func NewPlannerPool(logger *slog.Logger) *PlannerPool {
	if logger == nil {
		logger = slog.Default()
	}
	return &PlannerPool{Logger: logger, planners: map[string]*pooled{}}
}

// Planner opens (once) the planner of the activation's state.
func (p *PlannerPool) Planner(ctx context.Context, a spec.Activation) (warehouse.Planner, error) {
	var (
		key  string
		open func() (warehouse.Planner, error)
	)
	switch a.Source.Type {
	case "duckdb":
		// An in-memory state lives only as long as its handle, so each activation gets its own.
		key = "duckdb:" + a.StatePath() + "\x00" + a.SourcePath()
		if a.StatePath() == "" {
			key = "duckdb-mem:" + a.ID + "\x00" + a.SourcePath()
		}
		open = func() (warehouse.Planner, error) {
			pl, err := duckdb.Open(ctx, duckdb.Options{Path: a.StatePath(), SourcePath: a.SourcePath(), Logger: p.Logger})
			if err != nil {
				return nil, fmt.Errorf("activation %s: open DuckDB state %s: %w", a.ID, a.StatePath(), err)
			}
			return pl, nil
		}
	case "bigquery":
		st := a.State.BigQuery
		if st == nil {
			return nil, fmt.Errorf("activation %s: state.bigquery is missing", a.ID)
		}
		key = fmt.Sprintf("bigquery:%s/%s/%s/%d/%t/%t", st.Project, st.Dataset, st.Location, st.MaximumBytesBilled, st.StorageRead, st.RejectionsDML)
		open = func() (warehouse.Planner, error) {
			pl, err := bigquery.Open(ctx, bigquery.Options{Project: st.Project, Dataset: st.Dataset, Location: st.Location,
				MaximumBytesBilled: st.MaximumBytesBilled, StorageRead: st.StorageRead, RejectionsDML: st.RejectionsDML, Logger: p.Logger,
				ClientOptions: p.BigQueryClientOptions, StorageClientOptions: p.BigQueryStorageClientOptions})
			if err != nil {
				return nil, fmt.Errorf("activation %s: open BigQuery state %s.%s: %w", a.ID, st.Project, st.Dataset, err)
			}
			return pl, nil
		}
	default:
		return nil, fmt.Errorf("activation %s: source type %q is not supported by this worker", a.ID, a.Source.Type)
	}
	return p.get(ctx, key, open)
}

// get returns the planner of key, opening it once. The pool's lock is held only to find or
// register the entry: an open that talks to BigQuery (with retries) or waits for a DuckDB file
// blocks the activities of that state alone, not every activity of the worker. An open that
// failed is forgotten, so the next activity tries again.
func (p *PlannerPool) get(ctx context.Context, key string, open func() (warehouse.Planner, error)) (warehouse.Planner, error) {
	p.mu.Lock()
	e, ok := p.planners[key]
	if !ok {
		e = &pooled{done: make(chan struct{})}
		p.planners[key] = e
	}
	p.mu.Unlock()
	if !ok {
		e.pl, e.err = open()
		if e.err != nil {
			p.mu.Lock()
			delete(p.planners, key)
			p.mu.Unlock()
		}
		close(e.done)
	}
	select {
	case <-e.done:
		return e.pl, e.err
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the warehouse connection: %w", context.Cause(ctx))
	}
}

// Close closes every planner; the worker calls it on shutdown so the files are released.
func (p *PlannerPool) Close() error {
	p.mu.Lock()
	entries := p.planners
	p.planners = map[string]*pooled{}
	p.mu.Unlock()
	var first error
	for _, e := range entries {
		<-e.done // an open in flight ends before its planner is closed
		if e.pl == nil {
			continue
		}
		if err := e.pl.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
