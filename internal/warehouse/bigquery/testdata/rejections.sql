INSERT INTO `acme-prod`.`activations`.`rejections` (activation_id, run_id, key, op, outcome, field, reason, `at`)
SELECT @activation_id, @run_id, r.key, r.op, r.outcome, r.field, r.reason, CURRENT_TIMESTAMP()
FROM UNNEST(@rows) AS r
