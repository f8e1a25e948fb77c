package warehouse

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Table and column names every planner uses, and the checks of a request that do not depend on
// the warehouse: one definition, so both warehouses name and refuse things alike.

var (
	activationIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	planTablePattern    = regexp.MustCompile(`^plan_[a-z0-9][a-z0-9_]{0,62}_[0-9a-f]{12}$`)
)

// CheckActivationID refuses ids that could not name tables safely.
func CheckActivationID(id string) error {
	if !activationIDPattern.MatchString(id) {
		return fmt.Errorf("activation id %q must match %s", id, activationIDPattern)
	}
	return nil
}

func tableSuffix(activationID string) string { return strings.ReplaceAll(activationID, "-", "_") }

// StateTable is the name of an activation's state table.
func StateTable(activationID string) string { return "state_" + tableSuffix(activationID) }

// PlanTable is the name of the plan table of one run: stable, so a retried Plan replaces it.
func PlanTable(activationID, runID string) string {
	sum := sha256.Sum256([]byte(runID))
	return "plan_" + tableSuffix(activationID) + "_" + hex.EncodeToString(sum[:6])
}

// KnownTable names the table of identifiers known to the destination for a run.
func KnownTable(activationID, runID string) string { return PlanTable(activationID, runID+"/known") }

// CheckPlanTable refuses table names that Plan cannot have produced (and, with an activation
// id, plans of another activation), so a bad input never reaches DROP or the state.
func CheckPlanTable(table, activationID string) error {
	if !planTablePattern.MatchString(table) {
		return fmt.Errorf("%q is not a plan table name", table)
	}
	if activationID != "" && !strings.HasPrefix(table, "plan_"+tableSuffix(activationID)+"_") {
		return fmt.Errorf("plan table %s does not belong to activation %s", table, activationID)
	}
	return nil
}

// ValueColumn names the plan column holding a destination field's value: v_ and the first 16 hex
// digits of the field name's SHA-256. A digest rather than the name itself, so that any field
// name, of any length (BigQuery refuses column names over 300 characters) and with any
// characters, gives a valid column name of 18; lower-case hex, so that names differing only in
// case stay distinct although DuckDB and BigQuery match column names case-insensitively. 64 bits
// make a collision between the few fields of one mapping negligible (about n²/2⁶⁵), and
// CheckPlanRequest refuses one anyway. The name depends only on the field, so a plan table
// written by one worker is read by another.
func ValueColumn(field string) string {
	sum := sha256.Sum256([]byte(field))
	return "v_" + hex.EncodeToString(sum[:8])
}

// CheckPlanRequest validates what every warehouse needs of a request and returns its fields
// sorted by destination name, the canonical order of hashes and of the changed-field lists.
func CheckPlanRequest(req PlanRequest) ([]Field, error) {
	if err := CheckActivationID(req.ActivationID); err != nil {
		return nil, err
	}
	if req.RunID == "" {
		return nil, fmt.Errorf("run id is empty")
	}
	if strings.TrimSpace(req.Query) == "" {
		return nil, fmt.Errorf("%w: the query is empty", ErrInvalidModel)
	}
	if req.PrimaryKey == "" {
		return nil, fmt.Errorf("%w: no primary key column", ErrInvalidModel)
	}
	fields, err := SortedFields(req.Fields)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidModel, err)
	}
	seen := make(map[string]string, len(fields))
	for _, f := range fields {
		col := ValueColumn(f.Field)
		if other, ok := seen[col]; ok {
			return nil, fmt.Errorf("%w: fields %q and %q would share the plan column %s", ErrInvalidModel, other, f.Field, col)
		}
		seen[col] = f.Field
	}
	return fields, nil
}

// SortedFields returns the fields sorted by destination name, refusing empty and repeated names.
func SortedFields(fs []Field) ([]Field, error) {
	fields := slices.Clone(fs)
	slices.SortFunc(fields, func(a, b Field) int { return strings.Compare(a.Field, b.Field) })
	for i, f := range fields {
		if f.Field == "" || f.Column == "" {
			return nil, fmt.Errorf("a mapped field has an empty column or field name")
		}
		if i > 0 && fields[i-1].Field == f.Field {
			return nil, fmt.Errorf("field %q is mapped twice", f.Field)
		}
	}
	return fields, nil
}
