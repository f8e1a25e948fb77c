package workflows

import (
	"go.temporal.io/sdk/workflow"

	"github.com/activation-engine/activations/activities"
)

// Registry is the part of a Temporal worker that registration needs.
type Registry interface {
	RegisterWorkflowWithOptions(w any, options workflow.RegisterOptions)
	RegisterActivity(a any)
}

// Register registers ActivationWorkflow, LockWorkflow and the activities on a worker.
func Register(r Registry, acts *activities.Activities) {
	r.RegisterWorkflowWithOptions(ActivationWorkflow, workflow.RegisterOptions{Name: WorkflowName})
	r.RegisterWorkflowWithOptions(LockWorkflow, workflow.RegisterOptions{Name: LockWorkflowName})
	r.RegisterActivity(acts)
}
