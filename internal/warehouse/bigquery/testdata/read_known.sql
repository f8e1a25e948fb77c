SELECT plan.seq, plan.key, plan.op, plan.changed_fields, plan.ident, plan.old_ident, IFNULL(plan.row_hash, '') AS row_hash, plan.keep_profile, plan.prior_outcome, plan.prior_class, plan.prior_field, plan.prior_reason, plan.hold, plan.`v_929c68b729ccfe21`, plan.`v_013f54400c82da08`, plan.`v_9cf22fd0154cc2a3`, plan.`v_642174ef3d893ee6`, k.id IS NOT NULL AS known
FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS plan
LEFT JOIN `acme-prod`.`activations`.`plan_crm_users_c7e1440b64e4` AS k ON k.id = LOWER(IF(plan.op = 'remove', plan.old_ident, CAST(plan.ident AS STRING)))
WHERE plan.seq > @after AND plan.seq <= @last
ORDER BY plan.seq
