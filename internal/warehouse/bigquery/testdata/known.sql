CREATE OR REPLACE TABLE `acme-prod`.`activations`.`plan_crm_users_c7e1440b64e4`
CLUSTER BY id
OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 604800 SECOND))
AS SELECT DISTINCT LOWER(id) AS id FROM `acme-prod`.`activations`.`plan_crm_users_c7e1440b64e4_staging` WHERE id IS NOT NULL AND id <> '';

SELECT COUNT(*) AS n FROM `acme-prod`.`activations`.`plan_crm_users_c7e1440b64e4`
