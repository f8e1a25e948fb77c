package duckdb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Environment variables that set the resources of every DuckDB database the planner opens, when
// Options leaves them unset. The worker reads them through Open, so operators tune a deployed
// worker without code.
const (
	// EnvMemoryLimit bounds DuckDB's memory (its buffer pool: tables, hash tables, sorts), per
	// state database, as DuckDB's memory_limit setting: "128MB", "2GB", "1GiB". Past the limit
	// DuckDB spills to its temporary directory instead of growing.
	EnvMemoryLimit = "ACTIVATIONS_DUCKDB_MEMORY_LIMIT"
	// EnvThreads is the number of DuckDB worker threads per state database (default: one per core).
	EnvThreads = "ACTIVATIONS_DUCKDB_THREADS"
	// EnvTempDirectory is where DuckDB spills what does not fit in the memory limit (default: the
	// state file's path with ".tmp" appended, next to it; for an in-memory state, DuckDB's own
	// default ".tmp" in the working directory).
	EnvTempDirectory = "ACTIVATIONS_DUCKDB_TEMP_DIRECTORY"
)

// DefaultMemoryLimit is the memory limit of a state database when neither Options nor the
// environment sets one. DuckDB's own default is 80% of the machine's RAM, which a diff of a
// large model fills (1.5 GB of worker memory at 1,000,000 rows). The process holds about three
// times the limit at its peak (DuckDB allocates outside its buffer pool too): with 96MB the whole
// worker peaked at 346 MiB on 1,000,000 rows and 373 MiB on 10,000,000, and planned as fast as
// with 512MB (the plan sorts its rows once and spills what does not fit). What DuckDB cannot
// spill, a commit's DELETE from a large state, raises the limit as it needs (deleteMemory):
// 10,000,000 rows need about 127 MiB (docs/benchmarks.md has the measurements).
const DefaultMemoryLimit = "96MB"

// Resources are the DuckDB settings that bound what the planner takes from the machine.
type Resources struct {
	// MemoryLimit is DuckDB's memory_limit ("128MB", "2GB", "1GiB"); "" = $ACTIVATIONS_DUCKDB_MEMORY_LIMIT,
	// else DefaultMemoryLimit. "default" keeps DuckDB's own default (80% of RAM).
	MemoryLimit string
	// Threads is DuckDB's threads; 0 = $ACTIVATIONS_DUCKDB_THREADS, else one per core.
	Threads int
	// TempDirectory is DuckDB's temp_directory; "" = $ACTIVATIONS_DUCKDB_TEMP_DIRECTORY, else
	// DuckDB's default (the state file's path + ".tmp").
	TempDirectory string
}

// resolve fills the unset settings from the environment and the defaults.
func (r Resources) resolve() (Resources, error) {
	if r.MemoryLimit == "" {
		r.MemoryLimit = strings.TrimSpace(os.Getenv(EnvMemoryLimit))
	}
	if r.MemoryLimit == "" {
		r.MemoryLimit = DefaultMemoryLimit
	}
	if r.Threads == 0 {
		if s := strings.TrimSpace(os.Getenv(EnvThreads)); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return r, fmt.Errorf("%s=%q: want a positive number of threads", EnvThreads, s)
			}
			r.Threads = n
		}
	}
	if r.Threads < 0 {
		return r, fmt.Errorf("threads %d: want a positive number", r.Threads)
	}
	if r.TempDirectory == "" {
		r.TempDirectory = strings.TrimSpace(os.Getenv(EnvTempDirectory))
	}
	return r, nil
}

// apply sets the resources on the database instance. The settings are global: planners that share
// a state file share one DuckDB instance, and they all resolve the same settings.
func (r Resources) apply(ctx context.Context, db *sql.DB) error {
	set := func(name, value string) error {
		// SET takes no parameters; the values come from configuration, quoted as literals.
		if _, err := db.ExecContext(ctx, `SET GLOBAL `+name+` = `+value); err != nil {
			return fmt.Errorf("set DuckDB %s = %s: %w", name, value, err)
		}
		return nil
	}
	if !strings.EqualFold(r.MemoryLimit, "default") {
		if err := set("memory_limit", quoteLiteral(r.MemoryLimit)); err != nil {
			return err
		}
	}
	if r.Threads > 0 {
		if err := set("threads", strconv.Itoa(r.Threads)); err != nil {
			return err
		}
	}
	if r.TempDirectory != "" {
		if err := os.MkdirAll(r.TempDirectory, 0o755); err != nil {
			return fmt.Errorf("DuckDB temp directory: %w", err)
		}
		if err := set("temp_directory", quoteLiteral(r.TempDirectory)); err != nil {
			return err
		}
	}
	// The plan's order comes from ORDER BY (of the sorted diff, and seq), never from insertion
	// order; without the guarantee DuckDB's CREATE TABLE AS and inserts need less memory.
	return set("preserve_insertion_order", "false")
}

// Deleting rows pins memory that DuckDB cannot spill: the version information of every
// 2,048-row vector of the table that loses a row, 16 KiB each, held until the next checkpoint.
// A commit of changes spread over the whole state touches every vector, so its DELETE needs
// about 8 bytes per state row whatever the number of keys: 76 MiB for a state of 10,000,000
// rows, which failed with "failed to pin block" under a 96MB limit (2,000,000 rows needed 16 –
// 24 MB, 4,000,000 rows 32 – 48 MB). deleteMemory is what such a DELETE needs, with a margin
// for the scan and the keys' hash table; Commit raises memory_limit to it (ensureMemory).
const (
	vectorRows       = 2048
	vectorDeleteInfo = 16 << 10
	deleteMargin     = 32 << 20
)

// deleteMemory is the memory_limit a DELETE of keys rows from a table of rows rows needs.
func deleteMemory(rows, keys int64) int64 {
	vectors := min(keys, (rows+vectorRows-1)/vectorRows)
	return vectors*vectorDeleteInfo*5/4 + deleteMargin
}

// ensureMemory raises the database's memory_limit to need bytes when it is lower, and never
// lowers it: the memory a DELETE pinned stays pinned until a checkpoint, which later steps do
// not control. It does nothing when the limit is DuckDB's own default or cannot be read. Its
// caller holds the writer slot (Planner.write), so two raises never interleave.
func (p *Planner) ensureMemory(ctx context.Context, need int64, why string) error {
	if !p.manageMemory {
		return nil
	}
	var cur string
	if err := p.db.QueryRowContext(ctx, `SELECT current_setting('memory_limit')`).Scan(&cur); err != nil {
		return fmt.Errorf("read memory_limit: %w", err)
	}
	have, ok := warehouse.ParseMemorySize(cur)
	if !ok || have >= need {
		return nil
	}
	if _, err := p.db.ExecContext(ctx, fmt.Sprintf(`SET GLOBAL memory_limit = '%dKiB'`, (need+1023)>>10)); err != nil {
		return fmt.Errorf("raise memory_limit to %d MiB: %w", need>>20, err)
	}
	p.log.InfoContext(ctx, "DuckDB memory_limit raised", "from", cur, "to_mib", need>>20, "why", why)
	return nil
}
