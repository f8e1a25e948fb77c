CREATE TABLE IF NOT EXISTS `acme-prod`.`activations`.`state_crm_users` (
  key STRING NOT NULL,
  row_hash STRING NOT NULL,
  field_hashes STRING NOT NULL,
  ident_hash STRING,
  synced_at TIMESTAMP NOT NULL
)
CLUSTER BY key;

CREATE TEMP TABLE activation_snapshot AS
SELECT *, TO_HEX(SHA256(CONCAT(ident_hash, ':', field_hashes))) AS row_hash FROM (
  SELECT CAST(model.`user_id` AS STRING) AS key,
    model.`email` AS ident,
    IF(model.`email` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`email`)))) AS ident_hash,
    model.`we\`ird col` AS `v_612f627e6322642765`,
    model.`age` AS `v_616765`,
    model.`first_name` AS `v_66697273744e616d65`,
    model.`\u00fcn\u00ef` AS `v_c3bc6ec3af2063c3b664c3a9`,
    TO_JSON_STRING(JSON_OBJECT('a/b~c\"d\'e', IF(model.`we\`ird col` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`we\`ird col`)))),
      'age', IF(model.`age` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`age`)))),
      'firstName', IF(model.`first_name` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`first_name`)))),
      '\u00fcn\u00ef c\u00f6d\u00e9', IF(model.`\u00fcn\u00ef` IS NULL, '\u2205', TO_HEX(SHA256(TO_JSON_STRING(model.`\u00fcn\u00ef`)))))) AS field_hashes
  FROM (
SELECT * FROM `acme-prod.crm.users` WHERE NOT deleted -- the model
  ) AS model
);

CREATE TEMP TABLE activation_duplicates AS
SELECT key, COUNT(*) AS n FROM activation_snapshot
WHERE key IS NOT NULL GROUP BY key HAVING COUNT(*) > 1;

-- A retried Plan of the same run replaces the duplicate-key rejections it recorded.
IF EXISTS (SELECT 1 FROM `acme-prod`.`activations`.`rejections` WHERE activation_id = @activation_id AND run_id = @run_id AND outcome = 'skipped' AND STARTS_WITH(reason, @duplicate_prefix)) THEN
  DELETE FROM `acme-prod`.`activations`.`rejections` WHERE activation_id = @activation_id AND run_id = @run_id AND outcome = 'skipped' AND STARTS_WITH(reason, @duplicate_prefix);
END IF;
INSERT INTO `acme-prod`.`activations`.`rejections` (activation_id, run_id, key, op, outcome, field, reason, `at`)
SELECT @activation_id, @run_id, key, 'add', 'skipped', CAST(NULL AS STRING), FORMAT(@duplicate_format, n), CURRENT_TIMESTAMP()
FROM activation_duplicates;

-- Equal row hashes settle most rows at once; only the others parse the old and new
-- field_hashes to list the changed fields. changed_fields is kept for changes only (an add
-- changes every field, a removal none). Clustering by seq makes a chunk's range cheap to read.
CREATE OR REPLACE TABLE `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad`
CLUSTER BY seq
OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 604800 SECOND))
AS
WITH snap AS (
  SELECT s.* FROM activation_snapshot AS s
  WHERE s.key IS NOT NULL AND s.key NOT IN (SELECT d.key FROM activation_duplicates AS d)
), st AS (
  SELECT t.* FROM `acme-prod`.`activations`.`state_crm_users` AS t
  WHERE t.key NOT IN (SELECT d.key FROM activation_duplicates AS d)
), joined AS (
  SELECT COALESCE(snap.key, st.key) AS key,
    CASE WHEN snap.key IS NULL THEN 'remove'
         WHEN st.key IS NULL OR FALSE THEN 'add'
         WHEN snap.row_hash = st.row_hash THEN 'same'
         WHEN snap.ident_hash IS DISTINCT FROM st.ident_hash THEN 'ident'
         ELSE 'diff' END AS kind,
    snap.row_hash, snap.field_hashes, snap.ident_hash, snap.ident, st.field_hashes AS old_hashes, snap.`v_612f627e6322642765`, snap.`v_616765`, snap.`v_66697273744e616d65`, snap.`v_c3bc6ec3af2063c3b664c3a9`
  FROM snap FULL OUTER JOIN st ON snap.key = st.key
), parsed AS (
  SELECT *,
    IF(kind = 'diff', PARSE_JSON(field_hashes), NULL) AS new_j,
    IF(kind = 'diff', PARSE_JSON(old_hashes), NULL) AS old_j
  FROM joined WHERE kind <> 'same'
), classified AS (
  SELECT key, kind,
    CASE kind WHEN 'remove' THEN 'remove' WHEN 'add' THEN 'add' ELSE 'change' END AS op,
    CASE kind
      WHEN 'diff' THEN ARRAY(SELECT f.name FROM UNNEST([
        STRUCT('a/b~c\"d\'e' AS name, JSON_VALUE(new_j['a/b~c\"d\'e']) AS new_hash, JSON_VALUE(old_j['a/b~c\"d\'e']) AS old_hash),
        STRUCT('age' AS name, JSON_VALUE(new_j['age']) AS new_hash, JSON_VALUE(old_j['age']) AS old_hash),
        STRUCT('firstName' AS name, JSON_VALUE(new_j['firstName']) AS new_hash, JSON_VALUE(old_j['firstName']) AS old_hash),
        STRUCT('\u00fcn\u00ef c\u00f6d\u00e9' AS name, JSON_VALUE(new_j['\u00fcn\u00ef c\u00f6d\u00e9']) AS new_hash, JSON_VALUE(old_j['\u00fcn\u00ef c\u00f6d\u00e9']) AS old_hash)
      ]) AS f WITH OFFSET AS i WHERE f.new_hash IS DISTINCT FROM f.old_hash ORDER BY i)
      WHEN 'ident' THEN ['a/b~c\"d\'e', 'age', 'firstName', '\u00fcn\u00ef c\u00f6d\u00e9']
      ELSE CAST([] AS ARRAY<STRING>) END AS changed_fields,
    row_hash, field_hashes, ident_hash, ident, `v_612f627e6322642765`, `v_616765`, `v_66697273744e616d65`, `v_c3bc6ec3af2063c3b664c3a9`
  FROM parsed
), planned AS (
  -- a row whose hash moved only because a field left the mapping has nothing to send
  SELECT * EXCEPT (kind) FROM classified WHERE kind <> 'diff' OR ARRAY_LENGTH(changed_fields) > 0
)
SELECT seq, DIV(seq - 1, 500) AS chunk, * EXCEPT (seq)
FROM (SELECT ROW_NUMBER() OVER (ORDER BY key) AS seq, * FROM planned);

SELECT s.model_rows, s.null_keys,
  (SELECT IFNULL(SUM(d.n), 0) FROM activation_duplicates AS d) AS duplicate_keys,
  (SELECT COUNT(*) FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS p WHERE p.op = 'add' AND p.key IN
    (SELECT r.key FROM `acme-prod`.`activations`.`rejections` AS r WHERE r.activation_id = @activation_id AND r.run_id != @run_id)) AS retried,
  ARRAY(
    SELECT AS STRUCT chunk, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
      COUNTIF(op = 'add') AS added, COUNTIF(op = 'change') AS changed, COUNTIF(op = 'remove') AS removed
    FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` GROUP BY chunk ORDER BY chunk
  ) AS chunks
FROM (SELECT COUNT(*) AS model_rows, COUNTIF(key IS NULL) AS null_keys FROM activation_snapshot) AS s
