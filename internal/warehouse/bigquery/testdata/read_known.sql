SELECT plan.seq, plan.key, plan.op, plan.changed_fields, plan.ident, plan.old_ident, IFNULL(plan.row_hash, '') AS row_hash, plan.keep_profile, plan.prior_outcome, plan.prior_class, plan.prior_field, plan.prior_reason, plan.hold, plan.`v_612f627e6322642765`, plan.`v_616765`, plan.`v_66697273744e616d65`, plan.`v_c3bc6ec3af2063c3b664c3a9`, k.id IS NOT NULL AS known
FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS plan
LEFT JOIN `acme-prod`.`activations`.`plan_crm_users_c7e1440b64e4` AS k ON k.id = LOWER(COALESCE(plan.old_ident, CAST(plan.ident AS STRING)))
WHERE plan.seq > @after AND plan.seq <= @last
ORDER BY plan.seq
