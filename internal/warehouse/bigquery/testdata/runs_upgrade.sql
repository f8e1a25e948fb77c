ALTER TABLE `acme-prod`.`activations`.`runs`
ADD COLUMN IF NOT EXISTS `send_rate` FLOAT64
