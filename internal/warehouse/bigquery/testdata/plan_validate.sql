SELECT *, TO_HEX(SHA256(CONCAT(ident_hash, ':', field_hashes))) AS row_hash FROM (
  SELECT CAST(model.`user_id` AS STRING) AS key,
    model.`email` AS ident,
    IF(model.`email` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`email`)))) AS ident_hash,
    model.`we\`ird col` AS `v_929c68b729ccfe21`,
    model.`age` AS `v_013f54400c82da08`,
    model.`first_name` AS `v_9cf22fd0154cc2a3`,
    model.`\u00fcn\u00ef` AS `v_642174ef3d893ee6`,
    TO_JSON_STRING(JSON_OBJECT('a/b~c\"d\'e', IF(model.`we\`ird col` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`we\`ird col`)))),
      'age', IF(model.`age` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`age`)))),
      'firstName', IF(model.`first_name` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`first_name`)))),
      '\u00fcn\u00ef c\u00f6d\u00e9', IF(model.`\u00fcn\u00ef` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`\u00fcn\u00ef`)))))) AS field_hashes
  FROM (
SELECT * FROM `acme-prod.crm.users` WHERE NOT deleted -- the model
  ) AS model
)
