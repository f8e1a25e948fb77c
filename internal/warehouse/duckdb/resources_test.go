package duckdb_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// setting reads one of DuckDB's settings through a second handle on the same instance.
func setting(t *testing.T, path, name string) string {
	t.Helper()
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	var v string
	require.NoError(t, db.QueryRow(`SELECT current_setting('`+name+`')`).Scan(&v))
	return v
}

// rendered is how DuckDB shows a memory setting once set to value ("1GB" is "953.6 MiB").
func rendered(t *testing.T, value string) string {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`SET memory_limit = '` + value + `'`)
	require.NoError(t, err)
	var v string
	require.NoError(t, db.QueryRow(`SELECT current_setting('memory_limit')`).Scan(&v))
	return v
}

func TestResources(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		t.Setenv(duckdb.EnvMemoryLimit, "")
		t.Setenv(duckdb.EnvThreads, "")
		t.Setenv(duckdb.EnvTempDirectory, "")
		path := filepath.Join(t.TempDir(), "state.duckdb")
		open(t, duckdb.Options{Path: path})
		require.Equal(t, rendered(t, duckdb.DefaultMemoryLimit), setting(t, path, "memory_limit"))
		require.Equal(t, path+".tmp", setting(t, path, "temp_directory"))
		require.Equal(t, "false", setting(t, path, "preserve_insertion_order"))
	})
	t.Run("environment", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv(duckdb.EnvMemoryLimit, "300MB")
		t.Setenv(duckdb.EnvThreads, "1")
		t.Setenv(duckdb.EnvTempDirectory, filepath.Join(dir, "spill"))
		path := filepath.Join(dir, "state.duckdb")
		open(t, duckdb.Options{Path: path})
		require.Equal(t, rendered(t, "300MB"), setting(t, path, "memory_limit"))
		require.Equal(t, "1", setting(t, path, "threads"))
		require.Equal(t, filepath.Join(dir, "spill"), setting(t, path, "temp_directory"))
	})
	t.Run("options win over the environment", func(t *testing.T) {
		t.Setenv(duckdb.EnvMemoryLimit, "300MB")
		t.Setenv(duckdb.EnvThreads, "1")
		path := filepath.Join(t.TempDir(), "state.duckdb")
		open(t, duckdb.Options{Path: path, Resources: duckdb.Resources{MemoryLimit: "2GB", Threads: 2}})
		require.Equal(t, rendered(t, "2GB"), setting(t, path, "memory_limit"))
		require.Equal(t, "2", setting(t, path, "threads"))
	})
	for name, env := range map[string][2]string{
		"bad memory limit": {duckdb.EnvMemoryLimit, "lots"},
		"bad threads":      {duckdb.EnvThreads, "zero"},
		"no threads":       {duckdb.EnvThreads, "0"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(env[0], env[1])
			_, err := duckdb.Open(context.Background(), duckdb.Options{})
			require.ErrorContains(t, err, env[1])
		})
	}
}

// A state table created with a PRIMARY KEY (by earlier versions) is rebuilt without it by the
// next plan, keeping its rows.
func TestStateWithPrimaryKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.duckdb")
	state := warehouse.StateTable("legacy")
	constraints := func() int {
		db, err := sql.Open("duckdb", path)
		require.NoError(t, err)
		defer db.Close()
		var n int
		require.NoError(t, db.QueryRow(`SELECT count(*) FROM duckdb_constraints() WHERE table_name = ?
			AND constraint_type = 'PRIMARY KEY'`, state).Scan(&n))
		return n
	}
	model := func(rows int, name string) string {
		return fmt.Sprintf(`SELECT range AS id, 'u' || range || '@example.com' AS email, '%s' || range AS name,
			range AS age FROM range(%d)`, name, rows)
	}
	req := baseRequest("legacy", model(5, "A"))
	// The state of model A as those versions wrote it (hash format 1, no ident column).
	obj := v1Obj("age", "age", "firstName", "name")
	writeDB(t, path, format1State(state, true),
		`INSERT INTO `+state+` SELECT CAST(id AS VARCHAR), `+v1Row("email", obj)+`, `+obj+`, `+v1h("email")+`,
			TIMESTAMP '2026-01-01' FROM (`+model(5, "A")+`)`)
	require.Equal(t, 1, constraints())

	p := open(t, duckdb.Options{Path: path})
	req.RunID, req.Query = "run-2", model(4, "B") // four changed, one removed
	plan, err := p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 0, constraints(), "the plan rebuilt the state without its key index")
	require.Equal(t, warehouse.Counts{ModelRows: 4, Changed: 4, Removed: 1}, plan.Counts)
	require.Equal(t, warehouse.CommitResult{Upserted: 4, Deleted: 1}, commitAll(t, p, req, plan))
	require.Equal(t, warehouse.CommitResult{Upserted: 4, Deleted: 1}, commitAll(t, p, req, plan), "a repeated commit")

	req.RunID, req.FullResync = "run-3", true
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 4, Added: 4}, plan.Counts)
	commitAll(t, p, req, plan)

	req.RunID, req.FullResync = "run-4", false
	plan, err = p.Plan(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, warehouse.Counts{ModelRows: 4, Unchanged: 4}, plan.Counts)
	db, err := sql.Open("duckdb", path)
	require.NoError(t, err)
	defer db.Close()
	var n, keys int
	require.NoError(t, db.QueryRow(`SELECT count(*), count(DISTINCT key) FROM `+state).Scan(&n, &keys))
	require.Equal(t, []int{4, 4}, []int{n, keys}, "one row per key")
}
