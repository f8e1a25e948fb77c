SELECT `activation_id`, `run_id`, `workflow_id`, `event`, `at`, `trigger`, `started_at`,
  `ended_at`, `state`, `model_rows`, `unchanged`, `null_keys`, `duplicate_keys`,
  `duplicate_identifiers`, `planned_added`, `planned_changed`, `planned_removed`,
  `attempted_added`, `attempted_changed`, `attempted_removed`, `succeeded_added`,
  `succeeded_changed`, `succeeded_removed`, `rejected_added`, `rejected_changed`,
  `rejected_removed`, `known_rejected_added`, `known_rejected_changed`,
  `known_rejected_removed`, `skipped_added`, `skipped_changed`, `skipped_removed`,
  `still_rejected_added`, `still_rejected_changed`, `still_rejected_removed`,
  `unconfirmed_added`, `unconfirmed_changed`, `unconfirmed_removed`, `committed`,
  `pause_causes`, `pause_reason`, `requests`, `rate_limited`, `plan_seconds`,
  `sync_seconds`, `bytes_billed`, `list_id`, `send_rate`, `send_budget`
FROM `acme-prod`.`activations`.`runs`
WHERE activation_id = @activation_id
ORDER BY `at` DESC, run_id, event
LIMIT @limit
