package activities

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/warehouse"
)

// iterableTypeOf is the Iterable field type a column of this kind produces once converted
// ("" when the values decide, as for JSON, or when Iterable reports no simple type, as for arrays).
func iterableTypeOf(k warehouse.Kind) string {
	switch k {
	case warehouse.KindInteger:
		return iterable.TypeLong
	case warehouse.KindFloat:
		return iterable.TypeDouble
	case warehouse.KindBoolean:
		return iterable.TypeBoolean
	case warehouse.KindString:
		return iterable.TypeString
	case warehouse.KindTimestamp:
		return iterable.TypeDate
	case warehouse.KindObject:
		return iterable.TypeObject
	}
	return ""
}

// compatible tells whether a field locked to have takes the values of a column sent as sent.
// Only clear mismatches count: a string column may hold date-formatted strings, which Iterable
// takes as dates, so only its values could tell.
func compatible(have, sent string) bool {
	if have == "" || sent == "" || (sent == iterable.TypeString && have == iterable.TypeDate) {
		return true
	}
	return iterable.FieldTypeAccepts(have, sent)
}

// CheckFields compares the model's column types with the project's fields (GET
// /api/users/getFields, one call per run) before anything is sent. A conflict is reported once,
// at activation level; the rows that would send the field are then rejected with that reason
// instead of failing request by request.
func (a *Activities) CheckFields(ctx context.Context, in CheckFieldsInput) (CheckFieldsResult, error) {
	act := in.Spec
	client, err := a.iterableClient(act, in.RunID)
	if err != nil {
		return CheckFieldsResult{}, err
	}
	have, err := client.GetFields(ctx)
	if err != nil {
		return CheckFieldsResult{}, iterableError(err, fmt.Sprintf("activation %s run %s: getFields", act.ID, in.RunID))
	}
	var res CheckFieldsResult
	cols := append([]warehouse.ColumnType(nil), in.Columns...)
	sort.Slice(cols, func(i, j int) bool { return cols[i].Field < cols[j].Field })
	for _, c := range cols {
		sent := iterableTypeOf(c.Kind)
		t, exists := have[c.Field]
		if !exists {
			if !act.Destination.CreatesNewFields() {
				res.Warnings = append(res.Warnings, fmt.Sprintf(
					"field %s does not exist in Iterable and createNewFields is false: Iterable will drop it", c.Field))
			}
			continue
		}
		if !compatible(t, sent) {
			if res.Conflicts == nil {
				res.Conflicts = map[string]string{}
			}
			res.Conflicts[c.Field] = fmt.Sprintf("type conflict: field %s is %s in Iterable, column %s is %s (sent as %s); Iterable rejects it (RequestFieldsTypesMismatched)",
				c.Field, t, c.Column, c.Type, sent)
			res.Warnings = append(res.Warnings, res.Conflicts[c.Field])
		}
	}
	a.logger(act, in.RunID).Info("fields checked", "iterable_fields", len(have), "conflicts", len(res.Conflicts))
	return res, nil
}

// ExportIdentifiers streams the project's identifiers (emails or userIds) from Iterable's export
// API into a warehouse table of the run, so that update mode can join the plan with it.
func (a *Activities) ExportIdentifiers(ctx context.Context, in ExportIdentifiersInput) (ExportIdentifiersResult, error) {
	act := in.Spec
	client, err := a.iterableClient(act, in.RunID)
	if err != nil {
		return ExportIdentifiersResult{}, err
	}
	planner, err := a.Planners.Planner(ctx, act)
	if err != nil {
		return ExportIdentifiersResult{}, err
	}
	stop := heartbeatWhile(ctx, 5*time.Second, func() any { return nil })
	defer stop()
	field := act.Destination.Identifier.Field
	table, n, err := planner.LoadIdentifiers(ctx, act.ID, in.RunID, field == "email", func(add func(string) error) error {
		_, err := client.ExportUserIDs(ctx, field, add)
		return err
	})
	if err != nil {
		return ExportIdentifiersResult{}, iterableError(err, fmt.Sprintf("activation %s run %s: export identifiers", act.ID, in.RunID))
	}
	a.logger(act, in.RunID).Info("identifiers exported", "field", field, "count", n)
	return ExportIdentifiersResult{Table: table, Count: n}, nil
}
