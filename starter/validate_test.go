package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
)

func TestCheckModelColumns(t *testing.T) {
	act := spec.Activation{ID: "bq", File: "bq.yaml",
		Source: spec.Source{PrimaryKey: "id"},
		Destination: spec.Destination{Identifier: spec.Identifier{Column: "email"},
			Fields: []spec.Field{{Column: "plan", Field: "plan"}, {Column: "vec", Field: "vec"}}}}
	tests := []struct {
		name string
		res  bigquery.DryRunResult
		want []string
	}{
		{"all there", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "email"}, {Name: "plan"}, {Name: "vec"}}}, nil},
		{"missing columns", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "vec"}}},
			[]string{`destination.identifier.column: column "email" is not in the model`, `destination.fields[0].column: column "plan" is not in the model`}},
		{"unsupported mapped type", bigquery.DryRunResult{Schema: []bigquery.Column{{Name: "id"}, {Name: "email"}, {Name: "plan"}, {Name: "vec"}},
			Unsupported: []string{"column vec: VECTOR cannot be sent", "column other: X cannot be sent"}},
			[]string{"column vec: VECTOR cannot be sent"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkModelColumns(act, tc.res)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), "bq.yaml: activation bq")
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			require.NotContains(t, err.Error(), "column other")
		})
	}
	require.Equal(t, "4.0 GiB", humanBytes(4<<30))
}
