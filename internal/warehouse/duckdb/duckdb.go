// Package duckdb implements warehouse.Planner on an embedded DuckDB database.
//
// One state database file holds, per activation, a state table (what was last synced) and the
// plan tables of its runs, plus one rejections table and one runs table (the run log) for all
// activations. The model may run in that database or in a separate source database attached
// read-only. Every step of the diff is SQL that DuckDB executes; only the changed rows of a plan
// ever reach Go, chunk by chunk.
package duckdb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	duckdb "github.com/duckdb/duckdb-go/v2"

	"github.com/activation-engine/activations/internal/warehouse"
)

// Options configures Open.
type Options struct {
	// Path of the state database file (holds state, plan and rejections tables); "" = in-memory.
	Path string
	// SourcePath is an optional database file the model reads from. It is attached READ_ONLY and
	// made the default catalog (USE) while the model query runs; "" = the model runs in the state
	// database itself.
	SourcePath string
	// Logger receives debug and info records; nil discards them.
	Logger *slog.Logger
	// Resources bounds DuckDB's memory and threads; unset fields come from the environment
	// (ACTIVATIONS_DUCKDB_MEMORY_LIMIT, ACTIVATIONS_DUCKDB_THREADS, ACTIVATIONS_DUCKDB_TEMP_DIRECTORY)
	// or the defaults (DefaultMemoryLimit).
	Resources Resources
}

// RejectionsTable is the table of the state database that holds every activation's rejections,
// for users to query.
const RejectionsTable = "rejections"

// planChunksTable is Commit's bookkeeping: the chunks of each plan table already applied to the
// state, with the run id of the commit that applied them, so that a repeated Commit applies them
// once, and a row of chunk newAddsMark, written with the plan, when none of the plan's adds has
// a row in the state (every plan but a full resync). With both, Commit inserts the adds without
// first deleting their keys from the state, which scanned the whole state and held every
// committed key in memory. A plan table without the mark (a full resync, or one written by an
// earlier version) deletes before inserting, and so does a chunk applied before under another
// run id (`resume --skip-rejected` commits the run's chunks again under a pseudo-run).
const planChunksTable = "plan_chunks"

// newAddsMark is the chunk number of planChunksTable's row that says a plan's adds are new keys.
const newAddsMark = -1

// Planner is a warehouse.Planner backed by DuckDB. DuckDB lets one process open a database file,
// so open one Planner per file and share it: it is safe for concurrent use.
type Planner struct {
	db      *sql.DB
	log     *slog.Logger
	catalog string // the state database's catalog name, already quoted
	catName string // the same, unquoted (for the Appender)
	source  string // quoted alias of the attached source database, "" without one

	locks warehouse.KeyedMutex // one per activation: serialises its Plan and Commit

	// writers lets one Plan or Commit write at a time, whatever the activation. Each writes a
	// table of up to millions of rows and takes what memory_limit allows; several at once
	// share that limit, and four plans of 20,000 rows each failed together under 96MB ("could
	// not allocate block"). A plan already uses every thread, so waiting costs little.
	writers chan struct{}

	numberWithWindow bool // every plan numbers its rows with the window (tests of the fallback)

	// manageMemory: Commit may raise memory_limit (ensureMemory), false when it is DuckDB's own.
	manageMemory bool
}

var _ warehouse.Planner = (*Planner)(nil)

// Open opens (or creates) the state database and attaches the source database, if any.
func Open(ctx context.Context, opts Options) (*Planner, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res, err := opts.Resources.resolve()
	if err != nil {
		return nil, fmt.Errorf("open DuckDB state %s: %w", opts.Path, err)
	}
	opts.Resources = res
	if opts.Path != "" {
		if err := os.MkdirAll(filepath.Dir(opts.Path), 0o755); err != nil {
			return nil, fmt.Errorf("open DuckDB state %s: %w", opts.Path, err)
		}
	}
	connector, err := duckdb.NewConnector(opts.Path, nil)
	if err != nil {
		return nil, fmt.Errorf("open DuckDB state %s: %w", opts.Path, err)
	}
	db := sql.OpenDB(connector)
	p := &Planner{db: db, log: log, manageMemory: !strings.EqualFold(res.MemoryLimit, "default"),
		writers: make(chan struct{}, 1)}
	if err := p.init(ctx, opts); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open DuckDB state %s: %w", opts.Path, err)
	}
	log.Debug("DuckDB state opened", "path", opts.Path, "source", opts.SourcePath,
		"memory_limit", res.MemoryLimit, "threads", res.Threads, "temp_directory", res.TempDirectory)
	return p, nil
}

func (p *Planner) init(ctx context.Context, opts Options) error {
	if err := opts.Resources.apply(ctx, p.db); err != nil {
		return err
	}
	// Hashes of TIMESTAMPTZ values are taken from their text form, which follows the time zone:
	// pin it so a worker on another machine does not see every timestamp as changed.
	if _, err := p.db.ExecContext(ctx, `SET GLOBAL TimeZone = 'UTC'`); err != nil {
		return fmt.Errorf("set time zone: %w", err)
	}
	var catalog string
	if err := p.db.QueryRowContext(ctx, `SELECT current_database()`).Scan(&catalog); err != nil {
		return fmt.Errorf("read catalog name: %w", err)
	}
	p.catalog, p.catName = quoteIdent(catalog), catalog
	if opts.SourcePath != "" {
		abs, err := filepath.Abs(opts.SourcePath)
		if err != nil {
			return fmt.Errorf("source %s: %w", opts.SourcePath, err)
		}
		// Planners of one state file share DuckDB's instance (and its attachments), so the
		// alias is derived from the source path: two sources never take each other's place.
		sum := sha256.Sum256([]byte(abs))
		alias := "activation_source_" + hex.EncodeToString(sum[:6])
		p.source = quoteIdent(alias)
		// ATTACH takes no parameters; the path is a literal, escaped.
		if _, err := p.db.ExecContext(ctx, fmt.Sprintf(`ATTACH IF NOT EXISTS %s AS %s (READ_ONLY)`,
			quoteLiteral(abs), p.source)); err != nil {
			return fmt.Errorf("attach source %s: %w", opts.SourcePath, err)
		}
	}
	_, err := p.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+p.qualified(RejectionsTable)+` (
		activation_id VARCHAR NOT NULL,
		run_id VARCHAR NOT NULL,
		key VARCHAR,
		op VARCHAR,
		outcome VARCHAR NOT NULL,
		field VARCHAR,
		reason VARCHAR,
		"at" TIMESTAMP NOT NULL,
		class VARCHAR,
		row_hash VARCHAR
	)`)
	if err != nil {
		return fmt.Errorf("create %s table: %w", RejectionsTable, err)
	}
	// Tables written by earlier versions lack the columns that make a rejection known (its
	// class and the row hash it was made with); ADD COLUMN appends them, as CREATE has them.
	for _, col := range []string{"class", "row_hash"} {
		if _, err := p.db.ExecContext(ctx, `ALTER TABLE `+p.qualified(RejectionsTable)+
			` ADD COLUMN IF NOT EXISTS `+col+` VARCHAR`); err != nil {
			return fmt.Errorf("add column %s to %s: %w", col, RejectionsTable, err)
		}
	}
	if _, err := p.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+p.qualified(planChunksTable)+` (
		plan VARCHAR NOT NULL,
		chunk INTEGER NOT NULL,
		run VARCHAR NOT NULL,
		"at" TIMESTAMP NOT NULL
	)`); err != nil {
		return fmt.Errorf("create %s table: %w", planChunksTable, err)
	}
	// Rows of plan tables that are gone (a run that never finished, its tables dropped since).
	if _, err := p.db.ExecContext(ctx, `DELETE FROM `+p.qualified(planChunksTable)+` WHERE plan NOT IN (
		SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main')`, p.catName); err != nil {
		return fmt.Errorf("prune %s: %w", planChunksTable, err)
	}
	if _, err := p.db.ExecContext(ctx, p.createRunsTableSQL()); err != nil {
		return fmt.Errorf("create %s table: %w", RunsTable, err)
	}
	for _, c := range warehouse.RunColumns() {
		if c.Added { // a runs table of an earlier version lacks it
			if _, err := p.db.ExecContext(ctx, `ALTER TABLE `+p.qualified(RunsTable)+` ADD COLUMN IF NOT EXISTS `+
				quoteIdent(c.Name)+` `+duckRunTypes[c.Type]); err != nil {
				return fmt.Errorf("add column %s to %s: %w", c.Name, RunsTable, err)
			}
		}
	}
	return nil
}

// Close releases the database file.
func (p *Planner) Close() error {
	if err := p.db.Close(); err != nil {
		return fmt.Errorf("close DuckDB state: %w", err)
	}
	return nil
}

// lock serialises the state-changing steps (Plan, Commit) of one activation.
func (p *Planner) lock(activationID string) func() { return p.locks.Lock(activationID) }

// write waits for the database's one writer slot (see Planner.writers), or for ctx. Callers hold
// their activation's lock first and never wait for a lock while holding the slot.
func (p *Planner) write(ctx context.Context) (release func(), err error) {
	select {
	case p.writers <- struct{}{}:
		return func() { <-p.writers }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the state database's writer: %w", context.Cause(ctx))
	}
}

// qualified names a table of the state database, whatever catalog a connection currently uses.
func (p *Planner) qualified(table string) string {
	return p.catalog + ".main." + quoteIdent(table)
}

// quoteIdent quotes an identifier for DuckDB: column names may contain anything.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes a string literal. It is used only for configuration (field names, paths)
// in places where DuckDB takes no parameters; row values always travel as parameters.
func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// DuckDB error classes whose messages describe the query (names of columns, tables, files),
// never the data: these are safe to show in errors that reach workflow history.
var queryErrorTypes = map[duckdb.ErrorType]bool{
	duckdb.ErrorTypeParser: true, duckdb.ErrorTypeSyntax: true, duckdb.ErrorTypeBinder: true,
	duckdb.ErrorTypeCatalog: true, duckdb.ErrorTypeIO: true, duckdb.ErrorTypeNotImplemented: true,
	duckdb.ErrorTypePermission: true, duckdb.ErrorTypeMissingExtension: true,
	duckdb.ErrorTypeAutoLoad: true, duckdb.ErrorTypePlanner: true, duckdb.ErrorTypeDependency: true,
	duckdb.ErrorTypeParameterNotResolved: true, duckdb.ErrorTypeParameterNotAllowed: true,
	duckdb.ErrorTypeSettings: true, duckdb.ErrorTypeInvalidConfiguration: true,
}

// Error classes of the machine rather than of the model: a retry may succeed.
var transientErrorTypes = map[duckdb.ErrorType]bool{
	duckdb.ErrorTypeInterrupt: true, duckdb.ErrorTypeOutOfMemory: true,
	duckdb.ErrorTypeTransaction: true, duckdb.ErrorTypeConnection: true, duckdb.ErrorTypeFatal: true,
	duckdb.ErrorTypeInternal: true, duckdb.ErrorTypeNetwork: true, duckdb.ErrorTypeHTTP: true,
}

// modelError classifies an error of the statement that runs the model. Errors of the model
// itself wrap warehouse.ErrInvalidModel. Messages of errors raised while reading the data
// (conversions, CSV parsing) are withheld, since DuckDB quotes the offending values in them.
func modelError(ctx context.Context, activationID string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("plan %s: model query: %w", activationID, context.Cause(ctx))
	}
	var de *duckdb.Error
	if !errors.As(err, &de) {
		return fmt.Errorf("plan %s: model query: %w", activationID, err)
	}
	switch {
	case transientErrorTypes[de.Type]:
		return fmt.Errorf("plan %s: model query: %w", activationID, err)
	case queryErrorTypes[de.Type]:
		return fmt.Errorf("plan %s: %w: %s", activationID, warehouse.ErrInvalidModel, de.Msg)
	default:
		return fmt.Errorf("plan %s: %w: %s while reading the model's rows (details withheld because "+
			"they can contain row values; run the model in DuckDB to see them)",
			activationID, warehouse.ErrInvalidModel, errorClass(de.Msg))
	}
}

// errorClass is the "Conversion Error" prefix of a DuckDB message, without the rest.
func errorClass(msg string) string {
	class, _, ok := strings.Cut(msg, ": ")
	if !ok || len(class) > 40 || !strings.HasSuffix(class, "Error") {
		return "DuckDB error"
	}
	return class
}
