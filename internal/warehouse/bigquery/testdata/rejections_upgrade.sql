ALTER TABLE `acme-prod`.`activations`.`rejections`
ADD COLUMN IF NOT EXISTS class STRING,
ADD COLUMN IF NOT EXISTS row_hash STRING
