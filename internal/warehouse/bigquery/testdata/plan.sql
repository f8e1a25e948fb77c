CREATE TABLE IF NOT EXISTS `acme-prod`.`activations`.`state_crm_users` (
  key STRING NOT NULL,
  row_hash STRING NOT NULL,
  field_hashes STRING NOT NULL,
  ident_hash STRING,
  synced_at TIMESTAMP NOT NULL,
  ident STRING
)
CLUSTER BY key;

-- State tables of earlier versions lack the identifier a key was last synced with.
ALTER TABLE `acme-prod`.`activations`.`state_crm_users` ADD COLUMN IF NOT EXISTS ident STRING;

CREATE TEMP TABLE activation_snapshot AS
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
);

CREATE TEMP TABLE activation_duplicates AS
SELECT key, COUNT(*) AS n, ANY_VALUE(row_hash) AS row_hash FROM activation_snapshot
WHERE key IS NOT NULL GROUP BY key HAVING COUNT(*) > 1;

-- An identifier carried by two keys would be sent as two users, the last write winning field
-- by field: every key that shares one is held back, whatever the state held.
CREATE TEMP TABLE activation_shared AS
WITH clean AS (
  SELECT s.key, s.row_hash, LOWER(CAST(s.ident AS STRING)) AS nid FROM activation_snapshot AS s
  WHERE s.key IS NOT NULL AND s.ident IS NOT NULL AND LOWER(CAST(s.ident AS STRING)) <> ''
    AND s.key NOT IN (SELECT d.key FROM activation_duplicates AS d)
), shared AS (
  SELECT nid, COUNT(*) AS n FROM clean GROUP BY nid HAVING COUNT(*) > 1
)
SELECT clean.key, clean.row_hash, shared.n FROM clean JOIN shared USING (nid);

-- Each key's latest rejection by an earlier run: it makes a rejection of the same row known.
CREATE TEMP TABLE activation_prior AS
SELECT key, ARRAY_AGG(STRUCT(outcome, class, field, reason, row_hash) ORDER BY `at` DESC LIMIT 1)[OFFSET(0)] AS r
FROM `acme-prod`.`activations`.`rejections`
WHERE activation_id = @activation_id AND run_id != @run_id AND key IS NOT NULL
GROUP BY key;

-- A retried Plan of the same run replaces the skipped rows it recorded.
IF EXISTS (SELECT 1 FROM `acme-prod`.`activations`.`rejections` WHERE activation_id = @activation_id AND run_id = @run_id AND class IN ('duplicate-key', 'shared-identifier')) THEN
  DELETE FROM `acme-prod`.`activations`.`rejections` WHERE activation_id = @activation_id AND run_id = @run_id AND class IN ('duplicate-key', 'shared-identifier');
END IF;
INSERT INTO `acme-prod`.`activations`.`rejections` (activation_id, run_id, key, op, outcome, field, reason, `at`, class, row_hash)
SELECT @activation_id, @run_id, key, 'add', 'skipped', CAST(NULL AS STRING), FORMAT(@duplicate_format, n), CURRENT_TIMESTAMP(), 'duplicate-key', row_hash
FROM activation_duplicates
UNION ALL
SELECT @activation_id, @run_id, key, 'add', 'skipped', CAST(NULL AS STRING), FORMAT(@shared_format, n), CURRENT_TIMESTAMP(), 'shared-identifier', row_hash
FROM activation_shared;

-- Equal row hashes settle most rows at once; only the others parse the old and new
-- field_hashes to list the changed fields. changed_fields is kept for changes only (an add
-- changes every field, a removal none). A row whose hash moved only because a field left the
-- mapping has op 'refresh' and no seq: it is not sent, it refreshes its state row (below).
CREATE TEMP TABLE activation_planned AS
WITH held_out AS (
  SELECT key FROM activation_duplicates UNION ALL SELECT key FROM activation_shared
), snap AS (
  SELECT s.* FROM activation_snapshot AS s
  WHERE s.key IS NOT NULL AND s.key NOT IN (SELECT h.key FROM held_out AS h)
), st AS (
  SELECT t.* FROM `acme-prod`.`activations`.`state_crm_users` AS t
  WHERE t.key NOT IN (SELECT h.key FROM held_out AS h)
), joined AS (
  SELECT COALESCE(snap.key, st.key) AS key,
    CASE WHEN snap.key IS NULL THEN 'remove'
         WHEN st.key IS NULL OR FALSE THEN 'add'
         WHEN snap.row_hash = st.row_hash THEN 'same'
         WHEN snap.ident_hash IS DISTINCT FROM st.ident_hash THEN 'ident'
         ELSE 'diff' END AS kind,
    snap.row_hash, snap.field_hashes, snap.ident_hash, snap.ident, st.ident AS old_ident,
    st.field_hashes AS old_hashes, snap.`v_929c68b729ccfe21`, snap.`v_013f54400c82da08`, snap.`v_9cf22fd0154cc2a3`, snap.`v_642174ef3d893ee6`
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
    row_hash, field_hashes, ident_hash, ident, IF(kind IN ('remove', 'ident'), old_ident, NULL) AS old_ident, `v_929c68b729ccfe21`, `v_013f54400c82da08`, `v_9cf22fd0154cc2a3`, `v_642174ef3d893ee6`
  FROM parsed
)
SELECT * EXCEPT (kind, op),
  IF(kind = 'diff' AND ARRAY_LENGTH(changed_fields) = 0, 'refresh', op) AS op
FROM classified;

-- The planned rows other than refreshes are numbered 1..N in key order within buckets of
-- their key's fingerprint, never with one sort of every row: an analytic function without
-- PARTITION BY runs on a single slot, and tens of millions of rows exceed its resources. Only
-- keys are numbered: each bucket is sorted on its own (in parallel), the buckets' row counts
-- are summed in bucket order (a window over at most 1024 rows) into each bucket's
-- offset, and seq = offset + the row's number in its bucket. Keys are unique here and
-- FARM_FINGERPRINT is stable, so a retried Plan numbers the same rows alike. ABS is taken of
-- the remainder, not of the fingerprint, whose minimum has no absolute value in INT64.
CREATE TEMP TABLE activation_seq AS
WITH keyed AS (
  SELECT key, ABS(MOD(FARM_FINGERPRINT(key), 1024)) AS bucket
  FROM activation_planned WHERE op <> 'refresh'
), offsets AS (
  SELECT bucket, SUM(n) OVER (ORDER BY bucket) - n AS base
  FROM (SELECT bucket, COUNT(*) AS n FROM keyed GROUP BY bucket)
)
SELECT keyed.key, offsets.base + ROW_NUMBER() OVER (PARTITION BY keyed.bucket ORDER BY keyed.key) AS seq
FROM keyed JOIN offsets USING (bucket);

-- Each add or change carries its key's latest earlier rejection when it was made with the same
-- row hash (prior_*), and hold when that rejection holds it back. A removal carries the
-- identifier it was last synced with (old_ident), and keep_profile when a current model row
-- carries that identifier (the key changed, the person did not). Clustering by seq makes a
-- chunk's range cheap to read.
CREATE OR REPLACE TABLE `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad`
CLUSTER BY seq
OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 604800 SECOND))
AS
SELECT q.seq, DIV(q.seq - 1, 500) AS chunk, n.key, n.op, n.changed_fields,
  n.row_hash, n.field_hashes, n.ident_hash, n.ident,
  n.old_ident,
  n.old_ident IS NOT NULL AND LOWER(CAST(n.old_ident AS STRING)) IN (
    SELECT LOWER(CAST(s.ident AS STRING)) FROM activation_snapshot AS s
    WHERE s.key IS NOT NULL AND s.ident IS NOT NULL) AS keep_profile,
  pr.r.outcome AS prior_outcome, pr.r.class AS prior_class, pr.r.field AS prior_field, pr.r.reason AS prior_reason,
  n.op IN ('add', 'change') AND COALESCE(pr.r.outcome = 'rejected' AND pr.r.class IN ('identifier', 'value', 'oversize', 'type'), FALSE) AS hold,
  n.`v_929c68b729ccfe21`, n.`v_013f54400c82da08`, n.`v_9cf22fd0154cc2a3`, n.`v_642174ef3d893ee6`
FROM activation_planned AS n
LEFT JOIN activation_seq AS q ON q.key = n.key
LEFT JOIN activation_prior AS pr ON pr.key = n.key AND n.op IN ('add', 'change') AND pr.r.row_hash = n.row_hash;

-- The refreshed rows take their new hashes (and identifier) into the state, so that the next
-- plan settles them on the fast path.
IF EXISTS (SELECT 1 FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` WHERE op = 'refresh') THEN
  UPDATE `acme-prod`.`activations`.`state_crm_users` AS st
  SET row_hash = r.row_hash, field_hashes = r.field_hashes, ident = CAST(r.ident AS STRING)
  FROM (SELECT key, row_hash, field_hashes, ident FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` WHERE op = 'refresh') AS r
  WHERE st.key = r.key;
END IF;

-- State rows written before the ident column lack their identifier: the keys whose identifier
-- did not change since get it once. Duplicated keys are left out: UPDATE takes one source row.
IF EXISTS (SELECT 1 FROM `acme-prod`.`activations`.`state_crm_users` WHERE ident IS NULL AND ident_hash IS DISTINCT FROM '\u2205') THEN
  UPDATE `acme-prod`.`activations`.`state_crm_users` AS st SET ident = CAST(s.ident AS STRING)
  FROM (
    SELECT key, ident, ident_hash FROM activation_snapshot
    WHERE key IS NOT NULL AND ident IS NOT NULL AND key NOT IN (SELECT d.key FROM activation_duplicates AS d)
  ) AS s
  WHERE st.ident IS NULL AND st.key = s.key AND st.ident_hash = s.ident_hash;
END IF;

IF EXISTS (SELECT 1 FROM `acme-prod`.`activations`.`rejections` AS r WHERE r.activation_id = @activation_id AND r.`at` < @rejections_cutoff AND (r.key IS NULL OR EXISTS (
    SELECT 1 FROM `acme-prod`.`activations`.`rejections` AS l
    WHERE l.activation_id = r.activation_id AND l.key = r.key AND l.`at` > r.`at`))) THEN
  DELETE FROM `acme-prod`.`activations`.`rejections` AS r WHERE r.activation_id = @activation_id AND r.`at` < @rejections_cutoff AND (r.key IS NULL OR EXISTS (
    SELECT 1 FROM `acme-prod`.`activations`.`rejections` AS l
    WHERE l.activation_id = r.activation_id AND l.key = r.key AND l.`at` > r.`at`));
END IF;

SELECT s.model_rows, s.null_keys,
  (SELECT IFNULL(SUM(d.n), 0) FROM activation_duplicates AS d) AS duplicate_keys,
  (SELECT COUNT(*) FROM activation_shared) AS duplicate_identifiers,
  c.retried, c.known, c.refreshed, c.added, c.changed, c.removed,
  ARRAY(
    SELECT AS STRUCT IFNULL(prior_reason, '') AS reason, COUNT(*) AS n
    FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` WHERE hold GROUP BY 1 ORDER BY n DESC, reason LIMIT 10
  ) AS known_reasons,
  ARRAY(
    SELECT AS STRUCT chunk, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
      COUNTIF(op = 'add') AS added, COUNTIF(op = 'change') AS changed, COUNTIF(op = 'remove') AS removed
    FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` WHERE chunk IS NOT NULL GROUP BY chunk ORDER BY chunk
  ) AS chunks
FROM (SELECT COUNT(*) AS model_rows, COUNTIF(key IS NULL) AS null_keys FROM activation_snapshot) AS s,
  (
    SELECT COUNTIF(p.op = 'add' AND pr.key IS NOT NULL) AS retried, COUNTIF(p.hold) AS known,
      COUNTIF(p.op = 'refresh') AS refreshed, COUNTIF(p.op = 'add') AS added,
      COUNTIF(p.op = 'change') AS changed, COUNTIF(p.op = 'remove') AS removed
    FROM `acme-prod`.`activations`.`plan_crm_users_4e65d3fbe8ad` AS p LEFT JOIN activation_prior AS pr ON pr.key = p.key
  ) AS c
