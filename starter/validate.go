package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/duckdb"
)

// dryRunModels checks every model against its warehouse without running it: a BigQuery dry run
// (free) or a DuckDB DESCRIBE. It prints each model's columns and reports mapped columns that are
// missing or whose type cannot be sent.
func dryRunModels(ctx context.Context, acts []spec.Activation, out io.Writer) error {
	var errs []error
	for _, a := range acts {
		switch a.Source.Type {
		case "bigquery":
			errs = append(errs, dryRunBigQuery(ctx, a, out))
		case "duckdb":
			errs = append(errs, describeDuckDB(ctx, a, out))
		}
	}
	return errors.Join(errs...)
}

func dryRunBigQuery(ctx context.Context, a spec.Activation, out io.Writer) error {
	st := a.State.BigQuery
	res, err := bigquery.DryRunModel(ctx, bigquery.Options{Project: st.Project, Dataset: st.Dataset,
		Location: st.Location, MaximumBytesBilled: st.MaximumBytesBilled}, a.Source.Query)
	if err != nil {
		return fmt.Errorf("%s: activation %s: BigQuery dry run: %w", a.File, a.ID, err)
	}
	if err := checkModelColumns(a, res); err != nil {
		return err
	}
	cols := make([]string, len(res.Schema))
	for i, c := range res.Schema {
		cols[i] = c.Name + " " + c.Type
	}
	fmt.Fprintf(out, "    %s: the model scans %s per run (plus the state); columns: %s\n",
		a.ID, humanBytes(res.BytesProcessed), strings.Join(cols, ", "))
	return nil
}

// describeDuckDB binds the model as a run would (its folder for relative paths, its source
// database read-only) in a throwaway database: the state file, which a worker may hold, is
// not opened.
func describeDuckDB(ctx context.Context, a spec.Activation, out io.Writer) error {
	cols, err := duckdb.DescribeModel(ctx, duckdb.Options{SourcePath: a.SourcePath()}, a.BaseDir, a.Source.Query)
	if err != nil {
		return fmt.Errorf("%s: activation %s: DuckDB DESCRIBE: %w", a.File, a.ID, err)
	}
	if err := checkDuckDBColumns(a, cols); err != nil {
		return err
	}
	desc := make([]string, len(cols))
	for i, c := range cols {
		desc[i] = c.Name + " " + c.Type
	}
	fmt.Fprintf(out, "    %s: columns: %s\n", a.ID, strings.Join(desc, ", "))
	return nil
}

// checkModelColumns names every mapped column the BigQuery model lacks or that cannot be sent.
func checkModelColumns(a spec.Activation, res bigquery.DryRunResult) error {
	names := map[string]bool{}
	for _, c := range res.Schema {
		names[c.Name] = true
	}
	// BigQuery names a nested part as "column a.b: …".
	return checkMapped(a, names, func(column string) []string {
		var out []string
		for _, u := range res.Unsupported {
			if strings.HasPrefix(u, "column "+column+":") || strings.HasPrefix(u, "column "+column+".") {
				out = append(out, u)
			}
		}
		return out
	})
}

// checkDuckDBColumns names every mapped column the DuckDB model lacks or that cannot be sent.
func checkDuckDBColumns(a spec.Activation, cols []duckdb.ModelColumn) error {
	names := map[string]bool{}
	why := map[string]string{}
	for _, c := range cols {
		names[c.Name] = true
		if c.Unsupported != "" {
			why[c.Name] = fmt.Sprintf("column %s: %s cannot be sent: %s", c.Name, c.Type, c.Unsupported)
		}
	}
	return checkMapped(a, names, func(column string) []string {
		if w, ok := why[column]; ok {
			return []string{w}
		}
		return nil
	})
}

// checkMapped reports, for one activation, the columns its spec needs that the model lacks and
// the mapped fields' columns whose values cannot be sent.
func checkMapped(a spec.Activation, names map[string]bool, unsupported func(column string) []string) error {
	var problems []string
	need := []struct{ path, column string }{
		{"source.primaryKey", a.Source.PrimaryKey},
		{"destination.identifier.column", a.Destination.Identifier.Column},
	}
	for i, f := range a.Destination.Fields {
		need = append(need, struct{ path, column string }{fmt.Sprintf("destination.fields[%d].column", i), f.Column})
	}
	for _, n := range need {
		if !names[n.column] {
			problems = append(problems, fmt.Sprintf("%s: column %q is not in the model", n.path, n.column))
		}
	}
	for i, f := range a.Destination.Fields {
		for _, u := range unsupported(f.Column) {
			problems = append(problems, fmt.Sprintf("destination.fields[%d].column: %s", i, u))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%s: activation %s: %s", a.File, a.ID, strings.Join(problems, "; "))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// checkLists asks Iterable, when the activation's API key is available here, whether the list a
// list activation names by id exists and is static (GET /api/lists; a list named by name is
// found, or created, by the run). Without the key it says it skipped the check.
func checkLists(ctx context.Context, acts []spec.Activation, out io.Writer) error {
	var errs []error
	for _, a := range acts {
		l := a.Destination.List
		if l == nil || l.ID == 0 {
			continue
		}
		it := a.Destination.Iterable
		key, err := it.APIKey.Resolve()
		if err != nil {
			fmt.Fprintf(out, "    %s: list %d not checked: the API key (%s) is not available here\n", a.ID, l.ID, it.APIKey)
			continue
		}
		base, err := iterable.BaseURL(it.Region, it.BaseURL)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: activation %s: %w", a.File, a.ID, err))
			continue
		}
		c, err := iterable.New(iterable.Config{BaseURL: base, APIKey: key, HTTPClient: &http.Client{Timeout: 30 * time.Second}})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: activation %s: %w", a.File, a.ID, err))
			continue
		}
		lists, err := c.Lists(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: activation %s: destination.list.id: list the project's lists: %w", a.File, a.ID, err))
			continue
		}
		i := slices.IndexFunc(lists, func(x iterable.List) bool { return x.ID == l.ID })
		switch {
		case i < 0:
			errs = append(errs, fmt.Errorf("%s: activation %s: destination.list.id: the project has no list %d", a.File, a.ID, l.ID))
		case !lists[i].Static():
			errs = append(errs, fmt.Errorf("%s: activation %s: destination.list.id: list %d is a %s list; only static (Standard) lists can be kept equal to a model",
				a.File, a.ID, l.ID, lists[i].Type))
		default:
			fmt.Fprintf(out, "    %s: list %d (%s) is a static list\n", a.ID, l.ID, lists[i].Name)
		}
	}
	return errors.Join(errs...)
}
