package activities

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/spec"
	"github.com/activation-engine/activations/internal/warehouse"
)

func TestUserCarriesOnlyWhatChanged(t *testing.T) {
	base := spec.Destination{
		Identifier: spec.Identifier{Column: "email", Field: "email"},
		Fields:     []spec.Field{{Column: "a", Field: "alpha"}, {Column: "b", Field: "beta"}, {Column: "t", Field: "when"}},
	}
	ts := time.Date(2023, 2, 5, 20, 42, 10, 0, time.UTC)
	values := func() warehouse.Values { // a new row's: an add's fields are converted in place
		return warehouse.ValuesOf(map[string]any{"alpha": int32(7), "beta": "x", "when": ts})
	}
	withNull := func() warehouse.Values {
		return warehouse.ValuesOf(map[string]any{"alpha": nil, "beta": "x", "when": nil})
	}
	tests := []struct {
		name       string
		edit       func(*spec.Destination)
		row        warehouse.Row
		wantNoop   bool
		wantReject string
		wantEmail  string
		wantUserID string
		wantFields map[string]any
		// wantOutcome and wantClass default to rejected and ClassIdentifier / ClassValue.
		wantOutcome  warehouse.Outcome
		wantClass    warehouse.Class
		wantNoPrefer bool
		conflicts    map[string]string
	}{
		{name: "add sends every field",
			row:       warehouse.Row{Op: warehouse.OpAdd, Identifier: "a@example.com", Values: values(), Changed: []string{"alpha", "beta", "when"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"alpha": int64(7), "beta": "x", "when": "2023-02-05 20:42:10 +00:00"}},
		{name: "change sends only the changed field",
			row:       warehouse.Row{Op: warehouse.OpChange, Identifier: "a@example.com", Values: values(), Changed: []string{"beta"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"beta": "x"}},
		{name: "a value that became NULL clears the field",
			row:       warehouse.Row{Op: warehouse.OpChange, Identifier: "a@example.com", Values: warehouse.ValuesOf(map[string]any{"beta": nil}), Changed: []string{"beta"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"beta": nil}},
		{name: "an add whose NULLs the spec ignores sends the other fields",
			edit:      func(d *spec.Destination) { d.Nulls = "ignore" },
			row:       warehouse.Row{Op: warehouse.OpAdd, Identifier: "a@example.com", Values: withNull(), Changed: []string{"alpha", "beta", "when"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"beta": "x"}},
		{name: "an add sends its NULLs as nulls",
			row:       warehouse.Row{Op: warehouse.OpAdd, Identifier: "a@example.com", Values: withNull(), Changed: []string{"alpha", "beta", "when"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"alpha": nil, "beta": "x", "when": nil}},
		{name: "a change whose NULLs the spec ignores sends the other changed fields",
			edit:      func(d *spec.Destination) { d.Nulls = "ignore" },
			row:       warehouse.Row{Op: warehouse.OpChange, Identifier: "a@example.com", Values: withNull(), Changed: []string{"alpha", "beta"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"beta": "x"}},
		{name: "a change listed out of order is sent in field order",
			row:       warehouse.Row{Op: warehouse.OpChange, Identifier: "a@example.com", Values: values(), Changed: []string{"when", "alpha"}},
			wantEmail: "a@example.com", wantFields: map[string]any{"alpha": int64(7), "when": "2023-02-05 20:42:10 +00:00"}},
		{name: "NULL identifier is rejected locally",
			row:        warehouse.Row{Op: warehouse.OpAdd, Identifier: nil, Values: values(), Changed: []string{"alpha"}},
			wantReject: "identifier column email is NULL or empty"},
		{name: "NaN is rejected with the field",
			row:        warehouse.Row{Op: warehouse.OpAdd, Identifier: "a@example.com", Values: warehouse.ValuesOf(map[string]any{"alpha": nan()}), Changed: []string{"alpha"}},
			wantReject: "field alpha"},
		{name: "removal kept in Iterable needs no request",
			row:      warehouse.Row{Op: warehouse.OpRemove, Identifier: "a@example.com"},
			wantNoop: true},
		{name: "removal with onRemoved clear nulls every mapped field",
			edit:      func(d *spec.Destination) { d.OnRemoved = "clear" },
			row:       warehouse.Row{Op: warehouse.OpRemove, Identifier: "a@example.com"},
			wantEmail: "a@example.com", wantFields: map[string]any{"alpha": nil, "beta": nil, "when": nil}},
		{name: "removal whose profile another key now carries needs no request",
			edit:     func(d *spec.Destination) { d.OnRemoved = "clear" },
			row:      warehouse.Row{Op: warehouse.OpRemove, Identifier: "a@example.com", KeepProfile: true},
			wantNoop: true},
		{name: "removal without an identifier on record is skipped",
			edit:       func(d *spec.Destination) { d.OnRemoved = "clear" },
			row:        warehouse.Row{Op: warehouse.OpRemove},
			wantReject: "holds no identifier", wantOutcome: warehouse.OutcomeSkipped, wantClass: warehouse.ClassNoIdentifier},
		{name: "removal by userId never asks Iterable to create",
			edit: func(d *spec.Destination) {
				d.OnRemoved = "clear"
				d.Identifier = spec.Identifier{Column: "id", Field: "userId"}
			},
			row:        warehouse.Row{Op: warehouse.OpRemove, Identifier: "42"},
			wantUserID: "42", wantFields: map[string]any{"alpha": nil, "beta": nil, "when": nil}, wantNoPrefer: true},
		{name: "a type conflict is rejected with its class and field",
			row:        warehouse.Row{Op: warehouse.OpAdd, Identifier: "a@example.com", Values: values(), Changed: []string{"beta"}, RowHash: "h"},
			conflicts:  map[string]string{"beta": "type conflict: beta"},
			wantReject: "type conflict: beta", wantClass: warehouse.ClassType},
		{name: "userId identifier asks email-based projects to create",
			edit:       func(d *spec.Destination) { d.Identifier = spec.Identifier{Column: "id", Field: "userId"} },
			row:        warehouse.Row{Op: warehouse.OpAdd, Identifier: int64(42), Values: values(), Changed: []string{"beta"}},
			wantUserID: "42", wantFields: map[string]any{"beta": "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := base
			if tc.edit != nil {
				tc.edit(&d)
			}
			s := &chunkSender{act: spec.Activation{ID: "x", Destination: d}, conflicts: tc.conflicts}
			u, rej := s.user(tc.row)
			switch {
			case tc.wantReject != "":
				require.Nil(t, u)
				require.NotNil(t, rej)
				require.Contains(t, rej.Reason, tc.wantReject)
				outcome := tc.wantOutcome
				if outcome == "" {
					outcome = warehouse.OutcomeRejected
				}
				require.Equal(t, outcome, rej.Outcome)
				if tc.wantClass != "" {
					require.Equal(t, tc.wantClass, rej.Class)
				}
				require.Equal(t, tc.row.RowHash, rej.RowHash)
			case tc.wantNoop:
				require.Nil(t, u)
				require.Nil(t, rej)
			default:
				require.Nil(t, rej)
				require.NotNil(t, u)
				require.Equal(t, tc.wantEmail, u.Email)
				require.Equal(t, tc.wantUserID, u.UserID)
				require.Equal(t, tc.wantFields, u.FieldMap())
				if u.DataFields == nil {
					// What Pack writes: names sorted, one value each.
					require.True(t, slices.IsSorted(u.Fields.Names), "%v", u.Fields.Names)
					require.Len(t, u.Fields.Values, len(u.Fields.Names))
				}
				if tc.wantUserID != "" && !tc.wantNoPrefer {
					require.NotNil(t, u.PreferUserID)
					require.True(t, *u.PreferUserID)
				}
				if tc.wantNoPrefer {
					require.Nil(t, u.PreferUserID)
				}
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestCompatibleTypes(t *testing.T) {
	tests := []struct {
		have, kind string
		want       bool
	}{
		{"long", "integer", true},
		{"double", "integer", true},
		{"long", "float", false},
		{"string", "integer", false},
		{"string", "timestamp", true},
		{"date", "string", true},
		{"boolean", "string", false},
		{"object", "object", true},
		{"", "integer", true},
		{"long", "other", true},
	}
	for _, tc := range tests {
		got := compatible(tc.have, iterableTypeOf(warehouse.Kind(tc.kind)))
		require.Equal(t, tc.want, got, "field %s, column kind %s", tc.have, tc.kind)
	}
}
