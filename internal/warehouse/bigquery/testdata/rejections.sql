INSERT INTO `acme-prod`.`activations`.`rejections` (activation_id, run_id, key, op, outcome, field, reason, `at`, class, row_hash)
SELECT @activation_id, @run_id, r.key, r.op, r.outcome, r.field, r.reason, CURRENT_TIMESTAMP(), r.class, r.row_hash
FROM UNNEST(@rows) AS r
