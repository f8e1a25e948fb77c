MERGE `acme-prod`.`activations`.`state_crm_users` AS state
USING (
  SELECT plan.key, plan.op, plan.row_hash, plan.field_hashes, plan.ident_hash, CAST(plan.ident AS STRING) AS ident
  FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS plan
  WHERE plan.chunk IN UNNEST(@chunks) AND NOT (plan.key IN (
      SELECT r.key FROM `acme-prod`.`activations`.`rejections` AS r
      WHERE r.activation_id = @activation_id AND r.run_id = @run_id AND r.key IS NOT NULL
        AND NOT COALESCE(r.op IN ('remove', 'unsubscribe') AND r.outcome = 'skipped', FALSE))
    OR COALESCE(plan.hold AND (plan.prior_class <> 'type'
      OR CONCAT(plan.prior_field, CAST(FROM_HEX('00') AS STRING), plan.prior_reason) IN UNNEST(@conflicts)), FALSE))
) AS src
ON state.key = src.key
WHEN MATCHED AND src.op = 'remove' THEN DELETE
WHEN MATCHED THEN UPDATE SET row_hash = src.row_hash, field_hashes = src.field_hashes,
  ident_hash = src.ident_hash, synced_at = CURRENT_TIMESTAMP(), ident = src.ident
WHEN NOT MATCHED AND src.op <> 'remove' THEN
  INSERT (key, row_hash, field_hashes, ident_hash, synced_at, ident)
  VALUES (src.key, src.row_hash, src.field_hashes, src.ident_hash, CURRENT_TIMESTAMP(), src.ident);

SELECT COUNTIF(NOT held AND op <> 'remove') AS upserted, COUNTIF(NOT held AND op = 'remove') AS deleted,
  COUNTIF(held) AS held
FROM (
  SELECT plan.op, (plan.key IN (
      SELECT r.key FROM `acme-prod`.`activations`.`rejections` AS r
      WHERE r.activation_id = @activation_id AND r.run_id = @run_id AND r.key IS NOT NULL
        AND NOT COALESCE(r.op IN ('remove', 'unsubscribe') AND r.outcome = 'skipped', FALSE))
    OR COALESCE(plan.hold AND (plan.prior_class <> 'type'
      OR CONCAT(plan.prior_field, CAST(FROM_HEX('00') AS STRING), plan.prior_reason) IN UNNEST(@conflicts)), FALSE)) AS held
  FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS plan
  WHERE plan.chunk IN UNNEST(@chunks)
)
