ALTER TABLE `acme-prod`.`activations`.`runs`
ADD COLUMN IF NOT EXISTS `send_rate` FLOAT64,
ADD COLUMN IF NOT EXISTS `send_budget` STRING
