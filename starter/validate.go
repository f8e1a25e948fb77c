package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
)

// dryRunModels dry-runs every BigQuery model (free): it prints the bytes a run will scan and the
// schema, and reports mapped columns that are missing or whose type cannot be sent.
func dryRunModels(ctx context.Context, acts []spec.Activation, out io.Writer) error {
	var errs []error
	for _, a := range acts {
		if a.Source.Type != "bigquery" {
			continue
		}
		st := a.State.BigQuery
		res, err := bigquery.DryRunModel(ctx, bigquery.Options{Project: st.Project, Dataset: st.Dataset,
			Location: st.Location, MaximumBytesBilled: st.MaximumBytesBilled}, a.Source.Query)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: activation %s: BigQuery dry run: %w", a.File, a.ID, err))
			continue
		}
		if err := checkModelColumns(a, res); err != nil {
			errs = append(errs, err)
			continue
		}
		cols := make([]string, len(res.Schema))
		for i, c := range res.Schema {
			cols[i] = c.Name + " " + c.Type
		}
		fmt.Fprintf(out, "    %s: the model scans %s per run (plus the state); columns: %s\n",
			a.ID, humanBytes(res.BytesProcessed), strings.Join(cols, ", "))
	}
	return errors.Join(errs...)
}

// checkModelColumns names every mapped column the model lacks or that cannot be sent.
func checkModelColumns(a spec.Activation, res bigquery.DryRunResult) error {
	types := map[string]string{}
	for _, c := range res.Schema {
		types[c.Name] = c.Type
	}
	var problems []string
	need := []struct{ path, column string }{
		{"source.primaryKey", a.Source.PrimaryKey},
		{"destination.identifier.column", a.Destination.Identifier.Column},
	}
	for i, f := range a.Destination.Fields {
		need = append(need, struct{ path, column string }{fmt.Sprintf("destination.fields[%d].column", i), f.Column})
	}
	for _, n := range need {
		if _, ok := types[n.column]; !ok {
			problems = append(problems, fmt.Sprintf("%s: column %q is not in the model", n.path, n.column))
		}
	}
	for _, u := range res.Unsupported {
		for _, f := range a.Destination.Fields {
			if strings.HasPrefix(u, "column "+f.Column+":") || strings.HasPrefix(u, "column "+f.Column+".") {
				problems = append(problems, u)
			}
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
